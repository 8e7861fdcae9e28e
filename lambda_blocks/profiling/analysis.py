"""Analysis helpers the benchmarks, notebooks and figures share: log-log slopes, crossovers, achieved GMAC/s."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .timing import Timing, latency


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): ~1 for linear cost, ~2 for quadratic.
    Points that are not finite and positive (a failed measurement) are left out; NaN when fewer
    than two remain. The one slope of the package (benchmarks, figures, the walkthrough)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


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
