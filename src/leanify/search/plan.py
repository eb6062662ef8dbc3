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
# Measured on all-MiniLM-L6-v2 (benchmarks/quantize_vs_optimum.py): the fused dynamic int8
# recipe is the fastest at equal accuracy; the others stay as candidates because other models
# and CPUs rank them differently.
ONNX_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("onnx-fp32", []),
    ("onnx-fused", [("ort-optimize", {})]),
    ("onnx-fused-int8-dynamic", [("ort-optimize", {}), ("quantize-dynamic", {})]),
    ("onnx-int8-dynamic", [("quantize-dynamic", {})]),
    ("onnx-int8-static", [("quantize-static", {})]),
    ("onnx-fp16", [("fp16", {})]),
]
TORCH_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("torch-bf16", [("bf16", {})]),
    ("torch-int8-dynamic", [("torch-dynamic-int8", {})]),
]


def _useful_here(steps: list[tuple[str, dict]], isa_flags: frozenset[str]) -> bool:
    """Half precision only where the CPU computes in it (else it is slower than fp32)."""
    from leanify.passes.precision import native_bf16, native_fp16

    names = {step for step, _ in steps}
    if "fp16" in names and not native_fp16(isa_flags):
        return False
    return not ("bf16" in names and not native_bf16(isa_flags))


def plan(artifact: Artifact, *, only: list[str] | None = None, calibration: bool = True,
         isa_flags: frozenset[str] = frozenset()) -> list[Candidate]:
    """Candidate pipelines for `artifact`, in the order they are tried."""
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
        if not _useful_here(steps, isa_flags) and not (only and name in only):
            continue
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
