"""torch.compile against eager for the U-Net arms, forward (no_grad), side by side in one run.

    python benchmarks/bench_compile.py [--arms baseline moebius] [--side 32] [--batch 16]
    python benchmarks/bench_compile.py --pass train_step [--arms linear lmi] [--preset dev]

Forward (default): each arm is built as ``bench_unet.make_calls`` builds it (channels_last weights,
the run's layout), compiled with ``torch.compile`` (inductor; the first call is timed as the compile
cost), then eager and compiled forwards are timed in interleaved rounds. Writes
``results/compile_bench-<tag>.csv`` (tidy, atomic).

``--pass train_step``: the preset's training step exactly as a run takes it
(``bench_train_throughput.Stepper``: ``train.train_step`` with AdamW, warm-up, clipping and the EMA),
once with ``train.compile=false`` and once with ``train.compile=true`` (the model compiled with
static shapes by ``train.new_state``), from the same initialisation and the same batches; the first
compiled step is the compile cost, the first steps' weight updates are compared, then images/s of both are
timed in interleaved rounds. Writes ``results/compile_train-<tag>.csv``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from _common import ROOT, header, tag, write_results  # noqa: F401  (sets sys.path)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench_unet import make_calls  # noqa: E402
from lambda_blocks import profiling as P  # noqa: E402


def markdown(df: pd.DataFrame) -> str:
    """The README table: eager and compiled forward per arm, the speed-up, the first call's cost."""
    piv = df.pivot_table(index="arm", columns="mode", values="latency_ms")
    first = df.groupby("arm")[["compile_s", "max_rel_diff", "side", "batch"]].first()
    lines = ["| arm | side | batch | eager ms | compiled ms | speed-up | first compiled call s | max rel. diff |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, row in piv.iterrows():
        f = first.loc[arm]
        lines.append(f"| {arm} | {int(f['side'])} | {int(f['batch'])} | {row['eager']:.1f} | {row['compiled']:.1f} "
                     f"| {row['eager'] / row['compiled']:.2f} | {f['compile_s']:.1f} | {f['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["baseline", "moebius"])
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--pass", dest="pass_", choices=["fwd", "train_step"], default="fwd")
    ap.add_argument("--preset", default="dev", help="--pass train_step: the preset whose step is timed")
    ap.add_argument("--steps", type=int, default=2, help="--pass train_step: timed steps per round")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pass_ == "train_step":
        return train_main(args)
    device = torch.device("cpu")
    header("torch.compile vs eager, U-Net forward", str(device))
    fns, compile_s, rel_diff = {}, {}, {}
    for arm in args.arms:
        _, _, net = make_calls(arm, "tiny", args.side, args.batch, device, "fp32", fmt="channels_last")
        net.eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 2 * net.cfg.image_channels + 1, args.side, args.side, generator=g)
        t = torch.randint(0, net.cfg.max_timestep, (args.batch,), generator=g)
        compiled = torch.compile(net)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref, out = net(x, t), compiled(x, t)
        compile_s[arm] = time.perf_counter() - t0
        rel_diff[arm] = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        print(f"{arm}: first compiled call {compile_s[arm]:.1f} s, max relative difference to eager {rel_diff[arm]:.1e}",
              flush=True)

        def eager(net=net, x=x, t=t):
            with torch.no_grad():
                net(x, t)

        def comp(c=compiled, x=x, t=t):
            with torch.no_grad():
                c(x, t)

        fns[f"{arm}|eager"], fns[f"{arm}|compiled"] = eager, comp
    timings = P.interleaved_latency(fns, rounds=args.rounds, min_run_time=0.3, device=device)
    rows = []
    for key, tm in timings.items():
        arm, mode = key.split("|")
        rows.append(dict(arm=arm, mode=mode, side=args.side, batch=args.batch, latency_ms=tm.median_ms, iqr_ms=tm.iqr_ms,
                         compile_s=compile_s[arm], max_rel_diff=rel_diff[arm], threads=tm.threads,
                         hardware=P.hardware_name(device), torch_version=torch.__version__))
    return _write(rows, args.out, "compile_bench", markdown)


def _write(rows: list[dict], out: str | None, name: str, table_of) -> int:
    """The tidy CSV (``results/<name>-<tag>.csv`` unless ``out``) and its Markdown table, printed."""
    df = pd.DataFrame(rows)
    table = table_of(df)
    print(table)
    write_results(out or os.path.join(ROOT, "results", f"{name}-{tag('cpu')}.csv"), df, table)
    return 0


def train_markdown(df: pd.DataFrame) -> str:
    """The README table: eager and compiled training step per arm (images/s), the ratio, the cost."""
    lines = ["| arm | preset | batch | side | eager img/s | compiled img/s | compiled / eager | first compiled step s "
             "| first update max rel. diff |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        lines.append(f"| {r['arm']} | {r['preset']} | {int(r['batch'])} | {int(r['side'])} | {r['eager_img_s']:.1f} "
                     f"| {r['compiled_img_s']:.1f} | {r['compiled_img_s'] / r['eager_img_s']:.2f} "
                     f"| {r['compile_s']:.0f} | {r['update_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def train_main(args) -> int:
    """``--pass train_step``: eager against ``train.compile=true`` for the preset's training step."""
    from bench_train_throughput import Stepper, measure, with_overrides
    from lambda_blocks.config import resolve

    header(f"torch.compile vs eager, {args.preset} training step", "cpu")
    rows = []
    for arm in args.arms:
        cfg = resolve(args.preset, arm=arm)
        pair = {"eager": Stepper(with_overrides(cfg, {"train.compile": False})),
                "compiled": Stepper(with_overrides(cfg, {"train.compile": True}))}
        # same init and batches, so the first step's update must agree (not its loss: conv_out starts
        # at zero, so the first loss does not depend on the network)
        deltas, first_s = {}, {}
        for mode, st in pair.items():
            before = torch.cat([p.detach().flatten().clone() for p in st.model.parameters()])
            t0 = time.perf_counter()
            st.step()
            first_s[mode] = time.perf_counter() - t0
            deltas[mode] = torch.cat([p.detach().flatten() for p in st.model.parameters()]) - before
        rel = float((deltas["compiled"] - deltas["eager"]).abs().max() / deltas["eager"].abs().max().clamp_min(1e-30))
        print(f"{arm}: first compiled step {first_s['compiled']:.1f} s (eager {first_s['eager']:.2f} s), "
              f"first update's max relative difference {rel:.1e}", flush=True)
        ips = measure(pair, args.steps, args.rounds)
        st = pair["eager"]
        rows.append(dict(arm=arm, preset=args.preset, batch=st.batch, side=st.size, eager_img_s=ips["eager"],
                         compiled_img_s=ips["compiled"], compile_s=first_s["compiled"], update_rel_diff=rel,
                         steps_per_round=args.steps, rounds=args.rounds, threads=torch.get_num_threads(),
                         hardware=P.hardware_name(torch.device("cpu")), torch_version=torch.__version__))
    return _write(rows, args.out, "compile_train", train_markdown)


if __name__ == "__main__":
    sys.exit(main())
