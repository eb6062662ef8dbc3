"""Keras models: `.keras` archives and legacy `.h5` files, run by Keras 3 on its torch backend
(no TensorFlow). The built model is a `torch.nn.Module`, so every torch path (ONNX export,
the passes after it) takes it.

Inspection reads only the model's config (JSON in the archive, an attribute of the HDF5 file)
and its weight shapes; the model is built by the runtime. Lambda layers hold Python code
(marshalled bytecode), and custom layers name code outside Keras: both need --trust-code, and
Keras' `safe_mode` stays on otherwise.
"""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact, TensorSpec
from leanify.models.files import MAX_JSON_BYTES, loads_json, read_sidecar
from leanify.models.safety import code_trusted, refuse_code

SUFFIXES = (".keras", ".h5", ".hdf5")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CODE_LAYERS = ("Lambda", "TFOpLambda")
FIX = "Re-save the model with keras (model.save('model.keras')), or export it to ONNX."


def inspect_keras(path: Path, name: str) -> Artifact:
    """The Artifact of a Keras file from its config: inputs (NHWC as Keras keeps them),
    parameter count, the layers that are code."""
    config, shapes = _read(path)
    model = config.get("config") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("layers"), list):
        raise LeanifyError("holds no Keras model config with layers.", path=path, fix=FIX)
    layers = [layer for layer in model["layers"] if isinstance(layer, dict)]
    code = sorted({str(layer.get("class_name")) for layer in _all_layers(layers)
                   if layer.get("class_name") in CODE_LAYERS
                   or not _keras_own(layer.get("module"))})
    meta: dict[str, Any] = {"params": sum(_numel(s) for s in shapes) or None,
                            "architecture": str(config.get("class_name")),
                            "layers": len(layers), "code_layers": code}
    meta = {**read_sidecar(path), **meta}
    return Artifact("keras", path, name, tuple(_inputs(config, layers, path)), meta)


def check_trust(artifact: Artifact, trust_code: bool) -> None:
    code = artifact.meta.get("code_layers") or []
    if code and not trust_code:
        raise refuse_code(artifact.path, f"This Keras model ({', '.join(code)} layers)")


def build(path: Path, trust_code: bool | None = None) -> Any:
    """The Keras model, built on the torch backend, in eval mode."""
    keras = keras_on_torch()
    try:
        with warnings.catch_warnings():  # Keras 2 configs draw Keras 3 style advice
            warnings.simplefilter("ignore", UserWarning)
            model = keras.saving.load_model(str(path), compile=False,
                                            safe_mode=not code_trusted(trust_code, path))
    except Exception as exc:  # Keras raises ValueError/TypeError with its own text
        raise LeanifyError(f"Keras could not build this model ({first_line(exc)}).",
                           path=path, fix=FIX) from exc
    model.eval()
    return model


