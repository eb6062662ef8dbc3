"""`leanify doctor` for causal LMs: is decode bound by memory, what do the prompts cost, what
does the KV cache hold, and which layers barely change the hidden state.

- **Weights:** parameters, bytes on disk, bytes per weight (fp32 4, int8 ~1, int4 ~0.5-0.6).
- **Decode's memory bound:** every new token reads every weight once (plus the KV cache so
  far), so tokens/s cannot exceed memory bandwidth / bytes read per token. The bandwidth is
  measured here (numpy reductions over 256 MiB, one thread per core, best of 5); the ceiling
  is compared with the measured decode rate: near it, smaller weights are the lever; far below,
  the time goes into per-token overhead that smaller weights will not remove.
- **Prompts:** the user's prompt lengths (--data: one prompt per line or row), time to first
  token measured at several prompt lengths (a generation bench, one process), its linear fit,
  and what cutting the context to the p50 prompt saves at the p95 one.
- **KV cache:** bytes per token from the config, at the context in use (p95 prompt + new).
- **Near-identity layers** (PyTorch models): the mean cosine between each decoder layer's input
  and output hidden states on the text; layers near 1 are what a depth-pruned student drops.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np

from leanify.models.artifact import Artifact

BANDWIDTH_MB = 256
NEAR_IDENTITY = 0.98  # mean input/output cosine of a layer above this: it barely acts
CEILING_SHARE = 0.5  # decode at over half the bandwidth ceiling: memory-bound
LONG_PROMPT_TTFT_MS = 1000.0  # first token slower than this at the p95 prompt: a red flag
DEFAULT_PROMPTS = (64, 256, 512)
NEW_TOKENS = 32


def memory_bandwidth_gbs(threads: int, mb: int = BANDWIDTH_MB, repeats: int = 5) -> float:
    """Read bandwidth: `threads` numpy reductions over disjoint parts of one array (ufunc loops
    release the GIL), the best of `repeats`. A float64 sum reads each byte once."""
    data = np.ones(mb * 2**20 // 8, np.float64)
    parts = np.array_split(data, max(1, threads))
    best = float("inf")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def weights(artifact: Artifact) -> dict[str, Any]:
    """Parameters, weight bytes and bytes per weight (on disk: the weight files)."""
    params = artifact.meta.get("params")
    files = [f for f in artifact.files()
             if f.suffix in (".safetensors", ".bin") and "tokenizer" not in f.name]
    weight_bytes = sum(f.stat().st_size for f in files) or artifact.size_bytes()
    out = {"params": params, "weight_bytes": weight_bytes,
           "bytes_per_weight": round(weight_bytes / params, 3) if params else None,
           "layers": artifact.meta.get("num_hidden_layers"),
           "hidden_size": artifact.meta.get("hidden_size"),
           "vocab_size": artifact.meta.get("vocab_size"),
           "kv_heads": artifact.meta.get("num_key_value_heads"),
           "heads": artifact.meta.get("num_attention_heads"),
           "context": artifact.meta.get("max_length"),
           "kv_bytes_per_token": artifact.meta.get("kv_bytes_per_token")}
    source = artifact.meta.get("source_file")
    if source:  # a GGUF: what the user has on disk is the quantized file
        from pathlib import Path

        size = Path(source).stat().st_size
        out["source_file"] = {"path": source, "bytes": size,
                              "bytes_per_weight": round(size / params, 3) if params else None}
    return out


def ttft_fit(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Time to first token = a + b x prompt tokens, least squares over the measured points."""
    pts = [(r["prompt_tokens"], r["ttft_ms"]["p50"]) for r in rows]
    if len(pts) < 2:
        return None
    x, y = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    b, a = np.polyfit(x, y, 1)
    return {"intercept_ms": round(float(a), 3), "per_token_ms": round(float(b), 5),
            "points": len(pts)}


def near_identity_layers(folder: str, texts: list[str], threads: int,
                         max_tokens: int = 256) -> dict[str, Any]:
    """Per decoder layer: mean cosine of its input and output hidden states over the texts'
    tokens. Runs in a child (torch), from the saved folder."""
    import torch

    from leanify.models.inputs import load_tokenizer
    from leanify.models.load import load
    from leanify.runtimes import open_runner
    from leanify.tasks.text import tokenizer_folder

    torch.set_num_threads(threads)
    artifact = load(folder)
    runner = open_runner(artifact, threads)
    tok, _pad, _ = load_tokenizer(tokenizer_folder(artifact))
    ids = tok.encode("\n".join(texts), add_special_tokens=False).ids[:max_tokens]
    with torch.inference_mode():
        out = runner.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    states = [h[0].float() for h in out.hidden_states]
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
           for a, b in pairwise(states[:-1])]  # the last state has the final norm applied
    return {"layer_cosine": [round(c, 4) for c in cos], "tokens": len(ids),
            "near_identity": [i for i, c in enumerate(cos) if c > NEAR_IDENTITY],
            "threshold": NEAR_IDENTITY}


