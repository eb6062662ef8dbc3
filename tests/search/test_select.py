import pytest

from leanify.search.select import Targets, choose, judge, pareto_front, target_misses


def trial(name, metric, p50s, size=20.0, mem=300.0):
    points = [{"batch_size": b, "seq_len": 128, "speedup": s, "latency_ms": {"p50": 10 / s}}
              for b, s in zip((1, 32), p50s, strict=True)]
    return {"name": name, "metric": {"name": "spearman", "value": metric,
                                     "higher_is_better": True},
            "points": points, "latency_ms": {"p50": points[0]["latency_ms"]["p50"]},
            "size_mb": size, "peak_rss_mb": mem, "status": "done"}


BASE = {"metric": {"name": "spearman", "value": 82.0, "higher_is_better": True}}


def test_accuracy_gate_rejects_a_drop_beyond_the_limit():
    c = trial("int8", 81.4, [2.0, 2.0])
    judge(c, BASE, Targets(max_drop=0.5))
    assert not c["accepted"]
    assert "dropped 0.60" in c["reason"] and c["metric_drop"] == pytest.approx(0.6)


def test_not_faster_is_rejected_with_the_point_named():
    c = trial("fp32", 82.0, [1.3, 0.95])
    judge(c, BASE, Targets())
    assert not c["accepted"]
    assert "batch 32" in c["reason"] and "0.95" in c["reason"]


def test_targets_are_reported_with_the_margin():
    c = trial("int8", 81.9, [2.0, 2.0], size=30.0)
    misses = target_misses(c, Targets(max_latency_ms=2.0, max_size_mb=24))
    assert any("latency 5.00 ms > target 2 ms" in m for m in misses)
    assert any("by 6.0 MB" in m for m in misses)


def test_choose_never_picks_a_rejected_candidate_and_prefers_meeting_targets():
    fast_bad = trial("fast-bad", 70.0, [5.0, 5.0])
    good = trial("good", 81.8, [2.0, 2.5], size=23)
    big = trial("big", 81.9, [3.0, 3.0], size=80)
    for c in (fast_bad, good, big):
        judge(c, BASE, Targets(max_drop=0.5, max_size_mb=24))
    assert choose([fast_bad, good, big])["name"] == "good"  # big misses the size target
    for c in (fast_bad, good, big):
        judge(c, BASE, Targets(max_drop=0.5))
    assert choose([fast_bad, good, big])["name"] == "big"
    assert choose([fast_bad, good, big], "size")["name"] == "good"
    assert choose([fast_bad]) is None


def test_impossible_target_keeps_the_best_so_far():
    a, b = trial("a", 81.9, [2.0, 2.0]), trial("b", 81.9, [3.0, 3.0])
    for c in (a, b):
        judge(c, BASE, Targets(max_latency_ms=0.001))
    best = choose([a, b])
    assert best["name"] == "b" and best["target_misses"]


def test_pareto_front():
    a, b, c = trial("a", 82.0, [1.1, 1.1]), trial("b", 81.0, [3.0, 3.0]), \
        trial("c", 80.0, [2.0, 2.0])
    assert set(pareto_front([a, b, c])) == {"a", "b"}
