"""Quality: how good a model is on real data, and how close an optimized model stays to the
original.

Tasks:
- `embedding-similarity`: Spearman x100 between the cosine of the two sentences' embeddings and
  the gold scores (the STS Benchmark protocol).
- `text-classification`: accuracy x100 (macro-F1 x100 in details), dataset labels mapped to the
  model's classes through its id2label.
- `fidelity`: agreement with the original model's outputs on the same texts: mean cosine x100
  for embeddings; top-1 agreement x100 (mean KL in details) for logits.

Evaluation is deterministic: texts run in a fixed order (sorted by length, a stable sort, so
each batch pads little), in fixed batches, and nothing is sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure.data import MIN_ROWS, TASKS, Dataset, check_labels, text_batches
from leanify.models.artifact import Artifact

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
EMBEDDING_TASKS = ("sentence-embedding", "feature-extraction")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Metric:
    """One quality number. `value` is on a 0-100 scale for every task here."""

    name: str
    value: float
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- running texts through a model -----------------------------------------------------


def _tokenizer_folder(artifact: Artifact):
    folder = artifact.tokenizer_path
    if folder is None:
        raise LeanifyError(
            "evaluating on text needs the model's tokenizer, and none was found next to it.",
            path=artifact.path,
            fix="Pass the folder holding tokenizer.json (leanify.load(..., tokenizer=DIR), "
            "--tokenizer DIR on the command line).",
        )
    return folder


def _static_dims(artifact: Artifact) -> tuple[int | None, int | None]:
    """(batch, sequence) sizes fixed by an export with static shapes; None where dynamic."""
    batch = seq = None
    for spec in artifact.inputs:
        if spec.name not in TEXT_INPUTS or not spec.shape or len(spec.shape) != 2:
            continue
        if isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            batch = spec.shape[0]
        if isinstance(spec.shape[1], int) and spec.shape[1] > 0:
            seq = spec.shape[1]
    return batch, seq


def _effective_max_length(artifact: Artifact, max_length: int) -> int:
    """max_length, capped by the model's position table and by a fixed exported length."""
    limit = int(max_length)
    model_max = artifact.meta.get("max_length")
    if isinstance(model_max, int) and 1 < model_max < limit:
        limit = model_max
    static_seq = _static_dims(artifact)[1]
    if static_seq is not None:
        limit = static_seq
    return limit


def _cast_inputs(artifact: Artifact, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    dtypes = {s.name: s.dtype for s in artifact.inputs}
    out = {}
    for name, array in batch.items():
        dtype = dtypes.get(name)
        if dtype and dtype != "unknown" and dtype != array.dtype.name:
            try:
                array = array.astype(np.dtype(dtype))
            except TypeError:
                pass
        out[name] = np.ascontiguousarray(array)
    return out


def _map_texts(
    runner,
    artifact: Artifact,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    reduce: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray],
) -> np.ndarray:
    """Run `texts` through the runner and stack reduce(outputs, attention_mask), one row per
    text, in the order given. Texts run longest first (stable) so batches pad little."""
    if len(texts) == 0:
        raise LeanifyError("there are no texts to evaluate.", fix="Give a non-empty dataset.")
    folder = _tokenizer_folder(artifact)
    names = list(runner.input_names)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    ordered = [texts[i] for i in order]
    wanted = [*names, "attention_mask"]  # the mask is needed for pooling even if not an input
    max_length = _effective_max_length(artifact, max_length)
    static_batch, static_seq = _static_dims(artifact)
    if static_batch is not None:  # a fixed batch: fill the last one with repeats, drop them
        batch_size = static_batch
        ordered += [ordered[-1]] * (-len(ordered) % static_batch)
    rows: list[np.ndarray] = []
    for batch in text_batches(ordered, folder, batch_size, max_length, wanted,
                              pad_to=static_seq):
        mask = batch["attention_mask"]
        feed = _cast_inputs(artifact, {k: v for k, v in batch.items() if k in names})
        outputs = runner.run(feed)
        rows.append(np.asarray(reduce(outputs, mask)))
    stacked = np.concatenate(rows, axis=0)[: len(texts)]
    result = np.empty_like(stacked)
    result[order] = stacked
    return result


def _output_kind(artifact: Artifact, outputs: dict[str, np.ndarray]) -> str:
    if "logits" in outputs or artifact.meta.get("task") == "text-classification":
        return "logits"
    return "embedding"


