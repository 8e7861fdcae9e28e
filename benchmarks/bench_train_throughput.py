"""Training throughput (images/s) of the U-Net arms: the smoke and dev presets, and image-size scaling.

    python benchmarks/bench_train_throughput.py [--arms vanilla linear local_lambda lmi]
        [--presets smoke dev] [--sizes 32 64 128] [--scale-batch 4] [--steps 4] [--threads 1]

Part 1 times one optimiser step of each preset with ``lambda_blocks.train.train_step`` itself (the
step a run takes: per-sample keyed noise, timesteps and masks, AdamW, warm-up, clipping, EMA) at the preset's batch,
image size, U-Net size and thread count, and prints images/s and the ratio to ``vanilla``.
Part 2 scales the image side 32 -> 64 -> 128 at a fixed batch and prints images/s and the slowdown
relative to 32 px, per arm. All numbers come from one process, measured side by side in
interleaved rounds (the median of rounds is reported), because this machine is shared: compare the
ratios, not absolute times across runs. Writes the tidy rows to results/train_throughput-<tag>.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from lambda_blocks.config import resolve  # noqa: E402
from lambda_blocks.diffusion import Diffusion  # noqa: E402
from lambda_blocks import train as T  # noqa: E402


class Stepper:
    """Training steps of a config, exactly as a run takes them: ``train.train_step`` (AdamW with its
    weight-decay groups, LR warm-up, grad accumulation and clipping, the EMA) on batches from
    ``train.make_batch`` (per-sample keyed masks, timesteps and noise), over 64 synthetic images."""

    def __init__(self, cfg, batch: int | None = None, image_size: int | None = None):
        over = {}
        if batch is not None:
            over["train.batch_size"] = batch
        if image_size is not None:
            over["data.image_size"] = image_size
        self.cfg = cfg = with_overrides(cfg, over) if over else cfg
        self.batch, self.size = cfg.train.batch_size, cfg.data.image_size
        self.model = T.init_model(cfg)
        self.state = T.new_state(cfg, self.model)
        self.diff = Diffusion.from_cfg(cfg.diffusion)
        g = torch.Generator().manual_seed(1)
        images = torch.rand(64, 3, self.size, self.size, generator=g) * 2 - 1
        self.data = T.TrainData(None, images, T._Batches(len(images), cfg.seed))

    def step(self) -> None:
        T.train_step(self.state, self.cfg, self.diff,
                     lambda s, lo, hi: T.make_batch(self.cfg, self.diff, self.data, s, lo, hi))


def with_overrides(cfg, over: dict):
    """``cfg`` resolved again with ``over`` on top: same preset, arm, size and seed, and every setting
    of ``cfg`` kept (an override it was made with, such as ``train.grad_accum``, is not reset to the
    preset's value)."""
    flat = {f"{sec}.{k}": v for sec in ("model", "diffusion", "data", "train", "eval", "latent", "kd")
            for k, v in dataclasses.asdict(getattr(cfg, sec)).items() if (sec, k) != ("model", "unet")}
    flat.update({f"unet.{k}": v for k, v in cfg.model.unet.items()})
    return resolve(cfg.preset, arm=cfg.arm, size=cfg.size, seed=cfg.seed, overrides={**flat, **over})


def measure(steppers: dict[str, Stepper], steps: int, rounds: int) -> dict[str, float]:
    """images/s per key: warm-up, then ``rounds`` interleaved rounds of ``steps`` steps; median."""
    for st in steppers.values():
        st.step()
    per: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(rounds):
        for k, st in steppers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                st.step()
            per[k].append(steps * st.batch / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in per.items()}


def micro_batch_part(arms, accums, steps: int, rounds: int, preset: str = "dev") -> list[dict]:
    """images/s of the ``preset`` step per arm with the batch split into each of ``accums`` micro-batches
    (``train.grad_accum``), all steppers interleaved in one measurement; ratio to the first value."""
    print(f"\n## micro-batches: the {preset} step with train.grad_accum = {accums} (same update), images/s")
    head = f"{'arm':<20}" + "".join(f"{f'accum {a}':>12}" for a in accums) + "".join(
        f"{f'x{a}/{accums[0]}':>10}" for a in accums[1:])
    print(head)
    print("-" * len(head))
    steppers = {(arm, a): Stepper(resolve(preset, arm=arm, overrides={"train.grad_accum": a}))
                for arm in arms for a in accums}
    ips = measure(steppers, steps, rounds)
    rows = []
    for arm in arms:
        ref = ips[(arm, accums[0])]
        print(f"{arm:<20}" + "".join(f"{ips[(arm, a)]:>12.1f}" for a in accums)
              + "".join(f"{ips[(arm, a)] / ref:>10.2f}" for a in accums[1:]), flush=True)
        for a in accums:
            st = steppers[(arm, a)]
            rows.append(dict(part="grad_accum", preset=preset, arm=arm, batch=st.batch, image_size=st.size,
                             params=st.model.num_params(), grad_accum=a, images_per_s=ips[(arm, a)],
                             s_per_step=st.batch / ips[(arm, a)], vs_first_accum=ips[(arm, a)] / ref))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["vanilla", "linear", "local_lambda", "lmi"])
    ap.add_argument("--presets", nargs="+", default=["smoke", "dev"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--scale-batch", type=int, default=4, help="batch of the image-size scaling part")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU presets use 1)")
    ap.add_argument("--grad-accum", nargs="+", type=int, default=[], metavar="N",
                    help="also time the dev step split into N micro-batches (train.grad_accum: the same update, "
                         "a smaller working set per forward/backward); the first value is the reference")
    ap.add_argument("--out", default=None, help="tidy CSV (default: results/train_throughput-<tag>.csv)")
    args = ap.parse_args(argv)
    rows = []
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# training throughput, torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"cpus={os.cpu_count()}, load average at start {load:.2f}")

    print("\n## presets: images/s of one training step at the preset's batch / image size / U-Net size")
    head = f"{'preset':<8}{'arm':<20}{'batch':>6}{'px':>5}{'params':>10}{'img/s':>9}{'s/step':>8}{'vs vanilla':>12}"
    print(head)
    print("-" * len(head))
    for preset in args.presets:
        steppers = {arm: Stepper(resolve(preset, arm=arm)) for arm in args.arms}
        ips = measure(steppers, args.steps, args.rounds)
        base = ips.get("vanilla")
        for arm, st in steppers.items():
            ratio = f"{ips[arm] / base:.2f}x" if base else "-"
            print(f"{preset:<8}{arm:<20}{st.batch:>6}{st.size:>5}{st.model.num_params():>10,}{ips[arm]:>9.1f}"
                  f"{st.batch / ips[arm]:>8.2f}{ratio:>12}")
            rows.append(dict(part="preset", preset=preset, arm=arm, batch=st.batch, image_size=st.size,
                             params=st.model.num_params(), images_per_s=ips[arm], s_per_step=st.batch / ips[arm],
                             vs_vanilla=ips[arm] / base if base else None))
        steps = resolve(preset).train.steps
        est = {arm: steps * steppers[arm].batch / ips[arm] for arm in args.arms}
        print(f"# {preset}: {steps} steps -> estimated training time "
              + ", ".join(f"{a} {t:.0f} s" for a, t in est.items()))

    print(f"\n## image-size scaling at batch {args.scale_batch} (tiny U-Net): images/s and slowdown vs 32 px")
    head = f"{'arm':<20}" + "".join(f"{f'{s}px img/s':>14}" for s in args.sizes) + "".join(
        f"{f'x{s}/{args.sizes[0]}':>10}" for s in args.sizes[1:])
    print(head)
    print("-" * len(head))
    for arm in args.arms:
        cfg = resolve("smoke", arm=arm)
        steppers = {s: Stepper(cfg, batch=args.scale_batch, image_size=s) for s in args.sizes}
        ips = measure(steppers, max(1, args.steps - 1), args.rounds)
        row = f"{arm:<20}" + "".join(f"{ips[s]:>14.2f}" for s in args.sizes)
        row += "".join(f"{ips[args.sizes[0]] / ips[s]:>10.1f}" for s in args.sizes[1:])
        print(row, flush=True)
        for s in args.sizes:
            rows.append(dict(part="image_size", preset="smoke", arm=arm, batch=args.scale_batch, image_size=s,
                             params=steppers[s].model.num_params(), images_per_s=ips[s], s_per_step=args.scale_batch / ips[s],
                             slowdown_vs_first_size=ips[args.sizes[0]] / ips[s]))
    if args.grad_accum:
        rows += micro_batch_part(args.arms, args.grad_accum, args.steps, args.rounds)
    import pandas as pd

    from benchmarks._common import tag, write_results

    df = pd.DataFrame(rows).assign(threads=torch.get_num_threads(), steps_per_round=args.steps, rounds=args.rounds,
                                   torch_version=torch.__version__)
    write_results(args.out or os.path.join(ROOT, "results", f"train_throughput-{tag()}.csv"), df)
    return 0


if __name__ == "__main__":
    sys.exit(main())
