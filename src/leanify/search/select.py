"""Gates, targets, the Pareto front and the final choice. Pure functions over trial records.

`judge` reads only a trial's stored measurements (metric, points, size, memory), so a resumed
run with other targets re-judges every cached trial without measuring anything again.
Selection is two-staged: `finalists` keeps the accepted trials whose interval on the
objective overlaps the best one's (each trial timed only against the baseline, so those
intervals are wide); `select_final` then picks among finalists measured side by side in one
interleaved run, comparing them round by round, and says how a tie was broken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("latency", "size", "memory")


@dataclass(frozen=True)
class Targets:
    max_drop: float = 0.5  # metric points (e.g. Spearman x100) the user accepts to lose
    max_latency_ms: float | None = None  # at the primary point (smallest batch, longest seq)
    max_size_mb: float | None = None
    max_memory_mb: float | None = None


def judge(candidate: dict[str, Any], baseline: dict[str, Any], targets: Targets) -> None:
    """Fill `accepted`, `reason` and `target_misses` in place. Gates first, targets after."""
    reasons = []
    value, base_value = candidate["metric"]["value"], baseline["metric"]["value"]
    if not (_finite(value) and _finite(base_value)):
        # nan > max_drop is False: without this a NaN metric would pass the gate
        who = "the candidate's" if not _finite(value) else "the baseline's"
        candidate["metric_drop"] = None
        candidate["accepted"] = False
        candidate["reason"] = (f"accuracy gate: {who} {candidate['metric']['name']} is "
                               f"{_show(value if not _finite(value) else base_value)}, not a "
                               "number that can be compared (e.g. constant outputs)")
        candidate["target_misses"] = target_misses(candidate, targets)
        return
    drop = base_value - value
    if not candidate["metric"].get("higher_is_better", True):
        drop = -drop
    percent = (candidate["metric"].get("details") or {}).get("drop_unit") == "percent"
    if percent:  # e.g. perplexity: the gate is a relative increase, in percent
        drop = drop / abs(base_value) * 100 if base_value else float("inf")
    candidate["metric_drop"] = round(drop, 4)
    if drop > targets.max_drop:
        unit = "%" if percent else ""
        reasons.append(f"accuracy gate: {candidate['metric']['name']} dropped {drop:.2f}{unit} "
                       f"> allowed {targets.max_drop:g}{unit}")
    slower = [p for p in candidate["points"] if p["speedup"] <= 1.0]
    if slower:
        worst = min(slower, key=lambda p: p["speedup"])
        reasons.append(f"not faster than the baseline at batch {worst['batch_size']} × seq "
                       f"{worst['seq_len']} ({worst['speedup']:.2f}×)")
    candidate["accepted"] = not reasons
    candidate["reason"] = "; ".join(reasons) or "passes the accuracy gate and is faster"
    candidate["target_misses"] = target_misses(candidate, targets)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _show(value: Any) -> str:
    return "missing" if value is None else str(value)


def target_misses(candidate: dict[str, Any], targets: Targets) -> list[str]:
    misses = []
    p50 = candidate["latency_ms"]["p50"]
    if targets.max_latency_ms is not None and p50 > targets.max_latency_ms:
        misses.append(f"latency {p50:.2f} ms > target {targets.max_latency_ms:g} ms "
                      f"(by {p50 - targets.max_latency_ms:.2f} ms, "
                      f"{p50 / targets.max_latency_ms:.2f}×)")
    size = candidate.get("size_mb")
    if targets.max_size_mb is not None and size is not None and size > targets.max_size_mb:
        misses.append(f"size {size:.1f} MB > target {targets.max_size_mb:g} MB "
                      f"(by {size - targets.max_size_mb:.1f} MB)")
    mem = candidate.get("peak_rss_mb")
    if targets.max_memory_mb is not None and mem is not None and mem > targets.max_memory_mb:
        misses.append(f"peak memory {mem:.0f} MB > target {targets.max_memory_mb:g} MB "
                      f"(by {mem - targets.max_memory_mb:.0f} MB)")
    return misses


def score(candidate: dict[str, Any], objective: str) -> float:
    """Lower is better."""
    if objective == "size":
        return candidate.get("size_mb") or math.inf
    if objective == "memory":
        return candidate.get("peak_rss_mb") or math.inf
    # latency: geometric mean of the speed-ups over every measured point, negated
    speedups = [p["speedup"] for p in candidate["points"]]
    return -math.exp(sum(math.log(s) for s in speedups) / len(speedups))


def choose(candidates: list[dict[str, Any]], objective: str = "latency") -> dict[str, Any] | None:
    """The best accepted candidate; those that meet every target come first. Once finalists
    were measured side by side (`finalist`), only they can be chosen."""
    accepted = [c for c in candidates if c.get("accepted")]
    if any(c.get("finalist") for c in accepted):
        accepted = [c for c in accepted if c.get("finalist")]
    if not accepted:
        return None
    meeting = [c for c in accepted if not c.get("target_misses")]
    pool = meeting or accepted
    return min(pool, key=lambda c: (score(c, objective), c.get("size_mb") or 0))


FINALISTS = 4  # at most this many are measured side by side, the best estimates first
TIE_RULES = {"latency": ("size", "memory"), "size": ("memory", "latency"),
             "memory": ("size", "latency")}
MEMORY_TIE = 0.02  # peak memory within 2% is a tie (it moves a little between runs)


def objective_interval(candidate: dict[str, Any], objective: str
                       ) -> tuple[float, float, float]:
    """(score, low, high) on the objective, lower is better (see `score`).

    Latency: the per-round geometric mean over points of the paired speed-ups, with a t-interval
    over rounds (stats.log_t_interval); without per-round ratios, or with one round, the
    per-point intervals' geometric means. Size is exact; memory is taken as exact here.
    """
    if objective != "latency":
        value = score(candidate, objective)
        return value, value, value
    from leanify.measure import stats

    points = candidate["points"]
    rounds = [p.get("speedup_rounds") for p in points]
    est, lo, hi = -score(candidate, objective), None, None
    if all(rounds) and len({len(r) for r in rounds}) == 1 and len(rounds[0]) >= 2:
        _est, lo, hi = stats.log_t_interval(stats.geomean_over_points(rounds))
    if lo is None or hi is None:
        lows = [p.get("speedup_ci95", [p["speedup"]] * 2)[0] for p in points]
        highs = [p.get("speedup_ci95", [p["speedup"]] * 2)[1] for p in points]
        lo, hi = _geomean(lows), _geomean(highs)
    return -est, -hi, -lo


def finalists(candidates: list[dict[str, Any]], objective: str = "latency",
              cap: int = FINALISTS) -> list[dict[str, Any]]:
    """Accepted candidates that may be the best: those whose interval on the objective
    overlaps the best estimate's, best estimates first, at most `cap`. Candidates meeting
    every target come first, as in `choose`."""
    accepted = [c for c in candidates if c.get("accepted")]
    if not accepted:
        return []
    pool = [c for c in accepted if not c.get("target_misses")] or accepted
    intervals = {id(c): objective_interval(c, objective) for c in pool}
    ranked = sorted(pool, key=lambda c: (intervals[id(c)][0], c.get("size_mb") or 0))
    _best, _best_lo, best_hi = intervals[id(ranked[0])]
    if objective == "memory":
        best_hi = best_hi * (1 + MEMORY_TIE)
    keep = [c for c in ranked if intervals[id(c)][1] <= best_hi]
    return keep[:cap]


def select_final(candidates: list[dict[str, Any]], objective: str = "latency"
                 ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Pick among finalists measured side by side; return (chosen, how).

    Latency: finalists are compared with the best estimate round by round (their speed-ups
    over the baseline come from the same rounds, so best/other is a paired ratio); those whose
    interval of that ratio still includes 1 are tied with it, and the tie is broken by the
    next criteria (smaller size, then lower memory). `how` is leanify.json's `selection`.
    """
    pool = [c for c in candidates if c.get("accepted") and c.get("finalist")]
    pool = [c for c in pool if not c.get("target_misses")] or pool
    how: dict[str, Any] = {"objective": objective, "finalists": [c["name"] for c in candidates
                                                                 if c.get("finalist")]}
    if not pool:
        how.update(rule="no finalist passed the gates", tie_within_pct=None, tied=[])
        return None, how
    ranked = sorted(pool, key=lambda c: (score(c, objective), c.get("size_mb") or 0))
    best = ranked[0]
    tied, spread, separated_by = [best], 0.0, None
    for other in ranked[1:]:
        lo, hi = _versus(best, other, objective)
        if lo is None or hi is None or lo <= 1.0:
            tied.append(other)
            spread = max(spread, abs(hi - 1) if hi is not None else math.inf,
                         abs(1 - lo) if lo is not None else math.inf)
        elif separated_by is None or lo - 1 < separated_by:
            separated_by = lo - 1
    how["tied"] = [c["name"] for c in tied]
    if len(tied) == 1:
        how["tie_within_pct"] = None
        how["rule"] = (f"best {objective}" if len(ranked) == 1 else
                       f"best {objective}, separated from the runner-up "
                       f"(by at least {100 * (separated_by or 0):.1f}%)")
        return best, how
    rules = TIE_RULES[objective]
    chosen = min(tied, key=lambda c: tuple(_tie_key(c, r) for r in rules))
    how["tie_within_pct"] = round(100 * spread, 1) if math.isfinite(spread) else None
    within = (f"tie within {how['tie_within_pct']:g}%" if how["tie_within_pct"] is not None
              else "tie (too few rounds to separate)")
    how["rule"] = (f"{within} on {objective} between {', '.join(how['tied'])}: broken by "
                   + ", then ".join(_RULE_WORDS[r] for r in rules))
    return chosen, how


