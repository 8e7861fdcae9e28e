"""The classical floor: fills that keep the known pixels, exact on functions each method reproduces,
scored by the evaluation code on the models' test problems, and listed by collect like any run."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lambda_blocks import classical as C
from lambda_blocks.config import resolve


def ramp(h=24, w=20):
    ys = torch.linspace(-0.8, 0.8, h).view(h, 1)
    xs = torch.linspace(-0.5, 0.6, w).view(1, w)
    img = torch.stack([0.5 * ys + 0.3 * xs, -0.2 * ys + 0.6 * xs, 0.1 + 0 * ys * xs])
    return img.float()


def hole(h=24, w=20):
    m = torch.zeros(1, h, w)
    m[:, 8:15, 6:13] = 1
    return m


@pytest.mark.parametrize("method", C.METHODS)
def test_known_pixels_are_kept_exactly(method):
    img, m = ramp(), hole()
    g = torch.Generator().manual_seed(0)
    noisy = (img + 0.3 * torch.randn(img.shape, generator=g)).clamp(-1, 1)
    out = C.fill(method, noisy * (1 - m), m)
    assert out.shape == img.shape and out.dtype == torch.float32
    keep = (m[0] < 0.5)
    torch.testing.assert_close(out[:, keep], noisy[:, keep], rtol=0, atol=1e-6)
    assert float(out.abs().max()) <= 1.0


def test_mean_fill_is_the_mean_of_the_known_pixels():
    img, m = ramp(), hole()
    out = C.fill("mean", img * (1 - m), m)
    known = img[:, m[0] < 0.5].double().mean(1)
    for c in range(3):
        vals = out[c][m[0] > 0.5]
        torch.testing.assert_close(vals.double(), known[c].expand_as(vals), rtol=0, atol=1e-6)


def test_biharmonic_reproduces_a_linear_ramp():
    """A linear function is biharmonic: the biharmonic fill of a hole in a ramp is the ramp."""
    img, m = ramp(), hole()
    out = C.fill("biharmonic", img * (1 - m), m)
    assert float((out - img).abs().max()) < 1e-3
    mean = C.fill("mean", img * (1 - m), m)  # the mean fill is far off on the same hole
    assert float((mean - img)[:, m[0] > 0.5].abs().max()) > 0.1


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_fills_a_constant_image_with_the_constant(method):
    img = torch.full((3, 16, 16), 0.2)
    m = torch.zeros(1, 16, 16)
    m[:, 4:10, 5:12] = 1
    out = C.fill(method, img * (1 - m), m)
    # 8-bit round trip: within one grey level
    assert float((out - img).abs().max()) <= 4 / 255 + 1e-6  # two grey levels in [-1, 1]


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="unknown classical fill 'lama'"):
        C.fill("lama", ramp(), hole())
    with pytest.raises(ValueError, match="differ in size"):
        C.fill("mean", ramp(), hole(10, 10))
    with pytest.raises(KeyError, match="only data.\\* and eval.\\*"):
        C.floor_config("smoke", "mean", {"train.lr": 1e-3})
    with pytest.raises(KeyError, match="unknown config key"):
        C.floor_config("smoke", "mean", {"data.nope": 1})


def test_floor_run_scores_the_models_test_problems(tmp_path):
    """The floor's records: same image ids as a model's evaluation set, metrics equal to scoring the
    fills by hand, per-image rows, and collect lists it as kind 'floor' beside learned runs."""
    from ablations.collect import collect
    from lambda_blocks.data import make_dataset
    from lambda_blocks.evaluate import load_eval_set, score_fills

    over = {"eval.n_eval": 4, "eval.fid": False, "eval.n_grid": 2, "data.n_test": 4}
    run_dir = C.run_floor("smoke", "biharmonic", tmp_path / "runs", over)
    assert run_dir.name.startswith("floor-biharmonic-smoke-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["kind"] == "floor"
    cfg = resolve("smoke", overrides=over)
    ds = make_dataset("embedded", "test", size=cfg.data.image_size, n=cfg.data.n_test, seed=cfg.data.seed)
    es = load_eval_set(ds, 4, cfg.data.image_size, cfg.eval.mask_kind, cfg.eval.seed)
    want, per = score_fills(C.fill_batch("biharmonic", es.images, es.masks), es, lpips=False, fid=False)
    assert summary["psnr"] == pytest.approx(want["psnr"], rel=1e-9)
    assert summary["psnr"] > 20  # biharmonic is a real fill, not a grey hole
    pi = pd.read_csv(run_dir / "per_image.csv")
    assert list(pi["id"]) == es.ids and np.allclose(pi["psnr"], per["psnr"], rtol=1e-6)
    # a second call finds the finished run and leaves it alone
    mtime = (run_dir / "summary.json").stat().st_mtime_ns
    assert C.run_floor("smoke", "biharmonic", tmp_path / "runs", over) == run_dir
    assert (run_dir / "summary.json").stat().st_mtime_ns == mtime
    out = collect(tmp_path / "runs", tmp_path / "results")
    row = out["runs"].iloc[0]
    assert row["kind"] == "floor" and row["arm"] == "biharmonic" and row["status"] == "done"
    assert set(out["per_image"]["id"]) == set(es.ids)
    assert (tmp_path / "results" / "samples" / f"{run_dir.name}.npz").exists()
