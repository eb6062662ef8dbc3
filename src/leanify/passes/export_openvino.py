"""`export-openvino`: an ONNX model (or a Hugging Face folder, exported to ONNX first) -> an
OpenVINO IR (`openvino_model.xml` + `.bin`).

`openvino.convert_model` reads the ONNX graph; OpenVINO fuses attention
(ScaledDotProductAttention) and normalization itself when the model is compiled, so the plain
`export-onnx` graph is the input, not ONNX Runtime's fused one (its com.microsoft ops are not
ONNX). Weights are saved as they are (`compress_to_fp16=False`): the IR stays fp32 and the
inference precision is a runtime setting (see `runtime-settings`).

The IR is checked against its input on a real batch at f32 inference precision (OpenVINO would
otherwise run bf16 on CPUs that have it, which is a setting, not an export error).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_agreement, check_batch, write_output
from leanify.passes.export_onnx import ExportOnnxConfig
from leanify.passes.registry import PassConfig, PassContext, apply, register
from leanify.runtimes.onnxruntime import run_once

IR_FILE = "openvino_model.xml"


def run_openvino(path: Path, batch: dict[str, Any], threads: int | None,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Outputs of an IR on a batch, compiled with `settings` (default: f32, latency)."""
    from leanify.models.load import load
    from leanify.runtimes.openvino import OpenVINORunner

    artifact = load(path)
    settings = {"inference_precision": "f32", **(settings or {})}
    runner = OpenVINORunner(replace(artifact, meta={**artifact.meta, "runtime": settings}),
                            threads)
    try:
        wanted = set(runner.input_names)
        return runner.run({k: v for k, v in batch.items() if k in wanted})
    finally:
        runner.close()


@dataclass(frozen=True)
class ExportOpenVINOConfig(PassConfig):
    name: ClassVar[str] = "export-openvino"

    atol: float = 1e-4  # max abs diff on last_hidden_state (f32); relative for logits


@register(ExportOpenVINOConfig)
def export_openvino(artifact: Artifact, config: ExportOpenVINOConfig,
                    ctx: PassContext) -> Artifact:
    ov = require("openvino", "openvino", "Pass 'export-openvino'")
    if artifact.format in ("hf", "torch-module"):
        artifact = apply(artifact, ExportOnnxConfig(), ctx)
    if artifact.format != "onnx":
        raise LeanifyError(
            f"pass '{config.name}' takes ONNX models (or a Hugging Face folder, exported to ONNX "
            f"first); {artifact.name} is {artifact.format}.",
            path=artifact.path, fix="Export the model to ONNX first ('export-onnx').")
    if artifact.meta.get("fusions"):
        raise LeanifyError(
            f"pass '{config.name}' needs a plain ONNX graph; {artifact.name} holds ONNX "
            "Runtime's fused operators, which OpenVINO does not read.",
            path=artifact.path, fix="Convert the model from before 'ort-optimize'.")
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        try:
            model = ov.convert_model(str(artifact.path))
        except Exception as exc:
            raise LeanifyError(f"openvino.convert_model failed ({first_line(exc)}).",
                               path=artifact.path,
                               fix="Check the model's opset and operators, or re-export it.",
                               ) from exc
        ov.save_model(model, str(out / IR_FILE), compress_to_fp16=False)
        got = run_openvino(out / IR_FILE, batch, ctx.threads)
        diffs = check_agreement(before, got, config.atol, "the OpenVINO IR", artifact.path)
        return IR_FILE, {"export_check": {"max_diff": diffs, "inference_precision": "f32"},
                         "runtime": {}}

    return write_output(artifact, config, ctx, build)
