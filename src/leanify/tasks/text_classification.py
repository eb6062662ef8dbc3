"""`text-classification`: accuracy x100 (macro-F1 x100 in details). Rows: a text and a label,
mapped to the model's classes through its id2label."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure import data as d
from leanify.measure.data import Dataset, check_labels
from leanify.models.artifact import Artifact
from leanify.tasks import text
from leanify.tasks.base import Batch, Columns, EvalSettings, Metric, Task


class TextClassification(Task):
    name = "text-classification"
    reads = ("text", "label")
    metric = "accuracy"
    summary = "texts + labels: accuracy x100 (macro-F1 in details)"

    def extract(self, path: Path, names: list[str], rows: list, columns: Columns) -> Dataset:
        tc = d.find_column(names, columns.text, d.TEXT_COLUMNS)
        if tc is None:
            raise d.missing_column(path, "text", [columns.text] if columns.text else
                                   d.TEXT_COLUMNS, names, "text_col")
        lc = d.find_column(names, columns.label, d.LABEL_COLUMNS)
        if lc is None:
            raise d.missing_column(path, "label", [columns.label] if columns.label else
                                   d.LABEL_COLUMNS, names, "label_col")
        texts = [d.row_text(path, n, r, tc) for n, r in rows]
        labels = [d.row_label(path, n, r, lc) for n, r in rows]
        return Dataset(path, self.name, texts=texts, labels=labels, lines=[n for n, _ in rows])

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        if dataset.texts is None or dataset.labels is None:
            raise LeanifyError(
                "text-classification needs texts with labels; this dataset was read for "
                f"'{dataset.task}'.", path=dataset.path,
                fix="Read it with read_dataset(path, 'text-classification').")
        if artifact.meta.get("task") in text.EMBEDDING_TASKS:
            raise LeanifyError(
                f"is a {artifact.meta['task']} model, not a text classifier.",
                path=artifact.path, fix="Evaluate it with embedding-similarity or fidelity.")
        self.check_rows(dataset)
        text.tokenizer_folder(artifact)
        text.need("sklearn.metrics", "scikit-learn", "Macro-F1")
        self.label_map(artifact, dataset)

    def label_map(self, artifact: Artifact, dataset: Dataset) -> dict[str, int]:
        return check_labels(replace(dataset, task=self.name), artifact.meta.get("labels"))

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        return text.batches(artifact, d.calibration_texts(dataset), settings)

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        f1_score = text.need("sklearn.metrics", "scikit-learn", "Macro-F1").f1_score
        mapping = self.label_map(artifact, dataset)
        logits = text.map_texts(runner, artifact, dataset.texts or [], settings.batch_size,
                                settings.max_length, lambda out, mask: text.logits(artifact, out))
        n_classes = logits.shape[1] if logits.ndim == 2 else 0
        if n_classes < 2:
            raise LeanifyError(
                f"the model gives {n_classes} score(s) per text, not class logits.",
                path=artifact.path,
                fix="text-classification needs a classifier with one logit per class.")
        too_big = {k: v for k, v in mapping.items() if v >= n_classes}
        if too_big:
            raise LeanifyError(
                f"dataset label(s) {', '.join(map(repr, too_big))} map to class ids beyond the "
                f"model's {n_classes} classes.",
                path=dataset.path, fix="Relabel the data with the model's class ids or names.")
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
        return Metric(self.metric, accuracy, True, details)

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        return text.snippet_inputs(folder, max_length)

    def snippet_outputs(self, artifact_meta: dict[str, Any]) -> list[str]:
        return ["predicted = outputs.argmax(axis=1)  # class ids (config.json: id2label)"]


TASK = TextClassification()
