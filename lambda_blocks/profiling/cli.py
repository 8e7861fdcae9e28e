"""Profile single mixing blocks or whole U-Nets into one tidy CSV (``python -m lambda_blocks.profiling``).

Kinds: ``block`` (a registered mixer alone; ``lmi`` is a whole block), ``arm_block`` (``--arm-blocks``:
the mixing block of a U-Net arm, so that ``lmi`` is compared with the softmax block of ``vanilla``,
like with like) and ``unet`` (``--unet SIZE``: whole U-Nets).

One row per (kind, variant, preset, channels, config, height, width, batch, pass, dtype, device,
hardware, threads) with params, MACs (analytic / fvcore / torch, forward, whole batch), fvcore's unsupported
ops, latency (median, IQR in ms), peak memory (MiB) and the environment. Units and methods are
documented in ``lambda_blocks.profiling``.

Examples:
    python -m lambda_blocks.profiling --attn vanilla linear local_lambda interactive_lambda lmi \\
        --sizes 16 32 64 128 --width 64 --out results/profile.csv
    python -m lambda_blocks.profiling --unet tiny --attn vanilla lmi --sizes 32 64 --out results/profile.csv

Resuming: rows already in ``--out`` for the same key are skipped (``--force`` re-measures them); the
CSV is rewritten atomically after every (variant, size), merged with what is there.

Sizes a variant cannot take (a U-Net size not divisible by 2**(levels-1), Interactive-λ with
``position="table"`` at another size, ...): the ValueError is **recorded as a row** with the message in
the ``error`` column and empty measurements, a line naming the variant and size goes to stderr, the
sweep goes on, and the exit status is 1. Error rows are retried on the next run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Sequence

import torch

from .. import profiling as P


def _size(text: str) -> tuple[int, int]:
    """``32`` -> (32, 32); ``32x48`` -> (32, 48)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive ints, got {text!r}")
    return parts[0], parts[1]


