"""The C allocator's share of a step: glibc malloc as shipped against ``runtime.tune_allocator``.

    python benchmarks/bench_allocator.py [--rounds 3] [--side 32] [--batch 16]

An allocator setting is process-wide and cannot be undone, so each measurement runs in a fresh
worker process (this script with ``--worker``), the tuned and untuned workers alternating round by
round (their order flipped every round) so both see the same machine load. A worker times a
depthwise 3x3 convolution of a (batch, 160, side, side) map (Mix-FFN's at level 0 of the tiny U-Net),
forward and forward+backward, and, for the ``baseline`` and ``moebius`` U-Nets, a no-grad forward of
the batch (a sampling step) and the run's own training step (``bench_unet.make_calls``), each the median of a few calls after warm-up. Printed: the median
over rounds of each, and untuned / tuned (> 1: the tuned allocator is faster). Writes
``results/allocator-<tag>.csv`` (tidy) and ``.md`` (the README table).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import ROOT, header, tag, write_results  # noqa: F401  (sets sys.path; tunes this process)

import pandas as pd  # noqa: E402

from lambda_blocks.runtime import ALLOCATOR_ENV_OFF  # noqa: E402

CASES = ("dwconv_fwd", "dwconv_fwd_bwd", "baseline_fwd", "moebius_fwd", "baseline_train_step", "moebius_train_step")


def _median_ms(fn, calls: int) -> float:
    """The median of at least ``calls`` timed calls after two warm-up calls (``profiling.latency``)."""
    from lambda_blocks.profiling import latency

    return latency(fn, min_run_time=0.0, min_reps=calls, warmup=2).median_ms


def worker(side: int, batch: int, calls: int) -> dict:
    """Time every case in this process (its allocator as the environment left it)."""
    import torch
    import torch.nn.functional as F

    from bench_unet import make_calls
    from lambda_blocks.runtime import allocator_state

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 160, side, side, generator=g, requires_grad=True)
    w = torch.randn(160, 1, 3, 3, generator=g, requires_grad=True)
    grad = torch.randn(batch, 160, side, side, generator=g)

    def dw_fwd():
        with torch.no_grad():
            return F.conv2d(x, w, padding=1, groups=160)

    def dw_fwd_bwd():
        F.conv2d(x, w, padding=1, groups=160).backward(grad)

    out = {"dwconv_fwd": _median_ms(dw_fwd, 3 * calls), "dwconv_fwd_bwd": _median_ms(dw_fwd_bwd, 3 * calls)}
    from lambda_blocks import profiling as P

    for arm in ("baseline", "moebius"):
        _, step, net = make_calls(arm, "tiny", side, batch, torch.device("cpu"), "fp32")
        xb, tb = P.unet_inputs(net, side, side, batch, seed=0)

        def fwd():  # a sampling step's forward: the whole batch, no grad
            with torch.no_grad():
                return net(xb, tb)

        out[f"{arm}_fwd"] = _median_ms(fwd, 2 * calls)
        out[f"{arm}_train_step"] = _median_ms(step, calls)
    return {"times_ms": out, "allocator": allocator_state()}


def run_worker(tuned: bool, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **{ALLOCATOR_ENV_OFF: "1" if tuned else "0"})
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--side", str(args.side), "--batch", str(args.batch),
           "--calls", str(args.calls)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"worker (tuned={tuned}) failed:\n{res.stderr[-2000:]}")
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    if rec["allocator"]["tuned"] != tuned:
        raise RuntimeError(f"worker asked for tuned={tuned} reports {rec['allocator']}")
    return rec


def markdown(df: pd.DataFrame, args) -> str:
    med = df.groupby(["case", "allocator"])["ms"].median().unstack()
    lines = ["| case | glibc default ms | tuned ms | default / tuned (> 1: tuned faster) |", "|---|---|---|---|"]
    for case in CASES:
        d, t = med.loc[case, "default"], med.loc[case, "tuned"]
        lines.append(f"| {case} | {d:.1f} | {t:.1f} | {d / t:.2f} |")
    lines += ["", f"`python benchmarks/bench_allocator.py --rounds {args.rounds} --side {args.side} --batch {args.batch}`: "
              f"one thread, a fresh process per measurement, default and tuned alternating; medians over "
              f"{args.rounds} rounds."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calls", type=int, default=3, help="timed training steps per worker (3x as many conv calls)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if min(args.rounds, args.side, args.batch, args.calls) < 1:
        ap.error("--rounds, --side, --batch and --calls must be >= 1")
    if args.worker:
        print(json.dumps(worker(args.side, args.batch, args.calls)))
        return 0
    header("allocator: glibc default vs runtime.tune_allocator")
    rows = []
    for r in range(args.rounds):
        for tuned in ((True, False) if r % 2 == 0 else (False, True)):
            rec = run_worker(tuned, args)
            for case, ms in rec["times_ms"].items():
                rows.append({"round": r, "allocator": "tuned" if tuned else "default", "case": case, "ms": ms,
                             "side": args.side, "batch": args.batch})
            print(f"round {r} {'tuned  ' if tuned else 'default'} " + " ".join(f"{k}={v:.1f}" for k, v in rec["times_ms"].items()),
                  flush=True)
    df = pd.DataFrame(rows)
    table = markdown(df, args)
    print(table)
    out = args.out or os.path.join(ROOT, "results", f"allocator-{tag('cpu')}.csv")
    write_results(out, df, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
