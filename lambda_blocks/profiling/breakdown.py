"""Where the time goes: self time per module kind (forward) and per op family (any pass).

Two views, because a forward hook sees modules and the backward does not:

- ``module_breakdown``: forward pre/post hooks on every module time each call (CPU work is
  synchronous, so wall time between the hooks is the module's); a module's *self* time is its time
  minus its direct children's. Functional code inside a ``forward`` (the lambda einsums, the lambda
  convolution, reshapes between ``(B, C, H, W)`` and token layouts) is its module's self time, so
  ``LocalLambda`` is what the layer adds beyond its ``Linear`` / ``LayerNorm`` children. Self times
  are summed per kind (``module_kind``: the class name, with ``Conv2d`` split into depthwise, 1x1
  and dense kxk). The hooks cost a few microseconds per module call; ``hook_overhead`` is reported.
- ``op_breakdown``: ``torch.profiler`` self CPU time per aten op, summed per family (``op_family``:
  matmul, conv, norm, fft, layout/copy, elementwise, reduction, optimizer, other). Works for a
  training step (backward and optimizer included) and says which kernels a dtype change slows.

Both return tidy rows (``name``, ``self_ms`` per call, ``share`` of the total).
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Callable

import torch
from torch import nn


def module_kind(m: nn.Module) -> str:
    """Label a module for the breakdown: the class name, with ``Conv2d`` split by shape."""
    name = type(m).__name__
    if isinstance(m, nn.Conv2d):
        if m.groups > 1 and m.groups == m.in_channels:
            return "Conv2d (depthwise)"
        if tuple(m.kernel_size) == (1, 1):
            return "Conv2d (1x1)"
        return f"Conv2d ({m.kernel_size[0]}x{m.kernel_size[1]})"
    return name


def module_breakdown(model: nn.Module, call: Callable[[], object], *, reps: int = 5, warmup: int = 1) -> list[dict]:
    """Forward self time per module kind, averaged over ``reps`` calls of ``call`` (after ``warmup``).

    Returns rows ``dict(name, self_ms, share, calls)`` sorted by time, plus two bookkeeping rows:
    ``(total)`` (the hooked forward's wall time) and ``(hook overhead)`` (hooked minus unhooked time of
    the same calls, measured here; a measure of how far to trust small rows)."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    plain = (time.perf_counter() - t0) / reps

    kinds = {id(m): module_kind(m) for m in model.modules()}
    incl: dict[int, float] = defaultdict(float)
    child_incl: dict[int, float] = defaultdict(float)
    ncalls: dict[int, int] = defaultdict(int)
    stack: list[tuple[int, float]] = []  # the modules being called, innermost last (containers never are)
    top = [0.0]  # time in outermost calls

    def pre(mod, _inp):
        stack.append((id(mod), time.perf_counter()))

    def post(mod, _inp, _out):
        mid, t0 = stack.pop()
        dt = time.perf_counter() - t0
        incl[mid] += dt
        ncalls[mid] += 1
        if stack:
            child_incl[stack[-1][0]] += dt
        else:
            top[0] += dt

    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        hooked = (time.perf_counter() - t0) / reps
    finally:
        for h in handles:
            h.remove()

    per_kind: dict[str, float] = defaultdict(float)
    per_kind_calls: dict[str, int] = defaultdict(int)
    for mid, t in incl.items():
        per_kind[kinds[mid]] += max(0.0, t - child_incl[mid])
        per_kind_calls[kinds[mid]] += ncalls[mid]
    outside = max(0.0, hooked * reps - top[0])
    if outside > 0:
        per_kind["(outside the model)"] += outside
    total = sum(per_kind.values())
    rows = [dict(name=k, self_ms=1e3 * v / reps, share=v / total if total else 0.0, calls=per_kind_calls[k] // reps)
            for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])]
    rows.append(dict(name="(total)", self_ms=1e3 * hooked, share=1.0, calls=0))
    rows.append(dict(name="(hook overhead)", self_ms=1e3 * (hooked - plain), share=(hooked - plain) / hooked if hooked else 0.0,
                     calls=0))
    return rows


_FAMILIES = (  # (family, op-name prefixes matched at a token boundary of the "_"-separated name); first match wins
    ("optimizer", ("optimizer", "foreach", "adam", "lerp")),
    ("attention", ("scaled_dot_product",)),
    ("fft", ("fft",)),
    ("conv", ("conv", "mkldnn_convolution", "slow_conv")),
    ("matmul", ("addmm", "bmm", "baddbmm", "mm$", "matmul", "linear", "einsum", "addbmm", "dot")),
    ("norm", ("layer_norm", "group_norm", "batch_norm")),
    ("layout/copy", ("copy", "zero", "contiguous", "clone", "to$", "cat", "stack", "pad", "constant_pad", "permute",
                     "transpose", "reshape", "view", "as_strided", "unfold", "roll", "index", "gather", "scatter",
                     "expand", "empty", "zeros", "ones", "fill", "resize", "slice", "select", "split", "narrow",
                     "unsqueeze", "squeeze", "flatten", "unsafe_view", "t$", "repeat", "flip", "detach", "alias")),
    ("reduction", ("sum", "mean", "norm", "max", "min", "softmax", "var", "std", "amax", "logsumexp")),
    ("elementwise", ("add", "mul", "sub", "div", "silu", "gelu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "pow",
                     "neg", "clamp", "where", "relu", "elu", "abs", "sin", "cos", "threshold", "masked", "sign", "erf",
                     "log", "square", "reciprocal", "lt$", "gt$", "eq$", "ne$", "ge$", "le$")),
)
_FAMILY_RES = tuple((fam, re.compile("|".join(rf"(?:^|_){k}" for k in keys))) for fam, keys in _FAMILIES)


def op_family(op: str) -> str:
    """Family of an aten op / autograd node name (``aten::bmm`` -> ``matmul``, ``aten::copy_`` ->
    ``layout/copy``); names are matched by prefixes at ``_`` boundaries, so ``aten::frobnicate`` is
    ``other``, not a ``cat``."""
    base = op.split("::")[-1].split(":")[-1].strip().lower()
    base = re.sub(r"(backward|_?\d+)$", "", base).strip("_") or base  # SiluBackward0 -> silu...
    base = re.sub(r"(?<=[a-z])backward\d*$", "", base)
    for fam, rx in _FAMILY_RES:
        if rx.search(base):
            return fam
    return "other"


def op_breakdown(call: Callable[[], object], *, reps: int = 3, warmup: int = 1, by: str = "family") -> list[dict]:
    """Self CPU time per op family (``by="family"``) or per aten op (``by="op"``), per call of ``call``.

    Autograd-node wrappers (``...Backward0``) and ``autograd::engine`` frames carry the self time of
    their own bookkeeping only; the kernels they run are counted under their own aten names."""
    if by not in ("family", "op"):
        raise ValueError(f"by must be 'family' or 'op', got {by!r}")
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            call()
    acc: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        us = float(ev.self_cpu_time_total)
        if us <= 0:
            continue
        key = ev.key if by == "op" else op_family(ev.key)
        acc[key] += us
    total = sum(acc.values())
    return [dict(name=k, self_ms=v / 1e3 / reps, share=v / total if total else 0.0)
            for k, v in sorted(acc.items(), key=lambda kv: -kv[1])]