def keras_on_torch() -> Any:
    """Import Keras with the torch backend (the backend is fixed at Keras' first import)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = require("keras", "keras", "Running Keras models")
    if keras.backend.backend() != "torch":
        raise LeanifyError(
            f"Keras was already imported with the {keras.backend.backend()} backend in this "
            "process; leanify runs Keras models on torch.",
            fix="Set KERAS_BACKEND=torch before importing keras, or run leanify on its own.")
    return keras


# --- reading the file --------------------------------------------------------------------


def _read(path: Path) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] == b"PK\x03\x04":
        return _read_archive(path)
    if head == HDF5_MAGIC:
        return _read_h5(path)
    raise LeanifyError("is neither a .keras archive (zip) nor an HDF5 file.", path=path, fix=FIX)


def _read_archive(path: Path) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > MAX_JSON_BYTES:
                raise LeanifyError(f"its config.json declares {info.file_size} bytes.",
                                   path=path, fix=FIX)
            config = loads_json(zf.read(info), path, "config.json")
            shapes = []
            if "model.weights.h5" in zf.namelist():
                with zf.open("model.weights.h5") as fh:
                    shapes = _weight_shapes(fh, path)
    except KeyError as exc:
        raise LeanifyError("is a zip without the config.json of a .keras archive.",
                           path=path, fix=FIX) from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise LeanifyError(f"is a damaged .keras archive ({first_line(exc)}).",
                           path=path, fix=FIX) from exc
    return config, shapes


def _read_h5(path: Path) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    h5py = require("h5py", "keras", "Reading Keras .h5 files")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise LeanifyError(
                    "is an HDF5 file without a model config (weights only?).", path=path,
                    fix="Save the whole model (model.save), not only its weights.")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", "replace")
            if len(raw) > MAX_JSON_BYTES:
                raise LeanifyError("its model config is too large.", path=path, fix=FIX)
            config = loads_json(str(raw), path, "model_config")
            shapes = _weight_shapes(f.get("model_weights", f), path)
    except LeanifyError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise LeanifyError(f"is a damaged HDF5 file ({first_line(exc)}).", path=path,
                           fix=FIX) from exc
    return config, shapes


def _weight_shapes(group_or_file: Any, path: Path) -> list[tuple[int, ...]]:
    h5py = require("h5py", "keras", "Reading Keras weights")
    if not isinstance(group_or_file, h5py.Group):
        group_or_file = h5py.File(group_or_file, "r")
    shapes: list[tuple[int, ...]] = []
    group_or_file.visititems(
        lambda _name, obj: shapes.append(tuple(obj.shape))
        if isinstance(obj, h5py.Dataset) and obj.shape else None)
    return shapes


def _keras_own(module: object) -> bool:
    """A config's "module" names where a layer's class lives: Keras' own (Keras 3 writes
    "keras.layers", Keras 2 nothing), or the user's code (a custom layer)."""
    return module is None or module in ("keras", "builtins") or (
        isinstance(module, str) and module.startswith("keras."))


def _all_layers(layers: list[dict[str, Any]]):
    """Layers, and the layers of nested models and wrappers (TimeDistributed, Bidirectional)."""
    stack = list(layers)
    while stack:
        layer = stack.pop()
        yield layer
        cfg = layer.get("config")
        if isinstance(cfg, dict):
            stack += [sub for sub in cfg.get("layers") or [] if isinstance(sub, dict)]
            if isinstance(cfg.get("layer"), dict):
                stack.append(cfg["layer"])


def _inputs(config: dict[str, Any], layers: list[dict[str, Any]],
            path: Path) -> list[TensorSpec]:
    """InputLayers (Keras 3 `batch_shape`, Keras 2 `batch_input_shape`), else the first
    layer's declared input shape (a Keras 2 Sequential without an InputLayer)."""
    found = []
    for layer in layers:
        cfg = layer.get("config") or {}
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" or (shape and not found and layer is
                                                       layers[0]):
            if shape is None:
                continue
            found.append(TensorSpec(str(cfg.get("name") or f"input_{len(found)}"),
                                    _dtype(cfg.get("dtype")), _shape(shape, path)))
    if not found and config.get("class_name") == "Sequential":
        cfg = config["config"]
        shape = cfg.get("build_input_shape")
        if shape:
            found.append(TensorSpec("input", "float32", _shape(shape, path)))
    if not found:
        raise LeanifyError("declares no input shape (no InputLayer).", path=path,
                           fix="Save the model after building it with keras.Input(shape=...).")
    return found


def _shape(shape: Any, path: Path) -> tuple[int | str, ...]:
    if not isinstance(shape, list) or not shape or len(shape) > 8:
        raise LeanifyError(f"declares the input shape {shape!r}.", path=path, fix=FIX)
    dims: list[int | str] = []
    for i, d in enumerate(shape):
        if d is None:
            dims.append("batch" if i == 0 else f"dim_{i}")
        elif isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 20:
            dims.append(d)
        else:
            raise LeanifyError(f"declares the input shape {shape!r}.", path=path, fix=FIX)
    return tuple(dims)


def _dtype(value: Any) -> str:
    if isinstance(value, dict):  # Keras 3: a DTypePolicy object
        value = (value.get("config") or {}).get("name")
    text = str(value or "float32")
    return "float32" if text.startswith("mixed_") or text not in (
        "float16", "float32", "float64", "uint8", "int32", "int64") else text


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
