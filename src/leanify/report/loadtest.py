"""The load test as a page: latency against offered load, the budget, and the table."""

from __future__ import annotations

from html import escape
from typing import Any

from leanify.report.doctor import _lines, _table
from leanify.report.html import CSS


def render_loadtest_html(record: dict[str, Any]) -> str:
    s = record["settings"]
    points = record["points"]
    series = {name: [(p["offered_rps"], p[f"{name}_ms"]) for p in points
                     if p[f"{name}_ms"] is not None] for name in ("p50", "p95", "p99")}
    series = {k: v for k, v in series.items() if v}
    budget = s.get("p95_budget_ms")
    if budget and series:
        xs = [x for pts in series.values() for x, _ in pts]
        series[f"budget {budget:g} ms"] = [(min(xs), budget), (max(xs), budget)]
    rows = [[p["rate_rps"], p["offered_rps"], p["throughput_rps"], p["p50_ms"], p["p95_ms"],
             p["p99_ms"], p["rejected_rate"], p["error_rate"],
             p["server"]["batch_p50"], p["server"]["queue_p50_ms"],
             p["server"]["model_p50_ms"],
             p["server"]["http_and_client_p50_ms"],
             "yes" if p["holds_budget"] else ("no" if budget else "–")] for p in points]
    ok = record.get("best_rate_rps") is not None
    return "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>leanify loadtest — {escape(s['url'])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>leanify loadtest</h1>",
        f"<p class='sub'>{escape(s['url'])} · Poisson arrivals, {s['duration_s']:g} s per "
        f"rate · timeout {s['timeout_s']:g} s · {escape(record['started'])}</p>",
        f"<div class='verdict {'ok' if ok else 'bad'}'>{escape(record['verdict'])}</div>",
        "<h2>Latency against load</h2>",
        _lines(series, "offered load (requests/s)", "latency (ms)") if series else
        "<p>No request was answered.</p>",
        "<p class='small'>Latency of answered requests, from each request's scheduled arrival "
        "(open loop: the load does not slow down when the server does).</p>",
        "<h2>Per rate</h2>",
        _table(["rate", "offered /s", "answered /s", "p50 ms", "p95 ms", "p99 ms",
                "rejected", "errors", "batch p50", "queue p50 ms", "model p50 ms",
                "HTTP+client p50 ms", "holds budget"], rows),
        "<p class='small'>Batch size, queue and model times (tokenizing included) come from the "
        "server's Server-Timing header; "
        "HTTP+client is the rest of the median round trip. Rejected: 429 answers from a full "
        "queue.</p>",
        "</body></html>"])
