"""`quantize-dynamic` and `quantize-static`: int8 ONNX models with onnxruntime.quantization.

quantize-dynamic: int8 weights, activations quantized at run time (QOperator: MatMulInteger,
QAttention, QEmbedLayerNormalization). No calibration data. Defaults = the fastest recipe
measured on all-MiniLM-L6-v2 at equal accuracy (benchmarks/quantize_vs_optimum.py): after
`export-onnx` (legacy exporter, eager attention) and `ort-optimize` (fused Attention, residual
Sum), per-channel int8 weights, attention/embedding/MatMul/Gather quantized, attention-score
MatMuls left to the fused float Attention kernel. Per-channel and per-tensor ran at the same
speed; per-channel kept STS-B a little higher.

quantize-static: int8 weights and activations with scales from calibration data (QDQ). Ops
that are sensitive stay in float: quantizing everything (Softmax and the attention-mask Add
included) destroyed an embedding model once (STS-B ~45). Measured on MiniLM (QDQ, MatMul +
Gather, minmax, 320 STS-B train sentences):
- MatMul outputs quantized too (ORT's default): mean token cosine 0.916 vs float: refused.
- MatMul outputs kept in float (the default here): cosine 0.983, STS-B 81.79, 21.8 MB.
- S8S8 (int8 activations) then runs no int8 kernel on x86: ORT dequantizes the weights and
  runs float MatMuls (bs 32 x 128: 2.0x Optimum's dynamic int8, fp32 speed). U8S8 maps to
  MatMulIntegerToFloat (1.0-1.2x Optimum's dynamic int8). So activations default to uint8.
Needs `ctx.calibration`.

Both passes check the quantized model against the float model on a real batch (mean cosine
similarity of each kept token's outputs) and refuse a model that drifted too far.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_batch, mean_cosine, require_format, write_output
from leanify.passes.export_onnx import MODEL_FILE
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.runtimes.onnxruntime import run_once

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"})
QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Dynamic: every op ONNX Runtime has an integer kernel for (weights of MatMul/Attention and the
# embedding tables shrink to int8). Measured on MiniLM: leaving Gather/EmbedLayerNormalization
# in float kept the model at ~59-66 MB instead of ~22 MB for no speed gain.
DYNAMIC_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "LSTM",
               "Transpose")
# Static: quantize the weight-heavy ops; Softmax, the attention-mask arithmetic (Add, Sub, Mul,
# Where) and normalization stay in float.
STATIC_OPS = ("MatMul", "Gemm", "Conv", "Gather")
STATIC_KEEP_FLOAT = ("Softmax", "Add", "Sub", "Mul", "Div", "Where", "LayerNormalization",
                     "Erf", "Pow", "Sqrt", "ReduceMean")

ONNX_FIX = "Run 'export-onnx' first (then optionally 'ort-optimize') to get an ONNX model."


def has_vnni(ctx: PassContext) -> bool:
    flags = ctx.isa_flags
    if not flags:
        from leanify.measure.machine import cpu_info

        flags = frozenset(cpu_info()["isa_flags"])
    return bool(VNNI_FLAGS & set(flags))


def resolve_reduce_range(value: bool | None, ctx: PassContext) -> bool:
    """7-bit weights avoid int16 overflow on CPUs without VNNI (vpmaddubsw); VNNI needs none."""
    return (not has_vnni(ctx)) if value is None else bool(value)


def _quant_type(name: str, what: str):
    from onnxruntime.quantization import QuantType

    if name not in QUANT_TYPES:
        raise LeanifyError(f"{what} must be one of {', '.join(QUANT_TYPES)}, not '{name}'.")
    return getattr(QuantType, QUANT_TYPES[name])


def _graph_ops(path: Path) -> set[str]:
    onnx = require("onnx", "onnx", "ONNX quantization")
    model = onnx.load(str(path), load_external_data=False)
    return {n.op_type for n in model.graph.node}


def _already_quantized(artifact: Artifact, pass_name: str) -> None:
    ops = _graph_ops(artifact.path)
    quantized = {"MatMulInteger", "QAttention", "QLinearMatMul", "DynamicQuantizeLinear",
                 "QuantizeLinear", "ConvInteger", "QLinearConv", "QEmbedLayerNormalization"}
    if ops & quantized:
        raise LeanifyError(
            f"pass '{pass_name}': {artifact.name} is already quantized "
            f"({', '.join(sorted(ops & quantized))} in the graph).",
            path=artifact.path,
            fix="Quantize the float model instead.",
        )


def _is_big(artifact: Artifact) -> bool:
    return artifact.size_bytes() > 1_800_000_000


def _preprocess(artifact: Artifact, scratch: Path) -> Path:
    """quant_pre_process: ORT's graph cleanup + shape inference (no symbolic: fails on BERT)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = scratch / "preprocessed.onnx"
    try:
        quant_pre_process(str(artifact.path), str(target), skip_symbolic_shape=True,
                          save_as_external_data=_is_big(artifact))
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(f"quantization pre-processing failed ({first}).",
                           path=artifact.path, fix="Retry with preprocess=False.") from exc
    return target


