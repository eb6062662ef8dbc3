"""`export-onnx`: a Hugging Face folder or an in-memory torch module -> one ONNX file.

Field notes this pass is built on (measured on the target machine, see NOTES.md):
- transformers 5 `forward` takes `use_cache` positionally: the model is wrapped in a module
  whose forward takes the named tensors, in a fixed order.
- The legacy (TorchScript) exporter once changed the source model's outputs: we export a deep
  copy and check afterwards that the source still gives the outputs it gave before.
- Only the legacy exporter with `attn_implementation="eager"` yields graphs that ONNX Runtime's
  transformer optimizer fuses fully (Attention, EmbedLayerNormalization): the default.

Outputs are checked: the source model (PyTorch) and the export (ONNX Runtime) run the same real
batch, at a shape other than the one exported, with one row padded; they must agree.

This module also holds the helpers every pass here shares (output folders, sidecar, checks).
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.models.load import SIDECAR, load
from leanify.passes.registry import PassConfig, PassContext, register

# Task metadata carried from a source artifact to every artifact a pass derives from it (and
# facts later passes use: attention shape for the optimizer, fusions done for the report).
CARRY_KEYS = ("task", "pooling", "normalize", "labels", "max_length",
              "model_type", "num_heads", "hidden_size", "fusions", "quantization", "runtime")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")
HIDDEN_STATE_TASKS = ("feature-extraction", "sentence-embedding")
MODEL_FILE = "model.onnx"
CHECK_SHAPE = (3, 24)  # the checks run a shape other than the export example's (2, 16)
EXAMPLE_SHAPE = (2, 16)


# --- Helpers shared by the passes in this package ----------------------------------------


def final_path(out: Path) -> Path:
    """The folder `ctx.output_dir` renames its temporary folder to on success."""
    return out.with_name(out.name.removesuffix(".partial"))


def write_output(
    artifact: Artifact, config: PassConfig, ctx: PassContext,
    build: Callable[[Path], tuple[str, dict[str, Any]]],
) -> Artifact:
    """Run `build(tmp_folder) -> (model file name, extra sidecar meta)` atomically.

    Tokenizer files and the source's task metadata are carried into the folder; the result is
    loaded back with `leanify.load`, so it is checked like any user file.
    """
    with ctx.output_dir(config, artifact) as out:
        filename, extra = build(out)
        carry_over(artifact, out, config, extra)
    return load(final_path(out) / filename, name=f"{artifact.name}+{config.name}")


def carry_over(artifact: Artifact, out: Path, config: PassConfig,
               extra: Mapping[str, Any] | None = None) -> None:
    """Copy the tokenizer files and write the sidecar (task metadata + what this pass did)."""
    tok = artifact.tokenizer_path
    if tok is not None and tok.is_dir():
        for name in TOKENIZER_FILES:
            if (tok / name).is_file():
                shutil.copy2(tok / name, out / name)
    sidecar = {k: artifact.meta[k] for k in CARRY_KEYS if artifact.meta.get(k) is not None}
    sidecar["source"] = artifact.name
    sidecar[config.name] = config.params()
    sidecar.update(extra or {})
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str) + "\n",
                               encoding="utf-8")


def require_format(artifact: Artifact, formats: tuple[str, ...], pass_name: str,
                   fix: str) -> None:
    if artifact.format not in formats:
        raise LeanifyError(
            f"pass '{pass_name}' takes {' or '.join(formats)} models; "
            f"{artifact.name} is {artifact.format}.",
            path=artifact.path, fix=fix,
        )


def check_batch(artifact: Artifact, batch_size: int = CHECK_SHAPE[0],
                seq_len: int = CHECK_SHAPE[1]) -> dict[str, np.ndarray]:
    """A real batch for output checks; for text, the last row is half padding."""
    from leanify.models.inputs import InputBuilder

    batch = InputBuilder(artifact).batch(batch_size, seq_len)
    mask = batch.get("attention_mask")
    if mask is not None and mask.ndim == 2 and mask.shape[0] > 1 and mask.shape[1] > 2:
        mask = mask.copy()
        mask[-1, mask.shape[1] // 2:] = 0
        batch["attention_mask"] = mask
    return batch


def ort_session(path: Path, threads: int | None, level: str = "all",
                optimized_path: Path | None = None):
    ort = require("onnxruntime", "onnx", "Running ONNX models")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(f"ONNX Runtime could not open the model ({first}).", path=path,
                           fix="Re-export the model, or check its opset and operators.") from exc


def run_ort(path: Path, batch: Mapping[str, np.ndarray], threads: int | None,
            level: str = "all") -> dict[str, np.ndarray]:
    session = ort_session(path, threads, level)
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(names, {k: v for k, v in batch.items() if k in wanted})
    return dict(zip(names, outputs, strict=True))


def max_diff(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
             relative: bool = False) -> dict[str, float]:
    """Max abs difference per shared output; `relative` divides by the reference's scale."""
    out = {}
    for name, a in ref.items():
        if name not in got:
            continue
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(got[name], dtype=np.float64)
        if a.shape != b.shape:
            out[name] = float("inf")
            continue
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if relative:
            diff /= max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
        out[name] = diff
    return out


