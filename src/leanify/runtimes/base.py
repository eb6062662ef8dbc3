"""The Runtime and its Runner: one face over every engine that runs an artifact.

A `Runtime` says which artifact formats it runs, how to open one (`open` -> `Runner`), which
settings it takes (a schema, checked before anything runs), its version, and the few lines of
plain Python a user needs to run a model with it (`snippet`). A format is not a runtime: an
ONNX file runs on ONNX Runtime by default, and on OpenVINO when its sidecar says so
(`run_with`). `runner.run(batch)` takes a dict of numpy arrays and returns a dict of numpy
arrays; conversions happen inside `run`, so a timed `run` costs what a service would pay.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact

# A setting's schema: the values it takes, (int,) a positive integer, (bool,) true or false.
Schema = dict[str, tuple[Any, ...]]


class Runner:
    """Base: checks input names and fixed shapes, then calls the runtime-specific `_run`."""

    runtime = "unknown"

    def __init__(self, artifact: Artifact, threads: int | None):
        self.artifact = artifact
        self.threads = threads

    @property
    def input_names(self) -> list[str]:
        return self.artifact.input_names

    @property
    def details(self) -> dict[str, Any]:
        """Runtime settings in effect, read back from the runtime where it can tell."""
        return {}

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.drop_folded(batch)
        self.check(batch)
        return self._run(batch)

    def drop_folded(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Inputs a pass folded into the graph (specialize-inputs) are accepted only with the
        value they were folded with, then dropped."""
        folded = self.artifact.meta.get("folded_inputs") or {}
        if not folded or not set(folded) & set(batch):
            return batch
        for name in set(folded) & set(batch):
            value = np.asarray(batch[name])
            if value.ndim != 0 or value.item() != folded[name]:
                raise LeanifyError(
                    f"input '{name}' was folded into this model as {folded[name]!r}; it "
                    f"cannot run {value.tolist()!r}.", path=self.artifact.path,
                    fix="Use the model leanify started from for other values.")
        return {k: v for k, v in batch.items() if k not in folded}

    def check(self, batch: Mapping[str, Any]) -> None:
        names = self.input_names
        unknown = sorted(set(batch) - set(names))
        if unknown:
            raise LeanifyError(
                f"the model has no input named {', '.join(map(repr, unknown))}; its inputs are "
                f"{', '.join(names) or 'unknown'}.",
                path=self.artifact.path,
                fix="Rename the input(s) to match the model.",
            )
        missing = [s.name for s in self.artifact.inputs if not s.optional and s.name not in batch]
        if missing:
            raise LeanifyError(
                f"the batch lacks required input(s) {', '.join(missing)}.",
                path=self.artifact.path,
                fix="Provide every input the model declares.",
            )
        for spec in self.artifact.inputs:  # a model with fixed dims runs only those
            if spec.name not in batch or spec.shape is None or self.artifact.format == "hf":
                continue
            got = tuple(np.shape(batch[spec.name]))
            fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)]
            if len(got) != len(spec.shape) or any(got[i] != d for i, d in fixed):
                raise LeanifyError(
                    f"input '{spec.name}' has the fixed shape {list(spec.shape)} in the model; "
                    f"it cannot run shape {list(got)}.",
                    path=self.artifact.path,
                    fix="Benchmark at the model's shape (--batch-size/--seq-len), or re-export "
                    "it with dynamic batch and sequence dims.",
                )

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime's resources (sessions, thread pools)."""


@dataclass(frozen=True)
class Runtime:
    """One engine. `open(artifact, threads, trust_pickle)` -> Runner; `snippet(path, ran,
    threads)` -> lines that define `wanted` (input names) and `run(feeds)` (first output),
    or None where there is no plain-runtime recipe."""

    name: str
    formats: tuple[str, ...]  # artifact formats it can run
    module: str  # the Python module that is the runtime (imported for timing and version)
    package: str  # its distribution, for the version string
    open: Callable[..., Runner]
    settings: Schema = field(default_factory=dict)
    snippet: Callable[[str, dict[str, Any], int], list[str]] | None = None
    extra: str = ""  # the leanify extra that installs it
    generates: bool = False  # its Runner has generate(ids, new_tokens): causal LMs' decode loop
    importer: Callable[[], Any] | None = None  # imports `module` where a plain import cannot

    def version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.package)
        except PackageNotFoundError:
            return None

    def load_module(self) -> Any:
        return self.importer() if self.importer else importlib.import_module(self.module)


def check_settings(runtime: Runtime, settings: Mapping[str, Any], path: Any = None) -> None:
    """Refuse settings the runtime does not have, or values it does not take."""
    allowed = runtime.settings
    if not allowed and settings:
        raise LeanifyError(f"runtime {runtime.name} takes no runtime settings.", path=path,
                           fix="Run the model on ONNX Runtime or OpenVINO to tune settings.")
    for key, value in settings.items():
        if key not in allowed:
            raise LeanifyError(
                f"'{key}' is not a runtime setting of {runtime.name}.", path=path,
                fix=f"Use {', '.join(allowed)}.")
        choices = allowed[key]
        if choices == (int,):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        elif choices == (bool,):
            ok = isinstance(value, bool)
        else:
            ok = value in choices
        if not ok:
            want = "a positive integer" if choices == (int,) else \
                "true or false" if choices == (bool,) else " or ".join(map(str, choices))
            raise LeanifyError(f"runtime setting {key}={value!r} is invalid.", path=path,
                               fix=f"Use {want}.")