def _check(artifact: Artifact, path: Path, threads: int | None, min_cosine: float,
           batch: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> float:
    got = run_once(path, batch, threads)
    cosine = mean_cosine(before, got, batch.get("attention_mask"))
    if not cosine >= min_cosine:
        raise LeanifyError(
            f"the quantized model's outputs drifted from the float model's (mean cosine "
            f"similarity {cosine:.4f} < {min_cosine}).",
            path=artifact.path,
            fix="Keep more ops in float (nodes_to_exclude, op_types), use per_channel=True, or "
            "skip quantization for this model.",
        )
    return cosine


class _Quiet:
    """onnxruntime.quantization logs advice at WARNING on every call: keep it to errors."""

    def __enter__(self):
        self.root = logging.getLogger()
        self.level = self.root.level
        self.root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.root.setLevel(self.level)


# --- quantize-dynamic --------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeDynamicConfig(PassConfig):
    name: ClassVar[str] = "quantize-dynamic"

    per_channel: bool = True
    reduce_range: bool | None = None  # None: auto (False on VNNI/AMX CPUs, True otherwise)
    weight_type: str = "int8"
    op_types: tuple[str, ...] = DYNAMIC_OPS
    nodes_to_exclude: tuple[str, ...] = ()
    # Also quantize MatMuls of two activations (attention scores Q.K and probs.V), as Optimum
    # does. Measured on MiniLM: no faster than keeping attention in float (fused Attention).
    activation_matmuls: bool = False
    preprocess: bool = False  # quant_pre_process first (skip_symbolic_shape=True)
    min_cosine: float = 0.95  # gate: mean cosine of outputs vs the float model


@register(QuantizeDynamicConfig)
def quantize_dynamic_pass(artifact: Artifact, config: QuantizeDynamicConfig,
                          ctx: PassContext) -> Artifact:
    require_format(artifact, ("onnx",), config.name, fix=ONNX_FIX)
    require("onnxruntime", "onnx", f"Pass '{config.name}'")
    onnx = require("onnx", "onnx", f"Pass '{config.name}'")
    from onnxruntime.quantization import quantize_dynamic

    _already_quantized(artifact, config.name)
    weight_type = _quant_type(config.weight_type, "weight_type")
    reduce_range = resolve_reduce_range(config.reduce_range, ctx)
    present = _graph_ops(artifact.path)
    ops = [op for op in config.op_types if op in present]
    if not ops:
        raise LeanifyError(
            f"pass '{config.name}': the graph has none of the op types to quantize "
            f"({', '.join(config.op_types)}).",
            path=artifact.path, fix="Set op_types to op types the graph holds.",
        )
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        source = _preprocess(artifact, out) if config.preprocess else artifact.path
        path = out / MODEL_FILE
        try:
            with _Quiet():
                quantize_dynamic(
                    str(source), str(path), op_types_to_quantize=ops,
                    per_channel=config.per_channel, reduce_range=reduce_range,
                    weight_type=weight_type,
                    nodes_to_exclude=list(config.nodes_to_exclude) or None,
                    use_external_data_format=_is_big(artifact),
                    # Fused graphs (Attention, SkipLayerNormalization...) defeat ONNX shape
                    # inference; without a default type the quantizer fails on them.
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "MatMulConstBOnly": not config.activation_matmuls},
                )
        except LeanifyError:
            raise
        except Exception as exc:
            first = first_line(exc)
            raise LeanifyError(f"ONNX Runtime's quantize_dynamic failed ({first}).",
                               path=artifact.path) from exc
        if source != artifact.path:
            Path(source).unlink()
        cosine = _check(artifact, path, ctx.threads, config.min_cosine, batch, before)
        extra = {"quantization": {"mode": "dynamic", "format": "QOperator",
                                  "per_channel": config.per_channel,
                                  "reduce_range": reduce_range,
                                  "weight_type": config.weight_type,
                                  "activation_type": "uint8", "op_types": ops,
                                  "activation_matmuls": config.activation_matmuls},
                 "quant_check": {"mean_cosine": round(cosine, 6)}}
        return MODEL_FILE, extra

    return write_output(artifact, config, ctx, build)


