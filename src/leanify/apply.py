"""Run a fixed list of passes on a model and install the result: `leanify prune` / `distill`.

OUT/model holds the result (a normal model folder), OUT/leanify.json what was done with
numbers, OUT/work the pass outputs and training checkpoints, so `resume=True` after a crash
or Ctrl-C continues the training instead of starting over. The input model is never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.models.safety import own_outputs, trusting_code
from leanify.passes.registry import PassConfig, PassContext, run_pipeline
from leanify.runlock import LOCK_NAME, RunLock

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
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load `model`, run `configs` in order, install the result in OUT/model; the record.

    `inputs` names the other files the passes read (label -> path): OUT may hold none of
    them. OUT is locked while the passes run: a second run into it is refused.
    `trust_code=True` allows models that are code (TorchScript); see models/safety.py.
    """
    # the passes' loads of their own outputs (under OUT) inherit both
    with trusting_code(trust_code), own_outputs(out):
        started = datetime.now(UTC)
        source = load(model, trust_pickle=trust_pickle)
        inputs = {**(inputs or {}), "--calibration-data": calibration_data}
        out, lock = _prepare(Path(out), source, resume, inputs)
        try:
            return _apply(source, configs, out, started, calibration_data, calibration_size,
                          max_length, threads, log, tool)
        finally:
            lock.release()


def _apply(source: Artifact, configs: Sequence[PassConfig], out: Path, started: datetime,
           calibration_data: str | os.PathLike | None, calibration_size: int, max_length: int,
           threads: int | None, log: Callable[[str], None], tool: str) -> dict[str, Any]:
    from leanify.measure.bench import write_json
    from leanify.measure.machine import machine_info
    from leanify.search.optimize import install_model

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


def _prepare(out: Path, source: Artifact, resume: bool,
             inputs: Mapping[str, Any]) -> tuple[Path, RunLock]:
    """OUT checked against every input (both ways), created, and locked for this run."""
    from leanify.paths import check_apart

    out = out.expanduser().resolve()
    if source.path is not None:  # a file model's folder too: its side files lie there
        root = source.path if source.path.is_dir() else source.path.parent
        inputs = {"model": root, **inputs}
    check_apart({"--out": out}, inputs)
    if out.exists() and not out.is_dir():
        raise LeanifyError("exists and is not a folder.", path=out, fix="Choose a new --out.")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LeanifyError(f"cannot write to {out} ({exc.strerror or exc}).", path=out,
                           fix="Make the folder writable, or choose another --out.") from exc
    lock = RunLock(out).acquire()  # before looking inside: two runs must not both see it free
    try:
        started = (out / "work").is_dir()
        if any(p.name != LOCK_NAME for p in out.iterdir()) and not (resume and started):
            raise LeanifyError(
                "exists and is not empty.", path=out,
                fix="Pass --resume to continue the run in it, or choose a new --out folder."
                if started else "Choose a new or empty --out folder.")
    except BaseException:
        lock.release()
        if created:
            out.rmdir()
        raise
    return out, lock
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
