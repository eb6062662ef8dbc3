"""The generation workload, measured: prompts, one timed generate call, and the bench rows.

A point is (concurrent requests, prompt tokens), with a fixed number of new tokens: the
requests of a point are decoded together (one batch, equal lengths, no padding). Every call
gets a different prompt, a window of leanify's bundled public-domain text cut to exactly the
prompt's token count: a runtime with prefix caching would otherwise time a cache hit.

Per point: time to first token (the prefill), time per output token p50/p95 (the gaps
between tokens), decode tokens/s (requests x (new tokens - 1) / decode time), prefill
tokens/s (requests x prompt tokens / time to first token), end-to-end latency, peak RSS from
the OS, and the KV cache's share of it computed from the config (see models/causal_lm.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanify.measure import memory, stats
from leanify.models.artifact import Artifact

WINDOW_STEP = 997  # tokens between the starts of successive prompts (a prime: no short cycle)
ROW_STEP = 389  # tokens between the rows of one call


class Prompts:
    """Token windows of the bundled text (or random ids when the model has no tokenizer)."""

    def __init__(self, artifact: Artifact, seed: int = 0):
        vocab = artifact.meta.get("vocab_size")
        folder = artifact.tokenizer_path
        if folder is not None:
            from leanify.models.inputs import bundled_texts, load_tokenizer

            tok, _pad, _pad_id = load_tokenizer(folder)
            text = "\n".join(bundled_texts())
            self.ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int64)
            self.source = "bundled text (tokenized)"
        else:
            rng = np.random.default_rng(seed)
            self.ids = rng.integers(0, int(vocab or 1000), 8192, dtype=np.int64)
            self.source = "random token ids (no tokenizer)"
        if vocab:
            self.ids = self.ids[self.ids < int(vocab)]
        self.calls = 0

    def next(self, rows: int, tokens: int) -> np.ndarray:
        """(rows, tokens) ids: a window not used by the previous calls."""
        ids = self.ids
        if len(ids) < tokens + 1:  # a prompt longer than the text: the text, repeated
            ids = np.tile(ids, tokens // max(len(ids), 1) + 2)
        span = len(ids) - tokens
        out = np.empty((rows, tokens), np.int64)
        for r in range(rows):
            start = (self.calls * WINDOW_STEP + r * ROW_STEP) % span
            out[r] = ids[start:start + tokens]
        self.calls += 1
        return out


def timed_call(runner: Any, prompts: Prompts, rows: int, prompt_tokens: int,
               new_tokens: int) -> dict[str, Any]:
    """One generate call on a fresh prompt, with the process's peak RSS during it."""
    ids = prompts.next(rows, prompt_tokens)
    per_call = memory.reset_peak()
    gen = runner.generate(ids, new_tokens)
    return {"token_ms": gen.token_ms, "peak_rss_mb": memory.peak_rss_mb(),
            "peak_is_per_call": per_call, "tokens": gen.tokens.shape[1]}


def call_figures(call: dict[str, Any], rows: int, prompt_tokens: int) -> dict[str, float]:
    token_ms = call["token_ms"]
    ttft = token_ms[0]
    decode_ms = token_ms[-1] - ttft
    return {
        "ttft_ms": ttft,
        "e2e_ms": token_ms[-1],
        "decode_tokens_per_s": rows * (len(token_ms) - 1) * 1000.0 / decode_ms
        if decode_ms > 0 else float("nan"),
        "prefill_tokens_per_s": rows * prompt_tokens * 1000.0 / ttft if ttft > 0 else
        float("nan"),
    }


