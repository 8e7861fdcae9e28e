"""Checkpoints that ship with the package: ``load_pretrained(name)`` and their export from a run.

A shipped model is two files in ``lambda_blocks/weights/``: ``NAME.pt`` (the EMA weights of a
finished run, tensors only, read with ``weights_only=True``) and ``NAME.json`` (the run's resolved
config and hash, its final metrics beside the classical floor of the same test problems, the
source run, torch / package versions and the sha256 of the weights file, checked at load time so a
truncated or altered file is one clear error).

    python -m lambda_blocks.pretrained list
    python -m lambda_blocks.pretrained export runs/dev/lmi-dev-tiny-s0-<hash> lmi-dev-tiny [--floor results/dev/runs.csv]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import records

__all__ = ["WEIGHTS_DIR", "CorruptCheckpoint", "available", "load_pretrained", "export", "main"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_METRICS = ("lpips", "lpips_hole", "psnr", "psnr_hole", "ssim", "fid", "kid", "n_eval_images")
# the study's target (issue "Models that inpaint"): better than these fills on these metrics
TARGET_FLOORS, TARGET_METRICS = ("biharmonic", "telea"), ("fid", "kid", "lpips")
_LOWER_IS_BETTER = {"lpips", "lpips_hole", "fid", "kid"}


def versus_floor(metrics: dict, floor: dict) -> dict:
    """{metric: {fill: True when the model is better}} for every metric both have, and ``target``:
    whether it beats biharmonic and Telea on FID, KID and LPIPS (None when one of those is missing)."""
    out: dict = {}
    for m, val in metrics.items():
        if m == "n_eval_images" or val is None or val != val:
            continue
        row = {name: (val < f[m]) if m in _LOWER_IS_BETTER else (val > f[m])
               for name, f in floor.items() if m in f and f[m] == f[m]}
        if row:
            out[m] = {k: bool(v) for k, v in sorted(row.items())}
    need = [(m, f) for m in TARGET_METRICS for f in TARGET_FLOORS]
    out["target"] = all(out[m][f] for m, f in need) if all(f in out.get(m, {}) for m, f in need) else None
    return out


class CorruptCheckpoint(ValueError):
    """A shipped weights file does not match its recorded sha256, or cannot be read."""


def available(root: Path | str = WEIGHTS_DIR) -> list[str]:
    """Names of the shipped models (a ``.json`` with its ``.pt``)."""
    root = Path(root)
    return sorted(p.stem for p in root.glob("*.json") if (root / f"{p.stem}.pt").exists())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_pretrained(name: str = "lmi-dev-tiny", device: str | torch.device = "cpu", root: Path | str = WEIGHTS_DIR):
    """(model, diffusion, cfg, card) of a shipped model: the U-Net in eval mode and frozen, the
    diffusion it was trained with, its ``ExpCfg`` and the card (``NAME.json``).

    Raises:
        KeyError: an unknown name (the message lists the shipped ones).
        CorruptCheckpoint: the weights file is not the one the card records, or does not load.
    """
    from .config import ExpCfg
    from .diffusion import Diffusion
    from .unet import InpaintUNet

    root = Path(root)
    card_path, pt = root / f"{name}.json", root / f"{name}.pt"
    if not card_path.exists() or not pt.exists():
        raise KeyError(f"no shipped model {name!r}; available: {', '.join(available(root)) or 'none'}")
    card = json.loads(card_path.read_text())
    if _sha256(pt) != card.get("weights_sha256"):
        raise CorruptCheckpoint(f"{pt} does not match the sha256 in {card_path.name}: the file is truncated or altered")
    try:
        state = torch.load(pt, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the same error to a user)
        raise CorruptCheckpoint(f"{pt} cannot be read as a weights file ({type(exc).__name__})") from None
    cfg = ExpCfg.from_dict(card["config"])
    model = InpaintUNet(cfg.unet_config())
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False), Diffusion.from_cfg(cfg.diffusion), cfg, card


def export(run_dir: str | Path, name: str, root: Path | str = WEIGHTS_DIR, floor_csv: str | Path | None = None) -> Path:
    """Write ``NAME.pt`` (the EMA weights of a finished run) and ``NAME.json`` (its card) atomically."""
    paths = records.RunPaths(run_dir)
    summary = records.read_json(paths.summary)
    if not summary or summary.get("status") != "done":
        raise ValueError(f"{paths.dir} is not a finished run (no summary.json with status done)")
    config = records.read_json(paths.config)
    ck = records.load_checkpoint(paths.ckpt)
    if ck.get("config_hash") != summary.get("config_hash"):
        raise ValueError(f"{paths.ckpt} belongs to config {ck.get('config_hash')}, not {summary.get('config_hash')}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.float().contiguous() for k, v in ck["ema"].items()}, buf)
    records.atomic_write_bytes(root / f"{name}.pt", buf.getvalue())
    floor = {}
    if floor_csv is not None and Path(floor_csv).exists():
        import pandas as pd

        runs = pd.read_csv(floor_csv)
        fl = runs[(runs["kind"] == "floor") & (runs["image_size"] == summary.get("image_size"))] if "kind" in runs else runs[:0]
        floor = {r["arm"]: {m: r[m] for m in _METRICS if m in r and r[m] == r[m]} for _, r in fl.iterrows()}
    card = {
        "name": name, "source_run": paths.dir.name, "config_hash": summary["config_hash"], "config": config,
        "metrics": {m: summary.get(m) for m in _METRICS}, "steps": summary.get("steps"),
        "params": summary.get("params"), "macs": summary.get("macs"), "classical_floor": floor,
        "versus_floor": versus_floor({m: summary.get(m) for m in _METRICS}, floor),
        "versions": ck.get("versions"), "weights_sha256": _sha256(root / f"{name}.pt"),
        "note": f"EMA weights of a run of the {summary.get('preset', config.get('preset', '?'))} recipe, "
                f"{summary.get('steps')} training steps, on {summary.get('image_size')}x{summary.get('image_size')} "
                "crops of the embedded data; compare its metrics with classical_floor (the same test problems) "
                "before trusting a fill.",
    }
    records.write_json(root / f"{name}.json", card)
    return root / f"{name}.pt"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.pretrained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the shipped models and their metrics beside the floor")
    ex = sub.add_parser("export", help="ship the EMA weights of a finished run")
    ex.add_argument("run_dir")
    ex.add_argument("name")
    ex.add_argument("--floor", default=None, help="runs.csv holding the classical floor of the same problems")
    args = ap.parse_args(argv)
    if args.cmd == "export":
        try:
            print(export(args.run_dir, args.name, floor_csv=args.floor))
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    for name in available():
        card = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
        m = card["metrics"]
        floor = "; ".join(f"{k} LPIPS {v.get('lpips', float('nan')):.3f}" for k, v in card.get("classical_floor", {}).items())
        verdict = versus_floor(m, card.get("classical_floor", {}))["target"]
        beats = {True: "beats", False: "does not beat", None: "not compared with"}[verdict]
        print(f"{name}: {card['source_run']}, {card['params']:,} params, LPIPS {m['lpips']:.3f}, FID {m['fid']:.1f}"
              + (f" (floor: {floor})" if floor else "")
              + f"; {beats} biharmonic and Telea on FID, KID and LPIPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
