"""Self-contained HTML reports: inline CSS and SVG, no scripts, no network, works offline."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from leanify.serve import SERVABLE_TASKS

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d232a;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}
.sub{color:#5b6670;margin-top:0}.verdict{padding:.8rem 1rem;border-radius:6px;margin:1rem 0}
.ok{background:#e7f6ec;border:1px solid #9fd8b0}.bad{background:#fdecea;border:1px solid #f3b2ab}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{padding:.35rem .5rem;border-bottom:1px solid #e3e7eb;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.l,th.l{text-align:left}th{background:#f5f7f9}
tr.sel td{background:#fff8dc}.yes{color:#1a7f37;font-weight:600}.no{color:#b42318}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f5f7f9;padding:.8rem;border-radius:6px;overflow-x:auto}
.small{font-size:.8rem;color:#5b6670}svg text{font-family:inherit}
"""


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return escape(str(value))


def render_optimize(record: dict[str, Any]) -> str:
    base = record["baseline"]
    cands = record["candidates"]
    selected = record.get("selected")
    sel = next((c for c in cands if selected and c["name"] == selected["name"]), None)
    cpu = record["machine"]["cpu"]
    verdict_ok = bool(selected) and record.get("targets_met")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>leanify report — {escape(str(record['input']['path']))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>leanify optimize report</h1>",
        f"<p class='sub'>{escape(str(record['input']['path']))} · task "
        f"<b>{escape(record['task'])}</b> · data {escape(str(record['data']))}<br>"
        f"{escape(str(cpu['model']))}, {cpu['usable_cores']} cores "
        f"({escape(', '.join(cpu['isa_flags']))}) · threads {record['settings']['threads']} · "
        f"{escape(record['started'])}</p>",
        f"<div class='verdict {'ok' if verdict_ok else 'bad'}'>{escape(record['verdict'])}</div>",
        *[f"<div class='verdict bad'>warning: {escape(w)}</div>"
          for w in record.get("warnings", [])],
        "<h2>Before and after</h2>",
        _before_after(base, sel),
        "<h2>Latency vs accuracy</h2>",
        _chart(base, cands, record.get("pareto_front", []), selected),
        "<p class='small'>Each dot is a candidate (green: accepted; red: rejected). The line "
        "joins the Pareto front: no other candidate is both faster and more accurate. Latency "
        "is the p50 at the primary point (smallest batch, longest sequence); the finalists were "
        "measured together in one interleaved run.</p>",
        _selection(record.get("selection") or {}),
        "<h2>Every candidate</h2>",
        _candidates_table(cands, selected),
    ]
    if selected:
        parts += ["<h2>Use the selected model</h2>", _snippet(record)]
        if record.get("task") in SERVABLE_TASKS:
            parts.append("<p>Or serve it: <code>leanify serve RUN_FOLDER</code> "
                         f"({SERVABLE_TASKS[record['task']]}, a bounded queue, OpenAI-shaped "
                         "endpoints), and measure it under load with <code>leanify "
                         "loadtest</code>.</p>")
    parts += [
        "<h2>How this was measured</h2>",
        "<p class='small'>Accuracy on the evaluation split (the calibration split never "
        "overlaps it). Latency: each model in its own process, rounds interleaved with the "
        "baseline, warm-up excluded; medians with 95% intervals are in leanify.json. Memory: "
        "peak resident set from the OS in the measuring process, minus a bare Python "
        f"interpreter. Versions: {escape(_versions(record))}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _selection(selection: dict) -> str:
    """How the finalists were told apart (leanify.json's `selection`), in one line."""
    if not selection.get("finalists"):
        return ""
    rounds = selection.get("rounds")
    return (f"<p class='small'>Finalists: {escape(', '.join(selection['finalists']))}"
            f"{f' ({rounds} rounds side by side)' if rounds else ''}. Selection: "
            f"{escape(selection.get('rule') or '')}.</p>")


def _versions(record: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)


def _before_after(base: dict[str, Any], sel: dict[str, Any] | None) -> str:
    rows = ["<table><tr><th class='l'></th><th>baseline</th>"
            + (f"<th>{escape(sel['name'])}</th><th>change</th>" if sel else "") + "</tr>"]
    metric = base["metric"]
    cells = [(f"{escape(metric['name'])}", metric["value"],
              sel["metric"]["value"] if sel else None, "diff")]
    if sel:
        for p in sel["points"]:
            cells.append((f"p50 latency ms, batch {p['batch_size']} × seq {p['seq_len']}",
                          p["baseline_latency_ms"]["p50"], p["latency_ms"]["p50"], "speedup"))
    cells.append(("size on disk, MB", base.get("size_mb"), sel.get("size_mb") if sel else None,
                  "ratio"))
    if sel:
        cells.append(("peak memory, MB", sel.get("baseline_peak_rss_mb"), sel.get("peak_rss_mb"),
                      "ratio"))
    for label, before, after, kind in cells:
        row = f"<tr><td>{label}</td><td>{_f(before)}</td>"
        if sel:
            change = "–"
            if before is not None and after is not None and after != 0:
                if kind == "diff":
                    change = f"{after - before:+.2f}"
                elif kind == "speedup":
                    change = f"{before / after:.2f}× faster"
                else:
                    change = f"{after / before:.2f}×" if before else "–"
            row += f"<td>{_f(after)}</td><td>{change}</td>"
        rows.append(row + "</tr>")
    if sel:
        rows.append(f"<tr><td>runtime</td><td>{escape(str(base.get('format', '')))}</td>"
                    f"<td>{escape(_ran_with(sel))}</td><td></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _ran_with(trial: dict[str, Any]) -> str:
    """e.g. 'openvino · bf16': the runtime and, where it reports one, the precision that ran."""
    precision = (trial.get("runtime_settings") or {}).get("inference_precision")
    runtime = str(trial.get("runtime") or "–")
    return f"{runtime} · {precision}" if precision else runtime


def _chart(base: dict[str, Any], cands: list[dict[str, Any]], front: list[str],
           selected: dict[str, Any] | None) -> str:
    pts = [c for c in cands if c.get("status") == "done" and "latency_ms" in c
           and math.isfinite(c["metric"]["value"])]  # a NaN metric has no place on the axis
    if not pts:
        return "<p>No candidate finished, so there is nothing to plot.</p>"
    base_lat = base.get("latency_ms", {}).get("p50")
    xs = [c["latency_ms"]["p50"] for c in pts] + ([base_lat] if base_lat else [])
    ys = [c["metric"]["value"] for c in pts] + [base["metric"]["value"]]
    w, h, pad_l, pad_b, pad_t, pad_r = 760, 380, 70, 50, 20, 180
    x_lo, x_hi = min(xs) * 0.9, max(xs) * 1.1
    y_span = max(ys) - min(ys) or 1.0
    y_lo, y_hi = min(ys) - 0.15 * y_span, max(ys) + 0.15 * y_span

    def sx(v: float) -> float:  # log scale: speed-ups read as equal distances
        return pad_l + (math.log(v) - math.log(x_lo)) / (math.log(x_hi) - math.log(x_lo)) * (
            w - pad_l - pad_r)

    def sy(v: float) -> float:
        return pad_t + (y_hi - v) / (y_hi - y_lo) * (h - pad_t - pad_b)

    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
           f"viewBox='0 0 {w} {h}' role='img' aria-label='latency versus accuracy'>",
           f"<rect x='{pad_l}' y='{pad_t}' width='{w - pad_l - pad_r}' "
           f"height='{h - pad_t - pad_b}' fill='#fbfcfd' stroke='#d0d7de'/>"]
    for i in range(5):
        yv = y_lo + (y_hi - y_lo) * i / 4
        svg.append(f"<text x='{pad_l - 8}' y='{sy(yv) + 4:.1f}' font-size='11' "
                   f"text-anchor='end'>{yv:.2f}</text>")
        xv = math.exp(math.log(x_lo) + (math.log(x_hi) - math.log(x_lo)) * i / 4)
        svg.append(f"<text x='{sx(xv):.1f}' y='{h - pad_b + 16}' font-size='11' "
                   f"text-anchor='middle'>{xv:.1f}</text>")
    svg.append(f"<text x='{(pad_l + w - pad_r) / 2}' y='{h - 8}' font-size='12' "
               "text-anchor='middle'>p50 latency, ms (log scale)</text>")
    svg.append(f"<text transform='translate(16 {(h - pad_b) / 2}) rotate(-90)' font-size='12' "
               f"text-anchor='middle'>{escape(base['metric']['name'])}</text>")
    front_pts = sorted((c for c in pts if c["name"] in front), key=lambda c: c["latency_ms"]["p50"])
    if len(front_pts) > 1:
        path = " ".join(f"{sx(c['latency_ms']['p50']):.1f},{sy(c['metric']['value']):.1f}"
                        for c in front_pts)
        svg.append(f"<polyline points='{path}' fill='none' stroke='#0969da' "
                   "stroke-dasharray='4 3' stroke-width='1.5'/>")
    if base_lat:
        bx, by = sx(base_lat), sy(base["metric"]["value"])
        svg.append(f"<rect x='{bx - 5:.1f}' y='{by - 5:.1f}' width='10' height='10' "
                   f"fill='#57606a'><title>baseline: {base_lat:.2f} ms</title></rect>")
        svg.append(f"<text x='{bx + 8:.1f}' y='{by + 4:.1f}' font-size='11'>baseline</text>")
    placed: list[tuple[float, float]] = []  # label anchors so far: nudge labels apart
    for c in sorted(pts, key=lambda c: c["latency_ms"]["p50"]):
        cx, cy = sx(c["latency_ms"]["p50"]), sy(c["metric"]["value"])
        ly = cy + 4
        while any(abs(px - cx) < 110 and abs(py - ly) < 12 for px, py in placed):
            ly += 13
        placed.append((cx, ly))
        colour = "#1a7f37" if c.get("accepted") else "#cf222e"
        ring = " stroke='#bf8700' stroke-width='3'" if selected and c["name"] == selected[
            "name"] else ""
        svg.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='6' fill='{colour}'{ring}>"
                   f"<title>{escape(c['name'])}: {c['latency_ms']['p50']:.2f} ms, "
                   f"{c['metric']['value']:.2f}</title></circle>")
        svg.append(f"<text x='{cx + 9:.1f}' y='{ly:.1f}' font-size='11'>"
                   f"{escape(c['name'])}</text>")
    svg.append("</svg>")
    return "\n".join(svg)


