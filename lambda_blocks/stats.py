"""Paired comparisons of arms on the same test problems.

Every arm of a study is scored on the same evaluation set (the same images, masks and start noise;
``evaluate.load_eval_set``), so two arms are compared image by image: for each test problem the
difference of a metric between arm A and arm B, averaged over the seeds each arm has, and a
bootstrap confidence interval of the mean difference over images (BCa, ``scipy.stats.bootstrap``,
fixed random state so tables are reproducible). This interval says how sure we are of the gap on
*this* kind of test problem; it does not cover training randomness. The seed spread (std over
seeds of each arm's mean) is reported beside it, and a difference is only called a win when the
interval excludes zero *and* the gap exceeds that spread.

Input: ``per_image.csv`` rows (``ablations collect``): one row per (run, test image).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["Paired", "paired_bootstrap", "compare", "arm_per_image", "LOWER_IS_BETTER"]

LOWER_IS_BETTER = {"lpips": True, "lpips_hole": True, "psnr": False, "psnr_hole": False, "ssim": False,
                   "ssim_hole": False}


@dataclass(frozen=True)
class Paired:
    """A minus B on one metric, paired over test images."""

    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    diff: float  # mean over images of (A - B)
    lo: float  # confidence interval of diff
    hi: float
    n_images: int
    seeds_a: int
    seeds_b: int
    seed_std_a: float  # std over seeds of A's image-mean (nan for one seed)
    seed_std_b: float
    confidence: float = 0.95

    @property
    def a_better(self) -> bool:
        """A beats B: the interval excludes 0 on A's side of it."""
        lower = LOWER_IS_BETTER.get(self.metric, True)
        return self.hi < 0 if lower else self.lo > 0

    @property
    def b_better(self) -> bool:
        lower = LOWER_IS_BETTER.get(self.metric, True)
        return self.lo > 0 if lower else self.hi < 0

    def verdict(self) -> str:
        if self.a_better:
            return f"{self.a} better"
        if self.b_better:
            return f"{self.b} better"
        return "no clear difference"

    def sentence(self, digits: int = 3) -> str:
        f = f"{{:.{digits}f}}"
        return (f"{self.a} − {self.b} on {self.metric}: {f.format(self.diff)}, "
                f"{int(self.confidence * 100)}% CI [{f.format(self.lo)}, {f.format(self.hi)}] "
                f"over {self.n_images} paired test images ({self.verdict()})")

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict()}


def paired_bootstrap(a, b, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> tuple[float, float, float]:
    """(mean of a - b, low, high): BCa bootstrap interval of the mean paired difference.

    ``a`` and ``b`` are per-image values of the same test problems in the same order. NaN pairs are
    dropped. With fewer than 3 pairs, or no variation, the interval collapses to the mean.
    """
    from scipy import stats as st

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same length, got {a.shape} and {b.shape}")
    d = a - b
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    if d.size < 3 or np.ptp(d) == 0:
        return mean, mean, mean
    res = st.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                       random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa can fail on degenerate data: percentile instead
        res = st.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                           method="percentile", random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return mean, lo, hi


def arm_per_image(per_image: pd.DataFrame, metric: str) -> tuple[pd.Series, int, float]:
    """(per-image mean over seeds indexed by image id, number of seeds, std over seeds of the mean)."""
    if metric not in per_image:
        raise KeyError(f"per-image table has no {metric!r} column")
    by_seed = per_image.pivot_table(index="id", columns="run_id", values=metric, aggfunc="mean")
    seed_means = by_seed.mean(axis=0)
    std = float(seed_means.std(ddof=1)) if len(seed_means) > 1 else float("nan")
    return by_seed.mean(axis=1), int(by_seed.shape[1]), std


def compare(per_a: pd.DataFrame, per_b: pd.DataFrame, metric: str, name_a: str, name_b: str,
            confidence: float = 0.95, seed: int = 0) -> Paired:
    """Paired comparison of two arms from their per-image rows (any number of runs / seeds each).

    Raises ValueError when the two arms were not scored on the same test images.
    """
    a, sa, stda = arm_per_image(per_a, metric)
    b, sb, stdb = arm_per_image(per_b, metric)
    if set(a.index) != set(b.index):
        only_a, only_b = sorted(set(a.index) - set(b.index))[:3], sorted(set(b.index) - set(a.index))[:3]
        raise ValueError(f"{name_a} and {name_b} were scored on different test images "
                         f"(only in {name_a}: {only_a}; only in {name_b}: {only_b})")
    b = b.loc[a.index]
    diff, lo, hi = paired_bootstrap(a.values, b.values, confidence=confidence, seed=seed)
    return Paired(metric, name_a, name_b, float(np.nanmean(a.values)), float(np.nanmean(b.values)), diff, lo, hi,
                  int(np.isfinite(a.values - b.values).sum()), sa, sb, stda, stdb, confidence)
