"""`embedding-similarity`: Spearman x100 between the cosine of two sentences' embeddings and
gold similarity scores (the STS Benchmark protocol). Rows: a sentence pair and a score."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure import data as d
from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact
from leanify.tasks import text
from leanify.tasks.base import Batch, Columns, EvalSettings, Metric, Task


class EmbeddingSimilarity(Task):
    name = "embedding-similarity"
    reads = ("pair", "score")
    metric = "spearman"
    min_rows = 3  # Spearman needs 3 pairs to be meaningful at all
    row_word = "sentence pairs"
    summary = "sentence pairs + gold score: Spearman x100 of the embeddings' cosine"

    def extract(self, path: Path, names: list[str], rows: list, columns: Columns) -> Dataset:
        pc = d.find_pair_columns(names, columns.pair)
        if pc is None:
            looked = [" + ".join(p) for p in ([columns.pair] if columns.pair
                                              else d.PAIR_COLUMNS)]
            raise d.missing_column(path, "sentence-pair", looked, names, "pair_cols")
        sc = d.find_column(names, columns.score, d.SCORE_COLUMNS)
        if sc is None:
            raise d.missing_column(path, "gold score", [columns.score] if columns.score else
                                   d.SCORE_COLUMNS, names, "score_col")
        pairs = [(d.row_text(path, n, r, pc[0]), d.row_text(path, n, r, pc[1])) for n, r in rows]
        scores = [d.row_score(path, n, r, sc) for n, r in rows]
        return Dataset(path, self.name, pairs=pairs, scores=scores, lines=[n for n, _ in rows])

    def check_rows(self, dataset: Dataset) -> None:
        super().check_rows(dataset)
        if len(set(dataset.scores or [])) < 2:
            raise LeanifyError(
                "every gold score is the same; a rank correlation (Spearman) is undefined.",
                path=dataset.path, fix="Give pairs with different gold scores.")

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        if not dataset.pairs or dataset.scores is None:
            raise LeanifyError(
                "embedding-similarity needs sentence pairs with gold scores; this dataset was "
                f"read for '{dataset.task}'.", path=dataset.path,
                fix="Read it with read_dataset(path, 'embedding-similarity').")
        if artifact.meta.get("task") == "text-classification":
            raise LeanifyError(
                "is a text classifier; embedding-similarity needs a sentence-embedding model.",
                path=artifact.path, fix="Evaluate it with the text-classification task.")
        self.check_rows(dataset)
        text.tokenizer_folder(artifact)
        text.need("scipy.stats", "scipy", "Spearman correlation")  # fail before the model loads

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        return text.batches(artifact, d.calibration_texts(dataset), settings)

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        stats = text.need("scipy.stats", "scipy", "Spearman correlation")
        pairs = dataset.pairs or []
        unique = list(dict.fromkeys(s for pair in pairs for s in pair))
        where = {s: i for i, s in enumerate(unique)}
        emb = text.embed(runner, artifact, unique, settings.batch_size, settings.max_length)
        a = emb[[where[p[0]] for p in pairs]]
        b = emb[[where[p[1]] for p in pairs]]
        cosine = text.cosine_rows(a, b)
        gold = np.asarray(dataset.scores, dtype=np.float64)
        details: dict[str, Any] = {"pairs": len(pairs), "sentences": len(unique)}
        if np.ptp(cosine) == 0:
            details["note"] = "every pair got the same cosine: the model's embeddings are constant"
            return Metric(self.metric, float("nan"), True, details)
        spearman = float(stats.spearmanr(cosine, gold).statistic) * 100
        details["pearson"] = float(stats.pearsonr(cosine, gold).statistic) * 100
        return Metric(self.metric, spearman, True, details)

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        return text.snippet_inputs(folder, max_length)

    def snippet_outputs(self, artifact_meta: dict[str, Any]) -> list[str]:
        return text.snippet_pooling(artifact_meta)


TASK = EmbeddingSimilarity()
