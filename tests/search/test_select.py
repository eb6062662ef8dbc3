import pytest

from leanify.search.select import (
    Targets,
    choose,
    finalists,
    judge,
    pareto_front,
    select_final,
    target_misses,
)


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


def test_a_nan_metric_never_passes_the_gate():
    c = trial("constant", float("nan"), [3.0, 3.0])
    judge(c, BASE, Targets(max_drop=0.5))
    assert not c["accepted"] and "nan" in c["reason"] and "accuracy gate" in c["reason"]
    c = trial("fine", 82.0, [3.0, 3.0])
    judge(c, {"metric": {"name": "spearman", "value": float("inf")}}, Targets(max_drop=0.5))
    assert not c["accepted"] and "baseline" in c["reason"]


def timed(name, rounds_b1, rounds_b32, size=20.0, mem=300.0, metric=81.9):
    """A trial with per-round speed-ups at two points, as bench records them."""
    from leanify.measure import stats

    c = trial(name, metric, [stats.log_t_interval(rounds_b1)[0],
                             stats.log_t_interval(rounds_b32)[0]], size=size, mem=mem)
    for p, r in zip(c["points"], (rounds_b1, rounds_b32), strict=True):
        p["speedup_rounds"] = list(r)
    judge(c, BASE, Targets())
    return c


def test_finalists_are_those_whose_interval_overlaps_the_best():
    best = timed("best", [2.0, 2.2, 2.1], [2.0, 2.1, 2.2])
    close = timed("close", [1.9, 2.3, 1.8], [2.1, 1.9, 2.0])  # noisy, overlaps
    far = timed("far", [1.2, 1.21, 1.19], [1.2, 1.22, 1.2])  # clearly slower
    rejected = trial("bad", 70.0, [5.0, 5.0])
    judge(rejected, BASE, Targets())
    names = [c["name"] for c in finalists([far, close, rejected, best])]
    assert names == ["best", "close"]
    many = [timed(f"c{i}", [2.0, 2.4, 1.8], [2.0, 2.4, 1.8]) for i in range(6)]
    assert len(finalists(many, cap=4)) == 4


def test_select_final_separates_when_the_paired_rounds_agree():
    # drift moves both alike in every round: paired, a is always 10% faster than b
    a = timed("a", [2.2, 1.65, 2.75], [2.2, 1.65, 2.75], size=30)
    b = timed("b", [2.0, 1.5, 2.5], [2.0, 1.5, 2.5], size=10)
    for c in (a, b):
        c["finalist"] = True
    chosen, how = select_final([a, b])
    assert chosen["name"] == "a" and how["tie_within_pct"] is None
    assert "separated" in how["rule"] and how["finalists"] == ["a", "b"]


def test_select_final_breaks_a_tie_by_size_then_memory_and_says_so():
    a = timed("a", [2.2, 1.9, 2.3], [2.1, 2.0, 2.3], size=30, mem=200)
    b = timed("b", [2.0, 2.1, 2.2], [2.2, 1.9, 2.2], size=10, mem=400)
    c = timed("c", [2.1, 2.0, 2.2], [2.1, 2.0, 2.2], size=10, mem=300)
    for t in (a, b, c):
        t["finalist"] = True
    chosen, how = select_final([a, b, c])
    assert chosen["name"] == "c"  # same size as b, less memory
    assert how["tie_within_pct"] > 0
    assert "tie within" in how["rule"] and "smaller size, then lower memory" in how["rule"]
    assert set(how["tied"]) == {"a", "b", "c"}


def test_choose_only_picks_finalists_once_they_exist():
    looks_fast = timed("noisy", [4.0, 1.0, 4.0], [4.0, 1.0, 4.0])
    steady = timed("steady", [2.0, 2.0, 2.0], [2.0, 2.0, 2.0])
    steady["finalist"] = True
    assert choose([looks_fast, steady])["name"] == "steady"
