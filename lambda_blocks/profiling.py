"""Profiling of the token mixers and U-Nets: parameters, MACs, latency, peak memory, and the analysis
helpers (log-log slopes, crossovers, efficiency) that the benchmarks, notebooks and figures share.

Units and conventions
---------------------
* **MACs** (multiply-accumulates), never "FLOPs": the convention of ``lambda_blocks.layers.common``.
  Only matmul-class work is counted (convolutions, linear / addmm, matmul / mm / bmm, einsum);
  norms, softmax, activations, bias adds and residual sums are not. FLOPs ~= 2 x MACs.
  All MAC numbers here are for the **forward pass of the whole batch** (``macs()`` of a layer is
  per sample; callers multiply by the batch size).
* Three independent counts are kept side by side (nanoGPT's "analytic vs measured" check):
    - ``macs``: the layer's analytic ``macs(h, w, context_len)``;
    - ``fvcore_macs``: fvcore's FlopCountAnalysis (fvcore calls one fused multiply-add "one flop",
      i.e. it counts MACs), traced inside ``explicit_ops()`` so that fused SDPA becomes two matmuls
      (EDM2 ``count_flops`` idea). fvcore's einsum handle prints numpy's path cost with 4 significant
      digits; we replace it by an exact count. Ops fvcore has no handle for are **returned**
      (``unsupported``), never silenced; those that carry matmul work (SDPA, FFT, ...) are also listed
      in ``unsupported_matmul``. fvcore's norm / pooling / upsampling counts are reported apart
      (``other``), outside the MAC total;
    - ``torch_macs``: ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x MACs, halved), run on
      meta tensors (free, any size). Known difference: an einsum whose only contracted index has size
      1 (Interactive-λ's ``nku,bukv->bkvn`` with u = 1) is lowered by torch to a broadcast multiply,
      which FlopCounterMode does not count, so it reads ``N*k*v`` lower than the analytic count.
* **Latency** (``latency``): CPU -> ``torch.utils.benchmark.Timer.blocked_autorange`` (plus single
  runs until at least ``min_reps`` samples); CUDA -> CUDA events around each call. Median and IQR
  (75th - 25th percentile) in ms over the per-run samples; ``torch.get_num_threads()`` is recorded.
  ``interleaved_latency`` measures several callables round-robin so that background load on a shared
  machine hits them all alike: report ratios measured that way.
* **Peak memory** (``peak_memory``):
    - CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
      allocated bytes at the start of the call (``cuda_max_allocated``);
    - CPU (``cpu_profiler_alloc_peak``): the call runs once under
      ``torch.profiler.profile(profile_memory=True)``; its ``[memory]`` events (every allocation
      (+bytes) and free (-bytes) through the c10 CPU allocator) are sorted by time and summed; the
      peak of that running sum is reported. It is the peak of tensor memory allocated by the call on
      top of what was alive when it started (parameters, inputs and pre-existing gradients are not
      included; activations kept for backward, temporaries, workspace tensors and new gradients
      are). Memory that a library allocates outside the c10 allocator (oneDNN scratchpads, BLAS
      buffers) is not seen. It is not process RSS.
* **Passes**: ``fwd`` is inference (``torch.no_grad()``, module in eval mode); ``fwd_bwd`` is a training
  step without the optimizer (module in train mode, gradients of the parameters and of the block
  input, ``out.backward(ones)``). ``dtype="bfloat16"`` runs under ``torch.autocast`` (weights stay
  float32), on CUDA as intended and on CPU where it works but is not representative.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .layers.common import explicit_ops

__all__ = [
    "MATMUL_OPS",
    "count_params",
    "einsum_macs",
    "analytic_macs",
    "fvcore_macs",
    "torch_macs",
    "largest_tensor_bytes",
    "Timing",
    "timing_method",
    "latency",
    "interleaved_latency",
    "memory_method",
    "peak_memory",
    "make_step",
    "block_inputs",
    "unet_inputs",
    "build_block",
    "profile_module",
    "hardware_name",
    "CSV_COLUMNS",
    "KEY_COLUMNS",
    "row_key",
    "read_rows",
    "merge_rows",
    "write_rows_atomic",
    "loglog_slope",
    "crossover",
    "gmacs_per_s",
    "matmul_gmacs_per_s",
    "format_ops",
    "config_string",
    "PASSES",
    "DTYPES",
]

# ----------------------------------------------------------------------------------------------
# MAC counting

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
    from .layers.lambda_layers import InteractiveLambda

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


# ----------------------------------------------------------------------------------------------
# Latency


@dataclass
class Timing:
    """Latency of one call: median and IQR in ms over ``reps`` samples."""

    median_ms: float
    iqr_ms: float
    reps: int
    method: str
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def timing_method(device: str | torch.device) -> str:
    """``cuda_events`` on a CUDA device, ``torch_timer`` (torch.utils.benchmark) otherwise."""
    return "cuda_events" if torch.device(device).type == "cuda" else "torch_timer"


def _summary(times_s: Sequence[float], method: str) -> Timing:
    arr = np.asarray(times_s, dtype=np.float64) * 1e3
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return Timing(float(q50), float(q75 - q25), int(arr.size), method, torch.get_num_threads())


def _latency_timer(fn: Callable[[], object], min_run_time: float, min_reps: int, max_time: float) -> Timing:
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    start = time.perf_counter()
    meas = timer.blocked_autorange(min_run_time=min_run_time)
    times = list(meas.times)
    # blocked_autorange gives one sample per block; slow calls (> min_run_time) yield 1-2 samples:
    # add single runs until min_reps samples (or 3 samples once max_time is spent).
    while len(times) < min_reps and (len(times) < 3 or time.perf_counter() - start < max_time):
        times.extend(timer.timeit(meas.number_per_run).times)
    return _summary(times, "torch_timer")


def _latency_cuda_events(fn: Callable[[], object], min_run_time: float, min_reps: int, max_time: float,
                         warmup: int = 3) -> Timing:
    """CUDA events around each call (a sync per call). Not exercised on the CPU-only machines."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (sum(times) < min_run_time and time.perf_counter() - start < max_time):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)  # elapsed_time is in ms
        if len(times) >= 3 and time.perf_counter() - start > max_time:
            break
    return _summary(times, "cuda_events")


