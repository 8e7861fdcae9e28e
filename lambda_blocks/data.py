"""Offline image data sets for the inpainting study.

Every item is a dict ``{"image": FloatTensor (C, H, W) in [-1, 1], "id": str}``
(plus ``"mask"``: ``(1, H, W)`` float ``{0, 1}``, 1 = hole, for folders with masks).

* :class:`EmbeddedDataset`: deterministic random crops from the photographs and
  textures bundled in the scikit-image and scikit-learn wheels (no download),
  split into train and test **by source image**. See :data:`DATA_CARD`.
* :class:`PortraitDataset`: the 100 25x25 LFW faces bundled in scikit-image,
  upsampled; a smoke-level portrait set only.
* :class:`FolderDataset`: any folder of images (CelebA-HQ / FFHQ / Places2
  layouts) with an optional mask folder paired by relative file stem.
* :func:`make_dataset`: factory over the three.

Command line: ``python -m lambda_blocks.data card`` prints the data card.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "SourceInfo",
    "EMBEDDED_SOURCES",
    "TEST_SOURCES",
    "DATA_CARD",
    "dataset_card",
    "embedded_sources",
    "load_source",
    "EmbeddedDataset",
    "PortraitDataset",
    "FolderDataset",
    "IMAGE_EXTS",
    "DATASET_NAMES",
    "make_dataset",
    "to_tensor",
]

SizeLike = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Embedded sources
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceInfo:
    """One bundled source image.

    Attributes:
        name: Short name used in item ids (``"coffee/000123"``).
        origin: Package and loader, e.g. ``"scikit-image skimage.data.coffee()"``.
        licence: Licence as stated by the package documentation.
        credit: Author / provenance from the package documentation.
        native_size: ``(height, width)`` of the bundled file.
        grey: Whether the file is single-channel (replicated to RGB).
        category: ``"photo"``, ``"texture"`` or ``"scientific"``.
    """

    name: str
    origin: str
    licence: str
    credit: str
    native_size: tuple[int, int]
    grey: bool
    category: str


_SK = "scikit-image (PyPI `scikit-image`, bundled in the wheel) `skimage.data.{}()`"
_SKL = "scikit-learn (PyPI `scikit-learn`) `sklearn.datasets.load_sample_images()` {}"

EMBEDDED_SOURCES: dict[str, SourceInfo] = {s.name: s for s in (
    SourceInfo("astronaut", _SK.format("astronaut"), "public domain (NASA; no known copyright restrictions)",
               "NASA Great Images (Eileen Collins)", (512, 512), False, "photo"),
    SourceInfo("coffee", _SK.format("coffee"), "CC0", "Rachel Michetti, courtesy of Pikolo Espresso Bar",
               (400, 600), False, "photo"),
    SourceInfo("chelsea", _SK.format("chelsea"), "CC0", "Stefan van der Walt", (300, 451), False, "photo"),
    SourceInfo("rocket", _SK.format("rocket"), "public domain (SpaceX)", "SpaceX, DSCOVR launch",
               (427, 640), False, "photo"),
    SourceInfo("motorcycle_left", _SK.format("stereo_motorcycle") + "[0]",
               "not stated in the scikit-image docstring (Middlebury 2014 stereo benchmark)",
               "Scharstein et al., Middlebury College", (500, 741), False, "photo"),
    SourceInfo("motorcycle_right", _SK.format("stereo_motorcycle") + "[1]",
               "not stated in the scikit-image docstring (Middlebury 2014 stereo benchmark)",
               "Scharstein et al., Middlebury College", (500, 741), False, "photo"),
    SourceInfo("hubble_deep_field", _SK.format("hubble_deep_field"), "public domain (NASA)",
               "NASA / HubbleSite", (872, 1000), False, "scientific"),
    SourceInfo("retina", _SK.format("retina"), "CC0 1.0", "Mikael Haggstrom, Wikimedia Commons",
               (1411, 1411), False, "scientific"),
    SourceInfo("immunohistochemistry", _SK.format("immunohistochemistry"), "no known copyright restrictions",
               "Center for Microscopy And Molecular Imaging (CMMI)", (512, 512), False, "scientific"),
    SourceInfo("camera", _SK.format("camera"), "CC0", "Lav Varshney", (512, 512), True, "photo"),
    SourceInfo("coins", _SK.format("coins"), "no known copyright restrictions",
               "Brooklyn Museum Collection", (303, 384), True, "photo"),
    SourceInfo("moon", _SK.format("moon"), "not stated in the scikit-image docstring",
               "scikit-image sample data", (512, 512), True, "scientific"),
    SourceInfo("cell", _SK.format("cell"), "CC0", "Paul Mueller et al. (qpformat)", (660, 550), True,
               "scientific"),
    SourceInfo("clock", _SK.format("clock"), "public domain", "Stefan van der Walt", (300, 400), True, "photo"),
    SourceInfo("brick", _SK.format("brick"), "CC0", "CC0Textures (Bricks25)", (512, 512), True, "texture"),
    SourceInfo("grass", _SK.format("grass"), "CC0", "linolafett, DeviantArt", (512, 512), True, "texture"),
    SourceInfo("gravel", _SK.format("gravel"), "CC0", "CC0Textures (Gravel04)", (512, 512), True, "texture"),
    SourceInfo("china", _SKL.format("china.jpg"), "CC-BY-2.0", "danielbuechele (Flickr)", (427, 640), False,
               "photo"),
    SourceInfo("flower", _SKL.format("flower.jpg"), "CC-BY-2.0", "vultilion (Flickr)", (427, 640), False,
               "photo"),
)}

#: Sources whose crops form the test split; all others are train. One colour
#: photo (chelsea), one grey photo (coins), one texture (gravel) and one
#: CC-BY photo (flower). The two stereo views of the motorcycle are near
#: duplicates and are therefore both in train.
TEST_SOURCES: tuple[str, ...] = ("chelsea", "coins", "gravel", "flower")

_SPLITS = ("train", "test")

#: Log-uniform range of ``f`` in "short side of the source is resized to
#: ``f * size`` before cropping" (clamped so the source is never upscaled,
#: unless it is smaller than ``size``).
DEFAULT_SCALE_RANGE: tuple[float, float] = (1.25, 5.0)

#: Crops whose grey-level std (0..255 units) is below this are redrawn (up to
#: ``_MAX_FLAT_TRIES`` times) so black retina / sky corners do not dominate.
DEFAULT_MIN_STD: float = 4.0
_MAX_FLAT_TRIES = 10


def embedded_sources(split: str) -> tuple[str, ...]:
    """Names of the bundled sources in a split.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        Source names in a fixed order.
    """
    _check_split(split)
    if split == "test":
        return TEST_SOURCES
    return tuple(n for n in EMBEDDED_SOURCES if n not in TEST_SOURCES)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")


def _sklearn_sample_image(name: str) -> np.ndarray:
    """Reads ``sklearn/datasets/images/<name>.jpg`` without importing scikit-learn (slow import).

    Falls back to ``sklearn.datasets.load_sample_images()`` if the file is not found.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "images" / f"{name}.jpg"
        if path.is_file():
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    idx = [Path(f).stem for f in bunch.filenames].index(name)
    return np.asarray(bunch.images[idx])


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> Image.Image:
    """Loads (once per process) a bundled source as an RGB PIL image.

    Grey sources are replicated to three channels. Do not modify the returned
    image in place: it is shared through the cache.

    Args:
        name: A key of :data:`EMBEDDED_SOURCES`.

    Returns:
        ``PIL.Image`` in mode ``"RGB"``.
    """
    if name not in EMBEDDED_SOURCES:
        raise ValueError(f"unknown embedded source {name!r}; known: {', '.join(EMBEDDED_SOURCES)}")
    if name in ("china", "flower"):
        arr = _sklearn_sample_image(name)
    else:
        from skimage import data as skdata

        if name.startswith("motorcycle_"):
            left, right, _ = skdata.stereo_motorcycle()
            arr = left if name.endswith("left") else right
        else:
            arr = getattr(skdata, name)()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"source {name!r} has unexpected dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), mode="RGB")


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """Converts a uint8 RGB/L image (PIL or HWC/HW array) to a float (C, H, W) tensor in [-1, 1]."""
    arr = np.array(img, dtype=np.uint8)  # copy: PIL buffers are read-only
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


