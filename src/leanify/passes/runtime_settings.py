"""`runtime-settings`: the same model files with other runtime settings, as a new artifact.

A runtime setting changes speed and sometimes numbers (OpenVINO's bf16 inference precision
rounds every activation), so the search treats it like any other candidate: the settings go
into the artifact's sidecar, the runner applies them, and accuracy is evaluated under them.

Settings (each runtime's schema, leanify.runtimes): OpenVINO `inference_precision` (f32,
bf16, f16), `performance_hint` (LATENCY, THROUGHPUT), `num_streams`, `sequence_multiple` (pad
text inputs to a multiple of it and compile static shapes), `batch_streams` (split batches
across streams, single rows on the latency model); ONNX Runtime `intra_op_num_threads`,
`allow_spinning`, `graph_optimization_level`; TorchScript `num_threads`. Unset fields keep
the input's settings.

The new artifact is checked against its input on a real batch; the precision that actually
ran is recorded beside the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.passes.common import check_batch, link_or_copy, mean_cosine, write_output
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.runtimes import check_settings, for_artifact
from leanify.runtimes.openvino import padding_problem


@dataclass(frozen=True)
class RuntimeSettingsConfig(PassConfig):
    name: ClassVar[str] = "runtime-settings"

    inference_precision: str | None = None  # openvino
    performance_hint: str | None = None  # openvino
    num_streams: int | None = None  # openvino
    sequence_multiple: int | None = None  # openvino: static shapes for padded lengths
    batch_streams: int | None = None  # openvino: streams for batches, latency for single rows
    intra_op_num_threads: int | None = None  # onnxruntime
    allow_spinning: bool | None = None  # onnxruntime
    graph_optimization_level: str | None = None  # onnxruntime
    num_threads: int | None = None  # torchscript
    min_cosine: float = 0.98  # gate: outputs under the new settings vs the input's

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "min_cosine" and getattr(self, f.name) is not None}


@register(RuntimeSettingsConfig)
def runtime_settings_pass(artifact: Artifact, config: RuntimeSettingsConfig,
                          ctx: PassContext) -> Artifact:
    runtime = for_artifact(artifact)
    if not runtime.settings or artifact.path is None:
        raise LeanifyError(
            f"pass '{config.name}' takes models whose runtime has settings (onnxruntime, "
            f"openvino, torchscript); {artifact.name} runs on {runtime.name}.", path=artifact.path,
            fix="Export the model first ('export-onnx' or 'export-openvino').")
    new = config.settings()
    if not new:
        raise LeanifyError(f"pass '{config.name}' was given no setting to change.",
                           fix="Set e.g. inference_precision='f32'.")
    check_settings(runtime, new, artifact.path)
    if new.get("sequence_multiple") and (problem := padding_problem(artifact.inputs)):
        raise LeanifyError(
            f"sequence_multiple pads text inputs, but {artifact.name} cannot be padded: "
            f"{problem}.", path=artifact.path,
            fix="Leave sequence_multiple out for this model.")
    settings = {**(artifact.meta.get("runtime") or {}), **new}
    from leanify.runtimes import open_runner

    batch = check_batch(artifact, ctx)
    before = _outputs(artifact, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        root = artifact.path.parent
        for file in artifact.files():  # the model file and its weights/external data
            link_or_copy(file, out / file.relative_to(root), ctx.work_dir)
        from leanify.models.load import load

        # a copy of an input already accepted (a TorchScript one needed --trust-code)
        candidate = load(out / artifact.path.name, trust_code=True)
        candidate = replace(candidate, meta={**candidate.meta, "runtime": settings})
        runner = open_runner(candidate, ctx.threads)
        try:
            wanted = set(runner.input_names)
            got = runner.run({k: v for k, v in batch.items() if k in wanted})
            details = runner.details
        finally:
            runner.close()
        cosine = mean_cosine(before, got, batch.get("attention_mask"))
        if not cosine >= config.min_cosine:
            raise LeanifyError(
                f"under the settings {settings} the model's outputs drifted from its outputs "
                f"before (mean cosine similarity {cosine:.4f} < {config.min_cosine}).",
                path=artifact.path, fix="Keep the previous settings for this model.")
        return artifact.path.name, {"runtime": settings,
                                    "runtime_check": {"mean_cosine": round(cosine, 6),
                                                      "ran_with": details}}

    return write_output(artifact, config, ctx, build)


def _outputs(artifact: Artifact, batch: dict[str, Any], threads: int | None) -> dict[str, Any]:
    from leanify.runtimes import open_runner

    runner = open_runner(artifact, threads)
    try:
        wanted = set(runner.input_names)
        return runner.run({k: v for k, v in batch.items() if k in wanted})
    finally:
        runner.close()
