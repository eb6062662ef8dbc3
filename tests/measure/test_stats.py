import numpy as np
import pytest

from leanify.measure import stats


def test_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    data = rng.lognormal(mean=2.0, sigma=0.3, size=501)
    got = stats.percentiles(data)
    assert got["p50"] == pytest.approx(np.median(data))
    assert got["p90"] == pytest.approx(np.percentile(data, 90))
    assert got["p50"] < got["p90"] < got["p99"]


def test_median_ci_covers_true_median_and_narrows():
    rng = np.random.default_rng(2)
    true_median = np.exp(2.0)  # lognormal(mu=2) median
    hits, widths = 0, []
    for _ in range(200):
        data = rng.lognormal(mean=2.0, sigma=0.3, size=60)
        lo, hi = stats.median_ci(data)
        hits += lo <= true_median <= hi
        widths.append(hi - lo)
    assert 0.88 <= hits / 200 <= 1.0  # nominal 95%
    small = np.mean([np.subtract(*stats.median_ci(rng.lognormal(2, 0.3, 20))[::-1])
                     for _ in range(50)])
    large = np.mean([np.subtract(*stats.median_ci(rng.lognormal(2, 0.3, 500))[::-1])
                     for _ in range(50)])
    assert large < small / 2


def test_ratio_ci_brackets_a_known_speedup():
    rng = np.random.default_rng(3)
    slow = rng.normal(20.0, 1.0, 200)
    fast = rng.normal(10.0, 0.5, 200)
    lo, hi = stats.ratio_ci(slow, fast)
    assert lo < 2.0 < hi
    assert hi - lo < 0.3


def test_summarize_fields():
    out = stats.summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert out["n"] == 5
    assert out["p50"] == 3.0
    assert out["max"] == 100.0
    assert out["p50_ci95"][0] <= 3.0 <= out["p50_ci95"][1]
