"""`nncf-quantize` and `nncf-compress-weights`: int8 OpenVINO models with NNCF.

nncf-quantize: static post-training int8 (weights and activations), the recipe the
sentence-transformers documentation gives for OpenVINO: `model_type=TRANSFORMER` (attention
score MatMuls, Softmax and normalization stay in float), preset MIXED (symmetric weights,
asymmetric activations), every calibration row used (`subset_size` = number of rows; 300 by
default in `leanify optimize`). Calibration rows come from `ctx.calibration` (the user's
calibration split, never the evaluation split) one text per item, cut to its real length:
padding tokens would otherwise widen the activation ranges.

With `max_drop` set, the accuracy-controlled variant (`nncf.quantize_with_accuracy_control`)
holds back a part of the calibration rows for validation and returns layers to float, most
sensitive first, until the drop holds. Without labels the metric is fidelity: mean cosine x100
between the quantized and the float model's outputs (mean-pooled over real tokens for hidden
states), so `max_drop` is in those points.

nncf-compress-weights: weight-only compression (int8, or int4 with int8 for embeddings and the
last layer): activations stay float, no calibration needed. Worth it for large models, where
memory bandwidth for the weights dominates (the planner offers it above 1B parameters).

Both check the result against the float model on a real batch (mean cosine of outputs).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.models.openvino_ir import read_ir, save_ir
from leanify.passes.common import check_batch, mean_cosine, require_format, write_output
from leanify.passes.export_openvino import IR_FILE, run_openvino
from leanify.passes.registry import PassConfig, PassContext, register

OV_FIX = "Run 'export-openvino' first to get an OpenVINO IR."
PRESETS = ("mixed", "performance")
MODEL_TYPES = ("transformer", "none")
COMPRESS_MODES = ("int8_asym", "int8_sym", "int4_sym", "int4_asym")
QUANTIZED_OPS = {"FakeQuantize", "FakeConvert"}


@contextmanager
def _quiet():
    """NNCF logs at INFO and draws progress bars on stdout (no switch to turn them off):
    keep its log to errors and its bars out of leanify's output during a pass."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def _nncf(pass_name: str):
    require("openvino", "openvino", f"Pass '{pass_name}'")
    return require("nncf", "openvino", f"Pass '{pass_name}'")


def _already_quantized(artifact: Artifact, model: Any, pass_name: str) -> None:
    ops = {op.get_type_name() for op in model.get_ops()}
    int_weights = any(op.get_type_name() == "Constant" and
                      op.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
                      for op in model.get_ops())
    if ops & QUANTIZED_OPS or int_weights:
        raise LeanifyError(f"pass '{pass_name}': {artifact.name} is already quantized.",
                           path=artifact.path, fix="Quantize the float model instead.")


