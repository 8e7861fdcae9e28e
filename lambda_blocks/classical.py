"""The classical floor: non-learned fills scored on exactly the test problems the models see.

    python -m lambda_blocks.classical --preset dev --method mean biharmonic telea ns --out runs/dev
        [--set data.image_size=64 ...]

A learned inpainting result means little unless it beats a ten-line method. Each method here fills
the holes of the evaluation set of a preset (``evaluate.load_eval_set``: the same images, the same
fixed masks) and is scored by the same code as a trained model (``evaluate.score_fills``), into an
ordinary run folder, so ``ablations collect`` lists it in ``runs.csv`` beside the learned arms:

* ``mean``: every hole pixel gets the mean colour of the image's known pixels;
* ``biharmonic``: ``skimage.restoration.inpaint_biharmonic`` (a smooth biharmonic interpolant);
* ``telea``: OpenCV's fast-marching method (Telea 2004), radius 3;
* ``ns``: OpenCV's Navier-Stokes method (Bertalmio et al. 2001), radius 3.

The run folder is ``{out}/floor-{method}-{preset}-{hash}``; the hash covers the method, the preset
and the resolved ``data`` and ``eval`` sections (only those can be overridden), so a floor is
recomputed for every image size / mask kind / evaluation set a table uses. Everything is
deterministic: no seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import records

__all__ = ["METHODS", "fill", "fill_batch", "floor_config", "floor_run_name", "run_floor", "main"]

METHODS = ("mean", "biharmonic", "telea", "ns")
INPAINT_RADIUS = 3


def _to_hwc01(x: torch.Tensor) -> np.ndarray:
    return ((x.detach().double().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def fill(method: str, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill the holes of one image.

    Args:
        method: one of ``METHODS``.
        image: (C, H, W) in [-1, 1]; hole pixels are ignored (only known pixels are read).
        mask: (1, H, W) or (H, W), 1 = hole.

    Returns:
        (C, H, W) float32 in [-1, 1], known pixels equal to the input's.
    """
    if method not in METHODS:
        raise ValueError(f"unknown classical fill {method!r}; choose one of {METHODS}")
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    m = mask.reshape(mask.shape[-2:]) if mask.ndim == 3 else mask
    if m.shape != image.shape[-2:]:
        raise ValueError(f"mask {tuple(m.shape)} and image {tuple(image.shape[-2:])} differ in size")
    hole = (m > 0.5).cpu().numpy()
    img = _to_hwc01(image)
    if not hole.any():
        out = img
    elif hole.all():
        out = np.full_like(img, 0.5)  # nothing known: mid-grey
    elif method == "mean":
        out = img.copy()
        out[hole] = img[~hole].mean(axis=0)
    elif method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        out = inpaint_biharmonic(img, hole, channel_axis=-1)
    else:
        import cv2

        u8 = np.round(img * 255).astype(np.uint8)
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        filled = cv2.inpaint(np.ascontiguousarray(u8), hole.astype(np.uint8) * 255, INPAINT_RADIUS, flag)
        out = filled.reshape(img.shape).astype(np.float64) / 255.0
    out = np.where(hole[..., None], np.clip(out, 0, 1), img)  # known pixels exactly as given
    return torch.from_numpy(out * 2 - 1).permute(2, 0, 1).float()


def fill_batch(method: str, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``fill`` over a batch (B, C, H, W) with masks (B, 1, H, W)."""
    if images.shape[0] != masks.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {masks.shape[0]} masks")
    masked = images * (1 - masks)
    return torch.stack([fill(method, masked[i], masks[i]) for i in range(images.shape[0])])


def floor_config(preset: str, method: str, overrides: Mapping[str, Any] | None = None) -> dict:
    """The resolved record of one floor run: method, preset, and the preset's ``data`` and ``eval``
    sections with ``overrides`` (only ``data.*`` / ``eval.*`` keys; checked by ``config.resolve``)."""
    from .config import canonical_key, resolve

    if method not in METHODS:
        raise ValueError(f"unknown classical fill {method!r}; choose one of {METHODS}")
    overrides = dict(overrides or {})
    for k in overrides:
        ck = canonical_key(k)
        if not ck.startswith(("data.", "eval.")):
            raise KeyError(f"a classical floor has no {ck!r}: only data.* and eval.* keys apply")
    cfg = resolve(preset, arm="linear", overrides=overrides)  # any arm: only data / eval are read
    return {"kind": "floor", "arm": method, "method": method, "preset": preset, "size": "classical", "seed": 0,
            "data": dataclasses.asdict(cfg.data), "eval": dataclasses.asdict(cfg.eval)}


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def floor_run_name(fcfg: dict) -> str:
    return f"floor-{fcfg['method']}-{fcfg['preset']}-{_hash(fcfg)}"


def run_floor(preset: str, method: str, out_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Fill and score the evaluation set of ``preset``; returns the (finished) run folder."""
    from .config import DataCfg, EvalCfg
    from .data import make_dataset
    from .evaluate import load_eval_set, score_fills, write_per_image

    fcfg = floor_config(preset, method, overrides)
    chash = _hash(fcfg)
    paths = records.RunPaths(Path(out_dir) / floor_run_name(fcfg))
    if records.is_done(paths.dir):
        return paths.dir
    records.claim_config(paths, fcfg, chash)
    d, ev = DataCfg(**fcfg["data"]), EvalCfg(**fcfg["eval"])
    test_ds = make_dataset(d.dataset, "test", size=d.image_size, n=d.n_test, seed=d.seed, root=d.root,
                           mask_root=d.mask_root)
    es = load_eval_set(test_ds, ev.n_eval, d.image_size, ev.mask_kind, ev.seed)
    t0 = time.time()
    fills = fill_batch(method, es.images, es.masks)
    t_fill = time.time() - t0
    res, per_image = score_fills(fills, es, lpips=ev.lpips, fid=ev.fid, cache_dir=paths.dir.parent / ".cache")
    write_per_image(paths.per_image, per_image)
    g = list(range(min(ev.n_grid, len(es))))
    if g:
        records.write_samples(paths, es.masked[g], fills[g], es.images[g], es.masks[g], [es.ids[i] for i in g])
    summary = {"status": "done", "kind": "floor", "config_hash": chash, "arm": method, "size": "classical",
               "preset": preset, "seed": 0, "image_size": d.image_size, "params": 0, "macs": 0, "steps": 0,
               "space": "pixel", "work_size": d.image_size, "kd": False, "fill_time_s": t_fill, **res}
    records.write_json(paths.summary, summary)
    return paths.dir


def main(argv: Sequence[str] | None = None) -> int:
    from .config import PRESETS, parse_sets

    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.classical", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke", choices=list(PRESETS))
    ap.add_argument("--method", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="data.* / eval.* override (repeatable)")
    args = ap.parse_args(argv)
    try:
        overrides = parse_sets(args.sets)
        for m in args.method:
            floor_config(args.preset, m, overrides)
    except (KeyError, TypeError, ValueError) as exc:
        ap.error(str(exc.args[0]) if exc.args else str(exc))
    for m in args.method:
        run_dir = run_floor(args.preset, m, args.out, overrides)
        s = records.read_json(run_dir / "summary.json") or {}
        print(json.dumps({k: s.get(k) for k in ("arm", "lpips", "lpips_hole", "psnr", "psnr_hole", "ssim", "fid",
                                                 "kid")}), run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