class EmbeddedDataset(Dataset):
    """Deterministic random crops of the bundled scikit-image / scikit-learn images.

    Crop ``i`` is drawn with its own ``numpy`` generator seeded from
    ``SeedSequence([seed, crc32(split), i])``, so an item never depends on which
    other items were read, on worker count or on order. Each crop:

    1. picks a source uniformly from the split's sources
       (:func:`embedded_sources`; split by source image, see :data:`TEST_SOURCES`);
    2. draws ``f`` log-uniformly in ``scale_range`` and rescales the source so
       its short side is ``clamp(f * size, size, native_short_side)`` (never
       upscaled unless the source is smaller than ``size``), so small crops
       still contain structure rather than flat patches;
    3. takes a uniformly placed ``size x size`` window (done as one PIL
       bicubic, antialiased resample of the corresponding native window);
    4. redraws steps 1-3 (up to 10 times) if the crop's grey-level std is
       below ``min_std`` (0..255 units);
    5. flips horizontally with probability 0.5 if ``hflip``.

    Args:
        split: ``"train"`` or ``"test"``.
        size: Crop side in pixels.
        n: Number of crops (the dataset length).
        seed: Non-negative seed.
        channels: 3 (RGB; grey sources replicated) or 1 (luma, PIL ``L``).
        scale_range: ``(lo, hi)`` with ``1 <= lo <= hi`` for ``f`` above.
        hflip: Random horizontal flips; default True for train, False for test.
        min_std: Flat-crop rejection threshold; 0 disables it.

    Items are ``{"image": (channels, size, size) float in [-1, 1], "id": "<source>/<i:06d>"}``.
    The id does not include the seed; use distinct seeds only for distinct sets.
    """

    def __init__(self, split: str = "train", size: int = 64, n: int = 1000, seed: int = 0,
                 channels: int = 3, scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                 hflip: bool | None = None, min_std: float = DEFAULT_MIN_STD) -> None:
        _check_split(split)
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        lo, hi = scale_range
        if not (1.0 <= lo <= hi):
            raise ValueError(f"scale_range must satisfy 1 <= lo <= hi, got {scale_range!r}")
        self.split = split
        self.size = int(size)
        self.n = int(n)
        self.seed = int(seed)
        self.channels = channels
        self.scale_range = (float(lo), float(hi))
        self.hflip = (split == "train") if hflip is None else bool(hflip)
        self.min_std = float(min_std)
        self.sources = embedded_sources(split)

    def __len__(self) -> int:
        return self.n

    def _crop(self, rng: np.random.Generator) -> tuple[str, Image.Image]:
        name = self.sources[int(rng.integers(len(self.sources)))]
        img = load_source(name)
        w, h = img.size
        short = min(w, h)
        lo, hi = self.scale_range
        f = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        target_short = max(float(self.size), min(f * self.size, float(short)))
        win = self.size * short / target_short  # window side in native pixels
        x0 = rng.uniform(0.0, max(w - win, 0.0))
        y0 = rng.uniform(0.0, max(h - win, 0.0))
        crop = img.resize((self.size, self.size), Image.Resampling.BICUBIC,
                          box=(x0, y0, x0 + win, y0 + win))
        return name, crop

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for EmbeddedDataset of length {self.n}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _split_code(self.split), index]))
        for _ in range(_MAX_FLAT_TRIES):
            name, crop = self._crop(rng)
            if self.min_std <= 0 or float(np.asarray(crop.convert("L"), np.float32).std()) >= self.min_std:
                break
        if self.hflip and rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        if self.channels == 1:
            crop = crop.convert("L")
        return {"image": to_tensor(crop), "id": f"{name}/{index:06d}"}


