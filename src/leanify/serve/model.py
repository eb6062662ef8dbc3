"""The served model: what `leanify serve` loads and how one batch of texts becomes rows.

A run folder from `leanify optimize` serves its selected model with the thread count it was
measured with (its runtime settings ride in the model's sidecar); any other model leanify
loads is served as it is. Text encoders give embeddings (pooled as the task pools them) or
class probabilities; causal LMs are chat models (serve/chat.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact

RECORD = "leanify.json"
DEFAULT_MAX_LENGTH = 512  # capped by the model's own position table
SPECIAL_TOKENS_ROOM = 8  # [CLS], [SEP] and the like, added around the text's own tokens


@dataclass(frozen=True)
class Source:
    """What to serve: the artifact, its display name and the threads it was measured with."""

    artifact: Artifact
    name: str
    threads: int | None


def resolve(model: str | Path, *, tokenizer: str | None = None, trust_pickle: bool = False,
            trust_code: bool = False, threads: int | None = None) -> Source:
    """A run folder (its selected model) or anything `leanify.load` takes."""
    from leanify.models.load import load

    path = Path(model).expanduser()
    record_file = path / RECORD
    if path.is_dir() and record_file.is_file():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
            selected = record["selected"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise LeanifyError("is not a readable leanify record.", path=record_file,
                               fix="Point at the run folder `leanify optimize --out` wrote, "
                               "or at a model file.") from exc
        if not selected:
            raise LeanifyError(
                "this optimization run selected no model (nothing passed its gate).",
                path=record_file, fix="Serve the original model, or rerun optimize with "
                "other targets.")
        artifact = load(path / selected["artifact"], tokenizer=tokenizer,
                        trust_pickle=trust_pickle, trust_code=trust_code,
                        name=selected.get("name"))
        measured = (record.get("settings") or {}).get("threads")
        return Source(artifact, str(selected.get("name") or path.name), threads or measured)
    artifact = load(str(model), tokenizer=tokenizer, trust_pickle=trust_pickle,
                    trust_code=trust_code)
    return Source(artifact, artifact.name, threads)


def serving_settings(artifact: Artifact) -> Artifact:
    """ONNX Runtime's pool threads spin-wait after each run for the next one: in a benchmark
    that wins a little, in a server they take the cores from the event loop that reads,
    refuses and answers requests. Spinning is off unless the model's settings say otherwise."""
    from dataclasses import replace

    from leanify.runtimes import for_artifact

    settings = dict(artifact.meta.get("runtime") or {})
    if for_artifact(artifact).name != "onnxruntime" or "allow_spinning" in settings:
        return artifact
    return replace(artifact, meta={**artifact.meta,
                                   "runtime": {**settings, "allow_spinning": False}})


def is_chat_model(artifact: Artifact) -> bool:
    return artifact.meta.get("task") == "text-generation"


def check_servable(artifact: Artifact) -> None:
    """What serving needs, checked before any port is bound: a text encoder or a causal LM
    with a generating runtime, and its tokenizer."""
    from leanify.runtimes import generator_for
    from leanify.tasks.text import tokenizer_folder

    if is_chat_model(artifact):
        generator_for(artifact)
        tokenizer_folder(artifact)
    else:
        ServedModel.check(artifact)


class ServedModel:
    """Tokenizer + runner; `run` tokenizes and runs one batch, on the model thread."""

    @staticmethod
    def check(artifact: Artifact) -> None:
        """A text encoder (embeddings, classifiers) with its tokenizer."""
        from leanify.tasks.text import is_text_model, tokenizer_folder

        if not is_text_model(artifact) or is_chat_model(artifact):
            raise LeanifyError(
                "leanify serve takes text encoders (embeddings, classifiers) and causal LMs "
                f"(chat); this model's inputs are {', '.join(artifact.input_names) or 'unknown'}.",
                path=artifact.path, fix="Serve a text model, or use the usage snippet in the "
                "optimize report inside your own service.")
        tokenizer_folder(artifact)

    def __init__(self, source: Source):
        from leanify.models.inputs import load_tokenizer
        from leanify.runtimes import open_runner
        from leanify.tasks.text import effective_max_length, tokenizer_folder

        artifact = serving_settings(source.artifact)
        self.check(artifact)
        self.artifact = artifact
        self.name = source.name
        self.kind = ("classification" if artifact.meta.get("task") == "text-classification"
                     else "embedding")
        self.max_length = effective_max_length(artifact, DEFAULT_MAX_LENGTH)
        self.tokenizer, _pad, self.pad_id = load_tokenizer(tokenizer_folder(artifact))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # a tokenizer that tokenizes only what is at risk of being too long (see `too_long`),
        # and one for batches, whose truncation is a safety net that never cuts a checked input
        self.batch_tokenizer = self.tokenizer.__class__.from_str(self.tokenizer.to_str())
        self.batch_tokenizer.enable_truncation(max_length=self.max_length)
        self.runner = open_runner(artifact, source.threads)
        self.names = list(self.runner.input_names)
        self.warm_timings: list[tuple[int, float]] = []  # (batch, seconds) of warm-up runs
        labels = artifact.meta.get("labels") or {}
        self.labels = ({int(k): str(v) for k, v in labels.items()} if isinstance(labels, dict)
                       else dict(enumerate(map(str, labels))))

    def too_long(self, texts: list[str]) -> list[tuple[int, int]]:
        """(index, tokens) of the inputs over the model's length. A token covers at least one
        byte, so only texts longer in bytes than the limit (less room for special tokens) are
        tokenized to tell."""
        at_risk = [i for i, t in enumerate(texts)
                   if len(t.encode("utf-8")) + SPECIAL_TOKENS_ROOM > self.max_length]
        if not at_risk:
            return []
        counts = [len(e.ids) for e in self.tokenizer.encode_batch([texts[i] for i in at_risk])]
        return [(i, n) for i, n in zip(at_risk, counts, strict=True) if n > self.max_length]

    def run(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """One batch of texts: tokenized together, padded to the longest (or the export's fixed
        length); one row per input (its embedding or class probabilities) and its tokens."""
        encodings = self.batch_tokenizer.encode_batch(texts)
        return self.run_encoded(encodings), [len(e.ids) for e in encodings]

    def run_encoded(self, encodings: list[Any]) -> np.ndarray:
        from leanify.tasks.text import cast_inputs, logits, normalize, pooled, static_dims

        static_batch, static_seq = static_dims(self.artifact)
        rows = len(encodings)
        if static_batch is not None:
            if rows > static_batch:  # the batcher never sends more; split to be safe
                return np.concatenate([self.run_encoded(encodings[i:i + static_batch])
                                       for i in range(0, rows, static_batch)])
            encodings = encodings + [encodings[-1]] * (static_batch - rows)
        width = static_seq or max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        outputs = self.runner.run(cast_inputs(self.artifact,
                                              {k: v for k, v in arrays.items()
                                               if k in self.names}))
        if self.kind == "classification":
            z = logits(self.artifact, outputs)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            out = z / z.sum(axis=1, keepdims=True)
        else:
            out = pooled(self.artifact, outputs, mask).astype(np.float32, copy=False)
            if self.artifact.meta.get("normalize"):
                out = normalize(out)
        return np.asarray(out[:rows], dtype=np.float32)

    def label(self, index: int) -> str:
        return self.labels.get(index, str(index))

    def close(self) -> None:
        self.runner.close()
