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


def test_t_quantile_matches_the_tables():
    assert stats.t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t_quantile(3) == pytest.approx(3.182, abs=1e-3)
    assert stats.t_quantile(20) == pytest.approx(2.086, abs=1e-3)
    assert stats.t_quantile(10, 0.90) == pytest.approx(1.812, abs=2e-3)


def test_paired_ratios_cancel_drift_that_pooling_mistakes_for_noise():
    # The machine slows down 40% over the run; the candidate is 1.25x faster in every round.
    drift = [1.0, 1.2, 1.4, 1.1, 1.3]
    base = [10.0 * d for d in drift]
    cand = [8.0 * d for d in drift]
    est, lo, hi = stats.paired_ratio_ci(base, cand)
    assert est == pytest.approx(1.25)
    assert lo == pytest.approx(1.25) and hi == pytest.approx(1.25)
    # pooled samples see the drift as spread
    rng = np.random.default_rng(4)
    base_s = np.concatenate([rng.normal(b, 0.1, 30) for b in base])
    cand_s = np.concatenate([rng.normal(c, 0.1, 30) for c in cand])
    plo, phi = stats.ratio_ci(base_s, cand_s)
    assert phi - plo > 0.04  # wider than the paired interval, which is exact here


def test_log_t_interval_covers_and_is_conservative_with_few_rounds():
    rng = np.random.default_rng(5)
    hits3, width3, width10 = 0, [], []
    for _ in range(400):
        ratios = np.exp(rng.normal(np.log(1.2), 0.05, 3))
        est, lo, hi = stats.log_t_interval(ratios)
        hits3 += lo <= 1.2 <= hi
        width3.append(hi - lo)
        est, lo, hi = stats.log_t_interval(np.exp(rng.normal(np.log(1.2), 0.05, 10)))
        width10.append(hi - lo)
    assert hits3 / 400 >= 0.92
    assert np.mean(width10) < np.mean(width3) / 2
    est, lo, hi = stats.log_t_interval([1.3])
    assert est == pytest.approx(1.3) and lo is None and hi is None


def test_geomean_over_points_is_per_round():
    per_round = stats.geomean_over_points([[2.0, 1.0], [0.5, 4.0]])
    assert per_round == pytest.approx([1.0, 2.0])
