"""Latency statistics: percentiles, a distribution-free CI for the median, ratio CIs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval for the median from order statistics (no normality assumed).

    With n samples, the number below the true median is Binomial(n, 1/2); pick ranks j < k
    so that P(j <= B < k) >= confidence (normal approximation of the binomial).
    """
    a = np.sort(np.asarray(samples, dtype=float))
    n = len(a)
    if n < 6:  # too few samples for a meaningful interval: report the range
        return float(a[0]), float(a[-1])
    z = _z(confidence)
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(n / 2 + half))
    return float(a[lo]), float(a[hi])


def ratio_ci(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95,
    resamples: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap CI of median(numerator) / median(denominator), resampling both sides."""
    rng = np.random.default_rng(seed)
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    num_idx = rng.integers(0, len(num), size=(resamples, len(num)))
    den_idx = rng.integers(0, len(den), size=(resamples, len(den)))
    ratios = np.median(num[num_idx], axis=1) / np.median(den[den_idx], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, std, min/max and the 95% CI of the median, in milliseconds."""
    a = np.asarray(samples_ms, dtype=float)
    lo, hi = median_ci(a)
    return {
        **percentiles(a),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "p50_ci95": [lo, hi],
        "n": len(a),
    }
