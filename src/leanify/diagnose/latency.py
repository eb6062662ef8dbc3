"""Where time goes, from outside: latency over batch sizes and input lengths, a fixed-overhead
fit, thread scaling and a runtime comparison (the ONNX Runtime export measured in the same run,
alternating with the source at every point). Every number comes from `measure.bench`: each
model in its own process, warm-up excluded.

Fixed overhead: latency = a + b * work (work = tokens, batch x sequence, or items for models
without a sequence), fitted by least squares over the curve. When `a` is most of the latency at
the typical input, the cost is outside the math (framework, runtime, graph overhead, or a
computation that does not depend on the input), and making the math cheaper will not help.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from leanify.measure.bench import BenchSettings, bench
from leanify.models.artifact import Artifact

OVERHEAD_SHARE = 0.5  # fixed cost above this share of the typical latency: overhead-bound
FLAT_GROWTH = 4.0  # latency grew at least this many times less than the work: flat
POOR_SCALING = 1.15  # all cores less than this much faster than one: threads do not help

Progress = Callable[[int, int, str], None]


def has_sequence(artifact: Artifact) -> bool:
    """Whether the inputs have a length to vary (tokens, or a dynamic non-batch dim)."""
    for spec in artifact.inputs:
        if spec.name == "input_ids":
            return True
        if spec.shape and any(isinstance(d, str) for d in spec.shape[1:]):
            return True
    return False


def quick_settings(threads: int | None, quick: bool, **extra: Any) -> BenchSettings:
    """Few, short repeats: a diagnosis needs the shape of the curve, not the third digit."""
    if quick:
        return BenchSettings(threads=threads, rounds=1, warmup_s=0.15, min_iters=3,
                             min_time_s=0.25, max_time_s=4.0, **extra)
    return BenchSettings(threads=threads, rounds=2, warmup_s=0.3, min_iters=5,
                         min_time_s=0.5, max_time_s=10.0, **extra)


def curve(source: Artifact | str, batch_sizes: Sequence[int], seq_lens: Sequence[int],
          threads: int | None, quick: bool, progress: Progress | None = None,
          other: Artifact | str | None = None, **extra: Any) -> dict[str, Any]:
    """The source's latency at every point; with `other` (the same model in another runtime)
    measured in the same run, alternating with the source at every point."""
    settings = quick_settings(threads, quick, **extra)
    settings.batch_sizes, settings.seq_lens = list(batch_sizes), list(seq_lens)
    record = bench([source] if other is None else [source, other], settings, progress)
    names = [m["name"] for m in record["models"]]
    model = record["models"][0]
    out = {
        "points": sorted((_point(r) for r in record["results"] if r["model"] == names[0]),
                         key=lambda p: (p["batch_size"], p["seq_len"])),
        "threads": record["settings"]["threads"],
        "runtime": model["runtime"],
        "load_s": model["load_s"],
        "rss_loaded_mb": model["rss_loaded_mb"],
        "peak_rss_mb": model["peak_rss_mb"],
        "input_source": model["input_source"],
        "warnings": record["warnings"],
    }
    if other is not None:
        other_model = record["models"][1]
        out["other"] = {
            "name": other_model["name"], "runtime": other_model["runtime"],
            "format": other_model["format"], "peak_rss_mb": other_model["peak_rss_mb"],
            "points": sorted(({**_point(r), "speedup": r["vs_baseline"]["speedup"],
                               "speedup_ci95": r["vs_baseline"]["speedup_ci95"]}
                              for r in record["results"] if r["model"] == names[1]),
                             key=lambda p: (p["batch_size"], p["seq_len"])),
        }
    return out


def runtimes(measured: dict[str, Any], typical: tuple[int, int]) -> dict[str, Any] | None:
    """The runtime comparison at the typical point, from a curve measured with `other`."""
    other = measured.get("other")
    if other is None:
        return None
    key = (typical[0], typical[1])
    src = next((p for p in measured["points"] if (p["batch_size"], p["seq_len"]) == key), None)
    alt = next((p for p in other["points"] if (p["batch_size"], p["seq_len"]) == key), None)
    if src is None or alt is None:
        return None
    speedups = [p["speedup"] for p in other["points"]]
    return {
        "point": {"batch_size": key[0], "seq_len": key[1]},
        "models": [
            {"name": "source", "runtime": measured["runtime"], "p50_ms": src["p50_ms"],
             "speedup": 1.0, "speedup_ci95": [1.0, 1.0], "peak_rss_mb": measured["peak_rss_mb"]},
            {"name": other["name"], "runtime": other["runtime"], "p50_ms": alt["p50_ms"],
             "speedup": alt["speedup"], "speedup_ci95": alt["speedup_ci95"],
             "peak_rss_mb": other["peak_rss_mb"]},
        ],
        "speedup_range": [min(speedups), max(speedups)],
        "note": "measured in the curve's run, alternating with the source at every point",
    }


def _point(row: dict[str, Any]) -> dict[str, Any]:
    return {"batch_size": row["batch_size"], "seq_len": row["seq_len"],
            "p50_ms": row["latency_ms"]["p50"], "p90_ms": row["latency_ms"]["p90"],
            "ci95_ms": row["latency_p50_ci95_ms"], "first_run_ms": row["first_run_ms"],
            "peak_rss_mb": row["peak_rss_mb"], "throughput_per_s": row["throughput_per_s"]}


def fit_overhead(points: list[dict[str, Any]], typical: tuple[int, int],
                 sequence: bool) -> dict[str, Any]:
    """latency = a + b * work, least squares; a's share of the typical latency."""
    work = np.array([p["batch_size"] * (p["seq_len"] if sequence else 1) for p in points],
                    dtype=np.float64)
    lat = np.array([p["p50_ms"] for p in points], dtype=np.float64)
    unit = "tokens" if sequence else "items"
    if len(set(work.tolist())) < 2:
        return {"fitted": False, "reason": "fewer than two input sizes were measured",
                "unit": unit}
    b, a = np.polyfit(work, lat, 1)
    if b < 0:  # latency falls with work: all of it is overhead (and noise)
        a, b = float(lat.mean()), 0.0
    a = max(float(a), 0.0)
    pred = a + b * work
    ss_res = float(((lat - pred) ** 2).sum())
    ss_tot = float(((lat - lat.mean()) ** 2).sum()) or 1e-12
    typ_work = typical[0] * (typical[1] if sequence else 1)
    typ = a + b * typ_work
    share = a / typ if typ > 0 else 1.0
    growth = float(lat.max() / max(lat.min(), 1e-9))
    work_growth = float(work.max() / work.min())
    return {
        "fitted": True,
        "unit": unit,
        "intercept_ms": round(a, 4),
        "per_unit_ms": round(float(b), 6),
        "r2": round(1.0 - ss_res / ss_tot, 4),
        "share_at_typical": round(float(share), 3),
        "latency_growth": round(growth, 2),
        "work_growth": round(work_growth, 2),
        # both: a large intercept, and latency that really stayed flat (a noisy fit on a
        # busy machine can put a large intercept under a steep curve)
        "overhead_bound": bool(share > OVERHEAD_SHARE and growth < work_growth / FLAT_GROWTH),
    }


def thread_scaling(source: Artifact | str, typical: tuple[int, int], all_threads: int,
                   all_p50: float, quick: bool, progress: Progress | None = None,
                   **extra: Any) -> dict[str, Any]:
    """The typical point on one thread (its own run), against the curve's all-cores figure."""
    if all_threads <= 1:
        return {"measured": False, "reason": "only one usable core"}
    settings = quick_settings(1, quick, **extra)
    settings.batch_sizes, settings.seq_lens = [typical[0]], [typical[1]]
    one = bench([source], settings, progress)["results"][0]["latency_ms"]["p50"]
    speedup = one / all_p50 if all_p50 > 0 else 0.0
    return {"measured": True, "threads_1_p50_ms": round(one, 4),
            f"threads_{all_threads}_p50_ms": round(all_p50, 4), "all_threads": all_threads,
            "speedup": round(speedup, 3), "efficiency": round(speedup / all_threads, 3),
            "scales": bool(speedup >= POOR_SCALING),
            "note": "one thread and all cores were measured in separate runs"}
