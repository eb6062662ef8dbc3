"""`ort-optimize`: ONNX Runtime graph optimizations, saved as a new ONNX file.

Two kinds:
- "transformer": onnxruntime.transformers.optimizer for BERT-like encoders. It fuses attention
  (Attention), embeddings + LayerNorm (EmbedLayerNormalization) and GELU (Gelu); on request
  also residual + LayerNorm (SkipLayerNormalization) and bias + GELU (BiasGelu). Which fusions
  happened is recorded in the artifact's meta under "fusions". num_heads and hidden_size come
  from export-onnx's metadata (the model's config) or are read off the graph.
- "basic" / "extended" / "all": ONNX Runtime's own graph optimizer at that level, written out
  with SessionOptions.optimized_model_filepath (for any graph, e.g. CNNs). "all" adds layout
  changes specific to this CPU.
"auto" picks "transformer" for graphs with token inputs and Softmax attention, else "extended".

Measured on all-MiniLM-L6-v2 (2-core AVX-512 VNNI, ORT 1.32, int8, batch 32 x 128): ORT's
SkipLayerNormalization and BiasGelu CPU kernels were slower than the ops they replace (12
SkipLayerNormalization ~4 ms each against ~1 ms for Add + LayerNormalization; BiasGelu 28-34 ms
against 13-16 ms for Gelu with the bias folded into the preceding MatMul). So by default those
two fusions are off, and residual Adds become Sum so that ORT does not fuse them at load time.

The output is checked against the input model on the same batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_agreement, check_batch, require_format, write_output
from leanify.passes.export_onnx import MODEL_FILE, onnx_num_heads
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.runtimes.onnxruntime import run_once, session

LEVELS = ("auto", "transformer", "basic", "extended", "all")
MASK_FORMATS = ("attention-mask", "index-end")


@dataclass(frozen=True)
class OrtOptimizeConfig(PassConfig):
    name: ClassVar[str] = "ort-optimize"

    level: str = "auto"  # auto | transformer | basic | extended | all
    model_type: str = ""  # transformer optimizer's model type; "" = from meta, else "bert"
    num_heads: int = 0  # 0: from export-onnx's metadata, else detected from the graph
    hidden_size: int = 0
    opt_level: int = 1  # transformer optimizer: 0 python fusions only, 1 + ORT basic, 2/99 more
    gelu_approximation: bool = False  # FastGelu (tanh) instead of exact Erf GELU: changes outputs
    attention: bool = True  # fuse self-attention into one Attention op (QAttention once int8)
    skip_layer_norm: bool = False  # residual Add + LayerNorm -> SkipLayerNormalization
    bias_gelu: bool = False  # bias Add + Gelu -> BiasGelu (else the bias joins the MatMul)
    residual_sum: bool = True  # residual Add before LayerNorm -> Sum (see module docstring)
    # "attention-mask": Attention reads the 2-D mask as given (any padding side); "index-end"
    # turns it into lengths (right padding only). Measured: the same speed on MiniLM.
    mask_format: str = "attention-mask"
    atol: float = 1e-3


@register(OrtOptimizeConfig)
def ort_optimize(artifact: Artifact, config: OrtOptimizeConfig, ctx: PassContext) -> Artifact:
    require_format(artifact, ("onnx",), config.name,
                   fix="Run 'export-onnx' first to turn the model into ONNX.")
    if config.level not in LEVELS:
        raise LeanifyError(f"ort-optimize: unknown level '{config.level}'.",
                           fix=f"Use one of: {', '.join(LEVELS)}.")
    if config.mask_format not in MASK_FORMATS:
        raise LeanifyError(f"ort-optimize: unknown mask_format '{config.mask_format}'.",
                           fix=f"Use one of: {', '.join(MASK_FORMATS)}.")
    require("onnxruntime", "onnx", "Pass 'ort-optimize'")
    level = config.level if config.level != "auto" else _auto_level(artifact)
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads, level="disabled")

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        path = out / MODEL_FILE
        if level == "transformer":
            extra = _transformer(artifact, config, path, out)
        else:
            _generic(artifact, level, path, ctx.threads)
            extra = {}
        got = run_once(path, batch, ctx.threads)
        diffs = check_agreement(before, got, config.atol, "the optimized graph", artifact.path)
        extra.update({"ort_optimize_level": level, "optimize_check": {"max_diff": diffs}})
        return MODEL_FILE, extra

    return write_output(artifact, config, ctx, build)


def _auto_level(artifact: Artifact) -> str:
    onnx = require("onnx", "onnx", "Pass 'ort-optimize'")
    model = onnx.load(str(artifact.path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    names = set(artifact.input_names)
    if "input_ids" in names and ("Softmax" in ops or "Attention" in ops) and "MatMul" in ops:
        return "transformer"
    return "extended"


def _transformer(artifact: Artifact, config: OrtOptimizeConfig, path: Path,
                 scratch: Path) -> dict[str, Any]:
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = config.model_type or _optimizer_model_type(artifact.meta.get("model_type"))
    heads, hidden = onnx_num_heads(artifact)
    heads, hidden = config.num_heads or heads, config.hidden_size or hidden
    if not (heads and hidden):
        heads, hidden = detect_heads(artifact.path)
    options = FusionOptions(model_type)
    options.enable_gelu_approximation = config.gelu_approximation
    options.enable_attention = config.attention
    options.enable_skip_layer_norm = config.skip_layer_norm
    options.enable_bias_skip_layer_norm = config.skip_layer_norm
    options.enable_bias_gelu = config.bias_gelu
    options.attention_mask_format = (AttentionMaskFormat.AttentionMask
                                     if config.mask_format == "attention-mask"
                                     else AttentionMaskFormat.MaskIndexEnd)
    source = artifact.path
    if artifact.meta.get("external_data") and artifact.size_bytes() < 1_800_000_000:
        # The optimizer reads the graph without its external data, and then cannot see the
        # shape constants that attention fusion needs: give it one self-contained file.
        onnx = require("onnx", "onnx", "Pass 'ort-optimize'")
        source = scratch / "inlined-input.onnx"
        onnx.save_model(onnx.load(str(artifact.path)), str(source))
    quiet = logging.getLogger("onnxruntime.transformers")
    old = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            # A path, not a ModelProto: from a proto the optimizer moves every initializer out
            # of the graph, and ORT's shape inference then fails on dynamo exports.
            str(source), model_type=model_type, num_heads=heads, hidden_size=hidden,
            optimization_options=options, opt_level=config.opt_level, use_gpu=False,
            only_onnxruntime=False,
        )
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(f"ONNX Runtime's transformer optimizer failed ({first}).",
                           path=artifact.path,
                           fix="Try ort-optimize with level='extended' instead.") from exc
    finally:
        quiet.setLevel(old)
        if source != artifact.path:
            source.unlink(missing_ok=True)
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if config.residual_sum:
        stats["Sum (residual)"] = residual_adds_to_sum(optimized.model)
    large = optimized.model.ByteSize() > 1_800_000_000
    optimized.save_model_to_file(str(path), use_external_data_format=large,
                                 all_tensors_to_one_file=True)
    return {"fusions": stats, "optimizer_model_type": model_type, "num_heads": heads or None,
            "hidden_size": hidden or None}


def residual_adds_to_sum(model) -> int:
    """Turn each residual Add that feeds a LayerNormalization into a Sum; return how many.

    Same arithmetic, but ONNX Runtime's session-time SkipLayerNormFusion matches only Add, so
    the pair stays Sum + LayerNormalization: measured on this 2-core AVX-512 CPU (ORT 1.32,
    [32, 128, 384] fp32) 0.95 ms against 4.0 ms for the fused SkipLayerNormalization kernel, and
    1.4 against 8.4 ms on one thread. Only Adds of two activations (a residual, not a bias)
    whose sole consumer is the LayerNormalization are rewritten.
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    count = 0
    for node in graph.node:
        if node.op_type != "LayerNormalization" or not node.input:
            continue
        add = producers.get(node.input[0])
        if (add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx")
                or any(i in constants for i in add.input)
                or uses.get(add.output[0], 0) != 1 or add.output[0] in outputs):
            continue
        add.op_type = "Sum"
        count += 1
    return count


