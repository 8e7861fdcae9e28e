"""What the layout of the queries costs when the lambdas are applied (``layers.lambda_layers.apply_lambdas``).

    python benchmarks/bench_apply_layout.py                      # moebius and local_lambda, 32 and 64 px
    python benchmarks/bench_apply_layout.py --arms moebius_paper --sides 32 --rounds 9

The lambda layers normalise their queries with ``LayerNorm2d``, whose output is a channels-last view:
in the (B, |h|, k, N) query tensor the pixel axis N has stride k. ``apply_lambdas`` streams rows of N
pixels through k fused multiply-add passes, so it now hands the passes a copy with N contiguous.
This benchmark times the U-Net arms with the queries passed as they arrive (the old code, kept here
as ``as_arrived``) and made contiguous (the package's ``apply_lambdas``), interleaved in one process:
the batch-1 forward, a batch forward (evaluation and sampling) and the run's own training step
(``bench_unet.make_calls``). Times are this thread's CPU time (``time.thread_time``), so time the
OS gave to other jobs on a shared machine is not counted; the medians over rounds and their ratio
are printed and written to ``results/apply_layout-<tag>.csv``. The two give the same numbers (an
elementwise pass does not depend on the memory layout); the test suite checks the layout and the
values (``tests/test_profiling.py``), not the time.
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import ROOT, header, tag, write_results  # noqa: F401  (sets sys.path)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import bench_unet as BU  # noqa: E402
from lambda_blocks.layers import lambda_layers as LL  # noqa: E402
from lambda_blocks.layers.common import explicit_ops_enabled, exporting  # noqa: E402

NEW = LL.apply_lambdas


def as_arrived(q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``apply_lambdas`` before the contiguous copy: the queries in the layout they arrive in."""
    if explicit_ops_enabled() or exporting():
        return torch.einsum("bhkn,bkvn->bhvn", q, lam)
    dtype = torch.promote_types(torch.promote_types(q.dtype, lam.dtype), torch.float32)
    return LL._ApplyLambdas.apply(q.to(dtype), lam.to(dtype))


VARIANTS = {"as_arrived": as_arrived, "contiguous": NEW}


def calls(arm: str, side: int, batch: int, fwd_batch: int):
    """{pass: fn} for one arm: forward at batch 1 and at ``fwd_batch``, the training step at ``batch``."""
    device = torch.device("cpu")
    fwd1, step, net = BU.make_calls(arm, "tiny", side, batch, device, "fp32")
    x, t = BU.P.unet_inputs(net, side, side, fwd_batch, device=device)

    def fwd_b():
        with torch.no_grad():
            return net(x, t)

    return {"fwd_b1": fwd1, f"fwd_b{fwd_batch}": fwd_b, f"train_step_b{batch}": step}


def measure(arms, sides, batch: int, fwd_batch: int, rounds: int) -> pd.DataFrame:
    rows = []
    try:
        for side in sides:
            for arm in arms:
                for name, fn in calls(arm, side, batch, fwd_batch).items():
                    times = {v: [] for v in VARIANTS}
                    for v, impl in VARIANTS.items():  # warm-up of both
                        LL.apply_lambdas = impl
                        fn()
                    for _ in range(rounds):
                        for v, impl in VARIANTS.items():
                            LL.apply_lambdas = impl
                            t0 = time.thread_time()
                            fn()
                            times[v].append((time.thread_time() - t0) * 1e3)
                    med = {v: statistics.median(ts) for v, ts in times.items()}
                    rows.append(dict(arm=arm, side=side, **{"pass": name}, rounds=rounds,
                                     as_arrived_ms=med["as_arrived"], contiguous_ms=med["contiguous"],
                                     speedup=med["as_arrived"] / med["contiguous"],
                                     threads=torch.get_num_threads(), torch_version=torch.__version__))
                    print(f"{arm:>14} {side:>3}px {name:>16}: as arrived {med['as_arrived']:8.1f} ms, "
                          f"contiguous {med['contiguous']:8.1f} ms, x{rows[-1]['speedup']:.2f}", flush=True)
    finally:
        LL.apply_lambdas = NEW
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> str:
    lines = ["| arm | side | pass | queries as they arrive, ms | N-contiguous, ms | speed-up |", "|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        lines.append(f"| {r['arm']} | {r['side']} | {r['pass']} | {r['as_arrived_ms']:.1f} | {r['contiguous_ms']:.1f} "
                     f"| {r['speedup']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", nargs="+", default=["moebius", "local_lambda"])
    ap.add_argument("--sides", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--batch", type=int, default=16, help="training-step batch")
    ap.add_argument("--fwd-batch", type=int, default=16, help="the batched forward's batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="CSV path (default results/apply_layout-<tag>.csv)")
    args = ap.parse_args(argv)
    unknown = [a for a in args.arms if a not in BU.ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; choose from {sorted(BU.ARMS)}")
    torch.set_num_threads(args.threads)
    header("apply_lambdas: queries as they arrive vs N-contiguous")
    df = measure(args.arms, args.sides, args.batch, args.fwd_batch, args.rounds)
    out = args.out or f"{ROOT}/results/apply_layout-{tag()}.csv"
    write_results(out, df, table(df))
    print(table(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