# --------------------------------------------------------------------------------------------
# Portraits (LFW subset bundled in scikit-image)
# --------------------------------------------------------------------------------------------

_LFW_FACES = 100
_LFW_TEST = 20


@functools.lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    from skimage import data as skdata

    arr = np.asarray(skdata.lfw_subset(), dtype=np.float32)[:_LFW_FACES]  # (100, 25, 25) in [0, 1]
    arr.setflags(write=False)
    return arr


class PortraitDataset(Dataset):
    """The 100 LFW faces bundled in scikit-image: a **smoke-level** portrait set.

    ``skimage.data.lfw_subset()`` holds 200 25x25 grey crops; the first 100 are
    faces. Faces 0-79 are train and 80-99 are test. Each face is upsampled to
    ``size`` with bilinear interpolation (``align_corners=False``) and
    replicated to RGB, so images are blurry and tiny in content: use this only
    to check that a pipeline runs on face-like data, never to report quality.
    The LFW licence is not stated in the scikit-image docstring.

    Args:
        split: ``"train"`` or ``"test"``.
        size: Output side in pixels.
        n: Number of items; ``None`` = all faces of the split. Larger values
            cycle over the faces (repeats get ids ``"lfw/081~1"`` etc.).
        channels: 3 or 1.

    Items are ``{"image": (channels, size, size), "id": "lfw/<face index:03d>"}``.
    """

    def __init__(self, split: str = "train", size: int = 64, n: int | None = None,
                 channels: int = 3) -> None:
        _check_split(split)
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        first, last = (0, _LFW_FACES - _LFW_TEST) if split == "train" else (_LFW_FACES - _LFW_TEST, _LFW_FACES)
        self.indices = tuple(range(first, last))
        self.n = len(self.indices) if n is None else int(n)
        if self.n < 0:
            raise ValueError(f"n must be non-negative, got {n!r}")
        self.split, self.size, self.channels = split, int(size), channels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for PortraitDataset of length {self.n}")
        rep, pos = divmod(index, len(self.indices))
        face_idx = self.indices[pos]
        face = torch.from_numpy(_lfw_faces()[face_idx].copy())[None, None]
        face = torch.nn.functional.interpolate(face, size=(self.size, self.size), mode="bilinear",
                                               align_corners=False)[0].clamp(0.0, 1.0)
        img = face * 2.0 - 1.0
        if self.channels == 3:
            img = img.repeat(3, 1, 1)
        item_id = f"lfw/{face_idx:03d}" + (f"~{rep}" if rep else "")
        return {"image": img.contiguous(), "id": item_id}


