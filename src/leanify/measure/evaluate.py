"""Quality: score a model on the user's rows with a task from leanify.tasks.

`evaluate(artifact, dataset, task)` opens the model's runner, runs the task's checks before
anything runs, then its metric; `reference_outputs` gives the original model's outputs for
tasks that compare against them (fidelity). The tasks themselves live in leanify/tasks/.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanify.measure.data import Dataset
from leanify.models.artifact import Artifact
from leanify.tasks import EvalSettings, Metric
from leanify.tasks import get as get_task
from leanify.tasks.text import embed, pool

__all__ = ["Metric", "embed", "evaluate", "pool", "reference_outputs"]


def _open(artifact: Artifact, threads: int | None):
    from leanify.runtimes import open_runner

    return open_runner(artifact, threads)


def _as_artifact(model: Any) -> Artifact:
    if isinstance(model, Artifact):
        return model
    from leanify.models.load import load

    return load(model)


def reference_outputs(artifact: Artifact | Any, rows: Dataset | list[str], *,
                      threads: int | None = None, batch_size: int = 32,
                      max_length: int = 128) -> dict[str, np.ndarray] | np.ndarray:
    """The model's outputs for fidelity. For a list of texts: one row per text, pooled
    embeddings (normalised per the model's metadata) or logits. For a Dataset: a dict,
    {"outputs": ...} for texts, every output of every call for arrays. Either feeds
    evaluate(..., reference=...)."""
    artifact = _as_artifact(artifact)
    dataset = rows if isinstance(rows, Dataset) else Dataset(None, "fidelity", texts=list(rows))
    from leanify.tasks import all_tasks

    own = all_tasks().get(dataset.task)  # image-fidelity has its own reference
    task = own if own is not None and own.needs_reference else get_task("fidelity")
    task.check(artifact, dataset)
    runner = _open(artifact, threads)
    try:
        out = task.reference(runner, artifact, dataset, EvalSettings(batch_size, max_length,
                                                                     threads))
        return out if isinstance(rows, Dataset) else out["outputs"]
    finally:
        runner.close()


def evaluate(
    artifact: Artifact,
    dataset: Dataset,
    task: str,
    *,
    threads: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    reference: dict[str, np.ndarray] | np.ndarray | Artifact | None = None,
) -> Metric:
    """Score `artifact` on `dataset` for `task`; opens its own runner and closes it after.

    For tasks that compare against the original (fidelity), `reference` is the original's
    outputs (from reference_outputs) or the original model itself. Every check on the data,
    the labels and the reference runs before the model does.
    """
    artifact = _as_artifact(artifact)
    spec = get_task(task)
    spec.check(artifact, dataset)
    settings = EvalSettings(batch_size, max_length, threads)
    if spec.needs_reference:
        if isinstance(reference, Artifact | str):
            reference = reference_outputs(reference, dataset, threads=threads,
                                          batch_size=batch_size, max_length=max_length)
        elif isinstance(reference, np.ndarray | list | tuple):  # texts' outputs, one row each
            reference = {"outputs": np.asarray(reference, dtype=np.float32)}
    runner = _open(artifact, threads)
    try:
        metric = spec.score(runner, artifact, dataset, settings, reference)
    finally:
        runner.close()
    from leanify.tasks.text import effective_max_length

    metric.details.update({"max_length": effective_max_length(artifact, max_length),
                           "batch_size": batch_size, "threads": threads, "task": task})
    return metric
