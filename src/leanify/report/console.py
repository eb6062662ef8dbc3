"""Rich terminal views of leanify's records."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from leanify.serve import SERVABLE_TASKS


def _fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "–"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def render_bench(record: dict[str, Any], console: Console) -> None:
    machine = record["machine"]
    cpu = machine["cpu"]
    settings = record["settings"]
    wide = [f for f in cpu["isa_flags"] if "avx512" in f or "amx" in f or "vnni" in f]
    isa = ", ".join(wide or cpu["isa_flags"][-3:])
    console.print(
        f"[bold]{cpu['model']}[/] · {cpu['usable_cores']} cores · {isa} · "
        f"threads {settings['threads']} · {settings['rounds']} interleaved rounds · "
        f"load avg {machine.get('load_average_start')} → {machine.get('load_average_end')}"
    )
    if record.get("workload", {}).get("name") == "generation":
        _generation_table(record, console)
        _models_table(record, console)
        return
    multi = len(record["models"]) > 1
    table = Table(title="leanify bench — latency in ms, each model in its own process",
                  title_justify="left", show_lines=False)
    table.add_column("model", style="bold")
    table.add_column("batch", justify="right")
    table.add_column("seq", justify="right")
    table.add_column("p50 [95% CI]", justify="right")
    table.add_column("p90", justify="right")
    table.add_column("p99", justify="right")
    table.add_column("items/s", justify="right")
    if multi:
        table.add_column(f"speed-up vs {record['models'][0]['name']}", justify="right")
    table.add_column("peak RSS MB", justify="right")
    rows = sorted(record["results"], key=lambda r: (r["batch_size"], r["seq_len"]))
    last_point = None
    for row in rows:
        point = (row["batch_size"], row["seq_len"])
        if last_point is not None and point != last_point:
            table.add_section()
        last_point = point
        lat = row["latency_ms"]
        lo, hi = row["latency_p50_ci95_ms"]
        cells = [
            row["model"], str(row["batch_size"]), str(row["seq_len"]),
            f"{_fmt_ms(lat['p50'])} [{_fmt_ms(lo)}–{_fmt_ms(hi)}]",
            _fmt_ms(lat["p90"]), _fmt_ms(lat["p99"]), f"{row['throughput_per_s']:.1f}",
        ]
        if multi:
            vs = row.get("vs_baseline")
            if vs is None:
                cells.append("[dim]baseline[/]")
            else:
                s, (clo, chi) = vs["speedup"], vs["speedup_ci95"]
                colour = "green" if clo > 1 else "red" if chi < 1 else "yellow"
                cells.append(f"[{colour}]{s:.2f}×[/] [dim][{clo:.2f}–{chi:.2f}][/]")
        cells.append(f"{row['peak_rss_mb']:.0f}")
        table.add_row(*cells)
    console.print(table)
    _models_table(record, console)
    console.print(
        f"[dim]peak RSS: measured by the OS in each model's process, minus a bare Python "
        f"interpreter ({record['bare_interpreter_rss_mb']:.0f} MB). Speed-up: baseline p50 / "
        f"model p50, with a bootstrap 95% CI.[/]"
    )


def _generation_table(record: dict[str, Any], console: Console) -> None:
    """Causal LMs: time to first token, time per output token, decode and prefill rates."""
    new = record["workload"].get("new_tokens")
    table = Table(title=f"leanify bench — generation, {new} new tokens per request, each "
                        "model in its own process", title_justify="left")
    for col in ("model", "reqs", "prompt", "TTFT ms", "TPOT p50", "TPOT p95", "decode tok/s",
                "prefill tok/s", "e2e ms", "RSS MB", "KV MB"):
        table.add_column(col, justify="left" if col == "model" else "right",
                         style="bold" if col == "model" else None)
    for row in sorted(record["results"], key=lambda r: (r["batch_size"], r["seq_len"])):
        tpot = row["tpot_ms"]
        speed = ""
        vs = row.get("vs_baseline")
        if vs:
            speed = f" [dim]({vs['decode_speedup']:.2f}×)[/]"
        table.add_row(
            row["model"], str(row["concurrency"]), str(row["prompt_tokens"]),
            _fmt_ms(row["ttft_ms"]["p50"]),
            *(_fmt_ms(tpot[k]) if tpot[k] is not None else "–" for k in ("p50", "p95")),
            f"{row['decode_tokens_per_s']:.1f}{speed}" if row["decode_tokens_per_s"] is not None
            else "–", f"{row['prefill_tokens_per_s']:.0f}",
            _fmt_ms(row["e2e_ms"]), f"{row['peak_rss_mb']:.0f}",
            f"{row['kv_cache_mb']:.1f}" if row.get("kv_cache_mb") is not None else "–")
    console.print(table)
    console.print(
        "[dim]TTFT: time to first token (the prefill); TPOT: time per output token; every call "
        "a fresh prompt from leanify's bundled text, greedy decoding of exactly the new tokens; "
        "(×): decode speed-up over the baseline. Peak RSS by the OS minus a bare interpreter "
        f"({record['bare_interpreter_rss_mb']:.0f} MB); KV MB: the KV cache's share of it, "
        "from the config.[/]")


def _models_table(record: dict[str, Any], console: Console) -> None:
    models = Table(title="models", title_justify="left")
    for col in ("model", "format", "runtime", "params", "size MB", "load s", "inputs from"):
        models.add_column(col, justify="right" if col in ("params", "size MB", "load s") else
                          "left")
    for m in record["models"]:
        source = m.get("input_source") or "–"
        if m.get("tokenizer_from"):
            source += f" (of {m['tokenizer_from']})"
        runtime = m.get("runtime") or "–"
        precision = (m.get("runtime_settings") or {}).get("inference_precision")
        if precision:  # OpenVINO: the precision that actually ran
            runtime += f" ({precision})"
        models.add_row(
            m["name"], m["measured_as"], runtime, _fmt_count(m.get("params")),
            f"{m['size_mb']:.1f}" if m.get("size_mb") is not None else "–",
            f"{m['load_s']:.2f}", source,
        )
    console.print(models)
    for warning in record.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)





def render_optimize(record: dict[str, Any], console: Console, out_dir: Any) -> None:
    points = sorted({(p["batch_size"], p["seq_len"]) for c in record["candidates"]
                     for p in c.get("points", [])})
    base = record["baseline"]
    table = Table(title=f"leanify optimize — {record['task']}, baseline "
                        f"{base['metric']['name']} {base['metric']['value']:.2f}; "
                        "speed-up vs the baseline per batch × seq",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("candidate", style="bold", no_wrap=True)
    table.add_column(base["metric"]["name"], justify="right", no_wrap=True)
    for b, s in points:
        table.add_column(f"{b}×{s}", justify="right", no_wrap=True)
    table.add_column("MB", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    selected = (record.get("selected") or {}).get("name")
    notes = []
    for c in record["candidates"]:
        by_point = {(p["batch_size"], p["seq_len"]): p for p in c.get("points", [])}
        metric = c.get("metric", {}).get("value")
        cells = [("★ " if c["name"] == selected else "") + c["name"],
                 f"{metric:.2f}" if metric is not None else "–"]
        for key in points:
            p = by_point.get(key)
            cells.append(f"{p['speedup']:.2f}×" if p else "–")
        cells.append(f"{c['size_mb']:.1f}" if c.get("size_mb") else "–")
        cells.append("[green]accepted[/]" if c.get("accepted") else "[red]rejected[/]")
        if not c.get("accepted"):
            notes.append(f"[red]{c['name']}[/]: {c.get('reason', '')}")
        elif c.get("target_misses"):
            notes.append(f"[yellow]{c['name']}[/] misses: {'; '.join(c['target_misses'])}")
        table.add_row(*cells)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    for warning in record.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    colour = "green" if record.get("targets_met") else "yellow" if record.get("selected") else "red"
    console.print(f"[{colour}]{record['verdict']}[/]", highlight=False)
    if record.get("selected"):
        chosen = record["selected"]
        console.print(f"model: {out_dir}/{chosen['artifact']}")
        ran = ", ".join(f"{k} {v}" for k, v in (chosen.get("runtime_settings") or {}).items())
        console.print(f"runtime: {chosen.get('runtime')}" + (f" ({ran})" if ran else ""),
                      highlight=False)
        if record.get("task") in SERVABLE_TASKS:
            console.print(f"serve it: leanify serve {out_dir} "
                          f"({SERVABLE_TASKS[record['task']]}; measure it with leanify "
                          "loadtest)", highlight=False)
    console.print(f"report: {out_dir}/report.html · record: {out_dir}/leanify.json")
