"""`export-pt2` (torch.export) and `export-torchscript` (legacy): PyTorch models as files.

Both take a Hugging Face folder or an in-memory torch module. A Hugging Face model is wrapped in
a module whose forward takes the named tensors (input_ids, attention_mask, token_type_ids) and
returns one tensor (last_hidden_state or logits), so the saved program's inputs keep their names.

- export-pt2: torch.export with Dim.AUTO on the batch and sequence dims, saved with
  torch.export.save; the successor of TorchScript.
- export-torchscript: torch.jit.trace(strict=False). TorchScript is deprecated in torch 2.13;
  its DeprecationWarning is silenced here because the user asked for the format.

Every export is run again at another shape than the example's and compared with the source.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import (
    CHECK_SHAPE,
    check_agreement,
    check_batch,
    mean_cosine,
    write_output,
)
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.passes.torch_source import TorchSource, check_source_intact, torch_source

PT2_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.pt"


# --- Named wrappers ----------------------------------------------------------------------


def _wrappers() -> dict[tuple[str, ...], type]:
    import torch

    class _Base(torch.nn.Module):
        def __init__(self, inner, pick, out_dtype):
            super().__init__()
            self.inner = inner
            self.pick = pick
            self.out_dtype = out_dtype

        def _out(self, out):
            out = out[self.pick] if self.pick is not None else out
            if self.out_dtype is not None and isinstance(out, torch.Tensor):
                out = out.to(self.out_dtype)
            return out

    class Text3(_Base):
        def forward(self, input_ids, attention_mask, token_type_ids):
            return self._out(self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                        token_type_ids=token_type_ids))

    class Text2(_Base):
        def forward(self, input_ids, attention_mask):
            return self._out(self.inner(input_ids=input_ids, attention_mask=attention_mask))

    class Text1(_Base):
        def forward(self, input_ids):
            return self._out(self.inner(input_ids=input_ids))

    return {
        ("input_ids", "attention_mask", "token_type_ids"): Text3,
        ("input_ids", "attention_mask"): Text2,
        ("input_ids",): Text1,
    }


def named_module(source: TorchSource, model: Any = None, out_dtype: Any = None):
    """A module whose forward takes the source's inputs by their names."""
    model = model if model is not None else source.model
    if source.pick is None and out_dtype is None:
        return model.eval()  # a user's module: its forward already names its inputs
    cls = _wrappers().get(tuple(source.input_names))
    if cls is None:
        raise LeanifyError(
            f"leanify wraps text models with inputs input_ids, attention_mask, token_type_ids; "
            f"this one takes {', '.join(source.input_names)}.",
            fix="Wrap the model in your own module and give it to leanify.load with "
            "example_inputs.",
        )
    return cls(model, source.pick, out_dtype).eval()


def example_args(source: TorchSource) -> tuple:
    return tuple(source.example[n] for n in source.input_names)


def run_torch(module: Any, source: TorchSource, batch: Mapping[str, np.ndarray],
              keywords: bool) -> dict[str, np.ndarray]:
    """Call `module` on a numpy batch; outputs named like the source's outputs."""
    import torch

    from leanify.passes.torch_source import _flat_outputs

    tensors = [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in source.input_names]
    with torch.inference_mode():
        if keywords:
            out = module(**dict(zip(source.input_names, tensors, strict=True)))
        else:
            out = module(*tensors)
    if isinstance(out, torch.Tensor) and out.dtype not in (torch.float32, torch.float64):
        out = out.float()
    return dict(zip(source.output_names, _flat_outputs(out).values(), strict=False))