def _candidates_table(cands: list[dict[str, Any]], selected: dict[str, Any] | None) -> str:
    points = sorted({(p["batch_size"], p["seq_len"]) for c in cands for p in c.get("points", [])})
    head = "".join(f"<th>p50 ms b{b}×s{s}</th><th>speed-up</th>" for b, s in points)
    rows = [f"<table><tr><th class='l'>candidate</th><th class='l'>passes</th><th>metric</th>"
            f"<th>drop</th>{head}<th>size MB</th><th>peak MB</th><th class='l'>verdict</th></tr>"]
    for c in cands:
        by_point = {(p["batch_size"], p["seq_len"]): p for p in c.get("points", [])}
        lat = ""
        for key in points:
            p = by_point.get(key)
            lat += (f"<td>{_f(p['latency_ms']['p50'])}</td><td>{p['speedup']:.2f}×</td>" if p
                    else "<td>–</td><td>–</td>")
        metric = c.get("metric", {}).get("value")
        cls = " class='sel'" if selected and c["name"] == selected["name"] else ""
        ok = "<span class='yes'>accepted</span>" if c.get("accepted") else \
            "<span class='no'>rejected</span>"
        misses = "; ".join(c.get("target_misses", []))
        reason = escape(c.get("reason", "")) + (f"<br>targets: {escape(misses)}" if misses else "")
        rows.append(
            f"<tr{cls}><td>{escape(c['name'])}</td><td class='l'><code>"
            f"{escape(' → '.join(c['passes']))}</code><br><span class='small'>"
            f"{escape(_ran_with(c))}</span></td><td>{_f(metric)}</td>"
            f"<td>{_f(c.get('metric_drop'))}</td>{lat}<td>{_f(c.get('size_mb'), 1)}</td>"
            f"<td>{_f(c.get('peak_rss_mb'), 0)}</td><td class='l'>{ok}<br>"
            f"<span class='small'>{reason}</span></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _runtime_line(selected: dict[str, Any]) -> str:
    """Runtime, the precision that ran and the settings, as the runtime reported them."""
    ran = dict(selected.get("runtime_settings") or {})
    text = f"Runtime: <b>{escape(str(selected.get('runtime')))}</b>"
    precision = ran.pop("inference_precision", None)
    if precision:
        text += f" · precision that ran: <b>{escape(str(precision))}</b>"
    if ran:
        text += " · settings: " + ", ".join(f"<code>{escape(str(k))}={escape(str(v))}</code>"
                                            for k, v in ran.items())
    return text + "."


def _snippet(record: dict[str, Any]) -> str:
    selected = record["selected"]
    if selected.get("snippet"):
        return (f"<p>{_runtime_line(selected)} Paths are relative to the run folder; the "
                "snippet needs only the runtime (and <code>tokenizers</code> for text), not "
                f"leanify.</p><pre>{escape(selected['snippet'])}</pre>")
    # runtimes without a plain-runtime recipe (TorchScript, torch.export): leanify's runner
    path = escape(selected["artifact"])
    code = (f"import leanify\nrunner = leanify.open_runner(leanify.load('{path}'))\n"
            "outputs = runner.run(batch)  # dict of numpy arrays")
    return (f"<p>{_runtime_line(selected)} Paths are relative to the run folder.</p>"
            f"<pre>{code}</pre>")
