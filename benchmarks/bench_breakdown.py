"""Where a U-Net arm's time goes: forward self time per module kind, and self time per op family
for the forward and the training step, in fp32 and bf16 autocast.

    python benchmarks/bench_breakdown.py                                  # baseline and moebius, 32 px
    python benchmarks/bench_breakdown.py --arms moebius --sizes 64 --dtypes fp32 bf16 --batch 16

The same calls as ``bench_unet.py`` (``make_calls``: the forward at batch 1, or at ``--fwd-batch``,
and the run's own training step at ``--batch``), measured by ``lambda_blocks.profiling.breakdown``.
Writes ``results/unet_breakdown-<tag>.csv`` (tidy: arm, side, pass, dtype, view, name, self_ms,
share) and a Markdown summary beside it: per arm and pass, the largest rows in fp32 and the same
rows in bf16 with their bf16 / fp32 time, the question being which parts a dtype change slows.
"""
from __future__ import annotations

import argparse
import os
import sys

from _common import ROOT, header, isa, tag, write_results  # noqa: F401  (sets sys.path)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import bench_unet as BU  # noqa: E402
from lambda_blocks import profiling as P  # noqa: E402
from lambda_blocks.profiling.breakdown import module_breakdown, op_breakdown  # noqa: E402
from lambda_blocks.runtime import select_device  # noqa: E402
from lambda_blocks.unet import ARMS, SIZES  # noqa: E402


def measure(arms, size: str, sides, batch: int, fwd_batch: int, device: torch.device, dtypes, reps: int,
            fmt: str = "contiguous") -> pd.DataFrame:
    rows = []
    for side in sides:
        for arm in arms:
            for dtype in dtypes:
                fwd1, step, net = BU.make_calls(arm, size, side, batch, device, dtype, fmt=fmt)
                fwd = fwd1
                if fwd_batch != 1:
                    x, t = P.unet_inputs(net, side, side, fwd_batch, device=device)

                    def fwd(net=net, x=x, t=t, dtype=dtype):
                        with torch.no_grad(), BU.autocast(device, dtype):
                            return net(x, t)
                base = dict(arm=arm, size=size, side=side, dtype=dtype, memory_format=fmt, device=device.type,
                            hardware=P.hardware_name(device), isa=isa(device), torch_version=torch.__version__,
                            threads=torch.get_num_threads())
                net.eval()
                for r in module_breakdown(net, fwd, reps=reps):
                    rows.append(dict(base, **{"pass": "fwd"}, batch=fwd_batch, view="module", **r))
                for r in op_breakdown(fwd, reps=reps):
                    rows.append(dict(base, **{"pass": "fwd"}, batch=fwd_batch, view="op_family", calls=None, **r))
                for r in op_breakdown(step, reps=max(1, reps // 2)):
                    rows.append(dict(base, **{"pass": "train_step"}, batch=batch, view="op_family", calls=None, **r))
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, top: int = 6) -> str:
    """Per (side, arm, pass, view): the ``top`` largest fp32 rows, with bf16's time and ratio beside."""
    lines = ["| side | arm | pass | view | part | fp32 ms | fp32 share | bf16 ms | bf16 / fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for (side, arm, pas, view), g in df.groupby(["side", "arm", "pass", "view"], sort=True):
        f32 = g[g["dtype"] == "fp32"].set_index("name")
        b16 = g[g["dtype"] == "bf16"].set_index("name")
        names = [n for n in f32.index if not n.startswith("(")][:top] + ["(total)"]
        for n in names:
            if n in f32.index:
                a, sh = float(f32.loc[n, "self_ms"]), float(f32.loc[n, "share"])
                b = float(b16.loc[n, "self_ms"]) if n in b16.index else float("nan")
            else:  # the op view has no total row: its families add up to it
                a, sh = float(f32["self_ms"].sum()), 1.0
                b = float(b16["self_ms"].sum()) if len(b16) else float("nan")
            ratio = b / a if a > 0 and b == b else float("nan")
            lines.append(f"| {side} | {arm} | {pas} | {view} | {n} | {a:.2f} | {100 * sh:.0f}% | "
                         + (f"{b:.2f} | {ratio:.2f} |" if b == b else "- | - |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["baseline", "moebius"], choices=list(ARMS))
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--sizes", dest="sides", nargs="+", type=int, default=[32])
    ap.add_argument("--batch", type=int, default=16, help="training-step batch")
    ap.add_argument("--fwd-batch", type=int, default=1, help="forward batch")
    ap.add_argument("--dtypes", nargs="+", default=list(BU.DTYPES), choices=BU.DTYPES)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--format", default="contiguous", choices=BU.FORMATS)
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="CSV (default results/unet_breakdown-<tag>.csv)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.fwd_batch < 1 or args.reps < 1 or any(s < 1 for s in args.sides):
        ap.error("--batch, --fwd-batch, --reps and --sizes must be >= 1")
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    header("Where the time goes", str(device))
    df = measure(args.arms, args.size, args.sides, args.batch, args.fwd_batch, device, args.dtypes, args.reps, args.format)
    table = summary(df)
    print(table)
    meta = (f"`python benchmarks/bench_breakdown.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace("  ", " ")
            + f" on {P.hardware_name(device)}{f' ({isa(device)})' if isa(device) else ''}, torch {torch.__version__}, "
            f"{args.threads} thread(s), size `{args.size}`, forward batch {args.fwd_batch}, training-step batch {args.batch}.")
    out = args.out or os.path.join(ROOT, "results", f"unet_breakdown-{tag(device.type)}.csv")
    write_results(out, df, table + "\n" + meta + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