def _kwargs(text: str) -> dict:
    try:
        val = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--kwargs must be a JSON object: {err}") from None
    if not isinstance(val, dict):
        raise argparse.ArgumentTypeError("--kwargs must be a JSON object")
    return val


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lambda_blocks.profiling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", nargs="+", required=True,
                    help="registered mixers (block mode) or ARMS keys (with --unet)")
    ap.add_argument("--unet", metavar="PRESET", default=None, help="profile whole U-Nets of this SIZES preset")
    ap.add_argument("--arm-blocks", action="store_true",
                    help="--attn names U-Net arms: profile each arm's mixing block (kind arm_block) at --width")
    ap.add_argument("--sizes", nargs="+", type=_size, default=[(16, 16), (32, 32), (64, 64), (128, 128)],
                    help="image sizes: N (square) or HxW")
    ap.add_argument("--width", type=int, default=64, help="block channels (block mode)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--passes", nargs="+", choices=P.PASSES, default=list(P.PASSES))
    ap.add_argument("--dtype", choices=sorted(P.DTYPES), default="float32",
                    help="bfloat16 = torch.autocast (meant for CUDA)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    ap.add_argument("--context-len", type=int, default=16, help="L context tokens for mixers that need them")
    ap.add_argument("--kwargs", type=_kwargs, default={},
                    help='JSON: extra mixer arguments (block) or UNetConfig overrides (--unet), e.g. \'{"r": 7}\'')
    ap.add_argument("--out", default="results/profile.csv")
    ap.add_argument("--force", action="store_true", help="re-measure rows already in --out")
    ap.add_argument("--no-count", action="store_true", help="skip the fvcore / FlopCounterMode counts")
    ap.add_argument("--count-max-gb", type=float, default=12.0,
                    help="skip fvcore when its real explicit forward would need more than this")
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds of blocked_autorange per row")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    return torch.device(name)


def _validate(args, ap: argparse.ArgumentParser) -> None:
    from ..layers.common import list_attention
    from ..unet import ARMS, SIZES

    if args.unet is not None and args.arm_blocks:
        ap.error("--unet and --arm-blocks are two kinds of row: choose one")
    if args.arm_blocks:
        bad = [a for a in args.attn if a not in ARMS]
        if bad:
            ap.error(f"unknown arm(s) {bad} for --arm-blocks; known arms: {', '.join(ARMS)}")
    elif args.unet is not None:
        if args.unet not in SIZES:
            ap.error(f"unknown U-Net preset {args.unet!r}; known presets: {', '.join(SIZES)}")
        bad = [a for a in args.attn if a not in ARMS]
        if bad:
            ap.error(f"unknown arm(s) {bad} for --unet; known arms: {', '.join(ARMS)}")
    else:
        bad = [a for a in args.attn if a not in list_attention()]
        if bad:
            ap.error(f"unknown attention variant(s) {bad}; registered: {', '.join(list_attention())}")
    try:
        P.read_rows(args.out)
    except P.NotAProfileTable as exc:
        ap.error(str(exc))
    for name in ("width", "batch", "context_len", "min_reps"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    from ..runtime import tune_allocator

    tune_allocator()  # reuse freed tensor memory instead of page-faulting it in again (runtime.tune_allocator)
    _validate(args, ap)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)


def _run(args) -> int:
    device = _device(args.device)
    hardware = P.hardware_name(device)
    config = P.config_string(args.kwargs)
    kind = "unet" if args.unet else "arm_block" if args.arm_blocks else "block"
    done = {P.row_key(r) for r in P.read_rows(args.out) if not r.get("error")}
    n_errors = 0

    for variant in args.attn:
        for hh, ww in args.sizes:
            base = dict(kind=kind, variant=variant, preset=args.unet or "", config=config, height=hh, width=ww,
                        pixels=hh * ww, batch=args.batch, dtype=args.dtype, device=device.type, hardware=hardware,
                        channels=args.width, threads=torch.get_num_threads())
            if kind == "unet":
                from ..unet import unet_config

                try:
                    base["channels"] = unet_config(variant, args.unet, **args.kwargs).widths[0]
                except ValueError:
                    base["channels"] = ""
            pending = [p for p in args.passes if args.force or P.row_key(dict(base, **{"pass": p})) not in done]
            if not pending:
                print(f"skip {kind} {variant} {hh}x{ww} batch {args.batch}: already in {args.out}", flush=True)
                continue
            try:
                rows = _measure(kind, variant, hh, ww, args, device)
            except ValueError as err:
                n_errors += 1
                msg = f"{type(err).__name__}: {err}"
                print(f"error: {kind} {variant!r} at {hh}x{ww} (batch {args.batch}): {msg}", file=sys.stderr, flush=True)
                rows = [dict(error=msg, **{"pass": p}) for p in pending]
            stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            rows = [dict(r, **base, torch_version=torch.__version__, measured_at=stamp) for r in rows if r["pass"] in pending]
            P.merge_rows(args.out, rows)
            for r in rows:
                if not r.get("error"):
                    print(f"{kind} {variant:>18s} {hh:4d}x{ww:<4d} b{args.batch} {r['pass']:7s} "
                          f"{r['latency_ms_median']:10.2f} ms (IQR {r['latency_ms_iqr']:.2f})  "
                          f"{r['peak_mem_mb']:9.1f} MiB  macs {r['macs']}  fvcore {r['macs_fvcore']}  torch {r['macs_torch']}",
                          flush=True)
    print(f"wrote {args.out}")
    return 1 if n_errors else 0


def _measure(kind: str, variant: str, hh: int, ww: int, args, device: torch.device) -> list[dict]:
    """Build the module and measure it (ValueErrors of build or forward propagate)."""
    count_max = args.count_max_gb * 1e9
    common = dict(passes=args.passes, device=device, dtype=args.dtype, count=not args.no_count,
                  count_max_bytes=count_max, min_run_time=args.min_run_time, min_reps=args.min_reps)
    if kind == "unet":
        from ..unet import build_unet

        torch.manual_seed(args.seed)
        net = build_unet(variant, args.unet, **args.kwargs)
        return P.profile_module(
            net, lambda grad: P.unet_inputs(net, hh, ww, args.batch, device=device, seed=args.seed),
            analytic_macs=None, **common)
    if kind == "arm_block":
        module = P.build_arm_block(variant, args.width, seed=args.seed, **args.kwargs)
    else:
        module = P.build_block(variant, args.width, seed=args.seed, **args.kwargs)
    ctx_len = args.context_len if module.requires_context else 0
    return P.profile_module(
        module,
        lambda grad: P.block_inputs(module, hh, ww, args.batch, context_len=args.context_len, device=device,
                                    requires_grad=grad, seed=args.seed),
        analytic_macs=P.analytic_macs(module, hh, ww, ctx_len, args.batch), **common)

