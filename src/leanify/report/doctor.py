"""`leanify doctor` reports: a rich terminal summary and a self-contained HTML page with
inline SVG plots (latency curves, operator breakdown, per-layer alpha, quantization
sensitivity, token-length histogram). No scripts, no network."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from rich.console import Console
from rich.table import Table

from leanify.report.html import CSS, _f

PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a")


# --- terminal ------------------------------------------------------------------------------


def render_doctor(record: dict[str, Any], console: Console) -> None:
    inv = record["inventory"]
    verdict = record["verdict"]
    flops = inv.get("flops") or {}
    console.print(
        f"[bold]{inv['name']}[/] · {inv['format']} · "
        f"{_count(inv.get('params'))} params · {_f(inv.get('size_mb'), 1)} MB"
        + (f" · {flops['gflops']:.2f} GFLOP at {_point(flops['point'])}" if flops else "")
        + f" · doctor took {record['wall_s']:.0f} s", highlight=False)
    lat = record.get("latency") or {}
    points = (lat.get("curve") or {}).get("points", [])
    if points:
        table = Table(title="latency p50 (ms), each point in its own process",
                      title_justify="left")
        table.add_column("batch", justify="right")
        seqs = sorted({p["seq_len"] for p in points})
        for s in seqs:
            table.add_column(f"seq {s}" if record["settings"]["sequence"] else "", justify="right")
        for b in sorted({p["batch_size"] for p in points}):
            row = {p["seq_len"]: p["p50_ms"] for p in points if p["batch_size"] == b}
            table.add_row(str(b), *[f"{row[s]:.2f}" if s in row else "–" for s in seqs])
        console.print(table)
    ov = lat.get("overhead") or {}
    if ov.get("fitted"):
        console.print(f"fixed cost {ov['intercept_ms']:.2f} ms + {ov['per_unit_ms']:.4f} ms per "
                      f"{ov['unit'][:-1]} (R² {ov['r2']:.2f}); fixed share at the typical input "
                      f"{ov['share_at_typical']:.0%}", highlight=False)
    th = lat.get("threads") or {}
    if th.get("measured"):
        n = th["all_threads"]
        console.print(f"threads: 1 → {th['threads_1_p50_ms']:.2f} ms, {n} → "
                      f"{th[f'threads_{n}_p50_ms']:.2f} ms ({th['speedup']:.2f}×)",
                      highlight=False)
    rt = lat.get("runtimes")
    if rt:
        o = rt["models"][1]
        console.print(f"ONNX Runtime fp32: {o['p50_ms']:.2f} ms vs {rt['models'][0]['p50_ms']:.2f}"
                      f" ms ({o['speedup']:.2f}×, 95% CI {o['speedup_ci95'][0]:.2f}–"
                      f"{o['speedup_ci95'][1]:.2f})", highlight=False)
    prof = record.get("profile") or {}
    if prof.get("operators"):
        ops = ", ".join(f"{o['name']} {o['share']:.0%}" for o in prof["operators"][:6])
        console.print(f"top operators ({prof['profiler']}): {ops}", highlight=False)
    spec = (record.get("spectral") or {}).get("summary")
    if spec and spec.get("layers"):
        console.print(f"spectral: mean alpha {_f(spec['mean_alpha'])} over {spec['layers']} "
                      f"layers; {spec['under_trained']} under-trained (alpha > 6), "
                      f"{spec['over_fit']} over-fit (alpha < 2)", highlight=False)
    sens = record.get("sensitivity") or {}
    if sens.get("all_layers"):
        most = ", ".join(sens.get("most_sensitive", [])[:4]) or "none stands out"
        console.print(f"int8 sensitivity: all layers cosine {sens['all_layers']['cosine']:.4f}; "
                      f"most sensitive: {most}", highlight=False)
    ctx = (record.get("context") or {}).get("stats")
    if ctx:
        console.print(f"token lengths: p50 {ctx['p50']}, p95 {ctx['p95']}, max {ctx['max']} "
                      f"(model max {ctx['max_length']}, {ctx['over_max_length']} over)",
                      highlight=False)
    for name, sec in (record.get("sections") or {}).items():
        if sec["status"] != "done":
            console.print(f"[yellow]{name} {sec['status']}:[/] {sec.get('reason', '')}",
                          highlight=False)
    for w in verdict.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    colour = "red" if verdict["needs_optimizing"] else "green"
    console.print(f"[bold {colour}]{verdict['summary']}[/]", highlight=False)
    recs = Table(title="recommendations", title_justify="left")
    for col in ("#", "what", "gain", "risk"):
        recs.add_column(col)
    for r in verdict["recommendations"]:
        title = r["title"] + (f"\n{r['command']}" if r.get("command") else "")
        recs.add_row(str(r["rank"]), title, r["gain"]["text"] + f" [{r['gain']['kind']}]",
                     r["risk"]["level"])
    if verdict["recommendations"]:
        console.print(recs)
    claim = verdict.get("claim")
    if claim:
        console.print(f"[bold]recommended command:[/] {claim['command']}", highlight=False,
                      soft_wrap=True)
        console.print(claim["statement"], highlight=False)


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _point(p: dict[str, Any]) -> str:
    return f"batch {p['batch_size']}" + (f" × seq {p['seq_len']}" if p.get("seq_len") else "")


# --- HTML ----------------------------------------------------------------------------------


def render_doctor_html(record: dict[str, Any]) -> str:
    inv = record["inventory"]
    verdict = record["verdict"]
    cpu = record["machine"]["cpu"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>leanify doctor — {escape(str(inv['name']))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>leanify doctor</h1>",
        f"<p class='sub'>{escape(str(inv.get('path') or inv['name']))} · format "
        f"<b>{escape(inv['format'])}</b> · {escape(str(cpu['model']))}, "
        f"{cpu['usable_cores']} cores · threads {record['settings']['threads']} · "
        f"{escape(record['started'])} · {record['wall_s']:.0f} s</p>",
        f"<div class='verdict {'bad' if verdict['needs_optimizing'] else 'ok'}'>"
        f"<b>{'Needs optimizing' if verdict['needs_optimizing'] else 'Within budget'}</b> · "
        f"{escape(verdict['bound'])}-bound<br>{escape(verdict['summary'])}</div>",
        *[f"<div class='verdict bad'>warning: {escape(w)}</div>"
          for w in verdict.get("warnings", [])],
        "<h2>Recommendations</h2>", _recommendations(verdict),
        "<h2>Inventory</h2>", _inventory(record),
        *(_llm(record) if record.get("llm") else [
            "<h2>Latency</h2>", _latency(record),
        "<h2>Where the time goes</h2>", _profile(record),
        "<h2>Dead weight</h2>", _spectral(record), _redundancy(record),
        "<h2>Quantization sensitivity</h2>", _sensitivity(record),
        "<h2>Context length</h2>", _context(record)]),
        *(["<h2>Serving at your rate</h2>", _serving(record)] if record.get("serving") else []),
        "<h2>What ran</h2>", _sections(record),
        "</body></html>",
    ]
    return "\n".join(parts)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(_cell(c) for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return f"<td class='l'>{value}</td>"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return f"<td class='l'>{_f(value)}</td>"
    if isinstance(value, int):
        return f"<td>{value:,}</td>"
    return f"<td>{_f(value, 4 if abs(value) < 1 else 2)}</td>"


def _recommendations(verdict: dict[str, Any]) -> str:
    rows = [[r["rank"], _Raw(f"<b>{escape(r['title'])}</b><br><span class='small'>"
                             f"{escape(r['why'])}</span>"
                             + (f"<br><code>{escape(r['command'])}</code>"
                                if r.get("command") else "")),
             _Raw(f"{escape(r['gain']['text'])} <span class='small'>"
                  f"({escape(r['gain']['kind'])})</span>"),
             _Raw(f"{escape(r['risk']['level'])}<br><span class='small'>"
                  f"{escape(r['risk']['text'])}</span>")]
            for r in verdict["recommendations"]]
    html = _table(["#", "what", "gain", "risk"], rows) if rows else "<p>None.</p>"
    claim = verdict.get("claim")
    if claim:
        html += (f"<p><b>Recommended command</b></p><pre>{escape(claim['command'])}</pre>"
                 f"<p>{escape(claim['statement'])}</p>")
    return html


def _inventory(record: dict[str, Any]) -> str:
    inv = record["inventory"]
    flops = inv.get("flops") or {}
    rows = [["parameters", _count(inv.get("params"))], ["size on disk, MB", inv.get("size_mb")],
            ["dtypes", ", ".join(f"{k}: {_count(v)}" for k, v in (inv.get("dtypes") or {}).items())
             or "–"]]
    if flops:
        rows.append([f"FLOPs at {_point(flops['point'])}",
                     f"{flops['gflops']:.3f} GFLOP ({flops['method']})"])
    imgs = record.get("images") or {}
    if imgs.get("images"):
        side = imgs["shorter_side"]
        rows.append(["your images", f"{imgs['images']}: shorter side p50 {side['p50']} / p95 "
                     f"{side['p95']} px (model input {imgs['model_input']['height']}x"
                     f"{imgs['model_input']['width']}; {imgs['upscaled_share']:.0%} upscaled)"])
    for spec in inv.get("inputs", []):
        rows.append([f"input {spec['name']}", f"{spec['dtype']} {spec['shape']}"])
    for spec in inv.get("outputs", []):
        rows.append([f"output {spec['name']}", f"{spec['dtype']} {spec['shape']}"])
    html = _table(["", ""], rows)
    big = inv.get("largest_layers") or []
    if big:
        html += "<p class='small'>Largest layers</p>" + _table(
            ["layer", "shape", "params", "FLOPs"],
            [[r["name"], str(r["shape"]), _count(r["params"]), _count(r.get("flops"))]
             for r in big])
    conv = inv.get("convolutions")
    if conv:
        html += (f"<p class='small'>Convolutions: {conv['macs_per_image'] / 1e6:.1f}M "
                 f"multiply-accumulates per image, {conv['conv_share']:.0%} in convolutions, "
                 f"{conv['pair_share']:.0%} in {conv['pairs']} prunable pairs</p>") + _table(
            ["node", "MACs per image", "share", "in a pair"],
            [[r["node"], _count(r["macs"]), f"{r['share']:.0%}", "yes" if r["in_pair"] else ""]
             for r in conv["largest"]])
    return html


def _latency(record: dict[str, Any]) -> str:
    lat = record.get("latency") or {}
    curve = lat.get("curve") or {}
    points = curve.get("points", [])
    if not points:
        return "<p>Latency was not measured (see What ran).</p>"
    seq = record["settings"]["sequence"]
    series: dict[str, list[tuple[float, float]]] = {}
    for label, pts in [(curve.get("runtime", "model"), points),
                       *([(curve["other"]["runtime"], curve["other"]["points"])]
                         if curve.get("other") else [])]:
        for p in pts:
            name = f"{label}, batch {p['batch_size']}" if seq else label
            series.setdefault(name, []).append(
                (p["seq_len"] if seq else p["batch_size"], p["p50_ms"]))
    html = _lines(series, "sequence length, tokens" if seq else "batch size", "p50 latency, ms")
    ov = lat.get("overhead") or {}
    if ov.get("fitted"):
        html += (f"<p>Fit: latency = {ov['intercept_ms']:.2f} ms + {ov['per_unit_ms']:.4f} ms × "
                 f"{escape(ov['unit'])} (R² {ov['r2']:.2f}). The fixed part is "
                 f"<b>{ov['share_at_typical']:.0%}</b> of the latency at the typical input"
                 f"{' — overhead-bound' if ov['overhead_bound'] else ''}.</p>")
    th = lat.get("threads") or {}
    if th.get("measured"):
        n = th["all_threads"]
        html += (f"<p>Threads: 1 → {th['threads_1_p50_ms']:.2f} ms, {n} → "
                 f"{th[f'threads_{n}_p50_ms']:.2f} ms ({th['speedup']:.2f}×; "
                 f"{escape(th['note'])}).</p>")
    rt = lat.get("runtimes")
    if rt:
        o = rt["models"][1]
        html += (f"<p>ONNX Runtime fp32 at {_point(rt['point'])}: {o['p50_ms']:.2f} ms vs "
                 f"{rt['models'][0]['p50_ms']:.2f} ms, {o['speedup']:.2f}× (95% CI "
                 f"{o['speedup_ci95'][0]:.2f}–{o['speedup_ci95'][1]:.2f}).</p>")
    elif lat.get("runtimes_note"):
        html += f"<p class='small'>Runtime comparison: {escape(lat['runtimes_note'])}.</p>"
    return html


def _profile(record: dict[str, Any]) -> str:
    prof = record.get("profile") or {}
    ops = prof.get("operators") or []
    if not ops:
        return "<p>No profile (see What ran).</p>"
    html = (f"<p class='small'>{escape(prof['profiler'])}, {prof['runs']} runs at the typical "
            f"input, {prof['ms_per_run']:.2f} ms per run. Self time per operator:</p>")
    html += _hbars([(o["name"], o["ms_per_run"]) for o in ops], "ms per run")
    layers = prof.get("layers") or []
    if layers:
        html += "<p class='small'>Per layer</p>" + _table(
            ["layer", "ms per run", "share"],
            [[r["name"], r["ms_per_run"], f"{r['share']:.0%}" if r.get("share") is not None
              else "–"] for r in layers])
    if prof.get("trace"):
        html += (f"<p class='small'>Chrome trace: {escape(prof['trace'])} (open it in "
                 "ui.perfetto.dev).</p>")
    return html


def _spectral(record: dict[str, Any]) -> str:
    spec = record.get("spectral")
    if not spec:
        sec = (record.get("sections") or {}).get("spectral", {})
        return f"<p>Spectral analysis: {escape(sec.get('reason', 'not run'))}</p>"
    layers = [r for r in spec["layers"] if r["alpha"] is not None]
    html = (f"<p>Alpha per layer ({escape(spec['library'])}): between 2 and 6 reads as well "
            "trained; above 6 under-trained, below 2 over-fit.</p>")
    if layers:
        html += _vbars([(r["name"], r["alpha"]) for r in layers], "alpha",
                       lines=[(2.0, "over-fit below"), (6.0, "under-trained above")])
    flagged = [r for r in spec["layers"] if r["flag"]]
    if flagged:
        html += _table(["layer", "alpha", "stable rank", "spectral norm", "flag"],
                       [[r["name"], r["alpha"], r["stable_rank"], r["spectral_norm"], r["flag"]]
                        for r in flagged])
    return html


def _redundancy(record: dict[str, Any]) -> str:
    red = record.get("redundancy") or {}
    html = ""
    act = red.get("activations")
    if act:
        html += (f"<p>On {escape(act.get('data', ''))} ({act['tokens']} tokens): "
                 f"{act['near_dead_neurons']} near-dead FFN neurons, {act['near_dead_heads']} "
                 f"near-dead attention heads, near-identity blocks: "
                 f"{escape(', '.join(act['near_identity_blocks']) or 'none')}.</p>")
        if act.get("blocks"):
            html += _table(["block", "cosine in/out", "relative change", "near identity"],
                           [[b["name"], b["cosine_in_out"], b["relative_change"],
                             "yes" if b["near_identity"] else "no"] for b in act["blocks"]])
    er = red.get("effective_rank")
    if er:
        low = er["low_rank_candidates"]
        html += (f"<p>Effective rank (90% of the energy): {len(low)} of {len(er['layers'])} "
                 f"linear layers are low-rank candidates"
                 f"{': ' + escape(', '.join(low[:8])) if low else ''}.</p>")
    return html or "<p>No redundancy signals for this format.</p>"


def _sensitivity(record: dict[str, Any]) -> str:
    sens = record.get("sensitivity")
    if not sens or not sens.get("layers"):
        sec = (record.get("sections") or {}).get("sensitivity", {})
        return f"<p>Not measured: {escape(sec.get('reason', 'no ONNX graph to quantize'))}</p>"
    html = (f"<p class='small'>{escape(sens['method'])}; {escape(sens['compared'])}, on "
            f"{escape(sens.get('data', ''))}. All layers int8: cosine "
            f"{sens['all_layers']['cosine']:.4f}, relative error "
            f"{sens['all_layers']['relative_error']:.4f}.</p>")
    html += _hbars([(r["layer"], r["relative_error"]) for r in sens["layers"]],
                   "relative error when only this layer is int8", digits=4)
    return html


def _context(record: dict[str, Any]) -> str:
    ctx = record.get("context")
    if not ctx:
        return "<p>Give --data to see your inputs' token lengths and what padding costs.</p>"
    st = ctx["stats"]
    html = (f"<p>{st['texts']} texts: p50 {st['p50']}, p95 {st['p95']}, max {st['max']} tokens; "
            f"the model runs at most {st['max_length']} ({st['over_max_length']} longer).</p>")
    html += _histogram(st["histogram"], [(st["p50"], "p50"), (st["p95"], "p95")])
    pad = ctx.get("padding")
    if pad:
        html += (f"<p class='small'>Batches of {pad['batch_size']}; "
                 f"{escape(pad['estimated_from'])}.</p>")
        html += _table(["strategy", "est. seconds", "padding share", "saving"],
                       [[k.replace("_", " "), v["seconds"], f"{v['padding_share']:.0%}",
                         f"{v['saving']:.0%}"] for k, v in pad["strategies"].items()])
    return html


def _llm(record: dict[str, Any]) -> list[str]:
    """A causal LM's sections: weights, decode's memory bound, prompts and the KV cache."""
    llm = record["llm"]
    w, bound, gen = llm["weights"], llm["memory_bound"], llm["generation"]
    rows = [["parameters", _count(w.get("params"))],
            ["weight bytes", f"{w['weight_bytes'] / 2**20:.1f} MB, "
                             f"{w.get('bytes_per_weight') or '–'} bytes per weight"],
            ["layers · heads · KV heads", f"{w.get('layers')} · {w.get('heads')} · "
                                          f"{w.get('kv_heads')}"],
            ["context · vocabulary", f"{w.get('context')} · {w.get('vocab_size')}"],
            ["KV cache per token", f"{w['kv_bytes_per_token']} bytes"
             if w.get("kv_bytes_per_token") else "–"]]
    if w.get("source_file"):
        src = w["source_file"]
        rows.append(["on disk (GGUF)", f"{src['bytes'] / 2**20:.1f} MB, "
                                       f"{src['bytes_per_weight']} bytes per weight"])
    out = ["<h2>Weights</h2>", _table(["", ""], rows)]
    share = bound.get("share_of_ceiling") or 0
    out += ["<h2>Decode and the memory-bandwidth ceiling</h2>",
            f"<p>Memory bandwidth here: {bound['bandwidth_gbs']:.1f} GB/s; a new token reads "
            f"{bound['bytes_per_token'] / 2**20:.1f} MB, so decode cannot pass "
            f"{bound['ceiling_tokens_per_s']:.0f} tokens/s. Measured: "
            f"{bound['decode_tokens_per_s']:.1f} tokens/s ({share:.0%} of the ceiling) at "
            f"{bound['at_prompt_tokens']} prompt tokens. {escape(bound['rule'])}.</p>"]
    out += ["<h2>Prompts and the time to first token</h2>",
            _table(["prompt tokens", "time to first token ms (p50)", "decode tok/s",
                    "prefill tok/s", "request ms", "peak RSS MB", "KV cache MB"],
                   [[g["prompt_tokens"], g["ttft_ms"]["p50"], g["decode_tokens_per_s"],
                     g["prefill_tokens_per_s"], g["e2e_ms"], g["peak_rss_mb"],
                     g.get("kv_cache_mb")] for g in gen])]
    series = {"time to first token": [(g["prompt_tokens"], g["ttft_ms"]["p50"]) for g in gen]}
    out.append(_lines(series, "prompt tokens", "time to first token, ms"))
    fit = llm.get("ttft_fit")
    if fit:
        out.append(f"<p class='small'>Fit: {fit['intercept_ms']:.1f} ms + "
                   f"{fit['per_token_ms']:.3f} ms per prompt token.</p>")
    st = llm.get("prompts")
    if st:
        out.append(f"<p>Your {st['texts']} prompts: p50 {st['p50']}, p95 {st['p95']}, max "
                   f"{st['max']} tokens (context {st['max_length']}); the KV cache at the p95 "
                   f"prompt plus the new tokens holds {llm.get('kv_cache_at_p95_mb')} MB.</p>")
        out.append(_histogram(st["histogram"], [(st["p50"], "p50"), (st["p95"], "p95")]))
    else:
        out.append("<p>Give --data (one prompt per line or row) to see your prompt lengths.</p>")
    layers = llm.get("layers")
    if layers:
        out += ["<h2>Near-identity layers</h2>",
                f"<p>Mean cosine of each decoder layer's input and output hidden states over "
                f"{layers['tokens']} tokens; over {layers['threshold']} a layer barely acts "
                "(the last layer, whose output is normalised, is left out).</p>",
                _hbars([(f"layer {i}", c) for i, c in enumerate(layers["layer_cosine"])],
                       "cosine", 4)]
    return out


def _serving(record: dict[str, Any]) -> str:
    sv = record["serving"]
    rows = []
    for mode in ("per_request", "dynamic_batching"):
        m = sv[mode]
        rows.append([mode.replace("_", " "), m["p50_ms"], m["p95_ms"], m["throughput_rps"],
                     f"{m['rejected_rate'] + m['error_rate']:.1%}", m["batch_p50"],
                     m["queue_p50_ms"], m["model_p50_ms"], m["http_and_client_p50_ms"]])
    batching = "continuous" if sv.get("kind") == "chat" else "dynamic"
    return (f"<p>leanify serve at {sv['rate_rps']:g} requests/s for {sv['duration_s']:g} s "
            "each, Poisson arrivals of your texts (leanify loadtest), one request at a time "
            f"and with {batching} batching.</p>"
            + _table(["mode", "p50 ms", "p95 ms", "answered /s", "refused", "batch p50",
                      "queue p50 ms", "model p50 ms", "HTTP+client p50 ms"], rows))


def _sections(record: dict[str, Any]) -> str:
    rows = [[name, s["status"], s["seconds"], s.get("reason", "")]
            for name, s in (record.get("sections") or {}).items()]
    return _table(["analysis", "status", "seconds", "note"], rows)


# --- SVG -----------------------------------------------------------------------------------


def _svg(w: int, h: int, label: str, body: list[str]) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
            f"viewBox='0 0 {w} {h}' role='img' aria-label='{escape(label)}'>"
            + "".join(body) + "</svg>")


def _lines(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> str:
    w, h, left, r, t, b = 760, 340, 70, 200, 16, 46
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_hi = max(ys) * 1.1 or 1.0

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (w - left - r)

    def sy(v: float) -> float:
        return t + (y_hi - v) / y_hi * (h - t - b)

    body = [f"<rect x='{left}' y='{t}' width='{w - left - r}' height='{h - t - b}' fill='#fbfcfd' "
            "stroke='#d0d7de'/>"]
    for i in range(5):
        yv, xv = y_hi * i / 4, x_lo + (x_hi - x_lo) * i / 4
        body.append(f"<text x='{left - 6}' y='{sy(yv) + 4:.1f}' font-size='11' "
                    f"text-anchor='end'>{yv:.3g}</text>")
        body.append(f"<text x='{sx(xv):.1f}' y='{h - b + 15}' font-size='11' "
                    f"text-anchor='middle'>{xv:.0f}</text>")
    body.append(f"<text x='{(left + w - r) / 2}' y='{h - 8}' font-size='12' "
                f"text-anchor='middle'>{escape(xlabel)}</text>")
    body.append(f"<text transform='translate(14 {(h - b) / 2}) rotate(-90)' font-size='12' "
                f"text-anchor='middle'>{escape(ylabel)}</text>")
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = sorted(pts)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        body.append(f"<polyline points='{path}' fill='none' stroke='{colour}' "
                    "stroke-width='2'/>")
        for x, y in pts:
            body.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3.5' fill='{colour}'>"
                        f"<title>{escape(name)}: {x:g} → {y:.3f} ms</title></circle>")
        body.append(f"<text x='{w - r + 10}' y='{t + 14 + 16 * i}' font-size='11' "
                    f"fill='{colour}'>{escape(name)}</text>")
    return _svg(w, h, f"{ylabel} versus {xlabel}", body)


def _hbars(rows: list[tuple[str, float]], unit: str, digits: int = 3) -> str:
    if not rows:
        return ""
    w, label_w, bar_h = 760, 300, 18
    h = 24 + bar_h * len(rows)
    top = max(v for _, v in rows) or 1.0
    body = []
    for i, (name, value) in enumerate(rows):
        y = 8 + i * bar_h
        length = max(value / top * (w - label_w - 90), 1)
        short = name if len(name) <= 44 else "…" + name[-43:]
        body.append(f"<text x='{label_w - 6}' y='{y + 12}' font-size='11' "
                    f"text-anchor='end'>{escape(short)}</text>")
        body.append(f"<rect x='{label_w}' y='{y + 2}' width='{length:.1f}' height='{bar_h - 5}' "
                    f"fill='#0969da'><title>{escape(name)}: {value:.{digits}g}</title></rect>")
        body.append(f"<text x='{label_w + length + 5:.1f}' y='{y + 12}' font-size='11'>"
                    f"{value:.{digits}g}</text>")
    body.append(f"<text x='{label_w}' y='{h - 4}' font-size='11' fill='#5b6670'>"
                f"{escape(unit)}</text>")
    return _svg(w, h, unit, body)


def _vbars(rows: list[tuple[str, float]], ylabel: str,
           lines: list[tuple[float, str]] = ()) -> str:
    w, h, left, t, b = 760, 260, 50, 14, 30
    y_hi = max([v for _, v in rows] + [y for y, _ in lines]) * 1.1
    step = (w - left - 10) / len(rows)

    def sy(v: float) -> float:
        return t + (y_hi - v) / y_hi * (h - t - b)

    body = [f"<text transform='translate(12 {(h - b) / 2}) rotate(-90)' font-size='12' "
            f"text-anchor='middle'>{escape(ylabel)}</text>"]
    for i, (name, value) in enumerate(rows):
        x = left + i * step
        colour = "#cf222e" if any(value > y for y, n in lines if "above" in n) or any(
            value < y for y, n in lines if "below" in n) else "#0969da"
        body.append(f"<rect x='{x + step * 0.1:.1f}' y='{sy(value):.1f}' "
                    f"width='{max(step * 0.8, 1):.1f}' height='{sy(0) - sy(value):.1f}' "
                    f"fill='{colour}'><title>{escape(name)}: {value:.2f}</title></rect>")
    for y, name in lines:
        body.append(f"<line x1='{left}' x2='{w - 10}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' "
                    "stroke='#bf8700' stroke-dasharray='4 3'/>")
        body.append(f"<text x='{w - 12}' y='{sy(y) - 3:.1f}' font-size='10' "
                    f"text-anchor='end'>{escape(name)} {y:g}</text>")
    for i in range(5):
        yv = y_hi * i / 4
        body.append(f"<text x='{left - 6}' y='{sy(yv) + 4:.1f}' font-size='10' "
                    f"text-anchor='end'>{yv:.1f}</text>")
    body.append(f"<text x='{left}' y='{h - 8}' font-size='11' fill='#5b6670'>layers in model "
                "order (hover for names)</text>")
    return _svg(w, h, ylabel + " per layer", body)


def _histogram(hist: dict[str, list], markers: list[tuple[float, str]]) -> str:
    edges, counts = hist["edges"], hist["counts"]
    w, h, left, t, b = 760, 240, 50, 14, 36
    top = max(counts) or 1
    x_hi = edges[-1] or 1.0

    def sx(v: float) -> float:
        return left + v / x_hi * (w - left - 20)

    def sy(v: float) -> float:
        return t + (top - v) / top * (h - t - b)

    body = []
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        width = max(sx(hi) - sx(lo) - 1, 1)
        body.append(f"<rect x='{sx(lo):.1f}' y='{sy(c):.1f}' width='{width:.1f}' "
                    f"height='{sy(0) - sy(c):.1f}' fill='#0969da'><title>{lo:.0f}–{hi:.0f} "
                    f"tokens: {c}</title></rect>")
    for value, name in markers:
        body.append(f"<line x1='{sx(value):.1f}' x2='{sx(value):.1f}' y1='{t}' y2='{sy(0):.1f}' "
                    "stroke='#cf222e' stroke-dasharray='4 3'/>")
        body.append(f"<text x='{sx(value) + 3:.1f}' y='{t + 10}' font-size='11' "
                    f"fill='#cf222e'>{escape(name)}</text>")
    for i in range(5):
        xv = x_hi * i / 4
        body.append(f"<text x='{sx(xv):.1f}' y='{h - b + 15}' font-size='11' "
                    f"text-anchor='middle'>{xv:.0f}</text>")
    body.append(f"<text x='{(left + w) / 2}' y='{h - 6}' font-size='12' "
                "text-anchor='middle'>tokens per text</text>")
    if not math.isfinite(top):
        return ""
    return _svg(w, h, "token-length histogram", body)
