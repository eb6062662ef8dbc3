"""The Task: what a model is for, measured on the user's rows.

A task says which fields it reads from a row (text, a sentence pair, a label, a score, arrays
...), how rows become model inputs (`batches`: the transform, in the shape of NNCF's
`Dataset(data, transform_fn)`), its metric and direction, the calibration batches passes get,
reference outputs when it compares against the original model, the workload a measured point
means, and the pre/post-processing the usage snippet shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact

Batch = dict[str, np.ndarray]
Batches = Callable[[], Iterable[Batch]]


@dataclass
class Metric:
    """One quality number. `value` is on a 0-100 scale for every task here."""

    name: str
    value: float
    higher_is_better: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Columns:
    """Which columns of the user's file hold a row's fields (None: the usual names)."""

    text: str | None = None
    pair: tuple[str, str] | None = None
    label: str | None = None
    score: str | None = None


@dataclass(frozen=True)
class EvalSettings:
    """How rows become batches: texts per batch, tokens per text, threads of the runner."""

    batch_size: int = 32
    max_length: int = 128
    threads: int | None = None


CALIBRATION = EvalSettings(batch_size=16)


class Task:
    """Base of every task module; subclasses set the class attributes and override the rest."""

    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()  # row fields, for messages and docs
    metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    min_rows: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False  # scores against the original model's outputs
    plain_text: ClassVar[bool] = False  # reads a .txt file, one text per line
    row_word: ClassVar[str] = "rows"  # what a row is, for messages
    summary: ClassVar[str] = ""

    # --- reading ---------------------------------------------------------------------------

    def read(self, path: str | Path, columns: Columns | None = None) -> Dataset:
        """Read and check the user's file (any format measure.data reads)."""
        from leanify.measure.data import read_rows

        path, names, rows = read_rows(path, plain_text=self.plain_text)
        dataset = self.extract(path, names, rows, columns or Columns())
        self.check_rows(dataset)
        return dataset

    def extract(self, path: Path, names: list[str], rows: list, columns: Columns) -> Dataset:
        raise NotImplementedError

    def check_rows(self, dataset: Dataset) -> None:
        if len(dataset) < self.min_rows:
            raise LeanifyError(
                f"holds {len(dataset)} {self.row_word}; task '{self.name}' needs at least "
                f"{self.min_rows}.", path=dataset.path,
                fix="Give more rows (a few hundred for a stable score).")

    # --- the model, as this task feeds it -------------------------------------------------

    def prepare(self, artifact: Artifact, options: str | None = None) -> Artifact:
        """The artifact with what this task resolved about feeding it in its meta (image
        preprocessing), so that candidates built from it are fed the same way; `options`
        are the user's declarations (--preprocess). Most tasks need nothing."""
        if options:
            raise LeanifyError(f"task '{self.name}' takes no --preprocess options.",
                               fix="Leave --preprocess out (it is for image tasks).")
        return artifact

    # --- checks before any model runs ------------------------------------------------------

    def check(self, artifact: Artifact, dataset: Dataset) -> None:
        """Refuse a model/data pair that cannot be scored, before anything runs."""
        self.check_rows(dataset)

    # --- rows -> model inputs ----------------------------------------------------------------

    def batches(self, artifact: Artifact, dataset: Dataset,
                settings: EvalSettings) -> Iterator[Batch]:
        """The rows as model input batches, in row order (the transform)."""
        raise NotImplementedError

    def calibration(self, artifact: Artifact, dataset: Dataset | None,
                    settings: EvalSettings = CALIBRATION) -> Batches | None:
        """Batches for passes that calibrate (static quantization), from the calibration
        rows only, never the evaluation rows; None when there are none."""
        if dataset is None or len(dataset) == 0:
            return None
        return lambda: self.batches(artifact, dataset, settings)

    # --- scoring ----------------------------------------------------------------------------

    def score(self, runner: Any, artifact: Artifact, dataset: Dataset, settings: EvalSettings,
              reference: dict[str, np.ndarray] | None = None) -> Metric:
        raise NotImplementedError

    def reference(self, runner: Any, artifact: Artifact, dataset: Dataset,
                  settings: EvalSettings) -> dict[str, np.ndarray]:
        """The original model's outputs on the rows (tasks with needs_reference)."""
        raise NotImplementedError(f"task {self.name} compares with no reference")

    # --- the snippet -----------------------------------------------------------

    def snippet_inputs(self, folder: str, artifact_meta: dict[str, Any],
                       max_length: int) -> list[str]:
        """Lines that build `feeds` (a dict of numpy arrays) from the user's input."""
        return []

    def snippet_outputs(self, artifact_meta: dict[str, Any]) -> list[str]:
        """Lines that turn `outputs` (the first output) into the task's answer."""
        return []
