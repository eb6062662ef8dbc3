"""OpenVINO IR models (`.xml` graph + `.bin` weights): loading, and runtime settings.

Runtime settings live in the model's sidecar (`leanify_model.json`, key "runtime") so that a
search can try them like any other candidate and evaluate accuracy under them:
- OpenVINO: `inference_precision` ("f32", "bf16", "f16"), `performance_hint` ("LATENCY",
  "THROUGHPUT"), `num_streams` (int), `sequence_multiple` (int: text inputs are padded to the
  next multiple of it and one model is compiled per padded length, since OpenVINO runs static
  shapes faster than dynamic ones; padding is masked, so results stay the same),
  `batch_streams` (int: batches of several rows run split across that many streams on a
  THROUGHPUT-compiled model; single rows keep the latency model).
- ONNX Runtime: `intra_op_num_threads` (int), `allow_spinning` (bool),
  `graph_optimization_level` ("disabled", "basic", "extended", "all").

On CPUs with native bf16 OpenVINO runs an "fp32" IR in bf16 unless told otherwise, so the
runner reads back the precision that the compiled model actually uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact, TensorSpec

IR_NAMES = ("openvino_model.xml", "model.xml")
OPENVINO_SETTINGS: dict[str, tuple[Any, ...]] = {
    "inference_precision": ("f32", "bf16", "f16"),
    "performance_hint": ("LATENCY", "THROUGHPUT"),
    "num_streams": (int,),
    "sequence_multiple": (int,),
    "batch_streams": (int,),
}
ORT_SETTINGS: dict[str, tuple[Any, ...]] = {
    "intra_op_num_threads": (int,),
    "allow_spinning": (bool,),
    "graph_optimization_level": ("disabled", "basic", "extended", "all"),
}
SETTINGS_BY_FORMAT = {"openvino": OPENVINO_SETTINGS, "onnx": ORT_SETTINGS}
DAMAGED = "The IR is damaged or incomplete: re-export it (openvino.save_model) or re-download it."


def check_settings(fmt: str, settings: dict[str, Any], path: Path | None = None) -> None:
    """Refuse settings the format's runtime does not have, or values it does not take."""
    allowed = SETTINGS_BY_FORMAT.get(fmt)
    if allowed is None:
        raise LeanifyError(
            f"runtime settings apply to openvino and onnx models; this one is {fmt}.", path=path,
            fix="Export the model to ONNX or OpenVINO first.")
    for key, value in settings.items():
        if key not in allowed:
            raise LeanifyError(
                f"'{key}' is not a runtime setting of {fmt} models.", path=path,
                fix=f"Use {', '.join(allowed)}.")
        choices = allowed[key]
        if choices == (int,):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        elif choices == (bool,):
            ok = isinstance(value, bool)
        else:
            ok = value in choices
        if not ok:
            want = "a positive integer" if choices == (int,) else \
                "true or false" if choices == (bool,) else " or ".join(map(str, choices))
            raise LeanifyError(f"runtime setting {key}={value!r} is invalid.", path=path,
                               fix=f"Use {want}.")


def runtime_settings(artifact: Artifact) -> dict[str, Any]:
    """The settings in the artifact's meta that its own runtime understands."""
    settings = artifact.meta.get("runtime") or {}
    allowed = SETTINGS_BY_FORMAT.get(artifact.format, {})
    return {k: v for k, v in settings.items() if k in allowed and v is not None}