_RULE_WORDS = {"size": "smaller size", "memory": "lower memory", "latency": "lower latency"}


def _tie_key(candidate: dict[str, Any], rule: str) -> float:
    if rule == "size":
        return candidate.get("size_mb") or math.inf
    if rule == "memory":
        return candidate.get("peak_rss_mb") or math.inf
    return score(candidate, "latency")


def _versus(best: dict[str, Any], other: dict[str, Any], objective: str
            ) -> tuple[float | None, float | None]:
    """Interval of how much better `best` is than `other` (ratio; > 1: better)."""
    if objective == "size":
        a, b = best.get("size_mb") or math.inf, other.get("size_mb") or math.inf
        return (b / a, b / a) if a < b else (1.0, 1.0)
    if objective == "memory":
        a, b = best.get("peak_rss_mb") or math.inf, other.get("peak_rss_mb") or math.inf
        ratio = b / a
        return (ratio, ratio) if ratio > 1 + MEMORY_TIE else (1.0, 1.0)
    from leanify.measure import stats

    per_point = []
    others = {(p["batch_size"], p["seq_len"]): p for p in other["points"]}
    for p in best["points"]:
        q = others.get((p["batch_size"], p["seq_len"]))
        if q is None or not p.get("speedup_rounds") or not q.get("speedup_rounds") or \
                len(p["speedup_rounds"]) != len(q["speedup_rounds"]):
            return None, None
        per_point.append(stats.paired_ratios(p["speedup_rounds"], q["speedup_rounds"]))
    _est, lo, hi = stats.log_t_interval(stats.geomean_over_points(per_point))
    return lo, hi


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def pareto_front(points: list[dict[str, Any]]) -> list[str]:
    """Names of the trials no other trial beats on both latency (lower) and metric (higher).
    A trial whose metric is not a finite number is on no front."""
    points = [p for p in points if _finite(p["metric"]["value"])]
    front = []
    for a in points:
        dominated = any(
            b is not a
            and b["latency_ms"]["p50"] <= a["latency_ms"]["p50"]
            and _metric(b) >= _metric(a)
            and (b["latency_ms"]["p50"] < a["latency_ms"]["p50"] or _metric(b) > _metric(a))
            for b in points
        )
        if not dominated:
            front.append(a["name"])
    return front


def _metric(trial: dict[str, Any]) -> float:
    value = trial["metric"]["value"]
    return value if trial["metric"].get("higher_is_better", True) else -value
