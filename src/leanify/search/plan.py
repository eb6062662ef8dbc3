"""Which pipelines to try for a model, on this machine, with what is installed."""

from __future__ import annotations

from dataclasses import dataclass

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.passes.registry import PassConfig, available, make_config


@dataclass(frozen=True)
class Candidate:
    name: str
    pipeline: tuple[PassConfig, ...]
    needs_calibration: bool = False

    def passes(self) -> list[str]:
        return [c.label() for c in self.pipeline]


# name -> pass names (with settings) in order; the planner keeps those that fit the input.
ONNX_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("onnx-fp32", []),
    ("onnx-fused", [("ort-optimize", {})]),
    ("onnx-int8-dynamic", [("quantize-dynamic", {})]),
    ("onnx-fused-int8-dynamic", [("ort-optimize", {}), ("quantize-dynamic", {})]),
    ("onnx-int8-static", [("quantize-static", {})]),
]
TORCH_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("torch-int8-dynamic", [("torch-dynamic-int8", {})]),
]


def plan(artifact: Artifact, *, only: list[str] | None = None,
         calibration: bool = True) -> list[Candidate]:
    """Candidate pipelines for `artifact`, cheapest first."""
    passes = available()
    out: list[Candidate] = []
    if artifact.format in ("hf", "torch-module"):
        prefix = [("export-onnx", {})]
        onnx_recipes = [(name, prefix + steps) for name, steps in ONNX_RECIPES]
        torch_recipes = TORCH_RECIPES
    elif artifact.format == "onnx":
        onnx_recipes = [(name, steps) for name, steps in ONNX_RECIPES if steps]
        torch_recipes = []
    else:
        raise LeanifyError(
            f"leanify optimize does not yet take {artifact.format} models.",
            path=artifact.path,
            fix="Give the Hugging Face folder or an ONNX export of the model.",
        )
    for name, steps in [*onnx_recipes, *torch_recipes]:
        if any(step not in passes for step, _ in steps):
            continue  # a pass this installation lacks (an extra not installed)
        static = any(step == "quantize-static" for step, _ in steps)
        if static and not calibration:
            continue
        pipeline = tuple(make_config(step, **params) for step, params in steps)
        out.append(Candidate(name, pipeline, needs_calibration=static))
    if only:
        unknown = sorted(set(only) - {c.name for c in out})
        if unknown:
            raise LeanifyError(
                f"unknown candidate(s) {', '.join(unknown)} for this model.",
                fix=f"Choose among: {', '.join(c.name for c in out)}.",
            )
        out = [c for c in out if c.name in only]
    if not out:
        raise LeanifyError("no optimization applies to this model with what is installed.",
                           path=artifact.path,
                           fix="Install the extras: pip install 'leanify[all]'.")
    return out