def ov_properties(settings: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """OpenVINO compile properties for `settings` and a thread budget."""
    props: dict[str, Any] = {"PERFORMANCE_HINT": settings.get("performance_hint", "LATENCY")}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    if settings.get("inference_precision"):
        props["INFERENCE_PRECISION_HINT"] = settings["inference_precision"]
    if settings.get("num_streams"):
        props["NUM_STREAMS"] = int(settings["num_streams"])
    return props


def padding_problem(inputs: Sequence[TensorSpec]) -> str | None:
    """Why inputs cannot be padded along the sequence (None: they can). Padding is exact only
    with an attention mask that hides the padded positions, and for [batch, sequence] inputs
    whose sequence dimension is dynamic."""
    if not any(spec.name == "attention_mask" for spec in inputs):
        return "it has no 'attention_mask' input to hide padded positions"
    for spec in inputs:
        if spec.shape is None or len(spec.shape) != 2 or isinstance(spec.shape[1], int):
            return (f"input '{spec.name}' is not [batch, sequence] with a dynamic sequence "
                    f"(shape {list(spec.shape) if spec.shape else 'unknown'})")
    return None


def precision_name(value: Any) -> str:
    """'f32' / 'bf16' / 'f16' from an openvino Type (or its string)."""
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


def find_ir(folder: Path) -> Path | None:
    """The IR in a folder: openvino_model.xml or model.xml, else the only .xml with a .bin."""
    for name in IR_NAMES:
        if (folder / name).is_file():
            return folder / name
    xmls = [p for p in folder.glob("*.xml") if p.with_suffix(".bin").is_file()]
    return xmls[0] if len(xmls) == 1 else None


def read_ir(path: Path):
    """openvino.Model from an IR, the .bin checked first: a clear error, not a C++ trace."""
    ov = require("openvino", "openvino", "Loading OpenVINO models")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise LeanifyError(
            f"needs its weights file '{weights.name}' beside it, which is missing.", path=path,
            fix="Copy the .bin file next to the .xml file (same name, suffix .bin).")
    if weights.stat().st_size == 0:
        raise LeanifyError(f"weights file '{weights.name}' is empty.", path=weights, fix=DAMAGED)
    try:
        return ov.Core().read_model(str(path), str(weights))
    except Exception as exc:  # OpenVINO raises RuntimeError with C++ context
        detail = _ov_reason(exc)
        raise LeanifyError(f"is not a readable OpenVINO IR ({detail}).", path=path,
                           fix=DAMAGED) from exc


def _ov_reason(exc: BaseException) -> str:
    """OpenVINO's messages start with a C++ location; the reason is the last non-empty line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else first_line(exc)
    if "weights" in reason.lower() and "bin" in reason.lower():
        return f"{reason.rstrip('!.')}: the .bin file is truncated or does not match the .xml"
    return reason


def load_openvino(path: Path, name: str) -> Artifact:
    """An `openvino` artifact: inputs from the IR, weights file listed as external data."""
    from leanify.models.load import TOKENIZER_FILES, int_range, read_sidecar

    model = read_ir(path)
    vocab = _embedding_rows(model)
    inputs = []
    for port in model.inputs:
        input_name = port.get_any_name()
        dtype = _np_dtype(port.get_element_type())
        pshape = port.get_partial_shape()
        shape: tuple[int | str, ...] | None = None
        if pshape.rank.is_static:
            dims = list(pshape)
            symbolic = ("batch", "sequence") if len(dims) == 2 else \
                tuple(f"dim{i}" for i in range(len(dims)))
            shape = tuple(d.get_length() if d.is_static else symbolic[i]
                          for i, d in enumerate(dims))
        low, high = int_range(input_name, vocab.get(input_name))
        inputs.append(TensorSpec(input_name, dtype, shape, low, high))
    params = sum(_numel(op) for op in model.get_ops() if op.get_type_name() == "Constant")
    meta: dict[str, Any] = {
        "params": params,
        "outputs": [port.get_any_name() for port in model.outputs],
        "external_data": [str(path.with_suffix(".bin"))],
    }
    if any((path.parent / f).exists() for f in TOKENIZER_FILES):
        meta["tokenizer"] = str(path.parent)
    meta = {**read_sidecar(path), **meta}
    settings = meta.get("runtime") or {}
    if not isinstance(settings, dict):
        raise LeanifyError("the sidecar's 'runtime' entry should be an object.",
                           path=path.parent / "leanify_model.json", fix="Repair the file.")
    check_settings("openvino", {k: v for k, v in settings.items()
                                if k in OPENVINO_SETTINGS and v is not None}, path)
    return Artifact("openvino", path, name, tuple(inputs), meta)


def _np_dtype(element_type: Any) -> str:
    try:
        return element_type.to_dtype().name
    except Exception:  # types numpy lacks (bf16, u4...)
        return "unknown"


WEIGHT_TYPES = {"f32", "f16", "bf16", "i8", "u8", "i4", "u4", "f8e4m3", "f8e5m2", "nf4"}


def _numel(op: Any) -> int:
    """Elements of a weight constant (shape/index constants of integer type do not count)."""
    if op.get_element_type().get_type_name() not in WEIGHT_TYPES:
        return 0
    n = 1
    for d in op.get_output_shape(0):
        n *= int(d)
    return n if n > 1 else 0


def _embedding_rows(model: Any) -> dict[str, int]:
    """Map each input that indexes an embedding table (Gather on a constant) to its rows."""
    names = {p.get_friendly_name(): p.output(0).get_any_name() for p in model.get_parameters()}
    rows: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() != "Gather":
            continue
        table = _through(op.input_value(0).get_node(), ("Convert", "Multiply", "Subtract"))
        index = _through(op.input_value(1).get_node(), ("Convert",))
        if table.get_type_name() != "Constant" or index.get_type_name() != "Parameter":
            continue
        shape = list(table.get_output_shape(0))
        if len(shape) == 2 and index.get_friendly_name() in names:
            rows.setdefault(names[index.get_friendly_name()], int(shape[0]))
    return rows


def _through(node: Any, kinds: tuple[str, ...], depth: int = 4) -> Any:
    """Follow input 0 back through cheap ops (decompression Convert/Multiply) to the source."""
    while depth and node.get_type_name() in kinds:
        node = node.input_value(0).get_node()
        depth -= 1
    return node


def save_ir(model: Any, target: Path) -> None:
    """Write an IR (.xml + .bin) with weights as they are (no silent fp16 compression)."""
    ov = require("openvino", "openvino", "Saving OpenVINO models")
    ov.save_model(model, str(target), compress_to_fp16=False)
