"""U-Net arms side by side: forward (batch 1) and training step (batch B), fp32 and bf16 autocast.

    python benchmarks/bench_unet.py                                   # CPU, 1 thread, 32 and 64 px
    python benchmarks/bench_unet.py --device cuda --sizes 64 128 256 --batch 32 --rounds 5

Every (arm, side, pass, dtype) is timed in interleaved rounds (one call of each per round, the
median over rounds), so the ratios printed at the end compare numbers measured under the same load:
``moebius`` (LλMI + DW) against ``baseline`` (linear attention, dense) per side, pass and dtype,
with the achieved GMAC/s of each (MACs from ``profiling.torch_macs``, attention and lambda einsums
included). bf16 rows also state the max relative error of a forward against fp32 on the same
weights. A training step is ``lambda_blocks.train.train_step`` itself (the dev recipe's objective,
backward, clipping, AdamW, EMA) on a fixed batch.

Writes ``results/unet_bench-<device>-<hardware>-pt<torch>-t<threads>.csv`` (tidy, one row per
measurement; atomic). On CUDA the timer is CUDA events (``profiling.latency`` dispatch) and bf16 is
``torch.autocast("cuda", torch.bfloat16)``; on CPU ``torch.autocast("cpu", torch.bfloat16)``.
"""
from __future__ import annotations

import argparse
import os
import sys

from _common import ROOT, header, isa, tag, write_results  # noqa: F401  (sets sys.path)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lambda_blocks import profiling as P  # noqa: E402
from lambda_blocks import train as T  # noqa: E402
from lambda_blocks.config import resolve  # noqa: E402
from lambda_blocks.diffusion import Diffusion  # noqa: E402
from lambda_blocks.runtime import select_device  # noqa: E402
from lambda_blocks.unet import ARMS, SIZES, build_unet  # noqa: E402

DTYPES = ("fp32", "bf16")
PASSES = ("fwd", "train_step")
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
FORMATS = tuple(MEMORY_FORMATS)


def autocast(device: torch.device, dtype: str):
    """The autocast context of a dtype on a device (fp32: disabled)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=(dtype == "bf16"))


def make_calls(arm: str, size: str, side: int, batch: int, device: torch.device, dtype: str, seed: int = 0,
               fmt: str = "contiguous"):
    """(forward fn, train-step fn, model) for one arm; deterministic inputs; ``fmt``: the weights'
    memory format (``channels_last`` is what ``train.channels_last`` does)."""
    torch.manual_seed(seed)
    net = build_unet(arm, size).to(device, memory_format=MEMORY_FORMATS[fmt])
    with torch.no_grad():  # a non-trivial output (conv_out starts at zero)
        torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    x1, t1 = P.unet_inputs(net, side, side, 1, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed)
    c = net.cfg.image_channels
    x0 = (torch.rand(batch, c, side, side, generator=g) * 2 - 1).to(device)
    mask = (torch.rand(batch, 1, side, side, generator=g) > 0.6).float().to(device)
    noise = torch.randn(batch, c, side, side, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    cfg = resolve("dev", arm=arm, size=size, overrides={"train.batch_size": batch, "data.image_size": side})
    diff = Diffusion.from_cfg(cfg.diffusion)
    state = T.new_state(cfg, net)
    problem = (x0, x0 * (1 - mask), mask, t, noise)

    def fwd():
        with torch.no_grad(), autocast(device, dtype):
            return net(x1, t1)

    def step():  # the run's own step: the dev objective, clipping, AdamW, warm-up, EMA
        return T.train_step(state, cfg, diff, lambda s, lo, hi: problem, amp=(dtype == "bf16")).loss

    return fwd, step, net


def bf16_error(arm: str, size: str, side: int, device: torch.device) -> float:
    """Max |bf16 - fp32| / max |fp32| of one forward on the same weights and input."""
    f32, _, _ = make_calls(arm, size, side, 1, device, "fp32")
    b16, _, _ = make_calls(arm, size, side, 1, device, "bf16")
    a, b = f32().float(), b16().float()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def run(arms, size: str, sides, batch: int, device: torch.device, rounds: int, dtypes, passes,
        min_run_time: float, formats=("contiguous",)) -> pd.DataFrame:
    rows = []
    for side in sides:
        fns, macs, errs = {}, {}, {}
        for arm in arms:
            for dtype in dtypes:
                for fmt in formats:
                    fwd, step, _ = make_calls(arm, size, side, batch, device, dtype, fmt=fmt)
                    if "fwd" in passes:
                        fns[(arm, "fwd", dtype, fmt)] = fwd
                    if "train_step" in passes:
                        fns[(arm, "train_step", dtype, fmt)] = step
            cpu_net = build_unet(arm, size).eval()
            macs[arm] = int(P.torch_macs(cpu_net, P.unet_inputs(cpu_net, side, side, 1)))
            if "bf16" in dtypes:
                errs[arm] = bf16_error(arm, size, side, device)
        keyed = {"|".join(k): f for k, f in fns.items()}
        timings = P.interleaved_latency(keyed, rounds=rounds, min_run_time=min_run_time, device=device)
        for key, tm in timings.items():
            arm, pas, dtype, fmt = key.split("|")
            n = 1 if pas == "fwd" else batch
            work = macs[arm] * n * (1 if pas == "fwd" else 3)  # a backward costs about two forwards
            rows.append(dict(arm=arm, size=size, side=side, batch=n, **{"pass": pas}, dtype=dtype, memory_format=fmt,
                             latency_ms=tm.median_ms, iqr_ms=tm.iqr_ms, reps=tm.reps, macs_per_sample=macs[arm],
                             gmac_per_s=work / (tm.median_ms / 1e3) / 1e9,
                             images_per_s=n / (tm.median_ms / 1e3),
                             bf16_max_rel_err=errs.get(arm) if dtype == "bf16" else None,
                             method=tm.method, threads=tm.threads, device=device.type,
                             hardware=P.hardware_name(device), isa=isa(device), torch_version=torch.__version__))
    return pd.DataFrame(rows)



def ratios(df: pd.DataFrame, a: str = "moebius", b: str = "baseline") -> pd.DataFrame:
    """time(b) / time(a) per side, pass, dtype, memory format (> 1: a faster), with the achieved
    GMAC/s of both and, against each arm's fp32 contiguous time, its speed-up from bf16 / channels_last."""
    out = []
    keys = ["side", "pass", "dtype", "memory_format"]
    ref = df[(df["dtype"] == "fp32") & (df["memory_format"] == "contiguous")].set_index(["arm", "side", "pass"])["latency_ms"]
    for (side, pas, dtype, fmt), g in df.groupby(keys):
        ga, gb = g[g["arm"] == a], g[g["arm"] == b]
        if len(ga) and len(gb):
            ta, tb = float(ga["latency_ms"].iloc[0]), float(gb["latency_ms"].iloc[0])
            row = dict(side=side, **{"pass": pas}, dtype=dtype, memory_format=fmt, **{f"{b}_ms": tb, f"{a}_ms": ta,
                       f"{b}_over_{a}": tb / ta, f"{b}_gmac_s": float(gb["gmac_per_s"].iloc[0]),
                       f"{a}_gmac_s": float(ga["gmac_per_s"].iloc[0])})
            for arm, t in ((b, tb), (a, ta)):
                if (arm, side, pas) in ref.index:
                    row[f"{arm}_speedup_vs_fp32_contiguous"] = float(ref.loc[(arm, side, pas)]) / t
            out.append(row)
    return pd.DataFrame(out)


