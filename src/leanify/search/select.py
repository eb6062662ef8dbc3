"""Gates, targets, the Pareto front and the final choice. Pure functions over trial records."""

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
    drop = baseline["metric"]["value"] - candidate["metric"]["value"]
    if not candidate["metric"].get("higher_is_better", True):
        drop = -drop
    candidate["metric_drop"] = round(drop, 4)
    if drop > targets.max_drop:
        reasons.append(f"accuracy gate: {candidate['metric']['name']} dropped {drop:.2f} "
                       f"> allowed {targets.max_drop:g}")
    slower = [p for p in candidate["points"] if p["speedup"] <= 1.0]
    if slower:
        worst = min(slower, key=lambda p: p["speedup"])
        reasons.append(f"not faster than the baseline at batch {worst['batch_size']} × seq "
                       f"{worst['seq_len']} ({worst['speedup']:.2f}×)")
    candidate["accepted"] = not reasons
    candidate["reason"] = "; ".join(reasons) or "passes the accuracy gate and is faster"
    candidate["target_misses"] = target_misses(candidate, targets)


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
    """The best accepted candidate; those that meet every target come first."""
    accepted = [c for c in candidates if c.get("accepted")]
    if not accepted:
        return None
    meeting = [c for c in accepted if not c.get("target_misses")]
    pool = meeting or accepted
    return min(pool, key=lambda c: (score(c, objective), c.get("size_mb") or 0))


def pareto_front(points: list[dict[str, Any]]) -> list[str]:
    """Names of the trials no other trial beats on both latency (lower) and metric (higher)."""
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
