"""ONNX Runtime (CPU execution provider) for `.onnx` artifacts.

Settings (`runtime` in leanify_model.json): `intra_op_num_threads`, `allow_spinning`,
`graph_optimization_level` (disabled, basic, extended, all).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runner, Runtime

SETTINGS = {
    "intra_op_num_threads": (int,),
    "allow_spinning": (bool,),
    "graph_optimization_level": ("disabled", "basic", "extended", "all"),
}
LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
          "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session(path: str | Path | bytes, threads: int | None,
            settings: Mapping[str, Any] | None = None, optimized_path: Path | None = None):
    """An InferenceSession on the CPU provider with `settings`; a clear error if it fails.
    `path` may also be a serialized model (bytes), as passes build them in memory."""
    ort = require("onnxruntime", "onnx", "Running ONNX models")
    settings = settings or {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(settings.get("intra_op_num_threads") or threads or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if "allow_spinning" in settings:
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if settings["allow_spinning"] else "0")
    level = settings.get("graph_optimization_level", "all")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types with C++ text
        raise LeanifyError(
            f"ONNX Runtime could not open the model ({first_line(exc)}).",
            path=None if isinstance(path, bytes) else path,
            fix="Check that the model's opset and operators are supported by this "
            "onnxruntime version, or re-export it.") from exc


def run_once(path: str | Path, batch: Mapping[str, np.ndarray], threads: int | None,
             level: str = "all") -> dict[str, np.ndarray]:
    """One run of an ONNX file on a batch (inputs it lacks are dropped): for checks."""
    sess = session(path, threads, {"graph_optimization_level": level})
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    outputs = sess.run(names, {k: v for k, v in batch.items() if k in wanted})
    return dict(zip(names, outputs, strict=True))


class OrtRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        from leanify.runtimes import settings_of

        # Settings from the artifact (a runtime-settings candidate) win over the thread budget.
        self.settings = settings_of(artifact)
        self.session = session(artifact.path, threads, self.settings)
        self.intra_threads = int(self.settings.get("intra_op_num_threads") or threads or 0)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def details(self) -> dict[str, Any]:
        return {"intra_op_num_threads": self.intra_threads,
                "allow_spinning": self.settings.get("allow_spinning", True),
                "graph_optimization_level": self.settings.get("graph_optimization_level",
                                                              "all")}

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, dict(batch))
        return dict(zip(self.output_names, outputs, strict=True))

    def close(self) -> None:
        self.session = None


def snippet(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    lines = ["import numpy as np", "import onnxruntime as ort", "",
             "opts = ort.SessionOptions()",
             f"opts.intra_op_num_threads = {int(ran.get('intra_op_num_threads') or threads)}"]
    if ran.get("allow_spinning") is False:
        lines.append('opts.add_session_config_entry("session.intra_op.allow_spinning", "0")')
    level = ran.get("graph_optimization_level", "all")
    if level != "all":
        lines.append(f"opts.graph_optimization_level = ort.GraphOptimizationLevel.{LEVELS[level]}")
    return [*lines,
            f'session = ort.InferenceSession("{path}", opts, providers=["CPUExecutionProvider"])',
            "wanted = {i.name for i in session.get_inputs()}",
            "run = lambda feeds: session.run(None, feeds)[0]  # first output"]


RUNTIME = Runtime(
    name="onnxruntime", formats=("onnx",), module="onnxruntime", package="onnxruntime",
    open=lambda artifact, threads, trust_pickle=False: OrtRunner(artifact, threads),
    settings=SETTINGS, snippet=snippet, extra="onnx")
