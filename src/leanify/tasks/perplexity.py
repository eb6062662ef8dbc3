"""`perplexity`: how well a causal LM predicts a text, lower is better.

The Hugging Face protocol (transformers' "Perplexity of fixed-length models"): the text's
lines, joined by newlines, are tokenized once; windows of `max_length` tokens slide by a
stride of half a window; in each window only the tokens not scored by the previous window
are targets (the overlap gets label -100: context only). Every token but the first is scored
exactly once, from the model's full logits (log-softmax in float64, here, not the model's own
loss), so every runtime is judged on the same token ids and the same targets.
perplexity = exp(total negative log-likelihood / scored tokens).

The gate: perplexity rises when a model gets worse, so `--max-drop` for this task is the
relative increase allowed, in percent (`--max-drop 2`: at most 2% above the original's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure import data as d
from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact
from leanify.tasks.base import Batch, Columns, EvalSettings, Metric, Task

STRIDE_SHARE = 2  # stride = window // 2


class Perplexity(Task):
    name = "perplexity"
    reads = ("text",)
    metric = "perplexity"
    higher_is_better = False
    plain_text = True
    row_word = "lines"
    summary = "a text file (causal LMs): sliding-window perplexity, lower is better; " \
              "--max-drop is a relative increase in percent"

    def extract(self, path: Path, names: list[str], rows: list, columns: Columns) -> Dataset:
        tc = d.find_column(names, columns.text, d.TEXT_COLUMNS)
        if tc is None:
            raise d.missing_column(path, "text", [columns.text] if columns.text else
                                   d.TEXT_COLUMNS, names, "text_col")
        return Dataset(path, self.name, texts=[d.row_text(path, n, r, tc) for n, r in rows],
                       lines=[n for n, _ in rows])

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        if artifact.meta.get("task") != "text-generation":
            raise LeanifyError(
                f"is a {artifact.meta.get('task') or artifact.format} model; perplexity "
                "scores causal language models (text generators).", path=artifact.path,
                fix="Use another task for this model (fidelity works for any model).")
        if dataset.texts is None:
            raise LeanifyError(f"perplexity needs text; this dataset was read for "
                               f"'{dataset.task}'.", path=dataset.path,
                               fix="Read it with read_dataset(path, 'perplexity').")
        self.check_rows(dataset)
        if len(token_ids(artifact, dataset)) < 2:
            raise LeanifyError("holds fewer than 2 tokens: nothing to predict.",
                               path=dataset.path, fix="Give a longer text.")

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        """Consecutive windows of the text (calibration for passes that need it)."""
        ids = token_ids(artifact, dataset)
        size = window(artifact, settings)
        for begin in range(0, len(ids) - 1, size):
            chunk = ids[begin:begin + size][None]
            yield {"input_ids": chunk, "attention_mask": np.ones_like(chunk)}

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        ids = token_ids(artifact, dataset)
        size = window(artifact, settings)
        nll, count, windows = 0.0, 0, 0
        for chunk, targets in sliding_windows(ids, size, max(1, size // STRIDE_SHARE)):
            feeds = {"input_ids": chunk[None], "attention_mask": np.ones_like(chunk)[None]}
            logits = _logits(runner.run(feeds), artifact)[0]
            if logits.shape[0] != len(chunk):
                raise LeanifyError(
                    f"the model returned logits for {logits.shape[0]} positions, not "
                    f"{len(chunk)}.", path=artifact.path,
                    fix="perplexity needs the logits of every position (a causal LM head).")
            nll += token_nll(logits, chunk, targets)
            count += int(targets.sum())
            windows += 1
        value = float(np.exp(nll / count))
        details = {
            "perplexity": value, "nll_per_token": nll / count, "tokens": len(ids),
            "scored_tokens": count, "windows": windows, "window": size,
            "stride": max(1, size // STRIDE_SHARE),
            # the same ids for every runtime: this checksum shows it across records
            "token_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()[:16],
            "drop_unit": "percent",  # the gate: relative increase in percent (search/select)
        }
        return Metric(self.metric, value, False, details)


def window(artifact: Artifact, settings: EvalSettings) -> int:
    """Tokens per window: --max-length, capped by the model's context."""
    context = artifact.meta.get("max_length")
    size = int(settings.max_length)
    return min(size, int(context)) if isinstance(context, int) and context > 0 else size


def sliding_windows(ids: np.ndarray, size: int, stride: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(window ids, target mask): the mask marks positions whose token is scored here
    (predicted from the position before it); the overlap with the previous window is -100."""
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + size, len(ids))
        chunk = ids[begin:end]
        targets = np.zeros(len(chunk), bool)
        targets[max(1, len(chunk) - (end - prev_end)):] = True  # position 0 has no context
        yield chunk, targets
        prev_end = end
        if end == len(ids):
            break


def token_nll(logits: np.ndarray, chunk: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(token) over the target positions, from (positions, vocab) logits."""
    pos = np.nonzero(targets)[0]
    rows = logits[pos - 1].astype(np.float64)  # position t is predicted at t - 1
    top = rows.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    return float((log_norm - rows[np.arange(len(pos)), chunk[pos]]).sum())


_IDS: dict[tuple[str, int, str], np.ndarray] = {}


def token_ids(artifact: Artifact, dataset: Dataset) -> np.ndarray:
    """The text's token ids (the lines joined by newlines), tokenized once per tokenizer."""
    from leanify.models.inputs import load_tokenizer
    from leanify.tasks.text import tokenizer_folder

    folder = tokenizer_folder(artifact)
    text = "\n".join(dataset.texts or [])
    key = (str(folder), len(text), hashlib.sha256(text.encode()).hexdigest())
    if key not in _IDS:
        tok, _pad, _pad_id = load_tokenizer(folder)
        _IDS[key] = np.asarray(tok.encode(text).ids, dtype=np.int64)
    ids = _IDS[key]
    vocab = artifact.meta.get("vocab_size")
    if isinstance(vocab, int) and len(ids) and int(ids.max()) >= vocab:
        raise LeanifyError(f"its tokenizer gives token id {int(ids.max())}, beyond the "
                           f"model's {vocab} embeddings.", path=artifact.path,
                           fix="Use the tokenizer the model was trained with (--tokenizer).")
    return ids


def _logits(outputs: dict[str, np.ndarray], artifact: Artifact) -> np.ndarray:
    logits = outputs.get("logits")
    if logits is None:
        logits = next(iter(outputs.values()))
    if logits.ndim != 3:
        raise LeanifyError(f"the model's first output has shape {list(logits.shape)}, not "
                           "(batch, positions, vocab) logits.", path=artifact.path,
                           fix="perplexity needs a causal LM with its language-model head.")
    return logits


TASK = Perplexity()
