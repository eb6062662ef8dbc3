"""Text models: rows of text -> tokenized batches -> pooled embeddings or logits.

Evaluation is deterministic: texts run in a fixed order (sorted by length, a stable sort, so
each batch pads little), in fixed batches, and nothing is sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure.data import text_batches
from leanify.models.artifact import Artifact

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
EMBEDDING_TASKS = ("sentence-embedding", "feature-extraction")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_TEXTS = ["A sentence to embed.", "Another one."]  # what the usage snippet runs on


def is_text_model(artifact: Artifact) -> bool:
    return "input_ids" in artifact.input_names


def batches(artifact: Artifact, texts: Sequence[str], settings: Any) -> Iterator[dict]:
    """Tokenized batches of `texts` (the model's own inputs only), for calibration."""
    folder = tokenizer_folder(artifact)
    yield from text_batches(list(texts), folder, settings.batch_size,
                            effective_max_length(artifact, settings.max_length),
                            artifact.input_names)


def tokenizer_folder(artifact: Artifact):
    folder = artifact.tokenizer_path
    if folder is None:
        raise LeanifyError(
            "evaluating on text needs the model's tokenizer, and none was found next to it.",
            path=artifact.path,
            fix="Pass the folder holding tokenizer.json (leanify.load(..., tokenizer=DIR), "
            "--tokenizer DIR on the command line).",
        )
    return folder


def static_dims(artifact: Artifact) -> tuple[int | None, int | None]:
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


def effective_max_length(artifact: Artifact, max_length: int) -> int:
    """max_length, capped by the model's position table and by a fixed exported length."""
    limit = int(max_length)
    model_max = artifact.meta.get("max_length")
    if isinstance(model_max, int) and 1 < model_max < limit:
        limit = model_max
    static_seq = static_dims(artifact)[1]
    if static_seq is not None:
        limit = static_seq
    return limit


def cast_inputs(artifact: Artifact, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    dtypes = {s.name: s.dtype for s in artifact.inputs}
    out = {}
    for name, array in batch.items():
        dtype = dtypes.get(name)
        if dtype and dtype != "unknown" and dtype != array.dtype.name:
            try:
                array = array.astype(np.dtype(dtype))
            except TypeError:
                pass
        out[name] = np.require(array, requirements="C")
    return out


def map_texts(
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
    folder = tokenizer_folder(artifact)
    names = list(runner.input_names)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    ordered = [texts[i] for i in order]
    wanted = [*names, "attention_mask"]  # the mask is needed for pooling even if not an input
    max_length = effective_max_length(artifact, max_length)
    static_batch, static_seq = static_dims(artifact)
    if static_batch is not None:  # a fixed batch: fill the last one with repeats, drop them
        batch_size = static_batch
        ordered += [ordered[-1]] * (-len(ordered) % static_batch)
    rows: list[np.ndarray] = []
    for batch in text_batches(ordered, folder, batch_size, max_length, wanted,
                              pad_to=static_seq):
        mask = batch["attention_mask"]
        feed = cast_inputs(artifact, {k: v for k, v in batch.items() if k in names})
        outputs = runner.run(feed)
        rows.append(np.asarray(reduce(outputs, mask)))
    stacked = np.concatenate(rows, axis=0)[: len(texts)]
    result = np.empty_like(stacked)
    result[order] = stacked
    return result


def output_kind(artifact: Artifact, outputs: dict[str, np.ndarray]) -> str:
    if "logits" in outputs or artifact.meta.get("task") == "text-classification":
        return "logits"
    return "embedding"


def logits(artifact: Artifact, outputs: dict[str, np.ndarray]) -> np.ndarray:
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


def normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.clip(norms, 1e-12, None)


def pooled(artifact: Artifact, outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
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
    emb = map_texts(runner, artifact, texts, batch_size, max_length,
                     lambda out, mask: pooled(artifact, out, mask))
    emb = emb.astype(np.float32, copy=False)
    return normalize(emb) if artifact.meta.get("normalize") else emb


def outputs(runner, artifact: Artifact, texts: Sequence[str], batch_size: int,
             max_length: int) -> tuple[np.ndarray, str]:
    """(array, kind): logits for classifiers, pooled embeddings otherwise."""
    kinds: list[str] = []

    def reduce(out: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        kind = output_kind(artifact, out)
        kinds.append(kind)
        return logits(artifact, out) if kind == "logits" else pooled(artifact, out, mask)

    array = map_texts(runner, artifact, texts, batch_size, max_length, reduce)
    kind = kinds[0]
    array = array.astype(np.float32, copy=False)
    if kind == "embedding" and artifact.meta.get("normalize"):
        array = normalize(array)
    return array, kind


def need(module: str, package: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LeanifyError(f"{purpose} needs the Python package '{package}', which is not "
                           "installed.", fix=f"Install it with: pip install {package}") from exc


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (normalize(a) * normalize(b)).sum(axis=1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def snippet_inputs(folder: str, max_length: int, texts: list[str] = EXAMPLE_TEXTS) -> list[str]:
    """Snippet lines: a `tokenizers` tokenizer and `feeds` for two example texts."""
    quoted = "[" + ", ".join(f'"{t}"' for t in texts) + "]"
    return [
        "from tokenizers import Tokenizer", "",
        f'tok = Tokenizer.from_file("{folder}/tokenizer.json")',
        f"tok.enable_truncation(max_length={int(max_length)})",
        "tok.enable_padding()",
        f"texts = {quoted}",
        "enc = tok.encode_batch(texts)",
        "feeds = {",
        '    "input_ids": np.array([e.ids for e in enc], dtype=np.int64),',
        '    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),',
        '    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),',
        "}",
        "feeds = {k: v for k, v in feeds.items() if k in wanted}",
    ]


def snippet_pooling(meta: dict[str, Any]) -> list[str]:
    """Snippet lines: token states -> the sentence embedding, as the model pools."""
    pooling = meta.get("pooling", "mean")
    if pooling == "cls":
        lines = ["# sentence embedding: the first token's state", "emb = outputs[:, 0]"]
    else:
        lines = [f"# this model pools '{pooling}' (sentence-transformers); mean shown"] \
            if pooling != "mean" else []
        lines += ["# sentence embedding: mean over real tokens",
                  'mask = feeds["attention_mask"][..., None]',
                  "emb = (outputs * mask).sum(1) / mask.sum(1)"]
    if meta.get("normalize"):  # as the model's own Normalize module does
        lines.append("emb /= np.linalg.norm(emb, axis=1, keepdims=True)")
    return lines
