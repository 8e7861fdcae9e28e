"""Latent-space distillation of a compact student from a larger teacher: ``python -m lambda_blocks.latent.distill``.

    python -m lambda_blocks.latent.distill --preset smoke --out runs/smoke            # lmi student, KD, adaptive
    python -m lambda_blocks.latent.distill --preset dev --arm moebius --weighting fixed --out runs/dev
    python -m lambda_blocks.latent.distill --preset dev --no-kd --out runs/dev         # the same student without KD
    torchrun --standalone --nproc_per_node 2 -m lambda_blocks.latent.distill ...       # data parallel

A distillation run is a training run (``lambda_blocks.train.run``: same run folder, records,
resume, DDP, evaluation) whose config has ``latent.space="latent"`` and ``kd.enabled=True``; the
presets below are overlays on ``config.PRESETS``. What happens (MOEBIUS_SPEC section 8):

1. stage one, the autoencoder (``lambda_blocks.latent.autoencoder``), is trained on the training split
   when missing, as its own run (``{out}/ae-...``); training images become its latents (cached);
2. stage two, the teacher, an ordinary run of ``kd.teacher_arm`` at ``kd.teacher_size`` (vanilla
   attention, dense convs, trained longer), is trained into ``{out}`` when missing, as its own run;
   ``train.stages(cfg)`` lists both, ``train.run_stages`` trains them (``run`` here does it first);
3. the student run only loads them (the teacher frozen, EMA weights); it is trained from scratch
   on task + output-KD + feature-KD + perceptual losses, weighted by the gradient-norm ratios of
   the paper (``kd.weighting="adaptive"``) or by fixed weights; every step appends ``{"kind": "kd", loss_*, w_*, gnorm_*}`` to ``metrics.jsonl``.

Both the teacher and the no-KD student are ordinary rows of ``runs.csv`` (``space=latent``), so
``ablations collect`` puts teacher, student without KD and student with KD side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import records
from ..config import ExpCfg, config_hash, parse_overrides, parse_sets, resolve
from ..train import run_pipeline as run  # stages first (autoencoder, teacher), then the student: a training run

__all__ = ["DISTILL_PRESETS", "resolve_distill", "planned_run_dir", "run", "main"]

# Overlays on config.PRESETS. Timings are per run on one thread of the 2-core CPU machine.
DISTILL_PRESETS: dict[str, dict[str, Any]] = {
    # 32 px images -> 8x8x4 latents; a small vanilla teacher trained for twice the student's steps.
    "smoke": {
        "latent.space": "latent",
        "kd.teacher_size": "small", "kd.teacher_overrides": {"train.steps": 80},
    },
    # 64 px images -> 32x32x4 latents of the `dev-f2` autoencoder (config.DEFAULT_AE_PRESET; the
    # paper's 9-channel input), so a student step costs about what a 32 px pixel-space step does;
    # 300 student steps; a base vanilla teacher (5.4M params) trained 3x longer than the student.
    # The step counts predate the converging recipe and the f=2 autoencoder: not yet re-measured.
    "dev": {
        "latent.space": "latent", "data.image_size": 64, "train.steps": 300,
        "kd.teacher_size": "base", "kd.teacher_overrides": {"train.steps": 900, "train.ckpt_every": 300},
    },
    # one GPU: 128 px -> 32x32x4 latents, a large teacher trained for the full schedule first.
    "paper": {
        "latent.space": "latent", "data.image_size": 128,
        "kd.teacher_size": "large", "kd.teacher_overrides": {"train.steps": 200_000},
    },
}


def resolve_distill(preset: str = "smoke", arm: str = "lmi", size: str | None = None, seed: int = 0,
                    kd: bool = True, weighting: str = "adaptive",
                    overrides: Mapping[str, Any] | str | None = None) -> ExpCfg:
    """The validated config of one latent-space run: ``DISTILL_PRESETS[preset]`` over ``PRESETS[preset]``,
    then ``kd.enabled=kd``, ``kd.weighting=weighting`` and ``overrides`` (strict, as ``config.resolve``)."""
    if preset not in DISTILL_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(DISTILL_PRESETS)}")
    if not isinstance(kd, bool):
        raise TypeError(f"kd must be a bool, got {type(kd).__name__} {kd!r}")
    overlay = dict(DISTILL_PRESETS[preset])
    if not kd:  # the KD settings do not touch a student trained without KD (nor its run folder name)
        overlay = {k: v for k, v in overlay.items() if not k.startswith("kd.")}
        merged = {**overlay, **parse_overrides(overrides)}
    else:
        merged = {**overlay, "kd.enabled": True, "kd.weighting": weighting, **parse_overrides(overrides)}
    return resolve(preset, arm=arm, size=size, seed=seed, overrides=merged)


def planned_run_dir(preset: str = "smoke", out: str | Path = "runs", arm: str = "lmi", size: str | None = None,
                    seed: int = 0, kd: bool = True, weighting: str = "adaptive",
                    overrides: Mapping[str, Any] | str | None = None) -> Path:
    """The run folder ``run`` would use (validates the config; does no work)."""
    return Path(out) / resolve_distill(preset, arm, size, seed, kd, weighting, overrides).run_name


def main(argv: Sequence[str] | None = None) -> int:
    from ..unet import ARMS, SIZES
    from .kd import WEIGHTINGS

    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.latent.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke", choices=list(DISTILL_PRESETS))
    ap.add_argument("--attn", "--arm", dest="arm", default="lmi", choices=list(ARMS), help="student arm (unet.ARMS)")
    ap.add_argument("--size", default=None, choices=list(SIZES), help="student size (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weighting", default="adaptive", choices=list(WEIGHTINGS))
    ap.add_argument("--no-kd", action="store_true", help="train the same student in latent space without KD")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set kd.perceptual=decoded_lpips --set kd.teacher_size=small")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and run folders, do nothing")
    args = ap.parse_args(argv)
    try:
        overrides = parse_sets(args.sets)
        cfg = resolve_distill(args.preset, args.arm, args.size, args.seed, not args.no_kd, args.weighting, overrides)
    except (KeyError, TypeError, ValueError) as exc:
        ap.error(str(exc.args[0]) if exc.args else str(exc))
    if args.dry_run:
        print(json.dumps({**cfg.to_dict(), "config_hash": config_hash(cfg)}, indent=2, sort_keys=True))
        print(f"run folder: {Path(args.out) / cfg.run_name}")
        if cfg.kd.enabled:
            print(f"teacher run folder: {Path(args.out) / cfg.teacher_config().run_name}")
        return 0
    t0 = time.time()
    run_dir = run(cfg, args.out, progress=False if args.no_progress else None)
    if int(os.environ.get("RANK", "0")) == 0:
        s = records.read_json(records.RunPaths(run_dir).summary) or {}
        keys = ("lpips", "kid", "psnr", "ssim", "params", "macs", "teacher_run", "teacher_params", "ae_psnr",
                "train_time_s")
        print(json.dumps({k: s.get(k) for k in keys}))
        print(f"{run_dir}  ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
