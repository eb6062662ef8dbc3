"""Run a fixed list of passes on a model and install the result: `leanify prune` / `distill`.

OUT/model holds the result (a normal model folder), OUT/leanify.json what was done with
numbers, OUT/work the pass outputs and training checkpoints, so `resume=True` after a crash
or Ctrl-C continues the training instead of starting over. The input model is never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.models.safety import own_outputs, trusting_code
from leanify.passes.registry import PassConfig, PassContext, run_pipeline

SCHEMA_VERSION = 1


def apply_passes(
    model: str | os.PathLike | Artifact,
    configs: Sequence[PassConfig],
    out: str | os.PathLike,
    *,
    calibration_data: str | os.PathLike | None = None,
    calibration_size: int = 256,
    max_length: int = 128,
    threads: int | None = None,
    resume: bool = False,
    trust_pickle: bool = False,
    trust_code: bool = False,
    log: Callable[[str], None] = print,
    tool: str = "leanify apply",
) -> dict[str, Any]:
    """Load `model`, run `configs` in order, install the result in OUT/model; the record.

    `trust_code=True` allows models that are code (TorchScript); see models/safety.py."""
    # the passes' loads of their own outputs (under OUT) inherit both
    with trusting_code(trust_code), own_outputs(out):
        return _apply(model, configs, out, calibration_data, calibration_size, max_length,
                      threads, resume, trust_pickle, log, tool)


def _apply(model: str | os.PathLike | Artifact, configs: Sequence[PassConfig],
           out: str | os.PathLike, calibration_data: str | os.PathLike | None,
           calibration_size: int, max_length: int, threads: int | None, resume: bool,
           trust_pickle: bool, log: Callable[[str], None], tool: str) -> dict[str, Any]:
    from leanify.measure.bench import write_json
    from leanify.measure.machine import machine_info
    from leanify.search.optimize import install_model

    started = datetime.now(UTC)
    source = load(model, trust_pickle=trust_pickle)
    out = _prepare(Path(out), source, resume)
    calibration = _calibration(source, calibration_data, calibration_size, max_length)
    machine = machine_info()
    ctx = PassContext(work_dir=out / "work", threads=threads,
                      isa_flags=frozenset(machine["cpu"]["isa_flags"]),
                      calibration=calibration, log=log)
    result = run_pipeline(source, configs, ctx)
    installed = install_model(out, result.path, result.name)
    final = load(out / installed["artifact"])
    record = {
        "schema_version": SCHEMA_VERSION,
        "tool": tool,
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "input": {"path": str(source.path), "format": source.format,
                  "params": source.meta.get("params"), "size_bytes": source.size_bytes()},
        "passes": [c.label() for c in configs],
        "output": {**installed, "params": final.meta.get("params"),
                   "size_bytes": final.size_bytes()},
        "prune": final.meta.get("prune"),
        "distill": final.meta.get("distill"),
        "machine": machine,
    }
    write_json(record, out / "leanify.json")
    return record


def _prepare(out: Path, source: Artifact, resume: bool) -> Path:
    out = out.expanduser().resolve()
    if source.path is not None:
        root = source.path if source.path.is_dir() else source.path.parent
        if out == root or out.is_relative_to(root):
            raise LeanifyError("is inside the input model's folder; leanify never writes there.",
                               path=out, fix="Choose an --out folder outside the model's folder.")
    if out.exists() and not out.is_dir():
        raise LeanifyError("exists and is not a folder.", path=out, fix="Choose a new --out.")
    started = (out / "work").is_dir()
    if out.exists() and any(out.iterdir()) and not (resume and started):
        raise LeanifyError(
            "exists and is not empty.", path=out,
            fix="Pass --resume to continue the run in it, or choose a new --out folder."
            if started else "Choose a new or empty --out folder.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _calibration(source: Artifact, path: str | os.PathLike | None, size: int, max_length: int):
    """Calibration batches from the user's file: the fidelity task's transform over its first
    `size` rows (texts of any leanify data format, or .npz arrays)."""
    if path is None:
        return None
    from leanify import tasks
    from leanify.measure.data import read_dataset

    dataset = read_dataset(Path(path), "fidelity")
    fidelity = tasks.get("fidelity")
    fidelity.check(source, dataset)  # a text file needs the model's tokenizer
    rows = dataset.subset(range(min(size, len(dataset))))
    return fidelity.calibration(source, rows, tasks.EvalSettings(16, max_length))
