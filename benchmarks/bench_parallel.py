"""Two cores, one study: W single-thread training jobs side by side, or one run on W data-parallel ranks?

    python benchmarks/bench_parallel.py [--arm lmi] [--preset dev] [--workers 2] [--steps 150] [--rounds 2]
        [--modes jobs ddp accum] [--out results/train_parallel-<tag>.csv]

A study on a W-core machine can spend its cores two ways: W independent runs at one thread each (what
``python -m ablations study --jobs W`` does) or one run at a time on W ranks (``torchrun
--nproc_per_node W -m lambda_blocks.train ...``: each rank takes 1/W of every global batch, one
all-reduce a step, the same update as one process up to float summation order). This measures the
machine's total training throughput (images / s, summed over the jobs) both ways, in alternating
rounds so that both see the same machine:

* ``jobs``: W processes of ``lambda_blocks.train.run`` (seeds 0..W-1), one thread each, at once;
* ``ddp``: one ``torchrun`` run of W ranks, one thread each;
* ``accum``: W jobs again with ``train.grad_accum = W``: the same per-process micro-batch as a ddp
  rank, so it tells whether a difference comes from the smaller working set or from the ranks.

Every process is the training loop itself (``run(..., stop_after=steps)``, periodic evaluation off),
and its rate is the median of the loop's own windowed ``images_per_s`` (metrics.jsonl) after the
first ``--warmup`` steps, so start-up, data loading and the checkpoint are not counted. Writes the
tidy rows (one per process per round) and a Markdown table of medians with the ratio to ``jobs``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (repo on sys.path, allocator tuned like a run)

MODES = ("jobs", "ddp", "accum")


def window_rate(metrics: Path, warmup: int) -> float:
    """Median of the training loop's windowed images/s over the logged windows past ``warmup`` steps."""
    rates = [r["images_per_s"] for r in map(json.loads, Path(metrics).read_text().splitlines())
             if r.get("kind") == "train" and r.get("step", 0) > warmup and r.get("images_per_s")]
    if not rates:
        raise ValueError(f"{metrics}: no training window past step {warmup} (raise --steps)")
    return float(statistics.median(rates))


def worker(args) -> int:
    """One training process (under torchrun: one rank): ``run`` stopped after ``--steps`` steps (of a
    run one step longer, so it never reaches its final evaluation), no periodic evaluation."""
    from lambda_blocks.config import resolve
    from lambda_blocks.train import run

    over = {"train.steps": args.steps + 1, "train.eval_every": 0, "train.ckpt_every": 0, "train.log_every": 10, "train.threads": 1,
            "train.grad_accum": args.accum}
    run(resolve(args.preset, arm=args.arm, seed=args.seed, overrides=over), args.out, progress=False,
        stop_after=args.steps)
    return 0


def launch(mode: str, arm: str, preset: str, workers: int, steps: int, out: Path) -> list[Path]:
    """Start one mode's processes, wait for all, return the metrics files to read."""
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--arm", arm, "--preset", preset,
          "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if mode == "ddp":
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
                 *me[1:], "--seed", "0", "--out", str(out / "ddp")]]
    else:
        accum = workers if mode == "accum" else 1
        cmds = [me + ["--seed", str(i), "--accum", str(accum), "--out", str(out / f"{mode}{i}")] for i in range(workers)]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{mode} process failed ({p.returncode}): {err[-2000:]}")
    return sorted(out.glob(f"{mode}*/*/metrics.jsonl"))


def summary_table(df) -> str:
    """Markdown: median total images/s per mode over rounds, and each mode's ratio to ``jobs``."""
    tot = df.groupby(["arm", "mode", "round"])["images_per_s"].sum().groupby(["arm", "mode"]).median()
    lines = ["| arm | mode | processes x ranks | total images/s | per core | vs jobs |", "|---|---|---|---|---|---|"]
    for arm in df["arm"].unique():
        ref = tot.get((arm, "jobs"))
        for mode in [m for m in MODES if (arm, m) in tot.index]:
            g = df[(df["arm"] == arm) & (df["mode"] == mode)]
            w = int(g["workers"].iloc[0])
            shape = f"1 x {w}" if mode == "ddp" else f"{w} x 1" + (f" (accum {w})" if mode == "accum" else "")
            vs = f"{tot[(arm, mode)] / ref:.2f}" if ref else "–"
            lines.append(f"| {arm} | {mode} | {shape} | {tot[(arm, mode)]:.1f} | {tot[(arm, mode)] / w:.1f} | {vs} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", default="lmi")
    ap.add_argument("--preset", default="dev")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=30, help="steps left out of the rate")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--accum", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.steps <= args.warmup + 10:
        ap.error(f"--steps {args.steps} leaves no logged window past --warmup {args.warmup}")
    import pandas as pd
    import torch

    from _common import header, tag, write_results
    from lambda_blocks.profiling import hardware_name

    torch.set_num_threads(1)
    header(f"parallel training: {args.arm} at {args.preset}, {args.workers} workers")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for mode in args.modes:  # alternating, so both ways see the same machine
                out = Path(tmp) / f"r{rnd}"
                for i, m in enumerate(launch(mode, args.arm, args.preset, args.workers, args.steps, out)):
                    rows.append(dict(arm=args.arm, preset=args.preset, mode=mode, round=rnd, process=i,
                                     workers=args.workers, steps=args.steps, warmup=args.warmup,
                                     images_per_s=window_rate(m, args.warmup)))
                tot = sum(r["images_per_s"] for r in rows if r["round"] == rnd and r["mode"] == mode)
                print(f"round {rnd} {mode:6s} total {tot:7.1f} images/s", flush=True)
    df = pd.DataFrame(rows).assign(hardware=hardware_name("cpu"), isa=_common.isa("cpu"),
                                   torch_version=torch.__version__, cpus=os.cpu_count())
    table = summary_table(df)
    print(table)
    cmd = " ".join(["python benchmarks/bench_parallel.py", *(argv if argv is not None else sys.argv[1:])])
    caption = (f"`{cmd}` on {hardware_name('cpu')} ({_common.isa('cpu')}), torch {torch.__version__}, "
               f"{os.cpu_count()} cores: the training loop's own windowed images/s past step {args.warmup}, "
               f"summed over the processes, median over {args.rounds} alternating rounds.")
    write_results(args.out or os.path.join(_common.ROOT, "results", f"train_parallel-{tag()}.csv"), df,
                  table + "\n" + caption + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