# --------------------------------------------------------------------------------------------
# Folder of images (+ optional masks paired by name)
# --------------------------------------------------------------------------------------------

IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_RESIZE_MODES = ("short_side_center_crop", "resize", "none")


def _scan(root: Path, exts: Iterable[str], exclude: Path | None = None) -> dict[str, Path]:
    """Maps relative stem (posix, no extension) -> file for every image under ``root``."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in exts}
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in exts:
            continue
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if exclude is not None and exclude in path.resolve().parents:
            continue
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in found:
            raise ValueError(f"two files share the stem {key!r}: {found[key]} and {path}; "
                             "stems must be unique to pair images and masks")
        found[key] = path
    return found


def _open_image(path: Path) -> Image.Image:
    """Opens and fully decodes an image, turning PIL errors into ValueError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB (documented in :class:`FolderDataset`)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64) / 257.0  # 16-bit range -> 8-bit
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:  # float image in [0, 1]
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return im.convert("RGB")


class FolderDataset(Dataset):
    """Images from a folder tree, with optional masks paired **by relative file stem**.

    Images are all files under ``root`` (recursively; hidden files and folders
    skipped) whose extension is in ``exts``. The id of an image is its path
    relative to ``root`` without extension (``"sub/0001"``). Its mask is the
    file under ``mask_root`` whose relative stem is ``id + mask_suffix``, with
    any image extension (``a.jpg`` pairs with ``a.png``); sort order is never
    used. If ``mask_root`` lies inside ``root``, its files are not images.

    Conversions (applied after EXIF orientation):

    * grey ``L`` (and 16-bit ``I;16``, scaled by 1/257) is replicated to RGB;
    * images with alpha (``RGBA``, ``LA``, palette with transparency) are
      **composited on a white background**;
    * every other mode goes through ``PIL.Image.convert("RGB")``.

    Masks are read as ``L`` and binarised at 128 (``>= 128`` -> 1 = hole),
    before any resize; they are resized with nearest neighbour on exactly the
    same window as their image.

    Resize modes: ``"short_side_center_crop"`` (scale so the image covers
    ``size`` then center-crop; bicubic, antialiased), ``"resize"`` (scale to
    ``size`` ignoring aspect) and ``"none"`` (native size; batches then need
    equal sizes).

    Args:
        root: Image folder.
        size: Output side, or ``(height, width)``; ignored for ``resize="none"``.
        mask_root: Optional mask folder.
        resize: One of ``"short_side_center_crop"``, ``"resize"``, ``"none"``.
        exts: Accepted extensions (case-insensitive).
        missing_mask: ``"error"`` (``FileNotFoundError`` naming the image) or
            ``"skip"`` (drop unpaired images with a warning).
        mask_suffix: Appended to an image stem to get its mask stem
            (``"_mask"`` pairs ``a.jpg`` with ``a_mask.png``).
        n: Keep only the first ``n`` images in sorted id order.

    Raises:
        FileNotFoundError: Missing folder, no images, or a missing mask.
        ValueError: Bad arguments or duplicate stems. At item access,
            unreadable files and image/mask size mismatches raise
            ``ValueError`` naming the file(s).
    """

    def __init__(self, root: str | Path, size: SizeLike | None = 256, mask_root: str | Path | None = None,
                 resize: str = "short_side_center_crop", exts: Sequence[str] = IMAGE_EXTS,
                 missing_mask: str = "error", mask_suffix: str = "", n: int | None = None) -> None:
        if resize not in _RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}; expected one of {_RESIZE_MODES}")
        if missing_mask not in ("error", "skip"):
            raise ValueError(f"missing_mask must be 'error' or 'skip', got {missing_mask!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        self.mask_root = None if mask_root is None else Path(mask_root)
        if self.mask_root is not None and not self.mask_root.is_dir():
            raise FileNotFoundError(f"mask folder {self.mask_root} does not exist or is not a folder")
        self.resize = resize
        self.out_hw = None if resize == "none" else _as_hw(size)
        exclude = None
        if self.mask_root is not None:
            mr, r = self.mask_root.resolve(), self.root.resolve()
            if r in mr.parents:
                exclude = mr
        images = _scan(self.root, exts, exclude)
        if not images:
            raise FileNotFoundError(
                f"no image files with extensions {tuple(exts)} found under {self.root}")
        self.masks: dict[str, Path] = {}
        if self.mask_root is not None:
            masks = _scan(self.mask_root, exts)
            missing = [k for k in images if k + mask_suffix not in masks]
            if missing and missing_mask == "error":
                raise FileNotFoundError(
                    f"no mask for image {images[missing[0]]}: expected a file with stem "
                    f"{missing[0] + mask_suffix!r} under {self.mask_root} "
                    f"({len(missing)} image(s) without mask; use missing_mask='skip' to drop them)")
            if missing:
                warnings.warn(f"FolderDataset: skipping {len(missing)} image(s) without a mask under "
                              f"{self.mask_root}", stacklevel=2)
                for k in missing:
                    del images[k]
                if not images:
                    raise FileNotFoundError(f"no image under {self.root} has a mask under {self.mask_root}")
            self.masks = {k: masks[k + mask_suffix] for k in images}
        self.ids = sorted(images)
        if n is not None:
            self.ids = self.ids[: int(n)]
        self.images = {k: images[k] for k in self.ids}

    def __len__(self) -> int:
        return len(self.ids)

    def _window(self, w: int, h: int) -> tuple[float, float, float, float]:
        assert self.out_hw is not None
        th, tw = self.out_hw
        if self.resize == "resize":
            return (0.0, 0.0, float(w), float(h))
        scale = max(th / h, tw / w)
        ww, wh = tw / scale, th / scale
        x0, y0 = (w - ww) / 2.0, (h - wh) / 2.0
        return (x0, y0, x0 + ww, y0 + wh)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.ids[index]
        path = self.images[key]
        img = _to_rgb(_open_image(path))
        mask_img = None
        if self.mask_root is not None:
            mpath = self.masks[key]
            raw = _open_image(mpath)
            if raw.size != img.size:
                raise ValueError(
                    f"image {path} is {img.size[0]}x{img.size[1]} (WxH) but its mask {mpath} is "
                    f"{raw.size[0]}x{raw.size[1]}")
            binary = np.asarray(raw.convert("L")) >= 128
            mask_img = Image.fromarray((binary * 255).astype(np.uint8), mode="L")
        if self.out_hw is not None:
            box = self._window(*img.size)
            th, tw = self.out_hw
            img = img.resize((tw, th), Image.Resampling.BICUBIC, box=box)
            if mask_img is not None:
                mask_img = mask_img.resize((tw, th), Image.Resampling.NEAREST, box=box)
        item: dict[str, Any] = {"image": to_tensor(img), "id": key}
        if mask_img is not None:
            item["mask"] = torch.from_numpy((np.asarray(mask_img) >= 128).astype(np.float32))[None]
        return item


def _as_hw(size: SizeLike | None) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            hw = tuple(int(s) for s in size)  # type: ignore[union-attr]
        except TypeError as exc:
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from exc
        if len(hw) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

DATASET_NAMES: tuple[str, ...] = ("embedded", "portrait", "folder")
_DEFAULT_N = {"train": 2000, "test": 200}


def make_dataset(name: str, split: str = "train", size: int = 64, n: int | None = None, seed: int = 0,
                 root: str | Path | None = None, mask_root: str | Path | None = None,
                 **kwargs: Any) -> Dataset:
    """Builds a data set by name.

    Args:
        name: ``"embedded"``, ``"portrait"`` or ``"folder"``.
        split: ``"train"`` or ``"test"``.
        size: Image side.
        n: Number of items. ``embedded``: default 2000 (train) / 200 (test);
            ``portrait``: default all faces of the split; ``folder``: default
            all images (first ``n`` in id order otherwise).
        seed: Crop seed (``embedded`` only; the others are deterministic).
        root: Image folder (``folder`` only, required) holding ``train/`` and
            ``test/``; a flat folder is refused (it would be both splits) unless
            ``allow_flat=True`` is passed for a deliberate single-split use.
        mask_root: Optional mask folder (``folder`` only), same ``<split>`` rule.
        **kwargs: Passed to the data set class.

    Returns:
        The data set.

    Raises:
        ValueError: Unknown name or missing ``root``.
    """
    if name == "embedded":
        return EmbeddedDataset(split=split, size=size, n=_DEFAULT_N[split] if n is None else n,
                               seed=seed, **kwargs)
    if name == "portrait":
        return PortraitDataset(split=split, size=size, n=n, **kwargs)
    if name == "folder":
        _check_split(split)
        if root is None:
            raise ValueError("make_dataset('folder', ...) needs root=<image folder>")
        root_p = Path(root)
        if (root_p / split).is_dir():
            root_p = root_p / split
        elif not kwargs.pop("allow_flat", False):
            raise ValueError(
                f"data folder {root_p} has no {split}/ subfolder: a flat folder would be both the training and "
                f"the test split (the model scored on its own training images). Put the images in "
                f"{root_p}/train and {root_p}/test (masks likewise under mask_root)")
        mask_p = None
        if mask_root is not None:
            mask_p = Path(mask_root)
            if (mask_p / split).is_dir():
                mask_p = mask_p / split
        return FolderDataset(root_p, size=size, mask_root=mask_p, n=n, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")


# --------------------------------------------------------------------------------------------
# Data card
# --------------------------------------------------------------------------------------------

def _data_card() -> dict[str, Any]:
    return {
        "name": "lambda_blocks embedded image set",
        "origin_packages": ["scikit-image 0.26 (PyPI wheel, bundled files)",
                            "scikit-learn (PyPI, sklearn/datasets/images)"],
        "sources": [
            {"name": s.name, "origin": s.origin, "licence": s.licence, "credit": s.credit,
             "native_size_hw": list(s.native_size), "colour": "grey -> RGB (replicated)" if s.grey else "RGB",
             "category": s.category, "split": "test" if s.name in TEST_SOURCES else "train"}
            for s in EMBEDDED_SOURCES.values()
        ],
        "test_sources": list(TEST_SOURCES),
        "split_rule": "by source image: no crop of a test source is ever in train",
        "crops": {"scale_range": list(DEFAULT_SCALE_RANGE), "min_std": DEFAULT_MIN_STD,
                  "resample": "PIL bicubic (antialiased)", "hflip": "train only (default)",
                  "determinism": "crop i uses SeedSequence([seed, crc32(split), i])"},
        "portrait": {"origin": "scikit-image `skimage.data.lfw_subset()` (first 100 of 200 are faces)",
                     "licence": "not stated in the scikit-image docstring (Labeled Faces in the Wild)",
                     "native_size_hw": [25, 25], "split": "faces 0-79 train, 80-99 test",
                     "note": "smoke-level only: 25x25 grey, bilinearly upsampled"},
        "not_included": "CelebA-HQ, FFHQ, Places2 (use FolderDataset on a local copy)",
    }


#: Structured data card (sources, origin package, licence, size, split).
DATA_CARD: dict[str, Any] = _data_card()


def dataset_card() -> str:
    """Renders :data:`DATA_CARD` as markdown.

    Returns:
        A markdown document listing every source with its origin, licence,
        native size and split.
    """
    card = DATA_CARD
    lines = [f"# Data card: {card['name']}", "",
             "Everything below ships inside PyPI wheels; nothing is downloaded at run time.", "",
             "| source | split | category | native size (HxW) | colour | licence | credit | origin |",
             "|---|---|---|---|---|---|---|---|"]
    for s in card["sources"]:
        h, w = s["native_size_hw"]
        lines.append(f"| {s['name']} | {s['split']} | {s['category']} | {h}x{w} | {s['colour']} | "
                     f"{s['licence']} | {s['credit']} | {s['origin']} |")
    crops = card["crops"]
    p = card["portrait"]
    lines += ["", f"**Split:** {card['split_rule']}. Test sources: {', '.join(card['test_sources'])}.", "",
              "**Crops:** the source is rescaled so its short side is f x size, f log-uniform in "
              f"[{crops['scale_range'][0]}, {crops['scale_range'][1]}] (never upscaled unless smaller than "
              f"size); crops with grey std < {crops['min_std']} (0..255) are redrawn; resampling "
              f"{crops['resample']}; horizontal flips {crops['hflip']}; {crops['determinism']}.", "",
              f"**Portrait set:** {p['origin']}; {p['native_size_hw'][0]}x{p['native_size_hw'][1]} grey; "
              f"{p['split']}; licence {p['licence']}. {p['note']}.", "",
              f"**Not included:** {card['not_included']}.", ""]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lambda_blocks.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("card", help="print the data card (markdown)")
    args = parser.parse_args(argv)
    if args.command == "card":
        print(dataset_card())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
