"""Our Local-λ against timm's ``LambdaLayer`` (the peer implementation), side by side in one run.

    python benchmarks/bench_vs_timm.py [--sizes 16 32 64 128] [--batches 1 4 16] [--rounds 3]

Both at width 64, 4 heads / queries, k = 16, u = 1, r = 15, eval mode (timm's BatchNorm on queries
and values: ``norm="batch"`` on ours, so both normalise alike), fp32, one thread. For every
(size, batch, pass) the two are timed round-robin (``interleaved_latency``); the ratio
timm / ours > 1 means ours is faster. Ours runs its default ``lambda_conv="auto"`` (the
formulation picked per pass and size). Writes ``results/vs_timm-<tag>.csv`` (tidy, atomic).
"""
from __future__ import annotations

import argparse
import os
import sys

from _common import ROOT, header, tag, write_results  # noqa: F401  (sets sys.path)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lambda_blocks import create_attention  # noqa: E402
from lambda_blocks.profiling import interleaved_latency, make_step  # noqa: E402


def build_pair(dim: int = 64, heads: int = 4, dim_k: int = 16, r: int = 15):
    from timm.layers.lambda_layer import LambdaLayer

    torch.manual_seed(0)
    ours = create_attention("local_lambda", dim, heads=heads, dim_k=dim_k, r=r, norm="batch").eval()
    theirs = LambdaLayer(dim, dim_out=dim, num_heads=heads, dim_head=dim_k, r=r).eval()
    return ours, theirs


def markdown(df: pd.DataFrame) -> str:
    """The README table: timm / ours per (size, batch) and pass, and the range of each pass."""
    piv = df.pivot_table(index=["size", "batch"], columns="pass", values="timm_over_ours")
    lines = ["| map | batch | timm / ours, forward (> 1: ours faster) | timm / ours, forward+backward |", "|---|---|---|---|"]
    lines += [f"| {s}x{s} | {b} | {row['fwd']:.2f} | {row['fwd_bwd']:.2f} |" for (s, b), row in piv.iterrows()]
    rng = {p: (df.loc[df["pass"] == p, "timm_over_ours"].min(), df.loc[df["pass"] == p, "timm_over_ours"].max())
           for p in ("fwd", "fwd_bwd")}
    lines.append(f"| all | all | {rng['fwd'][0]:.2f}–{rng['fwd'][1]:.2f} | {rng['fwd_bwd'][0]:.2f}–{rng['fwd_bwd'][1]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    header("Local-λ (ours) vs timm LambdaLayer: width 64, 4 heads, k 16, r 15, eval, fp32")
    ours, theirs = build_pair()
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            for pass_ in ("fwd", "fwd_bwd"):
                x = torch.randn(batch, 64, size, size, requires_grad=pass_ == "fwd_bwd")
                tm = interleaved_latency({"ours": make_step(ours, (x,), pass_), "timm": make_step(theirs, (x,), pass_)},
                                         rounds=args.rounds, min_run_time=args.min_run_time)
                ratio = tm["timm"].median_ms / tm["ours"].median_ms
                print(f"{size:4d}px b{batch:<3d}{pass_:8s} ours {tm['ours'].median_ms:9.2f} ms  timm {tm['timm'].median_ms:9.2f} ms"
                      f"  timm/ours {ratio:5.2f}", flush=True)
                rows.append(dict(size=size, batch=batch, **{"pass": pass_}, ours_ms=tm["ours"].median_ms,
                                 timm_ms=tm["timm"].median_ms, timm_over_ours=ratio, threads=tm["ours"].threads,
                                 torch_version=torch.__version__))
    df = pd.DataFrame(rows)
    out = args.out or os.path.join(ROOT, "results", f"vs_timm-{tag()}.csv")
    table = markdown(df)
    print(table)
    write_results(out, df, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
