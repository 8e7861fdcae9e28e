"""Build every token mixer and every U-Net arm x size; print parameters and analytic MACs.

    python -m lambda_blocks.demo [--width 64] [--sizes 32 64] [--tokens 16]

MACs follow the convention of `lambda_blocks.layers.common`: multiply-accumulates of convs,
linear layers, matmuls and einsums (attention and lambda products included), per sample.
"""
from __future__ import annotations

import argparse

import torch

from .layers import create_attention, list_attention
from .unet import SIZES, build_unet, variant_arm_names

def variant_table(width: int, sizes: list[int], tokens: int) -> list[dict]:
    rows = []
    for name in list_attention():
        m = create_attention(name, width)
        for s in sizes:
            L = tokens if m.requires_context else 0  # vanilla here is self-attention over the pixels
            rows.append(dict(variant=name, width=width, size=s, params=m.num_params(), macs=m.macs(s, s, L)))
    return rows


def unet_table(arms=None, sizes=tuple(SIZES)) -> list[dict]:
    """Parameters of each arm (default: one per registered mixer) at each size."""
    arms = variant_arm_names() if arms is None else arms
    return [dict(arm=arm, size=size, params=build_unet(arm, size).num_params()) for arm in arms for size in sizes]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--tokens", type=int, default=16, help="context tokens L for the cross mixers")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"Token mixers at width {args.width}, context L={args.tokens} (MACs per sample, analytic):")
    print(f"{'variant':<20}{'params':>10}" + "".join(f"{f'MACs@{s}x{s}':>16}" for s in args.sizes))
    rows = variant_table(args.width, args.sizes, args.tokens)
    for name in list_attention():
        r = [x for x in rows if x["variant"] == name]
        print(f"{name:<20}{r[0]['params']:>10,}" + "".join(f"{x['macs']:>16,}" for x in r))
    print("\nInpaint U-Net parameters per arm and size preset:")
    print(f"{'arm':<20}" + "".join(f"{s:>12}" for s in SIZES))
    table = unet_table()
    for arm in variant_arm_names():
        print(f"{arm:<20}" + "".join(f"{r['params']:>12,}" for r in table if r["arm"] == arm))


if __name__ == "__main__":
    main()
