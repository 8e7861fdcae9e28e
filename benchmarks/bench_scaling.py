"""How the mixers scale with resolution, measured side by side in one run (CPU by default).

For every size, the bare mixers (``--variants``, kind ``block``), the mixing blocks of U-Net arms
(``--arm-blocks``, kind ``arm_block``: norm, projections, self-mixer, cross-mixer and FFN of one
level, so the ``lmi`` block meets the softmax block of ``vanilla`` like with like) and two dense
matmul references are timed round-robin (``profiling.interleaved_latency``), so background load on a
shared machine hits them alike. Prints:

  (1) log-log slopes of MACs, latency and peak memory against the pixel count over ``--slope-sizes``
      (vanilla ~2 for MACs, the others ~1);
  (2) the resolution at which the ``lmi`` arm block becomes faster than the ``vanilla`` arm block,
      and Local-λ than softmax attention (bare mixers), and the speed-ups at the largest size;
  (3) efficiency: achieved GMAC/s of each variant as a fraction of the dense-matmul GMAC/s measured in
      the same rounds (reference = the faster of (4096x64)@(64x4096) and (1024x1024)@(1024x1024));
      fwd_bwd counts 3x the forward MACs (the usual backward ~ 2x forward convention);
  (4) peak-memory slopes (CPU: peak of allocator bytes during one call, see profiling.peak_memory),
      including vanilla with explicit attention (``explicit_ops``, the materialised N x N map) up to
      ``--explicit-max`` pixels per side.

The rows go into the one profile table, ``results/profile.csv`` (``profiling.merge_rows``: the
schema of ``python -m lambda_blocks.profiling``, a new row replacing the old one of its key), with
``latency_method`` naming the interleaved rounds and three more columns: ``gmacs_per_s``,
``ref_gmacs_per_s`` (the matmul of the same rounds) and ``efficiency``.

    python benchmarks/bench_scaling.py [--threads 1] [--sizes 16 24 32 48 64 96 128] [--rounds 3] [--out results/profile.csv]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import time

import _common  # noqa: F401  (puts the repo on sys.path)
import pandas as pd
import torch

from lambda_blocks.layers import explicit_ops
from lambda_blocks.profiling import (
    analytic_macs,
    block_inputs,
    build_arm_block,
    build_block,
    hardware_name,
    memory_method,
    merge_rows,
    crossover,
    gmacs_per_s,
    interleaved_latency,
    loglog_slope,
    make_step,
    peak_memory,
)

VARIANTS = ("vanilla", "linear", "local_lambda", "interactive_lambda", "lmi")
ARM_BLOCKS = ("vanilla", "linear", "lmi")
REFS = {"matmul_4096x64x4096": (4096, 64, 4096), "matmul_1024^3": (1024, 1024, 1024)}
PASS_MAC_FACTOR = {"fwd": 1, "fwd_bwd": 3}


def matmul_fn(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    return lambda: a @ b


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="bare mixers (kind block)")
    ap.add_argument("--arm-blocks", nargs="+", default=list(ARM_BLOCKS), help="U-Net arms whose mixing block to time")
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
    modules = {("block", v): build_block(v, args.width) for v in args.variants}
    modules.update({("arm_block", a): build_arm_block(a, args.width) for a in args.arm_blocks})
    rows, t_start = [], time.time()
    env = dict(channels=args.width, batch=1, dtype="float32", device="cpu", hardware=hardware_name("cpu"),
               torch_version=torch.__version__, mem_method=memory_method("cpu"),
               latency_method=f"interleaved_torch_timer(rounds={args.rounds})",
               measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def row(kind, variant, size, pass_, **vals):
        return dict(env, kind=kind, variant=variant, height=size, width=size, pixels=size * size, **{"pass": pass_}, **vals)

    for size in sizes:
        for pass_ in args.passes:
            t0 = time.time()
            fns = {}
            for key, m in modules.items():
                inputs = block_inputs(m, size, size, 1, context_len=args.context_len, requires_grad=pass_ == "fwd_bwd")
                fns[key] = make_step(m, inputs, pass_)
            for name, shape in REFS.items():
                fns[("reference", name)] = matmul_fn(*shape)
            timings = interleaved_latency(fns, rounds=args.rounds, min_run_time=args.min_run_time)
            ref = max(gmacs_per_s(m * k * n, timings[("reference", name)].median_ms) for name, (m, k, n) in REFS.items())
            for (kind, v), m in modules.items():
                macs = analytic_macs(m, size, size, args.context_len if m.requires_context else 0)
                m.zero_grad(set_to_none=True)
                mem = peak_memory(fns[(kind, v)])["bytes"]
                m.zero_grad(set_to_none=True)
                t = timings[(kind, v)]
                rate = gmacs_per_s(PASS_MAC_FACTOR[pass_] * macs, t.median_ms)
                rows.append(row(kind, v, size, pass_, params=sum(p.numel() for p in m.parameters()), macs=macs,
                                latency_ms_median=t.median_ms, latency_ms_iqr=t.iqr_ms, latency_reps=t.reps,
                                gmacs_per_s=rate, ref_gmacs_per_s=ref, efficiency=rate / ref, peak_mem_mb=mem / 2**20,
                                threads=t.threads))
            for name, (mm, k, n) in REFS.items():
                t = timings[("reference", name)]
                rate = gmacs_per_s(mm * k * n, t.median_ms)
                rows.append(row("reference", name, size, pass_, macs=mm * k * n, latency_ms_median=t.median_ms,
                                latency_ms_iqr=t.iqr_ms, latency_reps=t.reps, gmacs_per_s=rate, ref_gmacs_per_s=ref,
                                efficiency=rate / ref, threads=t.threads))
            print(f"{size:4d}x{size:<4d} {pass_:7s} " + "  ".join(f"{k[1]}{'[blk]' if k[0] == 'arm_block' else ''}="
                                                                f"{t.median_ms:.2f}ms" for k, t in timings.items())
                  + f"  [{time.time() - t0:.0f}s]", flush=True)
        if ("block", "vanilla") in modules and size <= args.explicit_max:
            m = modules[("block", "vanilla")]
            step = make_step(m, block_inputs(m, size, size, 1), "fwd")
            with explicit_ops():
                mem = peak_memory(step)["bytes"]
            rows.append(row("block", "vanilla", size, "fwd", config='{"explicit_ops":true}', macs=analytic_macs(m, size, size),
                            peak_mem_mb=mem / 2**20, threads=torch.get_num_threads(),
                            notes="explicit matmul + softmax (explicit_ops): the materialised N x N map; memory only"))

    out = args.out or os.path.join(_common.ROOT, "results", "profile.csv")
    merge_rows(out, rows)
    report(pd.DataFrame(rows), args)
    print(f"\nmerged {len(rows)} rows into {out}  [{time.time() - t_start:.0f}s]")


def _label(kind: str, variant: str, config: str = "") -> str:
    if kind == "arm_block":
        return f"{variant} block"
    return "vanilla_explicit" if config else variant


def report(df: pd.DataFrame, args) -> None:
    pd.set_option("display.width", 200)
    df = df.assign(size=df["height"], name=[_label(k, v, c if isinstance(c, str) else "")
                                            for k, v, c in zip(df["kind"], df["variant"], df.get("config", [""] * len(df)))])
    timed = df[df["kind"].isin(["block", "arm_block"]) & df["latency_ms_median"].notna()]
    names = list(dict.fromkeys(timed["name"]))
    for pass_ in args.passes:
        print(f"\n## latency (ms, median of {args.rounds} interleaved rounds), {pass_}")
        print(timed[timed["pass"] == pass_].pivot(index="size", columns="name", values="latency_ms_median")[names]
              .round(2).to_string())

    print(f"\n## (1) log-log slopes against pixel count over sides {args.slope_sizes}")
    sl = df[df["size"].isin(args.slope_sizes)]
    table = {}
    for name in names + ["vanilla_explicit"]:
        d = sl[sl["name"] == name]
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
        table[name] = entry
    print(pd.DataFrame(table).T.round(2).to_string())

    print("\n## (2) like with like: the lmi block vs the vanilla (softmax) block; Local-λ vs softmax attention")
    for slow, fast in (("vanilla block", "lmi block"), ("vanilla", "local_lambda"), ("vanilla", "lmi")):
        for pass_ in args.passes:
            a = timed[(timed["name"] == slow) & (timed["pass"] == pass_)].sort_values("pixels")
            b = timed[(timed["name"] == fast) & (timed["pass"] == pass_)].sort_values("pixels")
            if a.empty or len(a) != len(b):
                continue
            x = crossover(a.pixels.values, a.latency_ms_median.values, b.latency_ms_median.values)
            big = a["size"].max()
            where = "never within the sizes" if x is None else f"{x:.0f} pixels (~{x ** 0.5:.0f}x{x ** 0.5:.0f})"
            note = "  (a whole block against a bare mixer)" if (slow, fast) == ("vanilla", "lmi") else ""
            print(f"{fast:>12s} vs {slow:<13s} {pass_:7s}: faster from {where}; at {big}x{big}: "
                  f"{a.latency_ms_median.values[-1] / b.latency_ms_median.values[-1]:.2f}x "
                  f"({a.latency_ms_median.values[-1]:.1f} ms vs {b.latency_ms_median.values[-1]:.1f} ms){note}")

    print("\n## (3) efficiency: achieved GMAC/s / dense-matmul GMAC/s of the same rounds")
    for pass_ in args.passes:
        d = timed[timed["pass"] == pass_]
        eff = d.pivot(index="size", columns="name", values="efficiency")[names]
        ref = d.groupby("size").ref_gmacs_per_s.first()
        print(f"{pass_} (reference GMAC/s per size: " + ", ".join(f"{s}:{r:.1f}" for s, r in ref.items()) + ")")
        print((100 * eff).round(1).astype(str).add(" %").to_string())

    print("\n## (4) peak memory (MiB)")
    for pass_ in args.passes:
        d = df[(df["pass"] == pass_) & df["kind"].isin(["block", "arm_block"])]
        print(pass_)
        print(d.pivot_table(index="size", columns="name", values="peak_mem_mb", aggfunc="last").round(2).to_string())


if __name__ == "__main__":
    main()
