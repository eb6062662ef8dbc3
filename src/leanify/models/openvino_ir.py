"""OpenVINO IR models (`.xml` graph + `.bin` weights) as a format: finding, reading, loading
and saving them. Running them is leanify.runtimes.openvino."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError, first_line, require
from leanify.models import causal_lm
from leanify.models.artifact import Artifact, TensorSpec
from leanify.models.files import int_range, read_json, read_sidecar, tokenizer_beside

IR_NAMES = ("openvino_model.xml", "model.xml")
DAMAGED = "The IR is damaged or incomplete: re-export it (openvino.save_model) or re-download it."


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
        detail = ov_reason(exc)
        raise LeanifyError(f"is not a readable OpenVINO IR ({detail}).", path=path,
                           fix=DAMAGED) from exc


def ov_reason(exc: BaseException) -> str:
    """OpenVINO's messages start with a C++ location; the reason is the last non-empty line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else first_line(exc)
    if "weights" in reason.lower() and "bin" in reason.lower():
        return f"{reason.rstrip('!.')}: the .bin file is truncated or does not match the .xml"
    return reason


def load_openvino(path: Path, name: str) -> Artifact:
    """An `openvino` artifact: inputs from the IR, weights file listed as external data."""
    model = read_ir(path)
    vocab = _embedding_rows(model)
    llm = _causal_lm_config(path, model)
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
        # a generating LLM's positions and beam index are built by its runtime
        optional = input_name in LLM_BUILT_INPUTS and llm is not None
        inputs.append(TensorSpec(input_name, dtype, shape, low, high, optional))
    params = sum(_numel(op) for op in model.get_ops() if op.get_type_name() == "Constant")
    meta: dict[str, Any] = {
        "params": params,
        "outputs": [port.get_any_name() for port in model.outputs],
        "external_data": [str(path.with_suffix(".bin"))],
    }
    meta.update(tokenizer_beside(path))
    sidecar = read_sidecar(path)
    if llm is not None:  # a stateful causal-LM export: OpenVINO GenAI generates with it
        kv = (sidecar.get("runtime") or {}).get("kv_cache_precision", KV_DEFAULT)
        meta.update({k: v for k, v in causal_lm.shape({**llm, "dtype": kv}).items()
                     if v is not None}, task=causal_lm.TASK, model_type=llm.get("model_type"),
                    run_with=sidecar.get("run_with") or "openvino-genai")
        # the pipeline reads the whole folder: config, tokenizers, generation defaults
        meta["external_data"] += [str(f) for f in sorted(path.parent.iterdir())
                                  if f.name in LLM_FILES or (f.suffix in (".xml", ".bin")
                                  and f.stem in LLM_IRS)]
    meta = {**sidecar, **meta}
    return Artifact("openvino", path, name, tuple(inputs), meta)


LLM_BUILT_INPUTS = ("position_ids", "beam_idx", "attention_mask")
LLM_FILES = ("config.json", "generation_config.json", "chat_template.jinja")
LLM_IRS = ("openvino_tokenizer", "openvino_detokenizer")
KV_DEFAULT = "u8"  # the CPU plugin's KV-cache precision unless told otherwise


def _causal_lm_config(path: Path, model: Any) -> dict[str, Any] | None:
    """config.json of a stateful causal-LM IR (input_ids + beam_idx, as optimum-intel exports
    for OpenVINO GenAI), else None."""
    names = {port.get_any_name() for port in model.inputs}
    config_file = path.parent / "config.json"
    if not {"input_ids", "beam_idx"} <= names or not config_file.is_file():
        return None
    config = read_json(config_file)
    return config if causal_lm.is_causal_lm(config) else None


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