def markdown(r: pd.DataFrame, a: str = "moebius", b: str = "baseline", meta: str = "") -> str:
    """The README table: one row per (side, pass, dtype, memory format), from `ratios`."""
    lines = [f"| side | pass | dtype | memory | {b} ms | {a} ms | {b} / {a} (> 1: {a} faster) | {b} GMAC/s | {a} GMAC/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in r.sort_values(["side", "pass", "dtype", "memory_format"], ascending=[True, True, False, True]).to_dict("records"):
        lines.append(f"| {d['side']} | {d['pass']} | {d['dtype']} | {d['memory_format']} | {d[f'{b}_ms']:.1f} | {d[f'{a}_ms']:.1f} "
                     f"| {d[f'{b}_over_{a}']:.2f} | {d[f'{b}_gmac_s']:.1f} | {d[f'{a}_gmac_s']:.1f} |")
    return "\n".join(lines) + ("\n\n" + meta if meta else "") + "\n"


def dtype_table(df: pd.DataFrame, fmt: str = "contiguous") -> str:
    """bf16 autocast against fp32 per arm, side and pass (weights in ``fmt``): both times, the speed-up
    (> 1: bf16 faster) and bf16's max relative forward error. Empty when either dtype is missing."""
    d = df[df["memory_format"] == fmt]
    if not {"fp32", "bf16"} <= set(d["dtype"]):
        return ""
    lines = ["| side | pass | arm | fp32 ms | bf16 ms | fp32 / bf16 (> 1: bf16 faster) | bf16 max rel. error |",
             "|---|---|---|---|---|---|---|"]
    t = d.set_index(["side", "pass", "arm", "dtype"])
    for side, pas, arm in d[["side", "pass", "arm"]].drop_duplicates().itertuples(index=False):
        a, b = t.loc[(side, pas, arm, "fp32")], t.loc[(side, pas, arm, "bf16")]
        lines.append(f"| {side} | {pas} | {arm} | {a['latency_ms']:.1f} | {b['latency_ms']:.1f} "
                     f"| {a['latency_ms'] / b['latency_ms']:.2f} | {b['bf16_max_rel_err']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["baseline", "moebius"], choices=list(ARMS))
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--sizes", dest="sides", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--batch", type=int, default=8, help="training-step batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.2)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS, help="weights' memory format")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="CSV (default results/unet_bench-<tag>.csv)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or any(s < 1 for s in args.sides):
        ap.error("--batch, --rounds and --sizes must be >= 1")
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    header("U-Net arms side by side", str(device))
    df = run(args.arms, args.size, args.sides, args.batch, device, args.rounds, args.dtypes, args.passes,
             args.min_run_time, args.formats)
    out = args.out or os.path.join(ROOT, "results", f"unet_bench-{tag(device.type)}.csv")
    cols = ["arm", "side", "batch", "pass", "dtype", "memory_format", "latency_ms", "gmac_per_s", "images_per_s",
            "bf16_max_rel_err"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    r = ratios(df, args.arms[-1], args.arms[0])
    table = None
    if len(r):
        print(f"\n# time({args.arms[0]}) / time({args.arms[-1]}) (> 1: {args.arms[-1]} faster), same run:")
        print(r.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        meta = (f"`python benchmarks/bench_unet.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace("  ", " ")
                + f" on {P.hardware_name(device)}{f' ({isa(device)})' if isa(device) else ''}, torch {torch.__version__}, {args.threads} thread(s), size `{args.size}`, "
                f"training-step batch {args.batch}; interleaved medians over {args.rounds} rounds.")
        table = markdown(r, args.arms[-1], args.arms[0], meta)
        dt = dtype_table(df)
        if dt:
            print("\n" + dt)
            table += "\n" + dt
    write_results(out, df, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