def _logits(artifact: Artifact, outputs: dict[str, np.ndarray]) -> np.ndarray:
    if "logits" in outputs:
        return np.asarray(outputs["logits"], dtype=np.float32)
    two_d = [v for v in outputs.values() if np.ndim(v) == 2]
    if len(two_d) == 1:
        return np.asarray(two_d[0], dtype=np.float32)
    raise LeanifyError(
        f"leanify cannot tell which output holds the class logits (outputs: "
        f"{', '.join(f'{k} {list(np.shape(v))}' for k, v in outputs.items())}).",
        path=artifact.path,
        fix="Name the classifier's output 'logits' when exporting the model.",
    )


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str = "mean") -> np.ndarray:
    """Pool token states (batch, seq, dim) into one vector per text, over the attention mask.

    `mode` is one of POOLING_MODES, or several joined by '+' (concatenated in the
    sentence-transformers order: cls, max, mean, mean_sqrt_len, weightedmean, lasttoken).
    """
    modes = [m.strip() for m in str(mode or "mean").split("+") if m.strip()] or ["mean"]
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise LeanifyError(
            f"unknown pooling mode {', '.join(map(repr, unknown))}.",
            fix=f"Use one of {', '.join(POOLING_MODES)} in the model's metadata ('pooling').",
        )
    h = np.asarray(hidden, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[:, :, None]
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    parts = []
    for name in POOLING_MODES:
        if name not in modes:
            continue
        if name == "cls":
            parts.append(h[:, 0])
        elif name == "max":
            parts.append(np.where(m > 0, h, -1e9).max(axis=1))
        elif name == "mean":
            parts.append((h * m).sum(axis=1) / counts)
        elif name == "mean_sqrt_len":
            parts.append((h * m).sum(axis=1) / np.sqrt(counts))
        elif name == "weightedmean":
            w = m * np.arange(1, h.shape[1] + 1, dtype=np.float32)[None, :, None]
            parts.append((h * w).sum(axis=1) / np.clip(w.sum(axis=1), 1e-9, None))
        elif name == "lasttoken":
            last = np.clip(m[:, :, 0].sum(axis=1).astype(np.int64) - 1, 0, None)
            parts.append(h[np.arange(h.shape[0]), last])
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.clip(norms, 1e-12, None)


def _pooled(artifact: Artifact, outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    if "last_hidden_state" in outputs and np.ndim(outputs["last_hidden_state"]) == 3:
        hidden = outputs["last_hidden_state"]
    else:
        hidden = next((v for v in outputs.values() if np.ndim(v) == 3), None)
    if hidden is not None:
        if hidden.shape[:2] != mask.shape:
            raise LeanifyError(
                f"the model's token output has shape {list(hidden.shape)}, which does not match "
                f"the batch's {list(mask.shape)} tokens.",
                path=artifact.path, fix="Export the model with dynamic batch and sequence axes.",
            )
        return pool(hidden, mask, artifact.meta.get("pooling", "mean"))
    # No token states: a model that pools inside (e.g. an output 'sentence_embedding').
    two_d = {k: v for k, v in outputs.items() if np.ndim(v) == 2}
    for key in ("sentence_embedding", "embeddings", "embedding"):
        if key in two_d:
            return np.asarray(two_d[key], dtype=np.float32)
    if len(two_d) == 1:
        return np.asarray(next(iter(two_d.values())), dtype=np.float32)
    raise LeanifyError(
        f"leanify cannot tell which output holds the token states or the sentence embedding "
        f"(outputs: {', '.join(f'{k} {list(np.shape(v))}' for k, v in outputs.items())}).",
        path=artifact.path,
        fix="Name the output 'last_hidden_state' (token states) or 'sentence_embedding'.",
    )


def embed(runner, artifact: Artifact, texts: Sequence[str], batch_size: int = 32,
          max_length: int = 128) -> np.ndarray:
    """Sentence embeddings (len(texts), dim), float32: token states pooled over the attention
    mask per artifact.meta['pooling'] ('mean' by default), L2-normalised if meta['normalize']."""
    emb = _map_texts(runner, artifact, texts, batch_size, max_length,
                     lambda out, mask: _pooled(artifact, out, mask))
    emb = emb.astype(np.float32, copy=False)
    return _normalize(emb) if artifact.meta.get("normalize") else emb


def _outputs(runner, artifact: Artifact, texts: Sequence[str], batch_size: int,
             max_length: int) -> tuple[np.ndarray, str]:
    """(array, kind): logits for classifiers, pooled embeddings otherwise."""
    kinds: list[str] = []

    def reduce(out: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        kind = _output_kind(artifact, out)
        kinds.append(kind)
        return _logits(artifact, out) if kind == "logits" else _pooled(artifact, out, mask)

    array = _map_texts(runner, artifact, texts, batch_size, max_length, reduce)
    kind = kinds[0]
    array = array.astype(np.float32, copy=False)
    if kind == "embedding" and artifact.meta.get("normalize"):
        array = _normalize(array)
    return array, kind


def _open(artifact: Artifact, threads: int | None):
    from leanify.runtimes import open_runner

    return open_runner(artifact, threads)


def _as_artifact(model: Any) -> Artifact:
    if isinstance(model, Artifact):
        return model
    from leanify.models.load import load

    return load(model)


def reference_outputs(artifact: Artifact, texts: Sequence[str], *, threads: int | None = None,
                      batch_size: int = 32, max_length: int = 128) -> np.ndarray:
    """The model's outputs on `texts`, one row per text: pooled embeddings (normalised per the
    model's metadata) or, for classifiers, logits. Feed it to evaluate(..., reference=...)."""
    artifact = _as_artifact(artifact)
    _tokenizer_folder(artifact)
    runner = _open(artifact, threads)
    try:
        return _outputs(runner, artifact, list(texts), batch_size, max_length)[0]
    finally:
        runner.close()


# --- metrics -------------------------------------------------------------------------------


def _need(module: str, package: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LeanifyError(f"{purpose} needs the Python package '{package}', which is not "
                           "installed.", fix=f"Install it with: pip install {package}") from exc


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (_normalize(a) * _normalize(b)).sum(axis=1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _similarity(runner, artifact: Artifact, dataset: Dataset, batch_size: int,
                max_length: int) -> Metric:
    stats = _need("scipy.stats", "scipy", "Spearman correlation")
    pairs = dataset.pairs or []
    unique = list(dict.fromkeys(s for pair in pairs for s in pair))
    where = {s: i for i, s in enumerate(unique)}
    emb = embed(runner, artifact, unique, batch_size, max_length)
    a = emb[[where[p[0]] for p in pairs]]
    b = emb[[where[p[1]] for p in pairs]]
    cosine = _cosine_rows(a, b)
    gold = np.asarray(dataset.scores, dtype=np.float64)
    details: dict[str, Any] = {"pairs": len(pairs), "sentences": len(unique)}
    if np.ptp(cosine) == 0:
        details["note"] = "every pair got the same cosine: the model's embeddings are constant"
        return Metric("spearman", float("nan"), True, details)
    spearman = float(stats.spearmanr(cosine, gold).statistic) * 100
    details["pearson"] = float(stats.pearsonr(cosine, gold).statistic) * 100
    return Metric("spearman", spearman, True, details)


def _classification(runner, artifact: Artifact, dataset: Dataset, mapping: dict[str, int],
                    batch_size: int, max_length: int) -> Metric:
    f1_score = _need("sklearn.metrics", "scikit-learn", "Macro-F1").f1_score
    logits = _map_texts(runner, artifact, dataset.texts or [], batch_size, max_length,
                        lambda out, mask: _logits(artifact, out))
    n_classes = logits.shape[1] if logits.ndim == 2 else 0
    if n_classes < 2:
        raise LeanifyError(
            f"the model gives {n_classes} score(s) per text, not class logits.",
            path=artifact.path,
            fix="text-classification needs a classifier with one logit per class.",
        )
    too_big = {k: v for k, v in mapping.items() if v >= n_classes}
    if too_big:
        raise LeanifyError(
            f"dataset label(s) {', '.join(map(repr, too_big))} map to class ids beyond the "
            f"model's {n_classes} classes.",
            path=dataset.path, fix="Relabel the data with the model's class ids or names.",
        )
    gold = np.asarray([mapping[label] for label in dataset.labels or []])
    pred = np.argmax(logits, axis=1)  # ties go to the lower class id: deterministic
    accuracy = float(np.mean(pred == gold)) * 100
    macro_f1 = float(f1_score(gold, pred, average="macro", zero_division=0)) * 100
    names = artifact.meta.get("labels") or {}
    details = {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "rows": int(gold.size),
        "label_map": {k: names.get(str(v), str(v)) for k, v in mapping.items()},
        "predicted_counts": {names.get(str(c), str(c)): int((pred == c).sum())
                             for c in range(n_classes)},
    }
    return Metric("accuracy", accuracy, True, details)


def _fidelity(runner, artifact: Artifact, texts: list[str], reference: np.ndarray,
              batch_size: int, max_length: int, dataset: Dataset) -> Metric:
    out, kind = _outputs(runner, artifact, texts, batch_size, max_length)
    if out.shape != reference.shape:
        raise LeanifyError(
            f"the reference outputs have shape {list(reference.shape)} but the model gives "
            f"{list(out.shape)} on the {len(texts)} texts of this dataset.",
            path=dataset.path,
            fix="Compute the reference with reference_outputs(original, dataset.all_texts()) "
            "on the same texts, with the same kind of model (embeddings vs logits).",
        )
    if kind == "embedding":
        cos = _cosine_rows(out, reference)
        details = {"texts": len(texts), "output": "embedding",
                   "min_cosine": float(cos.min()) * 100,
                   "p05_cosine": float(np.percentile(cos, 5)) * 100}
        return Metric("cosine_fidelity", float(cos.mean()) * 100, True, details)
    agree = np.argmax(out, axis=1) == np.argmax(reference, axis=1)
    log_p, log_q = _log_softmax(reference), _log_softmax(out)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    details = {"texts": len(texts), "output": "logits", "mean_kl": float(kl.mean()),
               "max_kl": float(kl.max()), "disagreements": int((~agree).sum())}
    return Metric("top1_agreement", float(agree.mean()) * 100, True, details)


# --- the entry point -----------------------------------------------------------------------


def _check_task(artifact: Artifact, dataset: Dataset, task: str) -> None:
    if task not in TASKS:
        raise LeanifyError(f"unknown evaluation task '{task}'.",
                           fix=f"Use one of: {', '.join(TASKS)}.")
    model_task = artifact.meta.get("task")
    if task == "embedding-similarity":
        if not dataset.pairs or dataset.scores is None:
            raise LeanifyError(
                "embedding-similarity needs sentence pairs with gold scores; this dataset was "
                f"read for '{dataset.task}'.", path=dataset.path,
                fix="Read it with read_dataset(path, 'embedding-similarity').",
            )
        if model_task == "text-classification":
            raise LeanifyError(
                "is a text classifier; embedding-similarity needs a sentence-embedding model.",
                path=artifact.path, fix="Evaluate it with the text-classification task.",
            )
    elif task == "text-classification":
        if dataset.texts is None or dataset.labels is None:
            raise LeanifyError(
                "text-classification needs texts with labels; this dataset was read for "
                f"'{dataset.task}'.", path=dataset.path,
                fix="Read it with read_dataset(path, 'text-classification').",
            )
        if model_task in EMBEDDING_TASKS:
            raise LeanifyError(
                f"is a {model_task} model, not a text classifier.", path=artifact.path,
                fix="Evaluate it with embedding-similarity or fidelity.",
            )
    need = MIN_ROWS[task]
    if len(dataset) < need:
        raise LeanifyError(f"holds {len(dataset)} rows; task '{task}' needs at least {need}.",
                           path=dataset.path, fix="Give more rows.")


def evaluate(
    artifact: Artifact,
    dataset: Dataset,
    task: str,
    *,
    threads: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    reference: np.ndarray | Artifact | None = None,
) -> Metric:
    """Score `artifact` on `dataset` for `task`; opens its own runner and closes it after.

    For `fidelity`, `reference` is the original model's outputs on dataset.all_texts() (from
    reference_outputs) or the original model itself. Every check on the data, the labels and
    the reference runs before the model does.
    """
    artifact = _as_artifact(artifact)
    _check_task(artifact, dataset, task)
    _tokenizer_folder(artifact)
    mapping = {}
    texts: list[str] = []
    if task == "embedding-similarity":
        _need("scipy.stats", "scipy", "Spearman correlation")  # fail before the model loads
    if task == "text-classification":
        _need("sklearn.metrics", "scikit-learn", "Macro-F1")
        mapping = check_labels(replace(dataset, task=task), artifact.meta.get("labels"))
    if task == "fidelity":
        texts = dataset.all_texts()
        if reference is None:
            raise LeanifyError(
                "fidelity compares against the original model's outputs, and none were given.",
                path=dataset.path,
                fix="Pass reference=reference_outputs(original, dataset.all_texts()) or "
                "reference=original_artifact.",
            )
        if not isinstance(reference, np.ndarray) and not isinstance(reference, list | tuple):
            reference = reference_outputs(reference, texts, threads=threads,
                                          batch_size=batch_size, max_length=max_length)
        reference = np.asarray(reference, dtype=np.float32)
        if reference.ndim != 2 or reference.shape[0] != len(texts):
            raise LeanifyError(
                f"the reference outputs have shape {list(reference.shape)}; fidelity needs one "
                f"row per text ({len(texts)} texts in this dataset).",
                path=dataset.path,
                fix="Compute them with reference_outputs(original, dataset.all_texts()).",
            )

    settings = {"max_length": _effective_max_length(artifact, max_length),
                "batch_size": batch_size, "threads": threads}
    runner = _open(artifact, threads)
    try:
        if task == "embedding-similarity":
            metric = _similarity(runner, artifact, dataset, batch_size, max_length)
        elif task == "text-classification":
            metric = _classification(runner, artifact, dataset, mapping, batch_size, max_length)
        else:
            metric = _fidelity(runner, artifact, texts, reference, batch_size, max_length,
                               dataset)
    finally:
        runner.close()
    metric.details.update(settings)
    metric.details["task"] = task
    return metric