def reference(source: TorchSource, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from leanify.passes.torch_source import torch_outputs

    return torch_outputs(source, batch)


def quiet_torchscript():
    """Silence TorchScript's deprecation and tracer warnings (the user chose the format)."""
    import torch

    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*")
    return ctx


def trace_and_save(module: Any, source: TorchSource, path: Path) -> Any:
    """torch.jit.trace(strict=False) and save; returns the module loaded back from the file."""
    torch = require("torch", "torch", "TorchScript export")
    ctx = quiet_torchscript()
    try:
        with torch.no_grad():
            if source.pick is None and isinstance(module, type(source.model)):
                traced = torch.jit.trace(module, example_kwarg_inputs=dict(source.example),
                                         strict=False, check_trace=False)
            else:
                traced = torch.jit.trace(module, example_args(source), strict=False,
                                         check_trace=False)
        traced.save(str(path))
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(f"torch.jit.trace failed: {first}",
                           fix="Try 'export-pt2' (torch.export) or 'export-onnx'.") from exc
    finally:
        ctx.__exit__(None, None, None)


def export_program(module: Any, source: TorchSource, artifact: Artifact, path: Path) -> Any:
    """torch.export with Dim.AUTO on the dynamic dims, saved; returns the loaded program."""
    torch = require("torch", "torch", "torch.export")
    from leanify.models.load import load_pt2_program

    auto = torch.export.Dim.AUTO
    specs = {s.name: s for s in artifact.inputs}
    dims = {}
    for name in source.input_names:
        shape = specs[name].shape if name in specs and specs[name].shape else ("batch",)
        dims[name] = {i: auto for i, d in enumerate(shape) if isinstance(d, str)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if source.pick is None and isinstance(module, type(source.model)):
                program = torch.export.export(module, (), kwargs=dict(source.example),
                                              dynamic_shapes=dims)
            else:
                program = torch.export.export(module, example_args(source),
                                              dynamic_shapes=dims)
        torch.export.save(program, str(path))
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(f"torch.export failed: {first}",
                           fix="Try 'export-onnx' or 'export-torchscript'.") from exc
    return load_pt2_program(path)


def _check_dynamic(program: Any, source: TorchSource, path: Path) -> None:
    """torch.export may specialize a dim it was asked to keep dynamic: say so clearly."""
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in source.input_names:
            continue
        val = node.meta.get("val")
        if val is not None and hasattr(val, "shape") and len(val.shape) >= 1:
            if str(val.shape[0]).isdigit():
                raise LeanifyError(
                    f"torch.export fixed the batch dim of input '{node.name}' to "
                    f"{val.shape[0]}; the program would only run that batch size.",
                    path=path, fix="Use 'export-onnx' or 'export-torchscript' for this model.",
                )


# --- export-pt2 --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPt2Config(PassConfig):
    name: ClassVar[str] = "export-pt2"

    attn_implementation: str = ""  # "": transformers' default (sdpa); or "eager"
    atol: float = 1e-4


@register(ExportPt2Config)
def export_pt2(artifact: Artifact, config: ExportPt2Config, ctx: PassContext) -> Artifact:
    source = torch_source(artifact, config.attn_implementation or None, config.name)
    batch = check_batch(artifact, ctx)
    before = reference(source, batch)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        path = out / PT2_FILE
        module = named_module(source, copy.deepcopy(source.model))
        program = export_program(module, source, artifact, path)
        _check_dynamic(program, source, path)
        check_source_intact(source, batch, before, config.name)
        got = run_pt2(program, source, batch)
        diffs = check_agreement(before, got, config.atol, "the torch.export program",
                                artifact.path)
        extra = {k: v for k, v in source.meta.items() if v is not None}
        extra["export_check"] = {"max_diff": diffs, "shape": list(CHECK_SHAPE)}
        return PT2_FILE, extra

    return write_output(artifact, config, ctx, build)


def run_pt2(program: Any, source: TorchSource, batch: Mapping[str, np.ndarray]):
    keywords = source.pick is None  # a user's module was exported with keyword inputs
    return run_torch(program.module(), source, batch, keywords)


# --- export-torchscript ------------------------------------------------------------------


@dataclass(frozen=True)
class ExportTorchScriptConfig(PassConfig):
    name: ClassVar[str] = "export-torchscript"

    attn_implementation: str = ""  # "": transformers' default; "eager" traces most simply
    atol: float = 1e-4


@register(ExportTorchScriptConfig)
def export_torchscript(artifact: Artifact, config: ExportTorchScriptConfig,
                       ctx: PassContext) -> Artifact:
    source = torch_source(artifact, config.attn_implementation or None, config.name)
    batch = check_batch(artifact, ctx)
    before = reference(source, batch)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        path = out / TORCHSCRIPT_FILE
        module = named_module(source, copy.deepcopy(source.model))
        loaded = trace_and_save(module, source, path)
        check_source_intact(source, batch, before, config.name)
        got = run_torch(loaded, source, batch, keywords=False)
        diffs = check_agreement(before, got, config.atol, "the TorchScript trace",
                                artifact.path)
        extra = {k: v for k, v in source.meta.items() if v is not None}
        extra["export_check"] = {"max_diff": diffs, "shape": list(CHECK_SHAPE)}
        return TORCHSCRIPT_FILE, extra

    return write_output(artifact, config, ctx, build)


def cosine_gate(before: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                batch: Mapping[str, np.ndarray], min_cosine: float, what: str,
                path: Path | None) -> float:
    cosine = mean_cosine(before, got, batch.get("attention_mask"))
    if not cosine >= min_cosine:
        raise LeanifyError(
            f"{what} drifted from the float model (mean cosine similarity {cosine:.4f} < "
            f"{min_cosine}).",
            path=path, fix="Skip this pass for this model, or lower min_cosine if you accept it.",
        )
    return cosine