def latency(fn: Callable[[], object], device: str | torch.device = "cpu", *, min_run_time: float = 1.0,
            min_reps: int = 5, max_time: float = 60.0, warmup: int = 1) -> Timing:
    """Latency of ``fn()`` on ``device``: see the module docstring (dispatch by ``timing_method``)."""
    method = timing_method(device)
    if method == "cuda_events":
        return _latency_cuda_events(fn, min_run_time, min_reps, max_time, warmup=max(warmup, 1))
    for _ in range(warmup):
        fn()
    return _latency_timer(fn, min_run_time, min_reps, max_time)


def interleaved_latency(fns: Mapping[str, Callable[[], object]], rounds: int = 5, min_run_time: float = 0.3,
                        device: str | torch.device = "cpu") -> dict[str, Timing]:
    """Median latency of each callable, measured round-robin (``rounds`` x each) so that background
    load on a shared machine affects all of them alike. Each round contributes one sample per callable
    (the median of a short ``blocked_autorange``); returns median and IQR over the rounds."""
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = latency(fn, device, min_run_time=min_run_time, min_reps=1, max_time=min_run_time, warmup=0)
            samples[name].append(t.median_ms / 1e3)
    return {name: _summary(s, f"interleaved_{timing_method(device)}") for name, s in samples.items()}


# ----------------------------------------------------------------------------------------------
# Peak memory


def memory_method(device: str | torch.device) -> str:
    return "cuda_max_allocated" if torch.device(device).type == "cuda" else "cpu_profiler_alloc_peak"


