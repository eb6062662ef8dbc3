"""`export-tflite`: a Keras file, a torch module or a Hugging Face folder -> one .tflite file,
fp32, dynamic-range int8 (int8 weights) or full-integer int8 (weights and activations,
calibrated on the user's data; int8 input and output with a scale and zero point).

litert-torch pins its own pydantic, jax and converter, so it lives in its own environment
(`make litert-env`, envs/litert.in) and runs there as a child (litert_worker.py): this side
exports the model with torch.export (the same torch version on both sides), writes the example
and calibration arrays, and checks the result in LiteRT against the source on a real batch.
The interpreter: $LEANIFY_LITERT_PYTHON, else `.venv-litert` beside the running environment.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, MissingDependencyError
from leanify.models.artifact import Artifact
from leanify.passes.common import (
    check_agreement,
    check_batch,
    mean_cosine,
    run_worker,
    write_output,
)
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.passes.torch_source import torch_outputs, torch_source, wrap

MODEL_FILE = "model.tflite"
PYTHON_ENV = "LEANIFY_LITERT_PYTHON"
QUANTIZE = ("none", "dynamic", "full")
CALIBRATION_ROWS = 64  # full-integer calibration: rows of the user's calibration split
TIMEOUT_S = 1800


def litert_python() -> Path | None:
    """The exporter environment's interpreter, or None when it is not installed."""
    given = os.environ.get(PYTHON_ENV)
    if given:
        return Path(given)
    beside = Path(sys.prefix).parent / ".venv-litert" / "bin" / "python"
    return beside if beside.exists() else None


@dataclass(frozen=True)
class ExportTfliteConfig(PassConfig):
    name: ClassVar[str] = "export-tflite"

    quantize: str = "none"  # none | dynamic (int8 weights) | full (int8 weights, activations)
    atol: float = 1e-4  # fp32: relative to the outputs' scale
    min_cosine: float = 0.95  # int8: mean output cosine against the source


@register(ExportTfliteConfig)
def export_tflite(artifact: Artifact, config: ExportTfliteConfig, ctx: PassContext) -> Artifact:
    if config.quantize not in QUANTIZE:
        raise LeanifyError(f"export-tflite: unknown quantize '{config.quantize}'.",
                           fix=f"Use one of: {', '.join(QUANTIZE)}.")
    python = litert_python()
    if python is None or not python.exists():
        raise MissingDependencyError("litert_torch", "litert",
                                     "Export to TFLite (its own environment: make litert-env, "
                                     f"or set {PYTHON_ENV})")
    import torch

    source = torch_source(artifact, "eager", config.name)
    batch = check_batch(artifact, ctx, batch_size=1)
    if config.quantize == "full" and ctx.calibration is not None:  # int8 ranges fit real data
        first = next(iter(ctx.calibration()), None)
        if first is not None:
            batch = {k: np.ascontiguousarray(np.asarray(v)[-1:]) for k, v in first.items()}
    before = torch_outputs(source, batch)
    nchw = _nchw(artifact)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        work = out / ".export"
        work.mkdir()
        args = tuple(source.example[n][:1] for n in source.input_names)
        program = torch.export.export(wrap(source), args)
        torch.export.save(program, str(work / "program.pt2"))
        np.savez(work / "sample.npz", **{f"arg_{i}": a.numpy() for i, a in enumerate(args)})
        argv = [str(python), str(Path(__file__).with_name("litert_worker.py")),
                str(work / "program.pt2"), str(work / "sample.npz"), str(out / MODEL_FILE),
                "--quantize", config.quantize]
        if nchw:
            argv.append("--channel-last")
        if config.quantize == "full":
            np.savez(work / "calibration.npz", **_calibration(ctx, source.input_names))
            argv += ["--calibration", str(work / "calibration.npz")]
        run_worker(argv, artifact, timeout_s=TIMEOUT_S, what="litert-torch",
                   fix="Export to ONNX instead (export-onnx), or simplify the model's forward "
                       "(litert-torch converts what torch.export captures).")
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
        extra: dict[str, Any] = {"tflite": {"quantize": config.quantize, "channel_last": nchw},
                                 "input_names": list(source.input_names)}
        if nchw and artifact.meta.get("preprocess"):  # the images now go in channel-last
            extra["preprocess"] = {**artifact.meta["preprocess"], "layout": "NHWC"}
        return MODEL_FILE, extra

    result = write_output(artifact, config, ctx, build)
    got = _run_tflite(result, batch, nchw, ctx.threads)
    if config.quantize == "none":
        check_agreement(before, _named(got, before), config.atol, "the TFLite export",
                        artifact.path)
    else:
        cosine = mean_cosine(before, _named(got, before))
        if not cosine >= config.min_cosine:
            raise LeanifyError(
                f"the int8 TFLite model's outputs drifted from the source's (mean cosine "
                f"{cosine:.4f} < {config.min_cosine}).", path=artifact.path,
                fix="Use quantize='dynamic' (int8 weights only) or keep the model in fp32.")
    return result


def _nchw(artifact: Artifact) -> bool:
    """An NCHW image input: exported channel-last, the layout TFLite kernels run."""
    from leanify.tasks.image import image_input

    try:
        return image_input(artifact)[1] == "NCHW"
    except LeanifyError:
        return False


def _calibration(ctx: PassContext, names: list[str]) -> dict[str, np.ndarray]:
    if ctx.calibration is None:
        raise LeanifyError("full-integer TFLite quantization needs calibration data.",
                           fix="Give --calibration-data (or more rows in --data).")
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    count = 0
    for batch in ctx.calibration():
        for n in names:
            rows[n].append(np.asarray(batch[n]))
        count += len(np.asarray(batch[names[0]]))
        if count >= CALIBRATION_ROWS:
            break
    return {f"arg_{i}": np.concatenate(rows[n])[:CALIBRATION_ROWS] for i, n in enumerate(names)}


def _run_tflite(result: Artifact, batch: dict[str, np.ndarray], nchw: bool,
                threads: int | None) -> dict[str, np.ndarray]:
    from leanify.runtimes import open_runner

    runner = open_runner(result, threads)
    feeds = {name: np.ascontiguousarray(value.transpose(0, 2, 3, 1)) if nchw else value
             for name, value in batch.items()}
    try:
        return runner.run(feeds)
    finally:
        runner.close()


def _named(got: dict[str, np.ndarray], before: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The TFLite outputs under the source's names, in order."""
    return dict(zip(before, got.values(), strict=False))