def mean_cosine(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                mask: np.ndarray | None = None) -> float:
    """Mean cosine similarity of outputs: a quantization gate.

    Outputs shaped (batch, sequence, hidden) are compared token by token over the tokens the
    attention `mask` keeps (padding positions carry no meaning); others sample by sample.
    """
    sims: list[float] = []
    for name, a in ref.items():
        b = got.get(name)
        if b is None or np.shape(a) != np.shape(b):
            return float("-inf")
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.ndim == 0:
            a, b = a.reshape(1, 1), b.reshape(1, 1)
        if mask is not None and a.ndim == 3 and a.shape[:2] == mask.shape:
            keep = mask.astype(bool)
            a, b = a[keep], b[keep]
        else:
            a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        num = np.sum(a * b, axis=1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
        sims.extend((num / den).tolist())
    return float(np.mean(sims)) if sims else float("-inf")


def onnx_num_heads(artifact: Artifact) -> tuple[int, int]:
    """num_heads and hidden_size recorded by export-onnx (0, 0: let the optimizer detect)."""
    return int(artifact.meta.get("num_heads") or 0), int(artifact.meta.get("hidden_size") or 0)


# --- Source models -----------------------------------------------------------------------


@dataclass
class TorchSource:
    """A PyTorch model ready to export: the module, its input names, what to return."""

    model: Any
    input_names: list[str]
    pick: str | None  # ModelOutput field to return, None: the module's own output
    output_names: list[str]
    example: dict[str, Any]
    meta: dict[str, Any]


def _wrapper_class():
    import torch

    class NamedInputs(torch.nn.Module):
        """forward(*tensors) -> inner(**named tensors), picking one ModelOutput field."""

        def __init__(self, inner, names, pick):
            super().__init__()
            self.inner = inner
            self.names = list(names)
            self.pick = pick

        def forward(self, *args):
            out = self.inner(**dict(zip(self.names, args, strict=True)))
            return out[self.pick] if self.pick is not None else out

    return NamedInputs


def wrap(source: TorchSource, model: Any = None):
    return _wrapper_class()(model if model is not None else source.model, source.input_names,
                            source.pick).eval()


def torch_source(artifact: Artifact, attn_implementation: str | None, pass_name: str,
                 output_names: tuple[str, ...] = ()) -> TorchSource:
    """Build the PyTorch model of an `hf` or `torch-module` artifact, with its example batch."""
    require_format(artifact, ("hf", "torch-module"), pass_name,
                   fix="Give the Hugging Face model folder or an in-memory torch.nn.Module "
                   "(leanify.load(module, example_inputs=...)).")
    torch = require("torch", "torch", f"Pass '{pass_name}'")
    if artifact.format == "torch-module":
        module, example = artifact.module
        module.eval()
        with torch.inference_mode():
            names = output_names or tuple(_flat_outputs(module(**example)))
        return TorchSource(module, list(example), None, list(names), dict(example), {})
    return _hf_source(artifact, attn_implementation, pass_name, output_names)


def _hf_source(artifact: Artifact, attn_implementation: str | None, pass_name: str,
               output_names: tuple[str, ...]) -> TorchSource:
    import inspect

    from leanify.models.runners import build_hf_model

    torch = require("torch", "torch", f"Pass '{pass_name}'")
    transformers = require("transformers", "torch", f"Pass '{pass_name}'")
    task = artifact.meta.get("task") or "feature-extraction"
    arch = artifact.meta.get("architecture")
    cls = getattr(transformers, arch, None) if arch else None
    if task in HIDDEN_STATE_TASKS:
        if cls is None or not hasattr(cls, "from_pretrained") or "For" in (arch or ""):
            cls = transformers.AutoModel
        pick = "last_hidden_state"
    elif task in ("text-classification", "token-classification"):
        if cls is None or not hasattr(cls, "from_pretrained"):
            cls = (transformers.AutoModelForSequenceClassification
                   if task == "text-classification"
                   else transformers.AutoModelForTokenClassification)
        pick = "logits"
    else:
        raise LeanifyError(
            f"pass '{pass_name}' exports encoders for feature extraction, sentence embedding and "
            f"classification; this model's task is '{task}'.",
            path=artifact.path,
            fix="Export it yourself (torch.onnx.export) and give leanify the .onnx file.",
        )
    model = build_hf_model(artifact, cls, attn_implementation=attn_implementation)
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in artifact.input_names if n in accepted]
    cfg = model.config
    meta = {
        "num_heads": getattr(cfg, "num_attention_heads", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "model_type": getattr(cfg, "model_type", None),
        "attn_implementation": attn_implementation,
    }
    from leanify.models.inputs import InputBuilder

    batch = InputBuilder(artifact).batch(*EXAMPLE_SHAPE)
    example = {n: torch.from_numpy(batch[n]) for n in names}
    return TorchSource(model, names, pick, list(output_names or (pick,)), example, meta)


def _flat_outputs(outputs: Any) -> dict[str, np.ndarray]:
    from leanify.models.runners import _to_numpy

    return _to_numpy(outputs)


def torch_outputs(source: TorchSource, batch: Mapping[str, np.ndarray],
                  model: Any = None) -> dict[str, np.ndarray]:
    """Run the (wrapped) source on a numpy batch; outputs named like the export's outputs."""
    import torch

    wrapped = wrap(source, model)
    args = [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in source.input_names]
    with torch.inference_mode():
        out = wrapped(*args)
    flat = list(_flat_outputs(out).values())
    return dict(zip(source.output_names, flat, strict=False))


def check_source_intact(source: TorchSource, batch: Mapping[str, np.ndarray],
                        before: Mapping[str, np.ndarray], pass_name: str) -> None:
    after = torch_outputs(source, batch)
    diff = max(max_diff(before, after).values(), default=0.0)
    if diff > 1e-6:
        raise LeanifyError(
            f"pass '{pass_name}' changed the source model in memory while exporting it (its "
            f"outputs moved by {diff:.3g}).",
            fix="Reload the source model before using it again; please report this.",
        )


def check_agreement(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                    atol: float, what: str, path: Path | None) -> dict[str, float]:
    """Hidden states: absolute tolerance; logits and other outputs: relative to their scale."""
    diffs = {}
    for name in ref:
        if name not in got:
            raise LeanifyError(f"{what} lacks output '{name}'.", path=path)
        relative = name != "last_hidden_state"
        diffs[name] = max_diff({name: ref[name]}, {name: got[name]}, relative)[name]
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        raise LeanifyError(
            f"{what} disagrees with its source beyond the tolerance {atol:g} ({detail}).",
            path=path,
            fix="Try another exporter or opset, or loosen the pass's atol if you accept this.",
        )
    return diffs


# --- The pass ----------------------------------------------------------------------------


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
    batch = check_batch(artifact)
    before = torch_outputs(source, batch)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        path = out / MODEL_FILE
        _export(source, artifact, config, path)
        check_source_intact(source, batch, before, config.name)
        got = run_ort(path, batch, ctx.threads)
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


def _dynamic_shapes(source: TorchSource, axes: Mapping[str, Mapping[int, str]]) -> tuple:
    """torch.export wants per-argument specs for forward(*args), not dynamic_axes."""
    import torch

    per_arg = tuple({i: torch.export.Dim.DYNAMIC for i in axes.get(name, {})}
                    for name in source.input_names)
    return (per_arg,)  # one entry: the *args tuple


def _too_big(model: Any) -> bool:
    """Protobuf caps one file at 2 GB: larger models keep their weights in external data."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > 1_800_000_000
