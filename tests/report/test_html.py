"""The HTML report: self-contained, renders in a real browser, says what happened."""

from __future__ import annotations

import re

from leanify.report.html import render_optimize


def record(selected: bool = True) -> dict:
    def cand(name, metric, s1, s32, accepted, size):
        points = [
            {"batch_size": 1, "seq_len": 128, "latency_ms": {"p50": 25 / s1, "p90": 1, "p99": 1},
             "baseline_latency_ms": {"p50": 25.0, "p90": 1, "p99": 1}, "speedup": s1,
             "speedup_ci95": [s1 - .1, s1 + .1], "peak_rss_mb": 200,
             "baseline_peak_rss_mb": 500},
            {"batch_size": 32, "seq_len": 128, "latency_ms": {"p50": 650 / s32, "p90": 1,
                                                                "p99": 1},
             "baseline_latency_ms": {"p50": 650.0, "p90": 1, "p99": 1}, "speedup": s32,
             "speedup_ci95": [s32 - .1, s32 + .1], "peak_rss_mb": 250,
             "baseline_peak_rss_mb": 600},
        ]
        return {"name": name, "passes": ["export-onnx", "quantize-dynamic"], "status": "done",
                "metric": {"name": "spearman", "value": metric, "higher_is_better": True},
                "metric_drop": 82.03 - metric, "points": points,
                "latency_ms": points[0]["latency_ms"],
                "baseline_latency_ms": points[0]["baseline_latency_ms"],
                "baseline_peak_rss_mb": 600, "peak_rss_mb": 250, "size_mb": size,
                "accepted": accepted, "reason": "ok" if accepted else "accuracy gate: <b>x</b>",
                "target_misses": [], "runtime": "onnxruntime", "artifact": "/w/model.onnx"}

    cands = [cand("onnx-fp32", 82.03, 1.3, 1.1, True, 86.0),
             cand("onnx-int8-dynamic", 81.8, 3.0, 2.7, True, 22.9),
             cand("onnx-int8-static", 45.0, 3.5, 3.1, False, 22.0),
             {"name": "broken", "passes": ["export-pt2"], "status": "failed",
              "accepted": False, "reason": "failed: export error"}]
    return {
        "schema_version": 1, "tool": "leanify optimize", "started": "2026-11-27T08:00:00",
        "task": "embedding-similarity", "data": "examples/data/stsb/sts-test.csv",
        "settings": {"threads": 2}, "versions": {"torch": "2.13.0", "onnxruntime": "1.32"},
        "machine": {"cpu": {"model": "AMD EPYC", "usable_cores": 2,
                            "isa_flags": ["avx512f", "avx512_vnni"]}},
        "input": {"path": "/models/minilm <script>", "format": "hf"},
        "baseline": {"name": "baseline", "metric": {"name": "spearman", "value": 82.03},
                     "size_mb": 87.4, "latency_ms": {"p50": 25.0}},
        "candidates": cands, "pareto_front": ["onnx-fp32", "onnx-int8-dynamic",
                                              "onnx-int8-static"],
        "selected": {"name": "onnx-int8-dynamic", "artifact": "model/model.onnx",
                     "format": "onnx", "runtime": "onnxruntime",
                     "snippet": 'session = ort.InferenceSession("model/model.onnx", opts)\n'
                                "outputs = run(feeds)  # <first output>\n"}
        if selected else None,
        "targets_met": selected,
        "verdict": "Selected onnx-int8-dynamic" if selected else "No candidate passed.",
    }


def test_report_is_self_contained_and_escaped(tmp_path):
    html = render_optimize(record())
    assert "<script" not in html.replace("&lt;script", "")  # user text is escaped, no JS
    assert not re.search(r"""(src|href)=['"]https?://""", html)  # nothing from a network
    assert "<svg" in html and "polyline" in html  # chart with a Pareto line
    assert "onnx-int8-dynamic" in html and "2.70×" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "InferenceSession(&quot;model/model.onnx&quot;" in html  # the record's snippet
    assert "# &lt;first output&gt;" in html


def test_a_runtime_without_a_plain_recipe_gets_leanifys_runner():
    rec = record()
    rec["selected"] = {"name": "torchscript-frozen", "artifact": "model/model.pt",
                       "format": "torchscript", "runtime": "torchscript", "snippet": None}
    html = render_optimize(rec)
    assert "leanify.open_runner(leanify.load('model/model.pt'))" in html


def test_report_without_a_selection_says_so():
    html = render_optimize(record(selected=False))
    assert "No candidate passed." in html and "Use the selected model" not in html


def test_report_renders_in_headless_chromium(tmp_path, browser_screenshot):
    page = tmp_path / "report.html"
    page.write_text(render_optimize(record()), encoding="utf-8")
    png, console, proc = browser_screenshot(page, "report-synthetic")
    assert png.exists() and png.stat().st_size > 20_000, proc.stderr[-2000:]
    assert console == [], console
