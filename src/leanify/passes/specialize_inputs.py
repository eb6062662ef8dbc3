"""`specialize-inputs`: fold the scalar inputs that the user's data always gives with one
value (an audio model's sample rate, a flag) into the ONNX graph, then constant-fold it.

Exports that branch on such an input (`If sr == 16000`) carry every branch and decide at each
call; once the value is a constant, the onnxscript optimizer inlines the branch taken and
folds what depends on it, so ONNX Runtime runs a flat graph and the quantizers see its
layers. The folded values are recorded (`folded_inputs` in the sidecar): a runner still
accepts the input, checks it has the folded value, and refuses any other value.

Measured on silero-vad 6.2.3 (sr folded to 16000; 2 threads, same process, interleaved, CPU
shared): 184-225 µs against 260-283 µs per 512-sample chunk, outputs bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_agreement, check_batch, require_format, write_output
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.runtimes.onnxruntime import run_once

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class SpecializeInputsConfig(PassConfig):
    name: ClassVar[str] = "specialize-inputs"

    inputs: tuple[str, ...] = ()  # () : every scalar input that is constant in the data
    atol: float = 1e-5  # relative to the outputs' scale


def scalar_inputs(artifact: Artifact) -> list[str]:
    """Inputs the model declares as scalars (shape [])."""
    return [s.name for s in artifact.inputs if s.shape == ()]


def constant_values(artifact: Artifact, ctx: PassContext, names: list[str]) -> dict[str, Any]:
    """{input: value} for the names that have one value in every calibration batch and in
    the sample; inputs the data never gives, or gives with several values, are left out."""
    from leanify.models.inputs import InputBuilder

    seen: dict[str, set] = {name: set() for name in names}
    batches = list(ctx.calibration()) if ctx.calibration else []
    if ctx.sample is not None:
        batches.append(InputBuilder(artifact, ctx.sample).batch(1, 1))
    for batch in batches:
        for name in names:
            if name in batch and np.ndim(batch[name]) == 0:
                seen[name].add(np.asarray(batch[name]).item())
            else:
                seen[name].add(None)  # absent or not a scalar here: not constant
    return {n: next(iter(v)) for n, v in seen.items() if len(v) == 1 and None not in v}


@register(SpecializeInputsConfig)
def specialize_inputs(artifact: Artifact, config: SpecializeInputsConfig,
                      ctx: PassContext) -> Artifact:
    require_format(artifact, ("onnx",), config.name, fix="Export the model to ONNX first.")
    onnx = require("onnx", "onnx", f"Pass '{config.name}'")
    require("onnxscript", "onnx", f"Pass '{config.name}'")
    candidates = list(config.inputs) or scalar_inputs(artifact)
    unknown = sorted(set(candidates) - set(artifact.input_names))
    if unknown:
        raise LeanifyError(f"pass '{config.name}': the model has no input {', '.join(unknown)}.",
                           path=artifact.path, fix="Name scalar inputs of the model.")
    values = constant_values(artifact, ctx, candidates)
    if not values:
        raise LeanifyError(
            f"pass '{config.name}': no scalar input has one value throughout the data "
            f"(looked at {', '.join(candidates) or 'none: the model has no scalar input'}).",
            path=artifact.path, fix="Leave this pass out for this model.")
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads)
    dtypes = {s.name: s.dtype for s in artifact.inputs}

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        import onnx_ir as ir
        import onnxscript.optimizer

        model = onnx.load(str(artifact.path))
        for name, value in values.items():
            graph_input = next(i for i in model.graph.input if i.name == name)
            model.graph.input.remove(graph_input)
            model.graph.initializer.append(onnx.numpy_helper.from_array(
                np.array(value, dtype=np.dtype(dtypes[name])), name))
        try:
            graph = ir.from_proto(model)
            onnxscript.optimizer.optimize(graph)
            onnx.save(ir.to_proto(graph), str(out / MODEL_FILE))
        except Exception as exc:  # the optimizer raises many kinds
            raise LeanifyError(f"the ONNX optimizer failed on the specialized graph "
                               f"({first_line(exc)}).", path=artifact.path,
                               fix="Leave this pass out for this model.") from exc
        got = run_once(out / MODEL_FILE, batch, ctx.threads)
        diffs = check_agreement({k: v for k, v in before.items()
                                 if np.issubdtype(v.dtype, np.floating)}, got, config.atol,
                                "the specialized model", artifact.path)
        nodes = len(onnx.load(str(out / MODEL_FILE), load_external_data=False).graph.node)
        return MODEL_FILE, {"folded_inputs": values,
                            "specialize_check": {"max_diff": diffs, "nodes": nodes}}

    return write_output(artifact, config, ctx, build)
