"""Tasks as plug-ins: each module here defines one `TASK` (see base.py).

Adding a task is one module plus its line in MODULES.
"""

from __future__ import annotations

import importlib

from leanify.errors import LeanifyError
from leanify.tasks.base import Columns, EvalSettings, Metric, Task

MODULES = ("embedding_similarity", "text_classification", "fidelity", "image_classification",
           "image_fidelity", "perplexity")

_TASKS: dict[str, Task] = {}


def all_tasks() -> dict[str, Task]:
    if not _TASKS:
        for module in MODULES:
            task = importlib.import_module(f"leanify.tasks.{module}").TASK
            _TASKS[task.name] = task
    return _TASKS


def names() -> tuple[str, ...]:
    return tuple(all_tasks())


def get(name: str) -> Task:
    tasks = all_tasks()
    if name not in tasks:
        raise LeanifyError(f"unknown task '{name}'.", fix=f"Choose one of: {', '.join(tasks)}.")
    return tasks[name]


__all__ = ["MODULES", "Columns", "EvalSettings", "Metric", "Task", "all_tasks", "get", "names"]
