"""LiteRT (`ai-edge-litert`, formerly TensorFlow Lite): `.tflite` models.

Inputs are resized when their batch (or another dynamic dim) differs from the last call's;
a full-integer model gets its float inputs quantized and its outputs dequantized with the
scale and zero point it declares (models/tflite.py), here and in the snippet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runner, Runtime

SETTINGS = {"num_threads": (int,)}


def quantize(x: np.ndarray, scale: float, zero: int, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero: int) -> np.ndarray:
    return (q.astype(np.float32) - zero) * np.float32(scale)


class LiteRTRunner(Runner):
    runtime = "litert"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        from leanify.models.tflite import interpreter
        from leanify.runtimes import settings_of

        self.num_threads = settings_of(artifact).get("num_threads") or threads
        self.interpreter = interpreter(artifact.path, self.num_threads)
        # by the artifact's input names (export-tflite keeps the source model's names)
        tflite_names = artifact.meta.get("tflite_inputs") or {}
        self.inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        self.inputs = {name: self.inputs[tflite_names.get(name, name)]
                       for name in artifact.input_names}
        self.outputs = self.interpreter.get_output_details()
        self.quant_in = artifact.meta.get("quantization") or {}
        self.quant_out = artifact.meta.get("outputs") or {}
        self.interpreter.allocate_tensors()
        self.shapes = {n: tuple(int(v) for v in d["shape"]) for n, d in self.inputs.items()}

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self.interpreter
        resized = False
        for name, value in batch.items():
            if tuple(value.shape) != self.shapes[name]:
                it.resize_tensor_input(self.inputs[name]["index"], list(value.shape),
                                       strict=False)
                self.shapes[name] = tuple(value.shape)
                resized = True
        if resized:
            it.allocate_tensors()
        for name, value in batch.items():
            if name in self.quant_in:
                scale, zero, dtype = self.quant_in[name]
                value = quantize(value, scale, zero, dtype)
            else:
                value = value.astype(self.inputs[name]["dtype"], copy=False)
            it.set_tensor(self.inputs[name]["index"], np.ascontiguousarray(value))
        it.invoke()
        out = {}
        for d in self.outputs:
            value = it.get_tensor(d["index"])
            scale, zero, _dtype = self.quant_out.get(d["name"], (0.0, 0, ""))
            out[d["name"]] = dequantize(value, scale, zero) if scale else value.copy()
        return out

    @property
    def details(self) -> dict[str, Any]:
        return {"num_threads": self.num_threads}


def snippet(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    return ["import numpy as np",
            "from ai_edge_litert.interpreter import Interpreter", "",
            f'interpreter = Interpreter(model_path="{path}", '
            f"num_threads={int(ran.get('num_threads') or threads)})",
            "interpreter.allocate_tensors()",
            "details = interpreter.get_input_details()  # the model's inputs, in order",
            "output = interpreter.get_output_details()[0]",
            "wanted = [d['name'] for d in details]", "", "",
            "def run(feeds):  # one feed per input, in order; int8: quantize in, dequantize out",
            "    for d, x in zip(details, feeds.values()):",
            "        scale, zero = d['quantization']",
            "        if scale:",
            "            info = np.iinfo(d['dtype'])",
            "            x = np.clip(np.round(x / scale) + zero, info.min, info.max)",
            "        if list(x.shape) != list(d['shape']):",
            "            interpreter.resize_tensor_input(d['index'], list(x.shape))",
            "            interpreter.allocate_tensors()",
            "            d['shape'] = np.array(x.shape)",
            "        interpreter.set_tensor(d['index'], np.ascontiguousarray(x, d['dtype']))",
            "    interpreter.invoke()",
            "    y = interpreter.get_tensor(output['index'])",
            "    scale, zero = output['quantization']",
            "    return (y.astype(np.float32) - zero) * scale if scale else y"]


RUNTIME = Runtime(
    name="litert", formats=("tflite",), module="ai_edge_litert", package="ai-edge-litert",
    open=lambda artifact, threads, trust_pickle=False: LiteRTRunner(artifact, threads),
    settings=SETTINGS, snippet=snippet, extra="litert")