# --- quantize-static ---------------------------------------------------------------------


def _name_activation_matmuls(source: Path, scratch: Path) -> tuple[Path, list[str]]:
    """Names of MatMuls whose both inputs are activations (QDQ ignores MatMulConstBOnly).

    Unnamed nodes cannot be excluded by name: if any such MatMul lacks a name, a named copy
    of the graph is written to `scratch` and returned instead of `source`.
    """
    onnx = require("onnx", "onnx", "Pass 'quantize-static'")
    model = onnx.load(str(source))
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names, renamed = [], False
    for i, node in enumerate(graph.node):
        if node.op_type != "MatMul" or all(x in constants for x in node.input[1:2]):
            continue
        if not node.name:
            node.name = f"leanify_activation_matmul_{i}"
            renamed = True
        names.append(node.name)
    if renamed:
        source = scratch / "named.onnx"
        onnx.save_model(model, str(source), save_as_external_data=model.ByteSize() > 1.8e9)
    return source, names


@dataclass(frozen=True)
class QuantizeStaticConfig(PassConfig):
    name: ClassVar[str] = "quantize-static"

    quant_format: str = "QDQ"  # QDQ (recommended) or QOperator
    activation_type: str = "uint8"  # U8S8: S8S8 ran float MatMuls on x86 (see docstring)
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool | None = None  # None: auto (False on VNNI/AMX CPUs)
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    max_calibration_batches: int = 512  # batches (rows, for entropy/percentile)
    op_types: tuple[str, ...] = STATIC_OPS
    keep_float_ops: tuple[str, ...] = STATIC_KEEP_FLOAT  # wins over op_types
    nodes_to_exclude: tuple[str, ...] = ()
    # MatMuls of two activations (attention Q.K, probs.V): quantizing them quantizes the
    # Softmax output. Off: only MatMuls with constant weights are quantized.
    activation_matmuls: bool = False
    # Keep the outputs of these op types in float (QDQ quantizes node outputs by default).
    float_outputs: tuple[str, ...] = ("MatMul", "Gemm")
    calibration_seq_len: int = 128  # entropy/percentile: rows padded/cut to one length
    preprocess: bool = True
    min_cosine: float = 0.95


class _Reader:
    """onnxruntime's CalibrationDataReader over leanify's calibration batches."""

    def __init__(self, batches: Iterator[Mapping[str, Any]], artifact: Artifact, limit: int):
        self.batches = batches
        self.specs = {s.name: s for s in artifact.inputs}
        self.left = limit
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.left <= 0:
            return None
        try:
            batch = next(self.batches)
        except StopIteration:
            return None
        self.left -= 1
        self.count += 1
        out = {}
        for name, value in batch.items():
            spec = self.specs.get(name)
            if spec is None:
                continue
            array = np.asarray(value)
            if spec.dtype != "unknown" and array.dtype.name != spec.dtype:
                array = array.astype(spec.dtype)
            out[name] = np.ascontiguousarray(array)
        missing = [n for n in self.specs if n not in out]
        if missing:
            raise LeanifyError(
                f"a calibration batch lacks input(s) {', '.join(missing)}.",
                fix="Give calibration batches with every model input.",
            )
        return out

    def rewind(self) -> None:  # ORT's interface; one pass over the data is all we do
        pass


def _fixed_rows(batches: Iterator[Mapping[str, Any]], seq_len: int):
    """One row at a time, sequence dims padded (zeros: padding, mask 0) or cut to seq_len."""
    for batch in batches:
        arrays = {k: np.asarray(v) for k, v in batch.items()}
        rows = min((len(a) for a in arrays.values()), default=0)
        for i in range(rows):
            row = {}
            for name, array in arrays.items():
                one = array[i:i + 1]
                if one.ndim == 2 and not np.issubdtype(one.dtype, np.floating):
                    if one.shape[1] >= seq_len:
                        one = one[:, :seq_len]
                    else:
                        one = np.pad(one, ((0, 0), (0, seq_len - one.shape[1])))
                row[name] = one
            yield row


