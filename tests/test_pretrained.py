"""The shipped checkpoint and the inpaint CLI: the weights are the measured ones, known pixels are
kept exactly, and every bad input is one clear line (exit 2), never a traceback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lambda_blocks as lb
from lambda_blocks import pretrained as PT
from lambda_blocks.config import config_hash

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_model_is_the_measured_one():
    """Its card's config hashes to the recorded hash, and re-sampling the card's evaluation set
    with the shipped weights gives the card's PSNR (the noise is keyed, so this is exact)."""
    from lambda_blocks.evaluate import evaluate_model, load_eval_set
    from lambda_blocks.train import _dataset

    assert "lmi-dev-tiny" in PT.available()
    model, diffusion, cfg, card = lb.load_pretrained("lmi-dev-tiny")
    assert config_hash(cfg) == card["config_hash"] and cfg.arm == "lmi"
    assert sum(p.numel() for p in model.parameters()) == card["params"]
    ev = cfg.eval
    es = load_eval_set(_dataset(cfg, "test"), ev.n_eval, cfg.data.image_size, ev.mask_kind, ev.seed)
    res, _ = evaluate_model(model, diffusion, es, "cpu", steps=ev.ddim_steps, spacing=ev.spacing, lpips=False, fid=False,
                            batch_size=ev.batch_size)
    assert res["psnr"] == pytest.approx(card["metrics"]["psnr"], abs=1e-4)
    assert set(card["classical_floor"]) >= {"mean", "biharmonic", "telea"}  # shown beside the floor


def test_a_changed_weights_file_is_refused(tmp_path):
    for f in PT.WEIGHTS_DIR.glob("lmi-dev-tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    pt = tmp_path / "lmi-dev-tiny.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(PT.CorruptCheckpoint, match="sha256"):
        PT.load_pretrained("lmi-dev-tiny", root=tmp_path)
    with pytest.raises(KeyError, match="available: lmi-dev-tiny"):
        PT.load_pretrained("nope", root=tmp_path)


def _png(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return img


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lambda_blocks.inpaint", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_inpaint_keeps_known_pixels_exactly_at_any_size(tmp_path):
    from lambda_blocks.inpaint import inpaint

    model, diffusion, cfg, _ = lb.load_pretrained()
    img = _png(tmp_path / "a.png", 19, 23)
    hole = np.zeros((19, 23), bool)
    hole[4:12, 5:15] = True
    out = inpaint(img, hole, model, diffusion, steps=3, spacing=cfg.eval.spacing)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[~hole] == img[~hole]).all() and (out[hole] != img[hole]).any()
    # the CLI, with a mask file: the same contract, written as a PNG
    Image.fromarray((hole * 255).astype(np.uint8)).save(tmp_path / "m.png")
    r = _cli(tmp_path / "a.png", tmp_path / "m.png", "-o", tmp_path / "o.png", "--steps", 2)
    assert r.returncode == 0, r.stderr
    res = np.asarray(Image.open(tmp_path / "o.png"))
    assert res.shape == img.shape and (res[~hole] == img[~hole]).all()


@pytest.mark.parametrize("case", ["missing", "not_an_image", "mask_size", "empty_hole", "box_outside", "box_garbled",
                                  "neither", "unknown_model"])
def test_bad_inputs_are_one_clear_line(tmp_path, case):
    _png(tmp_path / "a.png", 16, 16)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((8, 16), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("not a png")
    out = tmp_path / "o.png"
    args, want = {
        "missing": ((tmp_path / "nope.png", "--box", "1,1,4,4"), "does not exist"),
        "not_an_image": ((tmp_path / "text.png", "--box", "1,1,4,4"), "not an image"),
        "mask_size": ((tmp_path / "a.png", tmp_path / "small.png"), "must match"),
        "empty_hole": ((tmp_path / "a.png", tmp_path / "empty.png"), "no hole"),
        "box_outside": ((tmp_path / "a.png", "--box", "10,10,8,8"), "inside the 16x16 image"),
        "box_garbled": ((tmp_path / "a.png", "--box", "1,2,x"), "four integers"),
        "neither": ((tmp_path / "a.png",), "one of them"),
        "unknown_model": ((tmp_path / "a.png", "--box", "1,1,4,4", "--model", "nope"), "no shipped model"),
    }[case]
    r = _cli(*args, "-o", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert not out.exists()  # never a half-written result


def test_versus_floor_says_per_metric_and_fill_whether_the_model_is_better():
    floor = {"biharmonic": {"lpips": 0.018, "fid": 106.0, "kid": -0.004, "psnr": 28.5},
             "telea": {"lpips": 0.017, "fid": 120.7, "kid": 0.001, "psnr": 27.0}}
    good = PT.versus_floor({"lpips": 0.015, "fid": 101.0, "kid": -0.008, "psnr": 25.0, "n_eval_images": 32}, floor)
    assert good["target"] is True and good["psnr"] == {"biharmonic": False, "telea": False}  # PSNR: higher is better
    close = PT.versus_floor({"lpips": 0.015, "fid": 111.0, "kid": -0.006}, floor)
    assert close["target"] is False and close["fid"] == {"biharmonic": False, "telea": True}
    assert PT.versus_floor({"lpips": 0.015}, floor)["target"] is None  # FID / KID not measured: no verdict
    card = json.loads((PT.WEIGHTS_DIR / "lmi-dev-tiny.json").read_text())
    shipped = PT.versus_floor(card["metrics"], card["classical_floor"])
    assert card["versus_floor"] == json.loads(json.dumps(shipped))  # the card's verdict is the one its numbers give