def calibration_rows(batches: Iterable[Mapping[str, Any]],
                     input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """One item per text, padding cut off (attention mask), int64, only the model's inputs."""
    rows = []
    for batch in batches:
        arrays = {k: np.asarray(v) for k, v in batch.items()}
        mask = arrays.get("attention_mask")
        count = min((len(a) for a in arrays.values()), default=0)
        for i in range(count):
            length = int(mask[i].sum()) if mask is not None and mask.ndim == 2 else None
            row = {}
            for name in input_names:
                if name not in arrays:
                    continue
                one = arrays[name][i:i + 1]
                if length and one.ndim == 2:
                    one = one[:, :length]
                row[name] = np.ascontiguousarray(one)
            rows.append(row)
    return rows


def _check(artifact: Artifact, path: Path, threads: int | None, min_cosine: float,
           batch: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> float:
    got = run_openvino(path, dict(batch), threads)
    cosine = mean_cosine(before, got, batch.get("attention_mask"))
    if not cosine >= min_cosine:
        raise LeanifyError(
            f"the quantized model's outputs drifted from the float model's (mean cosine "
            f"similarity {cosine:.4f} < {min_cosine}).", path=artifact.path,
            fix="Use the accuracy-controlled variant (max_drop=...), keep layers in float "
            "(ignored_types/ignored_names), or skip quantization for this model.")
    return cosine


def _op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind in QUANTIZED_OPS:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# --- nncf-quantize -------------------------------------------------------------------------


@dataclass(frozen=True)
class NNCFQuantizeConfig(PassConfig):
    name: ClassVar[str] = "nncf-quantize"

    preset: str = "mixed"  # mixed: symmetric weights, asymmetric activations
    model_type: str = "transformer"  # transformer: attention internals stay float
    subset_size: int | None = None  # None: every calibration row
    fast_bias_correction: bool = True
    smooth_quant: bool = True  # NNCF's SmoothQuant for transformer MatMuls (alpha 0.95)
    ignored_types: tuple[str, ...] = ()  # OpenVINO op types to keep in float
    ignored_names: tuple[str, ...] = ()  # node names to keep in float
    # Accuracy control: the fidelity drop (mean cosine x100) allowed on held-out rows.
    max_drop: float | None = None
    validation_share: float = 0.2  # of the calibration rows, held out for validation
    min_cosine: float = 0.95  # gate: mean cosine of outputs vs the float model


def _dataset_items(ctx: PassContext, artifact: Artifact, pass_name: str):
    if ctx.calibration is None:
        raise LeanifyError(
            "static quantization needs calibration data (a few hundred representative inputs), "
            "and none was given.",
            fix="Give a calibration sample (the user's data, never the evaluation split), or "
            "use 'nncf-compress-weights', which needs none.")
    rows = calibration_rows(ctx.calibration(), artifact.input_names)
    if not rows:
        raise LeanifyError("the calibration data held no rows.",
                           fix="Give at least one calibration text.")
    return rows


def _fidelity_fn(reference: list[list[np.ndarray]], items: list[dict[str, np.ndarray]]):
    """validation_fn for NNCF: mean cosine x100 of each item's outputs vs the float model's."""

    def validate(compiled: Any, data: Iterable[Any]) -> tuple[float, list[float]]:
        values = []
        for index, item in enumerate(data):
            result = compiled(item)
            outputs = [result[o] for o in compiled.outputs]
            values.append(_item_cosine(reference[index], outputs, items[index]))
        return float(np.mean(values) * 100), values

    return validate


def _item_cosine(ref: list[np.ndarray], got: list[np.ndarray], item: Mapping[str, Any]) -> float:
    sims = []
    mask = item.get("attention_mask")
    for a, b in zip(ref, got, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.ndim == 3 and mask is not None:  # hidden states: mean over real tokens
            m = np.asarray(mask, np.float64)[..., None]
            a, b = (a * m).sum(1) / m.sum(1), (b * m).sum(1) / m.sum(1)
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        num = np.sum(a * b, axis=1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
        sims.extend((num / den).tolist())
    return float(np.mean(sims))


@register(NNCFQuantizeConfig)
def nncf_quantize(artifact: Artifact, config: NNCFQuantizeConfig, ctx: PassContext) -> Artifact:
    require_format(artifact, ("openvino",), config.name, fix=OV_FIX)
    nncf = _nncf(config.name)
    if config.preset not in PRESETS or config.model_type not in MODEL_TYPES:
        raise LeanifyError(
            f"nncf-quantize: preset must be {' or '.join(PRESETS)} and model_type "
            f"{' or '.join(MODEL_TYPES)} (got {config.preset!r}, {config.model_type!r}).")
    model = read_ir(artifact.path)
    _already_quantized(artifact, model, config.name)
    rows = _dataset_items(ctx, artifact, config.name)
    batch = check_batch(artifact, ctx)
    before = run_openvino(artifact.path, batch, ctx.threads)
    kwargs: dict[str, Any] = {
        "preset": getattr(nncf.QuantizationPreset, config.preset.upper()),
        "fast_bias_correction": config.fast_bias_correction,
    }
    if config.model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if not config.smooth_quant:
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    if config.ignored_types or config.ignored_names:
        kwargs["ignored_scope"] = nncf.IgnoredScope(types=list(config.ignored_types),
                                                    names=list(config.ignored_names),
                                                    validate=False)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        info: dict[str, Any] = {"mode": "static", "tool": "nncf", "preset": config.preset,
                                "model_type": config.model_type}
        try:
            with _quiet():
                if config.max_drop is None:
                    calib = rows
                    subset = config.subset_size or len(calib)
                    quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=subset,
                                              **kwargs)
                else:
                    quantized, calib, extra = _with_accuracy_control(
                        nncf, model, rows, artifact, config, ctx, kwargs)
                    info.update(extra)
        except LeanifyError:
            raise
        except Exception as exc:
            raise LeanifyError(f"NNCF quantization failed ({first_line(exc)}).",
                               path=artifact.path) from exc
        ops = _op_counts(quantized)
        if not ops:
            raise LeanifyError(
                f"accuracy control returned every layer to float to hold max_drop="
                f"{config.max_drop}: nothing is left quantized.", path=artifact.path,
                fix="Allow a larger drop, or keep the float model.")
        save_ir(quantized, out / IR_FILE)
        cosine = _check(artifact, out / IR_FILE, ctx.threads, config.min_cosine, batch, before)
        info.update(calibration_rows=len(calib), ops=ops)
        return IR_FILE, {"quantization": info, "quant_check": {"mean_cosine": round(cosine, 6)}}

    return write_output(artifact, config, ctx, build)


def _with_accuracy_control(nncf, model: Any, rows: list[dict[str, np.ndarray]],
                           artifact: Artifact, config: NNCFQuantizeConfig, ctx: PassContext,
                           kwargs: dict[str, Any]) -> tuple[Any, list, dict[str, Any]]:
    held = max(1, round(len(rows) * config.validation_share))
    if len(rows) - held < 1:
        raise LeanifyError(
            f"accuracy-controlled quantization needs calibration rows to calibrate on and to "
            f"validate with; there are {len(rows)}.", fix="Give more calibration texts.")
    calib, valid = rows[:-held], rows[-held:]
    ov = require("openvino", "openvino", f"Pass '{config.name}'")
    float_model = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = []
    for item in valid:
        result = float_model(item)
        reference.append([result[o] for o in float_model.outputs])
    kwargs = dict(kwargs)
    if "advanced_parameters" in kwargs:  # named differently here
        kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calib), nncf.Dataset(valid), _fidelity_fn(reference, valid),
        max_drop=config.max_drop, drop_type=nncf.DropType.ABSOLUTE,
        subset_size=config.subset_size or len(calib), **kwargs)
    return quantized, calib, {"accuracy_control": {
        "metric": "fidelity (mean cosine x100 vs the float model, held-out calibration rows)",
        "max_drop": config.max_drop, "validation_rows": len(valid)}}


# --- nncf-compress-weights ----------------------------------------------------------------


@dataclass(frozen=True)
class NNCFCompressWeightsConfig(PassConfig):
    name: ClassVar[str] = "nncf-compress-weights"

    mode: str = "int8_asym"  # int8_asym | int8_sym | int4_sym | int4_asym
    group_size: int | None = None  # int4: weights per scale (None: NNCF's default, 128)
    ratio: float | None = None  # int4: share of layers in int4, the rest int8 (None: 1.0)
    min_cosine: float = 0.95


@register(NNCFCompressWeightsConfig)
def nncf_compress_weights(artifact: Artifact, config: NNCFCompressWeightsConfig,
                          ctx: PassContext) -> Artifact:
    require_format(artifact, ("openvino",), config.name, fix=OV_FIX)
    nncf = _nncf(config.name)
    if config.mode not in COMPRESS_MODES:
        raise LeanifyError(f"nncf-compress-weights: unknown mode {config.mode!r}.",
                           fix=f"Use one of {', '.join(COMPRESS_MODES)}.")
    model = read_ir(artifact.path)
    _already_quantized(artifact, model, config.name)
    batch = check_batch(artifact, ctx)
    before = run_openvino(artifact.path, batch, ctx.threads)
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, config.mode.upper())}
    if config.mode.startswith("int4"):
        kwargs.update(group_size=config.group_size or 128, ratio=config.ratio or 1.0)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        try:
            with _quiet():
                compressed = nncf.compress_weights(model, **kwargs)
        except Exception as exc:
            raise LeanifyError(f"NNCF weight compression failed ({first_line(exc)}).",
                               path=artifact.path,
                               fix="For int4, choose a group_size that divides the layers' "
                               "input width (e.g. 32 or 64), or use mode='int8_asym'.") from exc
        save_ir(compressed, out / IR_FILE)
        cosine = _check(artifact, out / IR_FILE, ctx.threads, config.min_cosine, batch, before)
        bits = sorted({op.get_element_type().get_type_name() for op in compressed.get_ops()
                       if op.get_type_name() == "Constant" and
                       op.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")})
        info = {"mode": "weight-only", "tool": "nncf", "weights": config.mode,
                "group_size": kwargs.get("group_size"), "ratio": kwargs.get("ratio"),
                "weight_types": bits}
        return IR_FILE, {"quantization": info, "quant_check": {"mean_cosine": round(cosine, 6)}}

    return write_output(artifact, config, ctx, build)