@register(QuantizeStaticConfig)
def quantize_static_pass(artifact: Artifact, config: QuantizeStaticConfig,
                         ctx: PassContext) -> Artifact:
    require_format(artifact, ("onnx",), config.name, fix=ONNX_FIX)
    if ctx.calibration is None:
        raise LeanifyError(
            "static quantization needs calibration data (a few hundred representative inputs), "
            "and none was given.",
            fix="Give a calibration sample (the user's data, never the evaluation split), or "
            "use 'quantize-dynamic', which needs none.",
        )
    require("onnxruntime", "onnx", f"Pass '{config.name}'")
    onnx = require("onnx", "onnx", f"Pass '{config.name}'")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    _already_quantized(artifact, config.name)
    if config.quant_format not in ("QDQ", "QOperator"):
        raise LeanifyError(f"quant_format must be QDQ or QOperator, not '{config.quant_format}'.")
    if config.calibration_method not in CALIBRATION_METHODS:
        raise LeanifyError(
            f"unknown calibration_method '{config.calibration_method}'.",
            fix=f"Use one of: {', '.join(CALIBRATION_METHODS)}.",
        )
    activation_type = _quant_type(config.activation_type, "activation_type")
    weight_type = _quant_type(config.weight_type, "weight_type")
    reduce_range = resolve_reduce_range(config.reduce_range, ctx)
    present = _graph_ops(artifact.path)
    ops = [op for op in config.op_types if op in present and op not in config.keep_float_ops]
    if not ops:
        raise LeanifyError(
            f"pass '{config.name}': nothing to quantize (op types {', '.join(config.op_types)} "
            "minus keep_float_ops are absent from the graph).",
            path=artifact.path, fix="Set op_types to op types the graph holds.",
        )
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        source = _preprocess(artifact, out) if config.preprocess else artifact.path
        exclude = list(config.nodes_to_exclude)
        if not config.activation_matmuls:
            source, names = _name_activation_matmuls(Path(source), out)
            exclude += names
        path = out / MODEL_FILE
        batches = iter(ctx.calibration())
        if config.calibration_method != "minmax":  # histograms need one shape throughout
            batches = _fixed_rows(batches, config.calibration_seq_len)
        reader = _Reader(batches, artifact, config.max_calibration_batches)
        try:
            with _Quiet():
                quantize_static(
                    str(source), str(path), reader,
                    quant_format=getattr(QuantFormat, config.quant_format),
                    op_types_to_quantize=ops, per_channel=config.per_channel,
                    reduce_range=reduce_range, activation_type=activation_type,
                    weight_type=weight_type,
                    nodes_to_exclude=exclude or None,
                    use_external_data_format=_is_big(artifact),
                    calibrate_method=getattr(CalibrationMethod,
                                             CALIBRATION_METHODS[config.calibration_method]),
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "WeightSymmetric": True,
                                   "MatMulConstBOnly": not config.activation_matmuls,
                                   "OpTypesToExcludeOutputQuantization":
                                       list(config.float_outputs)},
                )
        except LeanifyError:
            raise
        except Exception as exc:
            first = first_line(exc)
            raise LeanifyError(f"ONNX Runtime's quantize_static failed ({first}).",
                               path=artifact.path) from exc
        if reader.count == 0:
            raise LeanifyError("the calibration data held no batches.",
                               fix="Give at least one calibration batch.")
        for scratch in {Path(source), out / "preprocessed.onnx"} - {Path(artifact.path)}:
            scratch.unlink(missing_ok=True)
        cosine = _check(artifact, path, ctx.threads, config.min_cosine, batch, before)
        extra = {"quantization": {"mode": "static", "format": config.quant_format,
                                  "per_channel": config.per_channel,
                                  "reduce_range": reduce_range,
                                  "activation_type": config.activation_type,
                                  "weight_type": config.weight_type, "op_types": ops,
                                  "calibration_method": config.calibration_method,
                                  "calibration_batches": reader.count},
                 "quant_check": {"mean_cosine": round(cosine, 6)}}
        return MODEL_FILE, extra

    return write_output(artifact, config, ctx, build)