def row(name: str, point: tuple[int, int], new_tokens: int, calls: list[dict[str, Any]],
        rounds: list[list[dict[str, Any]]], artifact: Artifact, bare_mb: float
        ) -> dict[str, Any]:
    """The bench row of one model at one point, from all its timed calls."""
    rows, prompt_tokens = point
    figures = [call_figures(c, rows, prompt_tokens) for c in calls]
    gaps = [b - a for c in calls for a, b in zip(c["token_ms"], c["token_ms"][1:],
                                                    strict=False)]

    def med(key: str) -> float:
        return float(np.median([f[key] for f in figures]))

    tpot = np.percentile(gaps, [50, 95]) if gaps else [None, None]  # one new token: no gap
    meta = artifact.meta
    per_token = meta.get("kv_bytes_per_token")  # from the config (models/causal_lm.py)
    cache = per_token * rows * (prompt_tokens + new_tokens) if per_token else None
    ttft = stats.summarize([f["ttft_ms"] for f in figures])
    e2e = stats.summarize([f["e2e_ms"] for f in figures])
    return {
        "model": name,
        "batch_size": rows,  # concurrent requests, decoded together
        "seq_len": prompt_tokens,
        "concurrency": rows,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "calls": len(calls),
        "ttft_ms": {k: round(ttft[k], 3) for k in ("p50", "min", "max", "mean")},
        "ttft_p50_ci95_ms": [round(x, 3) for x in ttft["p50_ci95"]],
        "tpot_ms": {"p50": _round(tpot[0]), "p95": _round(tpot[1])},
        "decode_tokens_per_s": _round(med("decode_tokens_per_s")),
        "prefill_tokens_per_s": round(med("prefill_tokens_per_s"), 3),
        "e2e_ms": round(med("e2e_ms"), 3),
        "round_ttft_ms": [round(_round_median(r, rows, prompt_tokens, "ttft_ms"), 3)
                          for r in rounds],
        "round_decode_tokens_per_s": [
            round(_round_median(r, rows, prompt_tokens, "decode_tokens_per_s"), 3)
            for r in rounds],
        # a request's end-to-end latency is the point's latency (what `optimize` ranks by)
        "latency_ms": {k: round(e2e[k], 3) for k in ("p50", "p90", "p99", "mean", "std",
                                                        "min", "max")},
        "latency_p50_ci95_ms": [round(x, 3) for x in e2e["p50_ci95"]],
        "round_p50_ms": [round(_round_median(r, rows, prompt_tokens, "e2e_ms"), 3)
                         for r in rounds],
        "throughput_per_s": round(rows * 1000.0 / e2e["p50"], 3),
        "peak_rss_mb": round(max(c["peak_rss_mb"] for c in calls) - bare_mb, 1),
        "kv_cache_mb": round(cache / 2**20, 3) if cache is not None else None,
        "params": meta.get("params"),
    }


def _round(value: float | None) -> float | None:
    """JSON has no NaN: a figure that cannot be measured (one new token: no decode) is None."""
    return None if value is None or not np.isfinite(value) else round(float(value), 3)


def _round_median(calls: list[dict[str, Any]], rows: int, prompt_tokens: int,
                  key: str) -> float:
    return float(np.median([call_figures(c, rows, prompt_tokens)[key] for c in calls]))


def vs_baseline(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the baseline from the paired rounds: time-to-first-token speed-up
    (baseline / model) and decode speed-up (model tok/s / baseline tok/s)."""
    ttft, ttft_lo, ttft_hi = stats.paired_ratio_ci(base["round_ttft_ms"],
                                                   other["round_ttft_ms"])
    decode, dec_lo, dec_hi = stats.paired_ratio_ci(other["round_decode_tokens_per_s"],
                                                   base["round_decode_tokens_per_s"])
    speedup, lo, hi = stats.paired_ratio_ci(base["round_p50_ms"], other["round_p50_ms"])
    return {
        "baseline": base["model"],
        # end to end, as bench's other workloads: baseline latency / model latency
        "speedup": round(speedup, 4),
        "speedup_ci95": [round(x, 4) if x is not None else round(speedup, 4)
                         for x in (lo, hi)],
        "speedup_rounds": [round(x, 4) for x in stats.paired_ratios(base["round_p50_ms"],
                                                                    other["round_p50_ms"])],
        "speedup_ci_method": "paired-rounds-t" if lo is not None else "one-round",
        "latency_ratio": round(other["latency_ms"]["p50"] / base["latency_ms"]["p50"], 4),
        "ttft_speedup": round(ttft, 4),
        "ttft_speedup_ci95": [None if x is None else round(x, 4) for x in (ttft_lo, ttft_hi)],
        "decode_speedup": round(decode, 4),
        "decode_speedup_ci95": [None if x is None else round(x, 4) for x in (dec_lo, dec_hi)],
    }
