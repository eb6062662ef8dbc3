"""Context length: how long the user's inputs really are, and what padding costs.

Token lengths come from the model's own tokenizer, without truncation. The saving of each
padding strategy is estimated from the measured latency curve's linear fit: the time to run
every text of the data in batches, padded to the model's maximum length (what a fixed-shape
service does), to the longest text of each batch (dynamic padding), or to the longest text of
each batch after sorting by length (length bucketing); and truncating at the 95th percentile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leanify.models.artifact import Artifact

DEFAULT_MAX_LENGTH = 512
HISTOGRAM_BINS = 24


def max_length_of(artifact: Artifact) -> dict[str, int | None]:
    """The model's length limits: its position table, and what its tokenizer config says."""
    out: dict[str, int | None] = {"position_table": artifact.meta.get("max_length"),
                                  "tokenizer": None, "sentence_transformers": None}
    folder = artifact.path if artifact.path is not None and artifact.path.is_dir() else None
    tok = artifact.tokenizer_path
    for base, file, key, field in (
        (tok, "tokenizer_config.json", "tokenizer", "model_max_length"),
        (folder, "sentence_bert_config.json", "sentence_transformers", "max_seq_length"),
    ):
        if base is None or not (Path(base) / file).is_file():
            continue
        try:
            value = json.loads((Path(base) / file).read_text(encoding="utf-8")).get(field)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            value = None
        if isinstance(value, int) and 1 < value < 1_000_000:  # HF writes 1e30 for "none"
            out[key] = value
    return out


def effective_max_length(limits: dict[str, int | None]) -> int:
    """What a service runs at most: the smallest limit the model or its config sets."""
    values = [v for v in limits.values() if isinstance(v, int) and v > 1]
    return min(values) if values else DEFAULT_MAX_LENGTH


def token_lengths(texts: Sequence[str], tokenizer_folder: str | Path) -> np.ndarray:
    """Tokens per text (special tokens included), never truncated."""
    from leanify.models.inputs import load_tokenizer

    tok, _pad, _pad_id = load_tokenizer(tokenizer_folder)
    tok.no_padding()
    tok.no_truncation()
    return np.array([len(e.ids) for e in tok.encode_batch(list(texts))], dtype=np.int64)


def length_stats(lengths: np.ndarray, max_length: int) -> dict[str, Any]:
    edges = np.linspace(0, max(int(lengths.max()), 1) + 1, HISTOGRAM_BINS + 1)
    counts, edges = np.histogram(lengths, bins=edges)
    return {
        "texts": int(lengths.size),
        "p50": int(np.percentile(lengths, 50)),
        "p95": math.ceil(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 1),
        "max_length": max_length,
        "over_max_length": int((lengths > max_length).sum()),
        "histogram": {"edges": [round(float(e), 1) for e in edges],
                      "counts": [int(c) for c in counts]},
    }


def round_up(n: int, multiple: int = 8) -> int:
    return max(multiple, int(math.ceil(n / multiple) * multiple))


def padding_costs(lengths: np.ndarray, batch_size: int, max_length: int,
                  latency_ms: Callable[[int, int], float]) -> dict[str, Any]:
    """Estimated time to run every text, batch by batch, under each padding strategy.

    `latency_ms(batch, seq)` comes from the measured curve. Returns the strategies with their
    estimated seconds and saving against padding to `max_length`.
    """
    capped = np.minimum(lengths, max_length)
    p95 = math.ceil(np.percentile(capped, 95))

    def run(order: np.ndarray, cap: int | None) -> tuple[float, float]:
        total, padded = 0.0, 0
        for start in range(0, len(order), batch_size):
            chunk = capped[order[start:start + batch_size]]
            seq = cap if cap is not None else int(chunk.max())
            total += latency_ms(len(chunk), seq)
            padded += seq * len(chunk)
        return total / 1000.0, 1.0 - float(capped.sum()) / max(padded, 1)

    file_order = np.arange(len(capped))
    strategies = {
        "pad_to_max_length": run(file_order, max_length),
        "dynamic_padding": run(file_order, None),
        "length_bucketing": run(np.argsort(capped, kind="stable"), None),
        "truncate_at_p95": run(np.argsort(capped, kind="stable"), p95),
    }
    base = strategies["pad_to_max_length"][0]
    out = {name: {"seconds": round(s, 3), "padding_share": round(pad, 3),
                  "saving": round(1.0 - s / base, 3) if base > 0 else 0.0}
           for name, (s, pad) in strategies.items()}
    out["truncate_at_p95"]["truncated_texts"] = int((capped > p95).sum())
    out["truncate_at_p95"]["length"] = p95
    return {"batch_size": batch_size, "max_length": max_length, "strategies": out}
