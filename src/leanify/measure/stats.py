"""Latency statistics: percentiles, a distribution-free CI for the median, ratio CIs.

Speed-ups between two models are computed from PAIRED rounds: in every round the models run
back to back at each point, so a round's ratio of medians cancels the machine's drift of that
moment; the spread of those ratios across rounds is the honest uncertainty. Pooling samples
across rounds instead (`ratio_ci`) treats minutes of drift as if it were sample noise.
"""

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


def paired_ratios(numerator_rounds: Sequence[float],
                  denominator_rounds: Sequence[float]) -> list[float]:
    """Per-round ratios numerator[r] / denominator[r] (e.g. baseline p50 / candidate p50)."""
    if len(numerator_rounds) != len(denominator_rounds):
        raise ValueError("paired ratios need the same rounds on both sides")
    return [float(n) / float(d) for n, d in zip(numerator_rounds, denominator_rounds,
                                                strict=True)]


def log_t_interval(ratios: Sequence[float], confidence: float = 0.95
                   ) -> tuple[float, float | None, float | None]:
    """(geometric mean, low, high) of per-round ratios: a Student-t interval on their logs.

    Why t on logs and not a bootstrap over rounds: with 2-6 rounds a bootstrap's interval is
    at most the range of the few values and under-covers badly; the t quantile (12.7 for two
    rounds, 4.3 for three) widens it as few rounds deserve. Logs make the interval symmetric
    for a speed-up and its inverse. With one round the spread is unknown: (estimate, None,
    None), and the caller must not call anything separated on it.
    """
    logs = np.log(np.asarray(ratios, dtype=float))
    n = len(logs)
    if n == 0:
        raise ValueError("no rounds")
    est = float(math.exp(logs.mean()))
    if n < 2:
        return est, None, None
    half = t_quantile(n - 1, confidence) * float(logs.std(ddof=1)) / math.sqrt(n)
    return est, float(math.exp(logs.mean() - half)), float(math.exp(logs.mean() + half))


def paired_ratio_ci(numerator_rounds: Sequence[float], denominator_rounds: Sequence[float],
                    confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Geometric mean and t-interval of the per-round paired ratios (see log_t_interval)."""
    return log_t_interval(paired_ratios(numerator_rounds, denominator_rounds), confidence)


def geomean_over_points(per_point_rounds: Sequence[Sequence[float]]) -> list[float]:
    """Per round, the geometric mean over points of per-round ratios (rounds x points in)."""
    a = np.log(np.asarray(per_point_rounds, dtype=float))  # points x rounds
    return [float(x) for x in np.exp(a.mean(axis=0))]


_T95 = {3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912, 7: 2.364624, 8: 2.306004,
        9: 2.262157}


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile: exact for 1 and 2 degrees of freedom (and tabulated for
    95% up to 9), else the Cornish-Fisher expansion around the normal (error < 0.01% there)."""
    p = 0.5 + confidence / 2
    if df < 1:
        raise ValueError("df must be at least 1")
    if abs(confidence - 0.95) < 1e-12 and df in _T95:
        return _T95[df]
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = _z(confidence)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


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