def _peak_memory_cpu(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return int(peak)


def _peak_memory_cuda(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> dict:
    """Peak bytes allocated by one call of ``fn`` above the level at its start (see module docstring).
    Returns dict(bytes=int, method=str)."""
    dev = torch.device(device)
    method = memory_method(dev)
    if method == "cuda_max_allocated":
        return dict(bytes=_peak_memory_cuda(fn, dev), method=method)
    return dict(bytes=_peak_memory_cpu(fn), method=method)


# ----------------------------------------------------------------------------------------------
# Steps, inputs and one profiling record

PASSES = ("fwd", "fwd_bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")


def make_step(module: nn.Module, inputs, pass_: str = "fwd", *, device: str | torch.device = "cpu",
              dtype: str = "float32") -> Callable[[], None]:
    """A closure running one pass: ``fwd`` (eval, no_grad) or ``fwd_bwd`` (train, backward of
    ``out`` with a ones gradient; gradients are reset to None at the start of each call)."""
    dev = torch.device(device)
    args = _as_tuple(inputs)
    if pass_ == "fwd":
        module.eval()

        def step():
            with torch.no_grad(), _autocast(dev, dtype):
                module(*args)

        return step
    if pass_ == "fwd_bwd":
        module.train()
        grad_out: list[torch.Tensor] = []

        def step():
            module.zero_grad(set_to_none=True)
            for a in args:
                if isinstance(a, torch.Tensor):
                    a.grad = None
            with _autocast(dev, dtype):
                out = module(*args)
            if not grad_out or grad_out[0].shape != out.shape or grad_out[0].dtype != out.dtype:
                grad_out[:] = [torch.ones_like(out)]
            out.backward(grad_out[0])

        return step
    raise ValueError(f"unknown pass {pass_!r}; choose one of {PASSES}")


def build_block(variant: str, width: int = 64, *, seed: int = 0, **kwargs) -> nn.Module:
    """The registered mixer ``variant`` at ``width`` channels (context_dim = width for the ones that
    take context)."""
    from .layers.common import create_attention, get_attention_class

    cls = get_attention_class(variant)
    torch.manual_seed(seed)
    if cls.supports_context and "context_dim" not in kwargs:
        kwargs["context_dim"] = width
    return create_attention(variant, width, **kwargs)


def block_inputs(module: nn.Module, height: int, width: int, batch: int = 1, *, context_len: int = 16,
                 device: str | torch.device = "cpu", requires_grad: bool = False, seed: int = 0) -> tuple:
    """(x,) or (x, context) for a mixer; context (B, L, context_dim) only if the mixer requires it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, module.dim, height, width, generator=g).to(device)
    x.requires_grad_(requires_grad)
    if getattr(module, "requires_context", False):
        ctx = torch.randn(batch, context_len, module.context_dim, generator=g).to(device)
        return (x, ctx)
    return (x,)


def unet_inputs(unet: nn.Module, height: int, width: int, batch: int = 1, *,
                device: str | torch.device = "cpu", seed: int = 0) -> tuple:
    """(x, t) for an InpaintUNet: x = cat(noisy, masked, mask) (B, 2C+1, H, W), t (B,)."""
    g = torch.Generator().manual_seed(seed)
    c = unet.cfg.image_channels
    noisy = torch.randn(batch, c, height, width, generator=g)
    mask = (torch.rand(batch, 1, height, width, generator=g) > 0.5).float()
    masked = torch.randn(batch, c, height, width, generator=g) * (1 - mask)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    return (torch.cat([noisy, masked, mask], dim=1).to(device), t.to(device))


def hardware_name(device: str | torch.device = "cpu") -> str:
    """GPU name on CUDA, else the CPU model from /proc/cpuinfo (or platform)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def format_ops(ops: Mapping[str, int]) -> str:
    """{op: count} -> "op:count;op:count" (sorted by op name), "" when empty."""
    return ";".join(f"{k}:{v}" for k, v in sorted(ops.items()))


def profile_module(module: nn.Module, make_inputs: Callable[[bool], tuple], *, passes: Iterable[str] = PASSES,
                   analytic_macs: int | None = None, device: str | torch.device = "cpu", dtype: str = "float32",
                   count: bool = True, count_max_bytes: float = 12e9, min_run_time: float = 1.0,
                   min_reps: int = 5, max_time: float = 60.0) -> list[dict]:
    """Counts (once) and latency + peak memory (per pass) of ``module``.

    Args:
        make_inputs: ``make_inputs(requires_grad)`` -> the positional inputs on ``device``.
        analytic_macs: the analytic forward MACs of the whole batch, or None.
        count: run fvcore / FlopCounterMode; fvcore is skipped (with a note) when its real explicit
            forward would need about ``count_max_bytes`` or more (2.2 x the largest tensor).

    Returns one dict per pass with the measurement columns of ``CSV_COLUMNS`` (no key columns).
    Exceptions of the forward (e.g. ValueError for a size the module cannot take) propagate.
    """
    dev = torch.device(device)
    module = module.to(dev)
    inputs = make_inputs(False)
    module.eval()
    with torch.no_grad():
        module(*inputs)  # probe: raises for sizes the module cannot take, before any counting
    common = dict(params=count_params(module), macs=analytic_macs, macs_fvcore=None, macs_fvcore_other=None,
                  macs_torch=None, unsupported_ops="", notes="")
    if count:
        notes = []
        need = 2.2 * largest_tensor_bytes(module, inputs)
        # FlopCounterMode on real tensors when they fit (faster for small inputs), else on meta ones
        common["macs_torch"] = torch_macs(module, inputs, meta=need >= count_max_bytes)
        if need < count_max_bytes:
            fv = fvcore_macs(module, inputs)
            common.update(macs_fvcore=fv["macs"], macs_fvcore_other=fv["other"],
                          unsupported_ops=format_ops(fv["unsupported"]))
            if fv["unsupported_matmul"]:
                notes.append("fvcore missed matmul-class ops: " + format_ops(fv["unsupported_matmul"]))
        else:
            notes.append(f"fvcore skipped: its explicit forward needs ~{need / 1e9:.1f} GB > {count_max_bytes / 1e9:.1f} GB")
        common["notes"] = "; ".join(notes)
    rows = []
    for pass_ in passes:
        args = make_inputs(pass_ == "fwd_bwd")
        step = make_step(module, args, pass_, device=dev, dtype=dtype)
        timing = latency(step, dev, min_run_time=min_run_time, min_reps=min_reps, max_time=max_time)
        module.zero_grad(set_to_none=True)  # so the memory count starts without gradients
        mem = peak_memory(step, dev)
        rows.append(dict(common, **{
            "pass": pass_,
            "latency_ms_median": timing.median_ms,
            "latency_ms_iqr": timing.iqr_ms,
            "latency_reps": timing.reps,
            "latency_method": timing.method,
            "peak_mem_mb": mem["bytes"] / 2**20,
            "mem_method": mem["method"],
            "threads": timing.threads,
        }))
        module.zero_grad(set_to_none=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Tidy CSV (one row per key; atomic rewrite; merge with what is there)

KEY_COLUMNS = ("kind", "variant", "preset", "channels", "config", "height", "width", "batch", "pass", "dtype",
               "device", "hardware", "threads")
CSV_COLUMNS = (
    "kind", "variant", "preset", "channels", "config", "height", "width", "pixels", "batch", "pass",
    "params", "macs", "macs_fvcore", "macs_torch", "macs_fvcore_other", "unsupported_ops",
    "latency_ms_median", "latency_ms_iqr", "latency_reps", "latency_method", "peak_mem_mb", "mem_method",
    "device", "dtype", "threads", "torch_version", "hardware", "error", "notes", "measured_at",
)


def row_key(row: Mapping) -> tuple:
    """The identity of a row: every ``KEY_COLUMNS`` value as a string (CSV round-trip safe)."""
    return tuple("" if row.get(k) is None else str(row.get(k)) for k in KEY_COLUMNS)


class NotAProfileTable(ValueError):
    """``--out`` points at a file that is not a profile table (it is never overwritten)."""


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of an existing profile CSV ([] when there is none). A file that is not a profile table
    (no header, or one without the key columns) raises ``NotAProfileTable``: it is never replaced."""
    if not os.path.exists(path):
        return []
    if os.path.isdir(path):
        raise NotAProfileTable(f"{path} is a folder, not a profile table (.csv)")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise NotAProfileTable(f"{path} is not a profile table ({exc}); refusing to overwrite it") from None
    need = {"kind", "variant", "height", "width", "pass"}
    if os.path.getsize(path) and not need <= set(header):
        raise NotAProfileTable(f"{path} is not a profile table (its header lacks {sorted(need - set(header))}); "
                               "refusing to overwrite it: choose another --out")
    return rows


def write_rows_atomic(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str] = CSV_COLUMNS) -> None:
    """Write ``rows`` to ``path`` atomically (``records.atomic_write_text``, the package's one writer)."""
    import io

    from .records import atomic_write_text

    extra = sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns) + extra, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(os.fspath(path), buf.getvalue())


def merge_rows(path: str | os.PathLike, new_rows: Sequence[Mapping], columns: Sequence[str] = CSV_COLUMNS) -> list[dict]:
    """Rows of ``path`` with ``new_rows`` merged in (a new row replaces the old row of its key);
    writes the result atomically and returns it."""
    merged: dict[tuple, dict] = {row_key(r): dict(r) for r in read_rows(path)}
    for r in new_rows:
        merged[row_key(r)] = dict(r)
    rows = list(merged.values())
    write_rows_atomic(path, rows, columns)
    return rows


def config_string(kwargs: Mapping | None) -> str:
    """Canonical JSON of extra constructor arguments ("" when none)."""
    return json.dumps(dict(kwargs), sort_keys=True, separators=(",", ":")) if kwargs else ""


# ----------------------------------------------------------------------------------------------
# Analysis helpers (benchmarks, notebooks and figures)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): ~1 for linear cost, ~2 for quadratic."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if lx.size < 2:
        raise ValueError("loglog_slope needs at least two points")
    return float(np.polyfit(lx, ly, 1)[0])


def crossover(x: Sequence[float], slow: Sequence[float], fast: Sequence[float]) -> float | None:
    """The smallest x at which ``fast`` drops below ``slow`` (costs measured at the same x, sorted).

    Interpolates log(slow / fast) linearly in log(x) between the two bracketing points. Returns
    x[0] if ``fast`` is already below ``slow`` at the first point, None if it never is.
    """
    xs = np.asarray(x, dtype=np.float64)
    order = np.argsort(xs)
    xs = xs[order]
    ratio = np.log(np.asarray(slow, dtype=np.float64)[order] / np.asarray(fast, dtype=np.float64)[order])
    if ratio[0] > 0:
        return float(xs[0])
    for i in range(1, xs.size):
        if ratio[i] > 0:
            lx0, lx1 = math.log(xs[i - 1]), math.log(xs[i])
            frac = -ratio[i - 1] / (ratio[i] - ratio[i - 1])
            return float(math.exp(lx0 + frac * (lx1 - lx0)))
    return None


def gmacs_per_s(macs: float, ms: float) -> float:
    """Achieved throughput in GMAC/s."""
    return macs / (ms * 1e-3) / 1e9


def matmul_gmacs_per_s(m: int = 4096, k: int = 64, n: int = 4096, *, device: str | torch.device = "cpu",
                       min_run_time: float = 1.0, dtype: torch.dtype = torch.float32) -> tuple[float, Timing]:
    """GMAC/s of a dense (m x k) @ (k x n) float32 matmul on ``device`` (the reference for efficiency)."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    t = latency(lambda: a @ b, device, min_run_time=min_run_time)
    return gmacs_per_s(m * k * n, t.median_ms), t