def detect_heads(path: Path) -> tuple[int, int]:
    """(num_heads, hidden_size) read off the graph; (0, 0) if not found.

    hidden_size: the length of the first LayerNormalization's scale. num_heads: from the
    reshape that splits heads, `view(batch, seq, heads or -1, head_size)`, whose last entry
    is a constant dividing hidden_size. The optimizer's own detection misses
    this on legacy exports, whose reshape shapes are built with Concat.
    """
    onnx = require("onnx", "onnx", "Pass 'ort-optimize'")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    hidden = 0
    gamma_at = {"LayerNormalization": 1, "SkipLayerNormalization": 2,
                "EmbedLayerNormalization": 5}
    for node in graph.node:
        at = gamma_at.get(node.op_type)
        if at is not None and len(node.input) > at and node.input[at] in values:
            hidden = int(values[node.input[at]].size)
            break
    if not hidden:
        return 0, 0
    producers = {o: n for n in graph.node for o in n.output}

    def scalar(name: str) -> int | None:
        if name in values and values[name].size == 1:
            return int(values[name].reshape(-1)[0])
        node = producers.get(name)
        if node is not None and node.op_type in ("Unsqueeze", "Cast", "Identity"):
            return scalar(node.input[0])
        return None

    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = node.input[1]
        dims: list[int | None] = []
        if shape in values:
            dims = [int(v) for v in values[shape].reshape(-1)]
        elif shape in producers and producers[shape].op_type == "Concat":
            dims = [scalar(i) for i in producers[shape].input]
        if len(dims) != 4 or not dims[3] or dims[3] <= 0 or hidden % dims[3]:
            continue
        if dims[2] == -1 or (dims[2] and dims[2] * dims[3] == hidden):
            # view(batch, seq, heads, head_size), heads also written as -1 (transformers 5)
            if hidden // dims[3] > 1:
                return hidden // dims[3], hidden
    return 0, 0


def _optimizer_model_type(hf_type: Any) -> str:
    """transformers' model_type -> the optimizer's; BERT-like encoders share 'bert'."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    if isinstance(hf_type, str) and hf_type in MODEL_TYPES:
        return hf_type
    return "bert"


def _generic(artifact: Artifact, level: str, path: Path, threads: int | None) -> None:
    """ORT's own optimizer at `level`, serialized by the session that ran it (weights inline)."""
    session(artifact.path, threads, {"graph_optimization_level": level}, optimized_path=path)
