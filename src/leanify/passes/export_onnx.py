"""`export-onnx`: a Hugging Face folder or an in-memory torch module -> one ONNX file.

Field notes this pass is built on (measured on the target machine, see NOTES.md):
- The legacy (TorchScript) exporter once changed the source model's outputs: we export a deep
  copy and check afterwards that the source still gives the outputs it gave before.
- Only the legacy exporter with `attn_implementation="eager"` yields graphs that ONNX Runtime's
  transformer optimizer fuses fully (Attention, EmbedLayerNormalization): the default.

Outputs are checked: the source model (PyTorch) and the export (ONNX Runtime) run the same real
batch, at a shape other than the one exported, with one row padded; they must agree.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import CHECK_SHAPE, check_agreement, check_batch, write_output
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.passes.torch_source import (
    TorchSource,
    check_source_intact,
    torch_outputs,
    torch_source,
    wrap,
)
from leanify.runtimes.onnxruntime import run_once

MODEL_FILE = "model.onnx"


def onnx_num_heads(artifact: Artifact) -> tuple[int, int]:
    """num_heads and hidden_size recorded by export-onnx (0, 0: let the optimizer detect)."""
    return int(artifact.meta.get("num_heads") or 0), int(artifact.meta.get("hidden_size") or 0)


@dataclass(frozen=True)
class ExportOnnxConfig(PassConfig):
    name: ClassVar[str] = "export-onnx"

    opset: int = 17
    exporter: str = "legacy"  # "legacy" (TorchScript-based, fuses best) or "dynamo"
    attn_implementation: str = "eager"  # eager attention: full fusions in ort-optimize
    atol: float = 1e-4  # max abs diff on last_hidden_state; relative to scale for logits
    output_names: tuple[str, ...] = ()  # default: last_hidden_state / logits / module's own


@register(ExportOnnxConfig)
def export_onnx(artifact: Artifact, config: ExportOnnxConfig, ctx: PassContext) -> Artifact:
    if config.exporter not in ("legacy", "dynamo"):
        raise LeanifyError(f"export-onnx: unknown exporter '{config.exporter}'.",
                           fix="Use exporter='legacy' or exporter='dynamo'.")
    require("onnx", "onnx", "Pass 'export-onnx'")
    source = torch_source(artifact, config.attn_implementation, config.name,
                          tuple(config.output_names))
    batch = check_batch(artifact, ctx)
    before = torch_outputs(source, batch)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        path = out / MODEL_FILE
        _export(source, artifact, config, path)
        if artifact.format == "keras":
            _tidy(path)
        check_source_intact(source, batch, before, config.name)
        got = run_once(path, batch, ctx.threads)
        diffs = check_agreement(before, got, config.atol, "the ONNX export", artifact.path)
        extra = {k: v for k, v in source.meta.items() if v is not None}
        extra["export_check"] = {"max_diff": diffs, "shape": list(CHECK_SHAPE)}
        return MODEL_FILE, extra

    return write_output(artifact, config, ctx, build)


def _dynamic_axes(artifact: Artifact, source: TorchSource) -> dict[str, dict[int, str]]:
    specs = {s.name: s for s in artifact.inputs}
    axes: dict[str, dict[int, str]] = {}
    for name in source.input_names:
        spec = specs.get(name)
        if spec is not None and spec.shape:
            dims = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
        else:
            dims = {0: "batch", 1: "sequence"} if artifact.format == "hf" else {0: "batch"}
        if dims:
            axes[name] = dims
    per_token = source.pick == "last_hidden_state" or \
        artifact.meta.get("task") == "token-classification"
    for name in source.output_names:
        axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    return axes


def _export(source: TorchSource, artifact: Artifact, config: ExportOnnxConfig,
            path: Path) -> None:
    import torch

    model = wrap(source, copy.deepcopy(source.model))
    args = tuple(source.example[n] for n in source.input_names)
    axes = _dynamic_axes(artifact, source)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            if config.exporter == "legacy":
                torch.onnx.export(
                    model, args, str(path), dynamo=False, opset_version=config.opset,
                    input_names=source.input_names, output_names=source.output_names,
                    dynamic_axes=axes, do_constant_folding=True,
                )
            else:
                require("onnxscript", "onnx", "The dynamo ONNX exporter")
                program = torch.onnx.export(
                    model, args, dynamo=True, opset_version=config.opset,
                    input_names=source.input_names, output_names=source.output_names,
                    dynamic_shapes=_dynamic_shapes(source, axes), optimize=True,
                    verbose=False,
                )
                program.save(str(path), external_data=_too_big(source.model))
    except LeanifyError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(
            f"torch.onnx.export ({config.exporter}) failed: {first}",
            path=artifact.path,
            fix="Try the other exporter (exporter='legacy' or 'dynamo') or another opset.",
        ) from exc


def _tidy(path: Path) -> None:
    """Keras on torch casts every layer's inputs to its dtype policy: float-to-float Casts
    around each op, which break ORT's and OpenVINO's fusions (OpenVINO also merges their names
    into the input's). onnxscript's optimizer removes them; the outputs are checked after."""
    import onnx

    require("onnxscript", "onnx", "Tidying a Keras export")
    from onnxscript import optimizer

    onnx.save(optimizer.optimize(onnx.load(str(path))), str(path))


def _dynamic_shapes(source: TorchSource, axes: Mapping[str, Mapping[int, str]]) -> tuple:
    """torch.export wants per-argument specs for forward(*args), not dynamic_axes."""
    import torch

    per_arg = tuple({i: torch.export.Dim.DYNAMIC for i in axes.get(name, {})}
                    for name in source.input_names)
    return (per_arg,)  # one entry: the *args tuple


def _too_big(model: Any) -> bool:
    """Protobuf caps one file at 2 GB: larger models keep their weights in external data."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > 1_800_000_000
