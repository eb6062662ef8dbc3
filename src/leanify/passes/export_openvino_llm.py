"""`export-openvino-llm`: a Hugging Face causal LM (or a GGUF file, through its converted
folder) -> an OpenVINO GenAI folder with NNCF weight compression: int8 (per output channel)
or int4 (groups of `group_size`, the share `ratio` of the layers in int4 and the rest in
int8; embeddings and head stay int8), symmetric or asymmetric, and with calibration text the
data-aware methods AWQ and scale estimation.

The export is optimum-intel's, the path OpenVINO GenAI documents (stateful KV cache,
beam index, tokenizer converted to OpenVINO). optimum-intel needs an older transformers than
leanify's, so it runs in its own environment (`make optimum-env`, envs/optimum.in) as a child
(optimum_worker.py). The interpreter: $LEANIFY_OPTIMUM_PYTHON, else `.venv-optimum` beside the
running environment. The result is checked against the source's logits on a real batch (mean
cosine); the task's gate (perplexity, generation fidelity) judges it afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.passes.common import (
    check_batch,
    mean_cosine,
    require_causal_lm,
    run_worker,
    write_output,
)
from leanify.passes.registry import PassConfig, PassContext, register

PYTHON_ENV = "LEANIFY_OPTIMUM_PYTHON"
MODEL_FILE = "openvino_model.xml"
WEIGHTS = ("int8", "int4")
TIMEOUT_S = 3600


def optimum_python() -> Path | None:
    """The exporter environment's interpreter, or None when it is not installed."""
    given = os.environ.get(PYTHON_ENV)
    if given:
        return Path(given)
    beside = Path(sys.prefix).parent / ".venv-optimum" / "bin" / "python"
    return beside if beside.exists() else None


@dataclass(frozen=True)
class ExportOpenvinoLLMConfig(PassConfig):
    name: ClassVar[str] = "export-openvino-llm"

    weights: str = "int8"  # int8 | int4
    sym: bool = False
    group_size: int = 128  # int4: weights per scale (-1: one per output channel)
    ratio: float = 1.0  # int4: share of the layers in int4, the rest int8
    awq: bool = False  # data-aware: activation-aware scaling (needs calibration text)
    scale_estimation: bool = False  # data-aware: scales fitted to the outputs
    samples: int = 64  # calibration windows used by the data-aware methods
    # a sanity check against a broken export (int4 of a 135M model moves the logits to a mean
    # cosine of ~0.87); the task's gate (perplexity) is the judge of accuracy
    min_cosine: float = 0.8

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation


@register(ExportOpenvinoLLMConfig)
def export_openvino_llm(artifact: Artifact, config: ExportOpenvinoLLMConfig,
                        ctx: PassContext) -> Artifact:
    require_causal_lm(artifact, config.name, "Use export-openvino for other models.")
    if config.weights not in WEIGHTS:
        raise LeanifyError(f"{config.name}: unknown weights '{config.weights}'.",
                           fix=f"Use one of: {', '.join(WEIGHTS)}.")
    if not 0 < config.ratio <= 1:
        raise LeanifyError(f"{config.name}: ratio must be in (0, 1], not {config.ratio}.",
                           fix="Give the share of layers to keep in int4, e.g. 0.8.")
    python = optimum_python()
    if python is None or not python.exists():
        raise LeanifyError(
            "exporting an LLM to OpenVINO needs optimum-intel, which lives in its own "
            "environment (.venv-optimum), and that is not installed.",
            fix=f"Run 'make optimum-env' in the leanify checkout, or set {PYTHON_ENV} to a "
            "Python with the versions in envs/optimum.lock.")
    from leanify.runtimes import open_runner

    batch = check_batch(artifact, ctx)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    before = _logits(open_runner(artifact, ctx.threads), batch)
    calibration = _calibration(ctx, config.samples) if config.data_aware else None

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        job_file = out.parent / f".{out.name}.job.json"  # beside, not inside, the output
        job = {"source": str(artifact.path), "out": str(out), "weights": config.weights,
               "sym": config.sym, "group_size": config.group_size, "ratio": config.ratio,
               "awq": config.awq, "scale_estimation": config.scale_estimation,
               "samples": config.samples, "calibration": calibration}
        job_file.write_text(json.dumps(job), encoding="utf-8")
        try:
            facts = run_worker(
                [str(python), str(Path(__file__).with_name("optimum_worker.py")),
                 str(job_file)], artifact, timeout_s=TIMEOUT_S, what="optimum-intel",
                fix="Check that transformers in the exporter environment knows the "
                    "architecture (make optimum-env), or keep the torch model.")
        finally:
            job_file.unlink(missing_ok=True)
        return MODEL_FILE, {"run_with": "openvino-genai", "weight_compression": {
            "weights": config.weights, "sym": config.sym,
            "group_size": config.group_size if config.weights == "int4" else None,
            "ratio": config.ratio if config.weights == "int4" else None,
            "awq": config.awq, "scale_estimation": config.scale_estimation,
            "calibration_windows": facts.get("calibration_texts", 0)},
            "exporter": {k: facts.get(k) for k in ("optimum_intel", "transformers", "seconds")}}

    result = write_output(artifact, config, ctx, build)
    got = _logits(open_runner(result, ctx.threads), batch)
    cosine = mean_cosine(before, got, batch.get("attention_mask"))
    if not cosine >= config.min_cosine:
        raise LeanifyError(
            f"with {config.weights} weights the model's logits drifted from the source's (mean "
            f"cosine {cosine:.4f} < {config.min_cosine}).", path=artifact.path,
            fix="Use int8 weights, a smaller int4 ratio or group size, or calibration text.")
    return result


def _calibration(ctx: PassContext, samples: int) -> list[list[int]]:
    if ctx.calibration is None:
        raise LeanifyError("AWQ and scale estimation need calibration text.",
                           fix="Give --calibration-data (or more text in --data).")
    windows: list[list[int]] = []
    for batch in ctx.calibration():
        for row in np.asarray(batch["input_ids"]):
            windows.append([int(t) for t in row])
        if len(windows) >= samples:
            break
    if not windows:
        raise LeanifyError("the calibration text gave no token windows.",
                           fix="Give a longer --calibration-data text.")
    return windows[:samples]


def _logits(runner: Any, batch: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"logits": runner.run(batch)["logits"]}
    finally:
        runner.close()
