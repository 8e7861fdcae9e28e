"""Profiling of the token mixers and U-Nets: parameters, MACs, latency, peak memory, and the analysis
helpers (log-log slopes, crossovers, efficiency) that the benchmarks, notebooks and figures share.

One subpackage, one home for profile rows: ``macs`` (counting), ``timing`` (latency, peak memory),
``measure`` (steps, inputs, one record), ``table`` (the tidy CSV), ``analysis`` (slopes,
crossovers, GMAC/s) and ``cli`` (``python -m lambda_blocks.profiling``); this module re-exports them.

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
      meta tensors (free, any size). The three counts agree exactly on every registered mixer and arm
      (tests/test_profiling.py).
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

from .macs import MATMUL_OPS, analytic_macs, count_params, einsum_macs, fvcore_macs, largest_tensor_bytes, torch_macs
from .timing import Timing, interleaved_latency, latency, memory_method, peak_memory, timing_method
from .measure import DTYPES, PASSES, block_inputs, cpu_isa, build_arm_block, build_block, format_ops, hardware_name, make_step, profile_module, unet_inputs
from .table import CSV_COLUMNS, KEY_COLUMNS, NotAProfileTable, config_string, merge_rows, read_rows, row_key, write_rows_atomic
from .analysis import crossover, gmacs_per_s, loglog_slope, matmul_gmacs_per_s

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
    "build_arm_block",
    "profile_module",
    "cpu_isa",
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
    "NotAProfileTable",
]
