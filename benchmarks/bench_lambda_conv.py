"""Lambda-convolution formulations side by side (CPU): ``conv2d`` (v folded into the batch), ``conv3d``,
``unfold``, ``rfft``, ``toeplitz`` and what ``auto`` picks, at heads 4 (k = v = width / 4, u = 1, r = 15).

For each (width, batch, size) the formulations are timed round-robin (``interleaved_latency``) for
the bare convolution and for the whole Local-λ layer, forward (no_grad) and forward+backward.
Agreement is checked in float64 (values and gradients) before timing. ``toeplitz`` is skipped where
its matrix would exceed ``TOEPLITZ_MAX_VALUES``. The defaults are the tiny U-Net's Local-λ shapes
(width 32 at 32 px, width 64 at 16 px) at batch 1 and the dev batch 16; this is the measurement
``auto`` is set from.

    python benchmarks/bench_lambda_conv.py [--widths 32 64] [--batches 1 16] [--sizes 16 32] [--out ...csv]
"""
from __future__ import annotations

import argparse
import os
import time

import _common  # noqa: F401  (puts the repo on sys.path)
import pandas as pd
import torch

from lambda_blocks.layers import LAMBDA_CONVS, create_attention, lambda_conv
from lambda_blocks.layers.lambda_layers import toeplitz_fits
from lambda_blocks.profiling import interleaved_latency, make_step, write_rows_atomic


def agreement(size: int, impls, k: int = 16) -> dict[str, float]:
    """Max |difference| to conv2d (float64) of the output and of the gradients of v and the kernel."""
    torch.manual_seed(0)
    v0 = torch.randn(2, 1, k, size * size, dtype=torch.float64)
    w0 = torch.randn(k, 1, 15, 15, dtype=torch.float64) / 15
    b0 = torch.randn(k, dtype=torch.float64)
    res = {}
    for impl in impls:
        v, w = v0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = lambda_conv(v, w, b0, size, size, impl)
        out.pow(2).sum().backward()
        res[impl] = (out.detach(), v.grad, w.grad)
    base = res["conv2d"]
    return {impl: max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(res[impl], base)) for impl in impls}


def conv_step(width: int, batch: int, size: int, impl: str, pass_: str):
    torch.manual_seed(0)
    k = width // 4
    v = torch.randn(batch, 1, k, size * size, requires_grad=pass_ == "fwd_bwd")
    w = torch.randn(k, 1, 15, 15, requires_grad=pass_ == "fwd_bwd")
    b = torch.zeros(k, requires_grad=pass_ == "fwd_bwd")
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                lambda_conv(v, w, b, size, size, impl)
    else:
        def step():
            v.grad = w.grad = b.grad = None
            lambda_conv(v, w, b, size, size, impl).sum().backward()
    return step


def layer_step(width: int, batch: int, size: int, impl: str, pass_: str):
    torch.manual_seed(0)
    m = create_attention("local_lambda", width, heads=4, r=15, lambda_conv=impl)
    x = torch.randn(batch, width, size, size, requires_grad=pass_ == "fwd_bwd")
    return make_step(m, (x,), pass_)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64], help="channels (heads 4: k = v = width / 4)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--impls", nargs="+", default=list(LAMBDA_CONVS), choices=LAMBDA_CONVS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.3, help="seconds per sample")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--out", default=None, help="CSV (default results/lambda_conv-<tag>.csv)")
    args = ap.parse_args(argv)
    if any(w % 4 for w in args.widths):
        ap.error("--widths must be multiples of 4 (heads 4)")
    torch.set_num_threads(args.threads)
    _common.header("lambda convolution formulations, heads 4 (k = v = width/4, u = 1, r = 15)")
    rows = []
    for width in args.widths:
        k = width // 4
        for size in args.sizes:
            impls = ["conv2d"] + [i for i in args.impls if i != "conv2d"
                                  and (i != "toeplitz" or toeplitz_fits(size * size, k, 1))]
            err = agreement(min(size, 24), impls, k)
            print(f"\n## width {width} (k = v = {k}), {size}x{size}   max relative difference to conv2d (float64, "
                  f"values and grads at {min(size, 24)}^2): " + ", ".join(f"{n}={e:.1e}" for n, e in err.items()))
            for batch in args.batches:
                for what, make in (("conv", conv_step), ("layer", layer_step)):
                    for pass_ in ("fwd", "fwd_bwd"):
                        t0 = time.time()
                        timings = interleaved_latency({impl: make(width, batch, size, impl, pass_) for impl in impls},
                                                      rounds=args.rounds, min_run_time=args.min_run_time)
                        base = timings["conv2d"].median_ms
                        best = min(timings, key=lambda n: timings[n].median_ms)
                        print(f"b{batch:<3d}{what:5s} {pass_:7s} " + "  ".join(
                            f"{impl}={t.median_ms:8.2f}ms (x{base / t.median_ms:4.2f})" for impl, t in timings.items())
                            + f"   fastest: {best}   [{time.time() - t0:.0f}s]", flush=True)
                        for impl, t in timings.items():
                            rows.append(dict(width=width, batch=batch, size=size, what=what, pass_=pass_, impl=impl,
                                             median_ms=t.median_ms, iqr_ms=t.iqr_ms,
                                             speedup_vs_conv2d=base / t.median_ms, rel_diff_vs_conv2d=err[impl],
                                             threads=t.threads))
    df = pd.DataFrame(rows).rename(columns={"pass_": "pass"})
    print("\n## fastest formulation per (width, batch, what, pass, size)")
    keys = ["width", "batch", "what", "pass", "size"]
    print(df.loc[df.groupby(keys)["median_ms"].idxmin(), keys + ["impl", "speedup_vs_conv2d"]]
          .to_string(index=False))
    out = args.out or os.path.join(_common.ROOT, "results", f"lambda_conv-{_common.tag()}.csv")
    write_rows_atomic(out, df.to_dict("records"), list(df.columns))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
