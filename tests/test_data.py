"""Tests for lambda_blocks.data (embedded crops, portraits, folder loader, card)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lambda_blocks import data as D


# ------------------------------------------------------------------------------------------
# Embedded data set
# ------------------------------------------------------------------------------------------

def test_split_by_source_is_disjoint_and_complete() -> None:
    train, test = set(D.embedded_sources("train")), set(D.embedded_sources("test"))
    assert not train & test
    assert train | test == set(D.EMBEDDED_SOURCES)
    assert test == set(D.TEST_SOURCES)
    cats = {D.EMBEDDED_SOURCES[s].category for s in test}
    assert {"photo", "texture"} <= cats
    # Both stereo views (near duplicates) must be on the same side.
    assert {"motorcycle_left", "motorcycle_right"} <= train
    for split, allowed in (("train", train), ("test", test)):
        ds = D.EmbeddedDataset(split, size=16, n=150, seed=0, min_std=0)
        seen = {ds[i]["id"].split("/")[0] for i in range(len(ds))}
        assert seen <= allowed
        assert len(seen) >= len(allowed) - 1  # crops do visit (almost) every source


def test_items_shape_range_id() -> None:
    ds = D.EmbeddedDataset("test", size=32, n=12, seed=3)
    assert len(ds) == 12
    for i in range(len(ds)):
        item = ds[i]
        img = item["image"]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert img.min() >= -1.0 and img.max() <= 1.0
        src, idx = item["id"].split("/")
        assert src in D.TEST_SOURCES and idx == f"{i:06d}"
        assert img.std() > 0.02  # flat-crop rejection
    grey = D.EmbeddedDataset("test", size=24, n=2, seed=3, channels=1)[0]["image"]
    assert grey.shape == (1, 24, 24)
    with pytest.raises(IndexError):
        ds[12]


def test_determinism_and_order_independence() -> None:
    a = D.EmbeddedDataset("train", size=32, n=20, seed=11)
    b = D.EmbeddedDataset("train", size=32, n=20, seed=11)
    late = b[17]
    for i in (0, 5, 17):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["id"] == b[i]["id"]
    assert torch.equal(a[17]["image"], late["image"])


def test_different_seeds_differ() -> None:
    a = D.EmbeddedDataset("train", size=32, n=10, seed=0)
    b = D.EmbeddedDataset("train", size=32, n=10, seed=1)
    n_same = sum(torch.equal(a[i]["image"], b[i]["image"]) for i in range(10))
    assert n_same == 0
    imgs = torch.stack([a[i]["image"] for i in range(10)])
    assert (imgs[1:] - imgs[:1]).abs().flatten(1).amax(1).min() > 0  # crops differ from each other


def test_scale_range_controls_zoom() -> None:
    # f = 1 shows the whole short side (a downscaled photo), large f a native-resolution
    # patch: detail (mean gradient energy) must be higher for the zoomed-out crops.
    def detail(scale):
        ds = D.EmbeddedDataset("test", size=32, n=30, seed=2, scale_range=scale, hflip=False, min_std=0)
        x = torch.stack([ds[i]["image"] for i in range(len(ds))])
        return float(((x[..., 1:] - x[..., :-1]) ** 2).mean())

    assert detail((1.0, 1.0)) > 1.5 * detail((8.0, 8.0))
    with pytest.raises(ValueError):
        D.EmbeddedDataset("train", scale_range=(0.5, 2.0))


def test_native_sizes_in_card_match_files() -> None:
    for name, info in D.EMBEDDED_SOURCES.items():
        w, h = D.load_source(name).size
        assert (h, w) == info.native_size, name
        assert D.load_source(name).mode == "RGB"
    grey = np.asarray(D.load_source("brick"))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        D.EmbeddedDataset("val")
    with pytest.raises(ValueError):
        D.EmbeddedDataset("train", seed=-1)
    with pytest.raises(ValueError):
        D.EmbeddedDataset("train", channels=2)


# ------------------------------------------------------------------------------------------
# Card
# ------------------------------------------------------------------------------------------

def test_card_mentions_every_source_and_licence(capsys) -> None:
    card = D.dataset_card()
    for info in D.EMBEDDED_SOURCES.values():
        assert info.name in card and info.licence in card
    assert "CC-BY-2.0" in card and "CC0" in card and "lfw_subset" in card
    for s in D.DATA_CARD["sources"]:
        assert s["split"] == ("test" if s["name"] in D.TEST_SOURCES else "train")
    assert D._main(["card"]) == 0
    assert capsys.readouterr().out.strip() == card.strip()


# ------------------------------------------------------------------------------------------
# Portraits
# ------------------------------------------------------------------------------------------

def test_portrait_split_and_shape() -> None:
    tr, te = D.PortraitDataset("train", size=48), D.PortraitDataset("test", size=48)
    assert len(tr) == 80 and len(te) == 20
    ids_tr = {tr[i]["id"] for i in range(len(tr))}
    ids_te = {te[i]["id"] for i in range(len(te))}
    assert not ids_tr & ids_te
    img = te[0]["image"]
    assert img.shape == (3, 48, 48) and -1 <= img.min() and img.max() <= 1
    assert torch.equal(img[0], img[1])
    cyc = D.PortraitDataset("test", size=32, n=45)
    assert len(cyc) == 45 and cyc[20]["id"] == "lfw/080~1"
    assert torch.equal(cyc[20]["image"], cyc[0]["image"])


# ------------------------------------------------------------------------------------------
# Folder loader
# ------------------------------------------------------------------------------------------

def _save(path: Path, arr: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, format=fmt)
    return path


def _mask_arr(h: int, w: int, rows: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[:rows] = 255
    return m


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """Images a.png (RGB), b.jpg (JPEG), c.png (grey), sub/d.png (RGBA); masks by stem.

    Each mask has a different number of hole rows (a: 2, b: 4, c: 6, d: 8) and the
    mask folder holds extra masks ("0_extra", "aa", "b_other") so pairing by sort
    order would mis-pair.
    """
    img_root, mask_root = tmp_path / "images", tmp_path / "masks"
    h, w = 20, 30
    _save(img_root / "a.png", np.full((h, w, 3), (200, 10, 10), np.uint8))
    _save(img_root / "b.jpg", np.full((h, w, 3), (10, 200, 10), np.uint8), fmt="JPEG")
    _save(img_root / "c.png", np.full((h, w), 100, np.uint8), mode="L")
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = (0, 0, 255)
    rgba[:, w // 2:, 3] = 255  # left half transparent -> white
    _save(img_root / "sub" / "d.png", rgba, mode="RGBA")
    for stem, rows in (("a", 2), ("b", 4), ("c", 6), ("sub/d", 8), ("0_extra", 20), ("aa", 19),
                       ("b_other", 18)):
        _save(mask_root / f"{stem}.png", _mask_arr(h, w, rows), mode="L")
    return img_root, mask_root


def test_folder_pairs_masks_by_stem_not_order(folder) -> None:
    img_root, mask_root = folder
    ds = D.FolderDataset(img_root, size=None, mask_root=mask_root, resize="none")
    assert ds.ids == ["a", "b", "c", "sub/d"]
    expected_rows = {"a": 2, "b": 4, "c": 6, "sub/d": 8}
    for i in range(len(ds)):
        item = ds[i]
        m = item["mask"]
        assert m.shape == (1, 20, 30) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert int(m[0, :, 0].sum()) == expected_rows[item["id"]], item["id"]


def test_folder_mode_conversions(folder) -> None:
    img_root, _ = folder
    ds = D.FolderDataset(img_root, size=None, resize="none")
    by_id = {ds[i]["id"]: ds[i]["image"] for i in range(len(ds))}
    u8 = {k: ((v + 1) * 127.5).round() for k, v in by_id.items()}
    assert torch.allclose(u8["a"][:, 0, 0], torch.tensor([200.0, 10.0, 10.0]))
    assert (u8["b"][:, 5, 5] - torch.tensor([10.0, 200.0, 10.0])).abs().max() <= 8  # JPEG
    assert (u8["c"] == 100).all()  # grey replicated
    assert (u8["sub/d"][:, :, :15] == 255).all()  # transparent -> white
    assert torch.equal(u8["sub/d"][:, 0, 20], torch.tensor([0.0, 0.0, 255.0]))
    for v in by_id.values():
        assert v.shape == (3, 20, 30) and v.dtype == torch.float32


def test_folder_resize_modes(folder) -> None:
    img_root, mask_root = folder
    crop = D.FolderDataset(img_root, size=16, mask_root=mask_root)
    item = crop[0]  # "a": 30x20 (WxH), mask rows 0-1 -> scaled by 16/20, centre crop
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert int(item["mask"][0, :, 8].sum()) in (1, 2)
    rs = D.FolderDataset(img_root, size=(10, 12), resize="resize")
    assert rs[0]["image"].shape == (3, 10, 12)
    with pytest.raises(ValueError, match="resize mode"):
        D.FolderDataset(img_root, resize="stretch")


def test_mask_binarised_at_128(tmp_path: Path) -> None:
    _save(tmp_path / "i" / "x.png", np.zeros((4, 4, 3), np.uint8))
    m = np.array([[0, 127, 128, 255]] * 4, np.uint8)
    _save(tmp_path / "m" / "x.png", m, mode="L")
    item = D.FolderDataset(tmp_path / "i", size=None, mask_root=tmp_path / "m", resize="none")[0]
    assert item["mask"][0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_mask_suffix_and_missing_masks(folder, tmp_path: Path) -> None:
    img_root, mask_root = folder
    (mask_root / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match="c.png"):
        D.FolderDataset(img_root, mask_root=mask_root)
    with pytest.warns(UserWarning, match="skipping 1"):
        ds = D.FolderDataset(img_root, size=None, mask_root=mask_root, resize="none", missing_mask="skip")
    assert ds.ids == ["a", "b", "sub/d"]
    suffixed = tmp_path / "suffixed"
    _save(suffixed / "a_mask.png", _mask_arr(20, 30, 3), mode="L")
    with pytest.warns(UserWarning, match="skipping 3"):
        ds = D.FolderDataset(img_root, size=None, mask_root=suffixed, resize="none", mask_suffix="_mask",
                             missing_mask="skip")
    assert ds.ids == ["a"] and int(ds[0]["mask"][0, :, 0].sum()) == 3


def test_corrupt_file_names_path(folder) -> None:
    img_root, _ = folder
    (img_root / "bad.png").write_bytes(b"this is not a png")
    good = (img_root / "a.png").read_bytes()
    (img_root / "trunc.png").write_bytes(good[: len(good) // 2])
    ds = D.FolderDataset(img_root, size=16)
    with pytest.raises(ValueError, match="bad.png"):
        ds[ds.ids.index("bad")]
    with pytest.raises(ValueError, match="trunc.png"):
        ds[ds.ids.index("trunc")]


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _save(tmp_path / "i" / "x.png", np.zeros((20, 30, 3), np.uint8))
    _save(tmp_path / "m" / "x.png", np.zeros((30, 20), np.uint8), mode="L")
    ds = D.FolderDataset(tmp_path / "i", size=16, mask_root=tmp_path / "m")
    with pytest.raises(ValueError) as exc:
        ds[0]
    msg = str(exc.value)
    assert str(tmp_path / "i" / "x.png") in msg and str(tmp_path / "m" / "x.png") in msg
    assert "30x20" in msg and "20x30" in msg


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match="no image files"):
        D.FolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.FolderDataset(tmp_path / "nope")


def test_duplicate_stems_and_nested_mask_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _save(root / "x.png", np.zeros((8, 8, 3), np.uint8))
    _save(root / "masks" / "x.png", np.zeros((8, 8), np.uint8), mode="L")
    ds = D.FolderDataset(root, size=8, mask_root=root / "masks")
    assert ds.ids == ["x"]  # the mask folder's files are not images
    _save(root / "x.jpg", np.zeros((8, 8, 3), np.uint8), fmt="JPEG")
    with pytest.raises(ValueError, match="share the stem"):
        D.FolderDataset(root, size=8, mask_root=root / "masks")


# ------------------------------------------------------------------------------------------
# Factory
# ------------------------------------------------------------------------------------------

def test_make_dataset(folder, tmp_path: Path) -> None:
    ds = D.make_dataset("embedded", "test", size=16, n=3, seed=4)
    assert isinstance(ds, D.EmbeddedDataset) and len(ds) == 3
    assert len(D.make_dataset("portrait", "train", size=16)) == 80
    with pytest.raises(ValueError, match="embedded, portrait, folder"):
        D.make_dataset("celeba", "train")
    with pytest.raises(ValueError, match="root"):
        D.make_dataset("folder", "train")
    img_root, mask_root = folder
    with pytest.raises(ValueError, match="no test/ subfolder"):  # a flat folder would be both splits
        D.make_dataset("folder", "test", size=16, root=img_root, mask_root=mask_root, n=2)
    fd = D.make_dataset("folder", "test", size=16, root=img_root, mask_root=mask_root, n=2, allow_flat=True)
    assert len(fd) == 2 and fd[1]["mask"].shape == (1, 16, 16)
    split_root = tmp_path / "places"
    _save(split_root / "train" / "t.png", np.zeros((8, 8, 3), np.uint8))
    _save(split_root / "test" / "u.png", np.zeros((8, 8, 3), np.uint8))
    assert D.make_dataset("folder", "test", size=8, root=split_root).ids == ["u"]
