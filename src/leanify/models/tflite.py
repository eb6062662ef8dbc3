"""TFLite (LiteRT) flatbuffers: inputs, outputs and quantization read by LiteRT's interpreter.

A full-integer model takes int8/uint8 input and gives int8/uint8 output with a scale and zero
point each: the Artifact keeps them (meta "quantization"), and the runner quantizes float
inputs and dequantizes outputs with them, so tasks and fidelity see real values.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact, TensorSpec
from leanify.models.files import read_sidecar

FIX = "Re-export the model (litert-torch, or TFLiteConverter), or give its ONNX or Keras file."
TFL3 = b"TFL3"  # the flatbuffer file identifier, bytes 4-8


def interpreter(path: Path, threads: int | None = None) -> Any:
    litert = require("ai_edge_litert.interpreter", "litert", "Running TFLite models")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[4:8] != TFL3:
        raise LeanifyError("is not a TFLite flatbuffer (no TFL3 identifier).", path=path,
                           fix=FIX)
    try:
        return litert.Interpreter(model_path=str(path), num_threads=threads or None)
    except (ValueError, RuntimeError) as exc:  # e.g. an op this interpreter does not have
        raise LeanifyError(f"LiteRT cannot open this model ({first_line(exc)}).",
                           path=path, fix=FIX) from exc


def inspect_tflite(path: Path, name: str) -> Artifact:
    it = interpreter(path)
    specs, quantization = [], {}
    for d in it.get_input_details():
        signature = d.get("shape_signature")
        shape = list(signature if signature is not None and len(signature) else d["shape"])
        dims: tuple[int | str, ...] = tuple(
            ("batch" if i == 0 else f"dim_{i}") if int(v) < 0 else int(v)
            for i, v in enumerate(shape))
        dtype = np.dtype(d["dtype"]).name
        scale, zero = d.get("quantization") or (0.0, 0)
        if scale:  # the task feeds floats; the runner quantizes them
            quantization[d["name"]] = [float(scale), int(zero), dtype]
            dtype = "float32"
        specs.append(TensorSpec(str(d["name"]), dtype, dims))
    outputs = {str(d["name"]): [float((d.get("quantization") or (0.0, 0))[0]),
                                int((d.get("quantization") or (0.0, 0))[1]),
                                np.dtype(d["dtype"]).name]
               for d in it.get_output_details()}
    meta: dict[str, Any] = {  # no parameter count: LiteRT does not tell weights from activations
        "quantization": quantization,
        "outputs": outputs,
        "integer_io": bool(quantization) or any(q[0] for q in outputs.values()),
    }
    sidecar = read_sidecar(path)
    named = sidecar.get("input_names")  # export-tflite: the source model's names, in order
    if isinstance(named, list) and len(named) == len(specs):
        renamed = dict(zip((s.name for s in specs), map(str, named), strict=True))
        specs = [replace(s, name=renamed[s.name]) for s in specs]
        meta["quantization"] = {renamed[k]: v for k, v in quantization.items()}
        meta["tflite_inputs"] = {v: k for k, v in renamed.items()}
    meta = {**sidecar, **meta}
    return Artifact("tflite", path, name, tuple(specs), meta)
