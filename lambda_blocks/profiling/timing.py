"""Latency (torch.utils.benchmark on CPU, CUDA events on GPU; interleaved rounds for ratios) and peak memory."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch


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