def doctor_llm(model_ref: str, artifact: Artifact, record: dict[str, Any], texts: list[str],
               data_ref: str | None, threads: int, quick: bool, budget_ms: float | None,
               memory_budget_mb: float | None, say: Any) -> dict[str, Any]:
    """Fill `record` (the doctor's frame: input, machine, settings) for a causal LM."""
    from leanify.diagnose import context as ctxmod
    from leanify.diagnose.common import in_child
    from leanify.measure.bench import BenchSettings, bench

    inv = weights(artifact)
    context = int(inv["context"] or 2048)
    record["llm"] = {"weights": inv}
    stats = None
    if texts and artifact.tokenizer_path is not None:
        lengths = ctxmod.token_lengths(texts, artifact.tokenizer_path)
        stats = ctxmod.length_stats(lengths, context)
        record["llm"]["prompts"] = stats
    prompts = set(DEFAULT_PROMPTS)
    if stats:
        prompts |= {ctxmod.round_up(stats["p50"]), ctxmod.round_up(stats["p95"])}
    prompts = sorted(p for p in prompts if 1 <= p <= max(context - NEW_TOKENS, 8))
    say("memory bandwidth")
    bandwidth = memory_bandwidth_gbs(threads)
    say(f"generation at prompts of {', '.join(map(str, prompts))} tokens")
    run = bench([artifact], BenchSettings(batch_sizes=(1,), prompt_tokens=tuple(prompts),
                                          new_tokens=NEW_TOKENS, rounds=1 if quick else 3,
                                          threads=threads))
    rows = sorted(run["results"], key=lambda r: r["prompt_tokens"])
    record["llm"]["generation"] = [
        {k: r[k] for k in ("prompt_tokens", "new_tokens", "ttft_ms", "tpot_ms",
                           "decode_tokens_per_s", "prefill_tokens_per_s", "e2e_ms",
                           "peak_rss_mb", "kv_cache_mb")} for r in rows]
    fit = ttft_fit(rows)
    record["llm"]["ttft_fit"] = fit
    # decode's ceiling at the shortest measured context: weights once + the KV cache so far
    kv = inv["kv_bytes_per_token"] or 0
    first = rows[0]
    per_token = inv["weight_bytes"] + kv * (first["prompt_tokens"] + NEW_TOKENS // 2)
    ceiling = bandwidth * 1e9 / per_token
    decode = first["decode_tokens_per_s"]
    record["llm"]["memory_bound"] = {
        "bandwidth_gbs": round(bandwidth, 2), "bytes_per_token": int(per_token),
        "ceiling_tokens_per_s": round(ceiling, 1), "decode_tokens_per_s": decode,
        "share_of_ceiling": round(decode / ceiling, 3) if decode else None,
        "at_prompt_tokens": first["prompt_tokens"],
        "rule": "every weight read once per token, plus the KV cache so far; bandwidth of "
                "numpy reductions on this machine, one thread per core"}
    if stats:
        in_use = stats["p95"] + NEW_TOKENS
        record["llm"]["kv_cache_at_p95_mb"] = round(kv * in_use / 2**20, 2) if kv else None
    if artifact.format == "hf":
        say("near-identity layers")
        sample = texts[:64] if texts else None
        if sample is None:
            from leanify.models.inputs import bundled_texts

            sample = bundled_texts()[:64]
        try:
            record["llm"]["layers"] = in_child(near_identity_layers, str(artifact.path),
                                               sample, threads)
        except Exception as exc:  # an analysis, not the diagnosis: say so and go on
            record["warnings"].append(f"near-identity layers not measured: {exc}")
    record["verdict"] = verdict(record, model_ref, data_ref, budget_ms, memory_budget_mb)
    return record


def verdict(record: dict[str, Any], model_ref: str, data_ref: str | None,
            budget_ms: float | None, memory_budget_mb: float | None) -> dict[str, Any]:
    import shlex

    from leanify.diagnose.verdict import (
        DEFAULT_LATENCY_MS,
        MEMORY_SHARE,
        _rec,
        _serving_reasons,
        _serving_recommendation,
    )

    llm = record["llm"]
    inv, gen, bound_info = llm["weights"], llm["generation"], llm["memory_bound"]
    stats = llm.get("prompts")
    typical = max(gen, key=lambda r: r["prompt_tokens"]) if not stats else min(
        gen, key=lambda r: abs(r["prompt_tokens"] - stats["p95"]))
    budget = budget_ms or DEFAULT_LATENCY_MS
    total = record["machine"].get("memory_total_mb")
    memory = memory_budget_mb or (round(total * MEMORY_SHARE) if total else None)
    peak = max(r["peak_rss_mb"] for r in gen)
    flags, system, recs = [], [], []
    ttft = typical["ttft_ms"]["p50"]
    if typical["e2e_ms"] > budget:
        flags.append(f"a request of {typical['prompt_tokens']} prompt tokens and "
                     f"{typical['new_tokens']} new ones takes {typical['e2e_ms']:.0f} ms, over "
                     f"the budget {budget:g} ms")
    if memory and peak > memory:
        flags.append(f"peak memory {peak:.0f} MB is over the budget {memory:g} MB")
    prefill_share = ttft / typical["e2e_ms"] if typical["e2e_ms"] else 0
    if stats and ttft > LONG_PROMPT_TTFT_MS and prefill_share > 0.5:
        system.append(f"the prompts are long (p95 {stats['p95']} tokens): the first token "
                      f"takes {ttft:.0f} ms, {prefill_share:.0%} of a request")
    cmd = ["leanify", "optimize", model_ref, "--task", "perplexity", "--data",
           data_ref or "TEXT_FILE", "--seq-len", str(typical["prompt_tokens"]),
           "--new-tokens", "128", "--max-length", "512", "--max-drop", "3"]
    command = shlex.join(cmd)
    bpw = inv.get("bytes_per_weight") or 0
    share = bound_info.get("share_of_ceiling") or 0
    if bpw >= 1.5:
        gain = min(bpw, 4.0) / 1.0 if share >= CEILING_SHARE else None
        recs.append(_rec(
            "weight-compression", "int8 or int4 weights (OpenVINO GenAI, NNCF)",
            f"the weights take {bpw:.2f} bytes each; decode reads all of them per token and "
            f"runs at {share:.0%} of this machine's memory-bandwidth ceiling "
            f"({bound_info['ceiling_tokens_per_s']:.0f} tokens/s)",
            {"speedup": gain, "kind": "estimated" if gain else "not estimated",
             "text": (f"decode up to ~{gain:.1f}x (bytes per weight {bpw:.1f} -> 1)" if gain
                      else "decode far below the memory ceiling: the runtime's per-token "
                           "overhead, not weight bytes, bounds it; a compiled runtime helps")},
            "low", "int8 keeps perplexity within a few tenths of a percent; int4 costs more "
                   "(the gate measures it)", command))
    fit = llm.get("ttft_fit")
    if stats and fit and stats["p95"] > stats["p50"] * 1.5:
        saved = fit["per_token_ms"] * (stats["p95"] - stats["p50"])
        recs.append(_rec(
            "trim-context", "send shorter prompts (retrieve less, summarise history)",
            f"the first token costs {fit['per_token_ms']:.2f} ms per prompt token; your p95 "
            f"prompt is {stats['p95']} tokens, the p50 {stats['p50']}",
            {"speedup": None, "kind": "estimated", "saved_ms": round(saved, 1),
             "text": f"{saved:.0f} ms less time to first token at the p95 prompt"},
            "medium", "the answer may lose what the cut context held"))
    layers = llm.get("layers") or {}
    if layers.get("near_identity"):
        n = len(layers["near_identity"])
        recs.append(_rec(
            "depth-pruning", f"{n} of {len(layers['layer_cosine'])} layers barely change the "
            "hidden state", f"their input and output hidden states have a mean cosine over "
            f"{layers['threshold']} (layers {layers['near_identity']})",
            {"speedup": None, "kind": "not estimated",
             "text": "a depth-pruned student drops them; it needs distillation (not yet in "
                     "leanify for causal LMs)"}, "high",
            "dropping layers without distillation changes the output"))
    served = record.get("serving")  # doctor --rate: the chat server at the user's rate
    system += _serving_reasons(served, budget)
    recs += _serving_recommendation(served, model_ref)
    for i, r in enumerate(recs, 1):
        r["rank"] = i
    bound = "system" if system else "model"
    summary = ("Needs attention: " + "; ".join(flags) + "." if flags else
               f"Within budget: {typical['e2e_ms']:.0f} ms for {typical['prompt_tokens']} "
               f"prompt tokens and {typical['new_tokens']} new ones.")
    summary += (" System-bound: " + "; ".join(system) + "." if system else
                f" Model-bound: decode {bound_info['decode_tokens_per_s']:.1f} tokens/s, "
                f"{share:.0%} of the memory-bandwidth ceiling.")
    return {"needs_optimizing": bool(flags), "bound": bound, "system_reasons": system,
            "red_flags": flags, "summary": summary, "recommendations": recs,
            "budgets": {"latency_ms": budget, "memory_mb": memory,
                        "point": {"batch_size": 1, "seq_len": typical["prompt_tokens"]}},
            "measured": {"latency_ms": typical["e2e_ms"], "ttft_ms": ttft,
                         "peak_rss_mb": peak},
            "command": command, "claim": None, "warnings": list(record["warnings"])}
