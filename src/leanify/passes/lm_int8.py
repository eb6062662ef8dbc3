"""`lm-int8-dynamic`: int8 weights for a causal LM's linear layers, applied when it loads.

torch's dynamic int8 quantization (`quantize_dynamic`: int8 weights per output channel,
activations quantized per call) of every nn.Linear, the LM head included. Its packed weights
can neither be saved as safetensors nor traced through a decode loop with a KV cache, so the
candidate is the same Hugging Face folder (files hard-linked where leanify made them) with the
runtime setting `weights: int8-dynamic` in its sidecar: both torch runtimes (`torch-eager`
for scores, `torch-generate` for the decode loop) quantize it when they open it. The files
on disk stay fp32; what changes is the arithmetic and the resident memory.

Checked against the float model on a real batch (mean cosine of the logits); the task's own
gate (perplexity) judges it afterwards like every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.models.files import SIDECAR
from leanify.passes.common import (
    check_batch,
    link_or_copy,
    mean_cosine,
    require_causal_lm,
    write_output,
)
from leanify.passes.registry import PassConfig, PassContext, register

SETTING = {"weights": "int8-dynamic"}


@dataclass(frozen=True)
class LMInt8DynamicConfig(PassConfig):
    name: ClassVar[str] = "lm-int8-dynamic"

    min_cosine: float = 0.95  # gate: mean cosine of the logits vs the float model


@register(LMInt8DynamicConfig)
def lm_int8_dynamic(artifact: Artifact, config: LMInt8DynamicConfig,
                    ctx: PassContext) -> Artifact:
    require_causal_lm(artifact, config.name, "Use 'torch-dynamic-int8' for other transformers.")
    from leanify.runtimes import open_runner

    batch = check_batch(artifact, ctx)
    before = _logits(open_runner(artifact, ctx.threads), batch)
    settings = {**(artifact.meta.get("runtime") or {}), **SETTING}

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        for file in artifact.files():
            if file.name == SIDECAR:
                continue  # carry_over writes this folder's own
            link_or_copy(file, out / file.relative_to(artifact.path), ctx.work_dir)
        from leanify.models.load import load

        candidate = load(out)
        candidate = replace(candidate, meta={**candidate.meta, "runtime": settings})
        got = _logits(open_runner(candidate, ctx.threads), batch)
        cosine = mean_cosine(before, got, batch.get("attention_mask"))
        if not cosine >= config.min_cosine:
            raise LeanifyError(
                f"with int8 weights the model's logits drifted from the float model's (mean "
                f"cosine {cosine:.4f} < {config.min_cosine}).", path=artifact.path,
                fix="Keep the float model, or try another candidate.")
        return "", {"runtime": settings, "quantization": "torch dynamic int8 (nn.Linear)",
                    "int8_check": {"mean_cosine": round(cosine, 6)}}

    return write_output(artifact, config, ctx, build)


def _logits(runner: Any, batch: dict[str, Any]) -> dict[str, Any]:
    try:
        wanted = set(runner.input_names)
        out = runner.run({k: v for k, v in batch.items() if k in wanted})
        return {"logits": out["logits"]}
    finally:
        runner.close()
