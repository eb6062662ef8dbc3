"""`runtime-settings`: the same model files with other runtime settings, as a new artifact.

A runtime setting changes speed and sometimes numbers (OpenVINO's bf16 inference precision
rounds every activation), so the search treats it like any other candidate: the settings go
into the artifact's sidecar, the runner applies them, and accuracy is evaluated under them.

Settings (each runtime's schema, leanify.runtimes): OpenVINO `inference_precision` (f32,
bf16, f16), `performance_hint` (LATENCY, THROUGHPUT), `num_streams`, `sequence_multiple` (pad
text inputs to a multiple of it and compile static shapes), `batch_streams` (split batches
across streams, single rows on the latency model); ONNX Runtime `intra_op_num_threads`,
`allow_spinning`, `graph_optimization_level`; TorchScript `num_threads`; OpenVINO GenAI
`prompt_lookup`, `max_ngram_size`, `kv_cache_precision`. Unset fields keep the input's settings.
For a runtime that generates, greedy continuations are compared as well: speculative decoding
must not change a single token.

The new artifact is checked against its input on a real batch; the precision that actually
ran is recorded beside the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.passes.common import check_batch, link_or_copy, mean_cosine, write_output
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.runtimes import check_settings, for_artifact
from leanify.runtimes.openvino import padding_problem

GATES = ("min_cosine", "max_greedy_drop")
GREEDY_PROMPTS, GREEDY_PROMPT_TOKENS, GREEDY_NEW_TOKENS = 4, 128, 48


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
    prompt_lookup: int | None = None  # openvino-genai: speculative tokens from the context
    max_ngram_size: int | None = None  # openvino-genai: n-gram length prompt lookup matches
    kv_cache_precision: str | None = None  # openvino-genai
    min_cosine: float = 0.98  # gate: outputs under the new settings vs the input's
    # gate for runtimes that generate: greedy tokens that are the model's own top-1 choice
    # given their prefix, at most this much below the input's own decode loop (see below)
    max_greedy_drop: float = 0.03

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in GATES and getattr(self, f.name) is not None}


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
        check = {"mean_cosine": round(cosine, 6), "ran_with": details}
        if runtime.generates:
            check["greedy"] = _greedy_check(artifact, candidate, config, ctx.threads)
        return artifact.path.name, {"runtime": settings, "runtime_check": check}

    return write_output(artifact, config, ctx, build)


def _outputs(artifact: Artifact, batch: dict[str, Any], threads: int | None) -> dict[str, Any]:
    from leanify.runtimes import open_runner

    runner = open_runner(artifact, threads)
    try:
        wanted = set(runner.input_names)
        return runner.run({k: v for k, v in batch.items() if k in wanted})
    finally:
        runner.close()


def _greedy_check(artifact: Artifact, candidate: Artifact, config: RuntimeSettingsConfig,
                  threads: int | None) -> dict[str, Any]:
    """Greedy continuations under the new settings, judged by the model itself.

    Speculative decoding (prompt lookup) verifies every proposed token with the model, so in
    exact arithmetic greedy output cannot change. In floating point it can: checking several
    tokens in one pass takes other kernels than one token at a time, and a near-tie between
    the two best tokens may flip (seen on SmolLM2 int8: margins of 0.2-0.3 logits). So the
    bar is not token identity with one particular decode loop, it is consistency: the share
    of generated tokens that are the top-1 choice of the input's full forward pass given
    their own prefix, under the new settings and under the old, on the same prompts.
    """
    from leanify.measure.generation import Prompts
    from leanify.runtimes import open_generator, open_runner

    prompts = Prompts(artifact)
    reference = open_runner(artifact, threads)
    try:
        shares = {}
        for label, model in (("before", artifact), ("after", candidate)):
            gen = open_generator(model, threads)
            prompts.calls = 0  # the same prompts for both
            hits = total = 0
            try:
                for _ in range(GREEDY_PROMPTS):
                    ids = prompts.next(1, GREEDY_PROMPT_TOKENS)
                    out = gen.generate(ids, GREEDY_NEW_TOKENS).tokens[0]
                    seq = np.concatenate([ids[0], out])[None]
                    logits = reference.run({"input_ids": seq})["logits"][0]
                    top = logits[ids.shape[1] - 1:-1].argmax(-1)
                    hits += int((top == out).sum())
                    total += len(out)
            finally:
                gen.close()
            shares[label] = hits / total
    finally:
        reference.close()
    drop = shares["before"] - shares["after"]
    if drop > config.max_greedy_drop:
        raise LeanifyError(
            f"under the settings {candidate.meta.get('runtime')} greedy tokens follow the "
            f"model less: {shares['after']:.1%} are its top-1 choice, against "
            f"{shares['before']:.1%} before.", path=artifact.path,
            fix="Keep the previous settings for this model.")
    return {"top1_consistency_before": round(shares["before"], 4),
            "top1_consistency_after": round(shares["after"], 4),
            "prompts": GREEDY_PROMPTS, "prompt_tokens": GREEDY_PROMPT_TOKENS,
            "new_tokens": GREEDY_NEW_TOKENS}
