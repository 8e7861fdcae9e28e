"""MAC counting: analytic, fvcore (attention and lambda einsums made countable) and torch's FlopCounterMode, side by side; conventions in ``lambda_blocks.profiling``."""
from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..layers.common import explicit_ops


# fvcore's simplified op names whose counts are multiply-accumulates (everything else it counts,
# e.g. group_norm / layer_norm / batch_norm / upsample / adaptive_avg_pool2d, goes to ``other``).
MATMUL_OPS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "baddbmm", "einsum")

# Substrings of op names that do matmul-class work: an unsupported op matching one of these means
# the MAC total is missing real work (a fused attention kernel, an FFT convolution, ...).
_MATMUL_PATTERNS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum", "attention", "fft", "tensordot", "dot")


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _is_matmul_op(name: str) -> bool:
    short = name.split("::")[-1].lower()
    return any(pat in short for pat in _MATMUL_PATTERNS)


def einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """Exact MACs of ``torch.einsum(equation, *operands)`` for operands of the given shapes.

    Two operands: the product of the sizes of all distinct indices (each output element is a sum of
    products over the contracted indices). More operands: the sum of those products along numpy's
    optimal pairwise contraction path. One operand (a sum or transpose): 0.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum {equation!r}: {len(terms)} terms but {len(shapes)} operands")
    if "..." in eq:  # give the ellipsis dims their own (upper-case) letters, aligned from the right
        nell = max(len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t)
        spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq][:nell]
        terms = [t.replace("...", "".join(spare[nell - (len(s) - (len(t) - 3)):])) if "..." in t else t
                 for t, s in zip(terms, shapes)]
        rhs = rhs.replace("...", "".join(spare))
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if len(term) != len(shape):
            raise ValueError(f"einsum {equation!r}: term {term!r} does not match shape {tuple(shape)}")
        for c, s in zip(term, shape):
            sizes[c] = max(sizes.get(c, 1), int(s))
    if len(terms) == 1:
        return 0
    if len(terms) == 2:
        return math.prod(sizes[c] for c in set(terms[0]) | set(terms[1]))
    if not arrow:
        rhs = "".join(sorted(c for c in sizes if lhs.count(c) == 1))
    views = [np.broadcast_to(np.empty((), dtype=np.float32), tuple(s)) for s in shapes]  # no memory
    path = np.einsum_path(",".join(terms) + "->" + rhs, *views, optimize="optimal")[0][1:]
    live, total = list(terms), 0
    for pos in path:
        picked = [live[i] for i in pos]
        for i in sorted(pos, reverse=True):
            live.pop(i)
        idx = set("".join(picked))
        total += (len(picked) - 1) * math.prod(sizes[c] for c in idx)
        keep = "".join(sorted(c for c in idx if c in rhs or any(c in t for t in live)))
        live.append(keep)
    return total


def analytic_macs(module: nn.Module, h: int, w: int, context_len: int = 0, batch: int = 1) -> int:
    """The analytic forward MACs of a batch: ``module.macs(h, w, context_len)`` is per sample, and
    every term scales with the batch except Interactive-λ's Fourier gate G(p_n) (N * 4F * k * u MACs),
    which depends on pixel coordinates only and is computed once per forward."""
    from ..layers.lambda_layers import InteractiveLambda

    shared = sum(h * w * 4 * m.n_freq * m.dim_k * m.dim_u for m in module.modules()
                 if isinstance(m, InteractiveLambda) and m.position == "fourier")
    return module.macs(h, w, context_len) * batch - shared * (batch - 1)


def _fvcore_einsum_handle(inputs, outputs):
    from fvcore.nn.jit_handles import get_shape

    equation = inputs[0].toIValue()
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    return Counter({"einsum": einsum_macs(equation, shapes)})


def _as_tuple(inputs) -> tuple:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    return tuple(x for x in inputs)


def fvcore_macs(module: nn.Module, inputs, explicit: bool = True) -> dict:
    """MACs of one forward pass by fvcore's FlopCountAnalysis (jit trace of a real forward).

    Args:
        module: the model; it is traced as it is (train / eval mode unchanged).
        inputs: a tensor or a tuple of positional inputs.
        explicit: trace inside ``explicit_ops()`` so that fused SDPA appears as matmuls.

    Returns:
        dict(macs=int (matmul-class ops only), by_operator={op: count} (all counted ops),
        other=int (fvcore's norm / pooling / upsampling counts, not MACs),
        unsupported={aten op: occurrences} (ops fvcore has no handle for, as fvcore reports them),
        unsupported_matmul={...} (the subset that does matmul-class work: then ``macs`` is too low)).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        with explicit_ops(explicit), torch.no_grad():
            fa = FlopCountAnalysis(module, _as_tuple(inputs))
            fa.set_op_handle("aten::einsum", _fvcore_einsum_handle)
            fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            by_op = {k: int(v) for k, v in fa.by_operator().items()}
            unsupported = {k: int(v) for k, v in fa.unsupported_ops().items()}
    macs = sum(v for k, v in by_op.items() if k in MATMUL_OPS)
    other = sum(v for k, v in by_op.items() if k not in MATMUL_OPS)
    return dict(
        macs=macs,
        by_operator=by_op,
        other=other,
        unsupported=unsupported,
        unsupported_matmul={k: v for k, v in unsupported.items() if _is_matmul_op(k)},
    )


def _to_meta(module: nn.Module, inputs) -> tuple[nn.Module, tuple]:
    meta = copy.deepcopy(module).to("meta")
    args = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in _as_tuple(inputs))
    return meta, args


def torch_macs(module: nn.Module, inputs, explicit: bool = True, meta: bool = True, by_operator: bool = False):
    """MACs of one forward pass by ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2).

    Runs on a meta-device copy by default (shapes only: no memory, no compute); falls back to the
    real tensors if an op has no meta kernel. Returns an int, or (int, {op: MACs}) with ``by_operator``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def run(mod, args):
        counter = FlopCounterMode(display=False)
        with explicit_ops(explicit), torch.no_grad(), counter:
            mod(*args)
        return counter

    counter = None
    if meta:
        try:
            counter = run(*_to_meta(module, inputs))
        except Exception:  # noqa: BLE001 - an op without a meta kernel: count on the real tensors
            counter = None
    if counter is None:
        counter = run(module, _as_tuple(inputs))
    total = counter.get_total_flops() // 2
    if by_operator:
        ops = {str(k): int(v) // 2 for k, v in counter.get_flop_counts().get("Global", {}).items()}
        return total, ops
    return total


def largest_tensor_bytes(module: nn.Module, inputs, explicit: bool = True) -> int:
    """Size in bytes of the largest tensor produced by one forward (on a meta copy, free). Used to
    refuse fvcore counts whose real forward would not fit in memory (the explicit attention map)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    _Largest.biggest = max(_Largest.biggest, t.numel() * t.element_size())
            return out

    mod, args = _to_meta(module, inputs)
    with explicit_ops(explicit), torch.no_grad(), _Largest():
        mod(*args)
    return _Largest.biggest
