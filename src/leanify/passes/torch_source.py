"""The PyTorch model behind an `hf`, `keras`, `pt2` or `torch-module` artifact, ready to
export or transform: the module, its named inputs, the output to return, a real example batch.

Field notes: transformers 5 `forward` takes `use_cache` positionally, so the model is wrapped in
a module whose forward takes the named tensors in a fixed order; the legacy exporter once
changed the source model's outputs, so callers export a deep copy and check the source after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact
from leanify.passes.common import max_diff, require_format

HIDDEN_STATE_TASKS = ("feature-extraction", "sentence-embedding")
EXAMPLE_SHAPE = (2, 16)


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
    """Build the PyTorch model of an `hf`, `keras`, `pt2` or `torch-module` artifact, with its
    example batch."""
    require_format(artifact, ("hf", "torch-module", "keras", "pt2"), pass_name,
                   fix="Give the Hugging Face model folder, a Keras file, a torch.export .pt2 "
                   "file or an in-memory torch.nn.Module (leanify.load(module, "
                   "example_inputs=...)).")
    torch = require("torch", "torch", f"Pass '{pass_name}'")
    if artifact.format == "keras":
        return _keras_source(artifact, output_names)
    if artifact.format == "pt2":
        return _pt2_source(artifact, output_names)
    if artifact.format == "torch-module":
        module, example = artifact.module
        module.eval()
        with torch.inference_mode():
            names = output_names or tuple(_flat_outputs(module(**example)))
        return TorchSource(module, list(example), None, list(names), dict(example), {})
    return _hf_source(artifact, attn_implementation, pass_name, output_names)


def _keras_source(artifact: Artifact, output_names: tuple[str, ...]) -> TorchSource:
    """A Keras model on the torch backend is a torch.nn.Module that takes its inputs as one
    tensor (or a list): wrapped to take them by name."""
    import torch

    from leanify.models.inputs import InputBuilder
    from leanify.models.keras_file import build

    class KerasInputs(torch.nn.Module):
        def __init__(self, inner, names):
            super().__init__()
            self.inner, self.names = inner, list(names)

        def forward(self, **named):
            args = [named[n] for n in self.names]
            return self.inner(args[0] if len(args) == 1 else args)

    names = artifact.input_names
    module = KerasInputs(build(artifact.path), names).eval()
    example = {n: torch.from_numpy(v) for n, v in
               InputBuilder(artifact).batch(*EXAMPLE_SHAPE).items() if n in names}
    with torch.inference_mode():
        outputs = output_names or tuple(_flat_outputs(module(**example)))
    return TorchSource(module, names, None, list(outputs), example, {})


def _pt2_source(artifact: Artifact, output_names: tuple[str, ...]) -> TorchSource:
    """A torch.export program, unlifted into a module that takes its inputs by name (read
    as at load time: weights only, see models/load.py)."""
    import torch

    from leanify.models.inputs import InputBuilder
    from leanify.models.load import load_pt2_program

    class ProgramInputs(torch.nn.Module):
        def __init__(self, inner, names):
            super().__init__()
            self.inner, self.names = inner, list(names)

        def forward(self, **named):
            return self.inner(*[named[n] for n in self.names])

        def train(self, mode: bool = True):  # an exported module refuses train()/eval()
            self.training = mode
            return self

    names = artifact.input_names
    module = ProgramInputs(load_pt2_program(artifact.path).module(), names)
    example = {n: torch.from_numpy(v) for n, v in
               InputBuilder(artifact).batch(*EXAMPLE_SHAPE).items() if n in names}
    with torch.inference_mode():
        outputs = output_names or tuple(_flat_outputs(module(**example)))
    return TorchSource(module, names, None, list(outputs), example, {})


def _hf_source(artifact: Artifact, attn_implementation: str | None, pass_name: str,
               output_names: tuple[str, ...]) -> TorchSource:
    import inspect

    from leanify.runtimes.torch_eager import build_hf_model

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
    from leanify.runtimes.torch_eager import to_numpy

    return to_numpy(outputs)


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
