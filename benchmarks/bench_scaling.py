"""How the mixers scale with resolution, measured side by side in one run (CPU by default).

For every size, all variants (and two dense matmul references) are timed round-robin
(``profiling.interleaved_latency``), so background load on a shared machine hits them alike. Prints:

  (1) log-log slopes of MACs, latency and peak memory against the pixel count over ``--slope-sizes``
      (vanilla ~2 for MACs, the others ~1);
  (2) the resolution at which ``lmi`` becomes faster than ``vanilla`` and the speed-up at the largest size;
  (3) efficiency: achieved GMAC/s of each variant as a fraction of the dense-matmul GMAC/s measured in
      the same rounds (reference = the faster of (4096x64)@(64x4096) and (1024x1024)@(1024x1024));
      fwd_bwd counts 3x the forward MACs (the usual backward ~ 2x forward convention);
  (4) peak-memory slopes (CPU: peak of allocator bytes during one call, see profiling.peak_memory),
      including vanilla with explicit attention (``explicit_ops``, the materialised N x N map) up to
      ``--explicit-max`` pixels per side.

Writes the tidy rows to results/scaling-<device>-<hardware>-pt<ver>-t<threads>.csv (or --out).

    python benchmarks/bench_scaling.py [--threads 1] [--sizes 16 24 32 48 64 96 128] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import time

import _common  # noqa: F401  (puts the repo on sys.path)
import pandas as pd
import torch

from lambda_blocks.layers import explicit_ops
from lambda_blocks.profiling import (
    analytic_macs,
    block_inputs,
    build_block,
    crossover,
    gmacs_per_s,
    interleaved_latency,
    loglog_slope,
    make_step,
    peak_memory,
    write_rows_atomic,
)

VARIANTS = ("vanilla", "linear", "local_lambda", "interactive_lambda", "lmi")
REFS = {"matmul_4096x64x4096": (4096, 64, 4096), "matmul_1024^3": (1024, 1024, 1024)}
PASS_MAC_FACTOR = {"fwd": 1, "fwd_bwd": 3}


def matmul_fn(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    return lambda: a @ b


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48, 64, 96, 128])
    ap.add_argument("--slope-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--context-len", type=int, default=16)
    ap.add_argument("--passes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--explicit-max", type=int, default=64, help="largest side for vanilla explicit-attention memory")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _common.header(f"scaling of the mixers, width {args.width}, batch 1, L={args.context_len} context tokens")
    sizes = sorted(set(args.sizes) | set(args.slope_sizes))
    modules = {v: build_block(v, args.width) for v in args.variants}
    rows, t_start = [], time.time()

    for size in sizes:
        for pass_ in args.passes:
            t0 = time.time()
            fns, inputs = {}, {}
            for v, m in modules.items():
                inputs[v] = block_inputs(m, size, size, 1, context_len=args.context_len, requires_grad=pass_ == "fwd_bwd")
                fns[v] = make_step(m, inputs[v], pass_)
            for name, shape in REFS.items():
                fns[name] = matmul_fn(*shape)
            timings = interleaved_latency(fns, rounds=args.rounds, min_run_time=args.min_run_time)
            ref = max(gmacs_per_s(m * k * n, timings[name].median_ms) for name, (m, k, n) in REFS.items())
            for v, m in modules.items():
                macs = analytic_macs(m, size, size, args.context_len if m.requires_context else 0)
                m.zero_grad(set_to_none=True)
                mem = peak_memory(fns[v])["bytes"]
                m.zero_grad(set_to_none=True)
                t = timings[v]
                rate = gmacs_per_s(PASS_MAC_FACTOR[pass_] * macs, t.median_ms)
                rows.append(dict(variant=v, size=size, pixels=size * size, **{"pass": pass_}, macs=macs,
                                 latency_ms_median=t.median_ms, latency_ms_iqr=t.iqr_ms, gmacs_per_s=rate,
                                 ref_gmacs_per_s=ref, efficiency=rate / ref, peak_mem_mb=mem / 2**20,
                                 threads=t.threads, rounds=args.rounds))
            for name, (mm, k, n) in REFS.items():
                rows.append(dict(variant=name, size=size, pixels=size * size, **{"pass": pass_}, macs=mm * k * n,
                                 latency_ms_median=timings[name].median_ms, latency_ms_iqr=timings[name].iqr_ms,
                                 gmacs_per_s=gmacs_per_s(mm * k * n, timings[name].median_ms), ref_gmacs_per_s=ref,
                                 efficiency=gmacs_per_s(mm * k * n, timings[name].median_ms) / ref,
                                 threads=timings[name].threads, rounds=args.rounds))
            print(f"{size:4d}x{size:<4d} {pass_:7s} " + "  ".join(f"{k}={t.median_ms:.2f}ms" for k, t in timings.items())
                  + f"  [{time.time() - t0:.0f}s]", flush=True)
        if "vanilla" in modules and size <= args.explicit_max:
            m = modules["vanilla"]
            x = block_inputs(m, size, size, 1)
            step = make_step(m, x, "fwd")
            with explicit_ops():
                mem = peak_memory(step)["bytes"]
            rows.append(dict(variant="vanilla_explicit", size=size, pixels=size * size, **{"pass": "fwd"},
                             macs=analytic_macs(m, size, size), peak_mem_mb=mem / 2**20, threads=torch.get_num_threads()))

    df = pd.DataFrame(rows)
    out = args.out or os.path.join(_common.ROOT, "results", f"scaling-{_common.tag()}.csv")
    write_rows_atomic(out, df.to_dict("records"), list(df.columns))
    report(df, args)
    print(f"\nwrote {out}  [{time.time() - t_start:.0f}s]")


def report(df: pd.DataFrame, args) -> None:
    pd.set_option("display.width", 200)
    blocks = df[df.variant.isin(args.variants)]
    for pass_ in args.passes:
        print(f"\n## latency (ms, median of {args.rounds} interleaved rounds), {pass_}")
        print(blocks[blocks["pass"] == pass_].pivot(index="size", columns="variant", values="latency_ms_median")
              [args.variants].round(2).to_string())

    print(f"\n## (1) log-log slopes against pixel count over sides {args.slope_sizes}")
    sl = df[df["size"].isin(args.slope_sizes)]
    table = {}
    for v in list(args.variants) + ["vanilla_explicit"]:
        d = sl[sl.variant == v]
        if d.empty:
            continue
        entry = {}
        fwd = d[d["pass"] == "fwd"].sort_values("pixels")
        if len(fwd) >= 2:
            entry["macs"] = loglog_slope(fwd.pixels, fwd.macs)
        for pass_ in args.passes:
            dp = d[d["pass"] == pass_].sort_values("pixels")
            if len(dp) >= 2 and dp.latency_ms_median.notna().all():
                entry[f"latency_{pass_}"] = loglog_slope(dp.pixels, dp.latency_ms_median)
            if len(dp) >= 2 and dp.peak_mem_mb.notna().all() and (dp.peak_mem_mb > 0).all():
                entry[f"memory_{pass_}"] = loglog_slope(dp.pixels, dp.peak_mem_mb)
        table[v] = entry
    print(pd.DataFrame(table).T.round(2).to_string())
    if "vanilla_explicit" in table:
        print("   (vanilla_explicit: vanilla with explicit matmul + softmax (explicit_ops), sides <= "
              f"{args.explicit_max}; `vanilla` is the default fused SDPA path)")

    if {"vanilla", "lmi"} <= set(args.variants):
        print("\n## (2) lmi vs vanilla")
        for pass_ in args.passes:
            van = blocks[(blocks.variant == "vanilla") & (blocks["pass"] == pass_)].sort_values("pixels")
            lmi = blocks[(blocks.variant == "lmi") & (blocks["pass"] == pass_)].sort_values("pixels")
            x = crossover(van.pixels.values, van.latency_ms_median.values, lmi.latency_ms_median.values)
            big = van["size"].max()
            speed = van.latency_ms_median.values[-1] / lmi.latency_ms_median.values[-1]
            where = "never within the sizes" if x is None else f"{x:.0f} pixels (~{x ** 0.5:.0f}x{x ** 0.5:.0f})"
            print(f"{pass_:7s}: lmi faster than vanilla from {where}; speed-up at {big}x{big}: {speed:.2f}x "
                  f"(vanilla {van.latency_ms_median.values[-1]:.1f} ms, lmi {lmi.latency_ms_median.values[-1]:.1f} ms)")

    print("\n## (3) efficiency: achieved GMAC/s / dense-matmul GMAC/s of the same rounds")
    for pass_ in args.passes:
        d = blocks[blocks["pass"] == pass_]
        eff = d.pivot(index="size", columns="variant", values="efficiency")[args.variants]
        ref = d.groupby("size").ref_gmacs_per_s.first()
        print(f"{pass_} (reference GMAC/s per size: " + ", ".join(f"{s}:{r:.1f}" for s, r in ref.items()) + ")")
        print((100 * eff).round(1).astype(str).add(" %").to_string())

    print("\n## (4) peak memory (MiB)")
    for pass_ in args.passes:
        d = df[(df["pass"] == pass_) & df.variant.isin(list(args.variants) + ["vanilla_explicit"])]
        print(pass_)
        print(d.pivot(index="size", columns="variant", values="peak_mem_mb").round(2).to_string())


if __name__ == "__main__":
    main()
