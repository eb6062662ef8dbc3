"""OpenVINO (CPU plugin): runs OpenVINO IRs, and ONNX files when their sidecar says
`run_with: openvino` (OpenVINO reads ONNX directly).

Settings (`runtime` in leanify_model.json): `inference_precision` ("f32", "bf16", "f16"),
`performance_hint` ("LATENCY", "THROUGHPUT"), `num_streams` (int), `sequence_multiple` (int:
text inputs are padded to the next multiple of it and one model is compiled per padded
length, since OpenVINO runs static shapes faster than dynamic ones; padding is masked, so
results stay the same), `batch_streams` (int: batches of several rows run split across that
many streams on a THROUGHPUT-compiled model; single rows keep the latency model).

On CPUs with native bf16 OpenVINO runs an "fp32" IR in bf16 unless told otherwise, so the
runner reads back the precision that the compiled model actually uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact, TensorSpec
from leanify.models.openvino_ir import ov_reason, read_ir
from leanify.runtimes.base import Runner, Runtime

SETTINGS = {
    "inference_precision": ("f32", "bf16", "f16"),
    "performance_hint": ("LATENCY", "THROUGHPUT"),
    "num_streams": (int,),
    "sequence_multiple": (int,),
    "batch_streams": (int,),
}


def read_model(artifact: Artifact):
    """openvino.Model of an IR (its .bin checked first) or of an ONNX file."""
    if artifact.format == "openvino":
        return read_ir(artifact.path)
    ov = require("openvino", "openvino", "Running models on OpenVINO")
    try:
        return ov.Core().read_model(str(artifact.path))
    except Exception as exc:  # OpenVINO raises RuntimeError with C++ context
        raise LeanifyError(
            f"OpenVINO cannot read this ONNX model ({ov_reason(exc)}).", path=artifact.path,
            fix="Run it on ONNX Runtime (remove 'run_with' from leanify_model.json), or "
            "convert it with openvino.convert_model and fix what it reports.") from exc


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


class OpenVINORunner(Runner):
    """An OpenVINO IR on the CPU plugin, compiled with the artifact's runtime settings.

    With several streams (THROUGHPUT) a batch is split into one part per stream, the parts
    run in parallel and are joined (a single request would keep one stream busy only).
    With `sequence_multiple` the inputs are padded (masked) to the next multiple of it and each
    padded length gets its own compiled model with a static sequence dimension; single rows
    (the latency case) get a static batch dimension too. Per-token outputs are cut back to the
    real length. (MiniLM int8 at seq 128 on 2 cores: static [1, 128] 1.11-1.14x, [-1, 128]
    1.05-1.10x over dynamic shapes, measured in one process, interleaved.)
    With `batch_streams` batches of several rows run on a second compiled model with that many
    streams (THROUGHPUT, one part of the batch each), while single rows keep the latency
    model and all its threads.
    """

    runtime = "openvino"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        from leanify.runtimes import settings_of

        ov = require("openvino", "openvino", "Running OpenVINO models")
        self.settings = settings_of(artifact)
        self.multiple = int(self.settings.get("sequence_multiple") or 0)
        self.batch_streams = int(self.settings.get("batch_streams") or 0)
        if self.multiple and (problem := padding_problem(artifact.inputs)):
            raise LeanifyError(
                f"runtime setting sequence_multiple={self.multiple} needs padded text inputs, "
                f"but {problem}.", path=artifact.path.parent / "leanify_model.json",
                fix="Remove 'sequence_multiple' from the sidecar's 'runtime' entry.")
        self.core = ov.Core()
        self.model = read_model(artifact)
        # outputs with a dynamic dim 1 are per token ([batch, sequence, ...]): cut after padding
        self.per_token = [i for i, o in enumerate(self.model.outputs)
                          if o.get_partial_shape().rank.is_static
                          and len(o.get_partial_shape()) >= 2
                          and o.get_partial_shape()[1].is_dynamic]
        self.compiled: dict[tuple[int, int, int], tuple[Any, Any, list[Any]]] = {}
        # compiled now: errors come early, the settings in effect are read back. With padding
        # this probe is dropped, as a service would never compile it: shapes compile when used.
        probe = self._compile(-1, self.multiple, 0)
        compiled = probe[0]
        if not self.multiple:
            self.compiled[-1, 0, 0] = probe
        self.precision = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.hint = str(compiled.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1]
        self.streams = int(compiled.get_property("NUM_STREAMS"))
        self.num_threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        self.output_names = [o.get_any_name() for o in compiled.outputs]

    def _compiled(self, rows: int, length: int, streams: int) -> tuple[Any, Any, list[Any]]:
        """The compiled model for a shape and stream count, compiled on first use."""
        key = (rows, length, streams)
        if key not in self.compiled:
            self.compiled[key] = self._compile(rows, length, streams)
        return self.compiled[key]

    def _compile(self, rows: int, length: int, streams: int) -> tuple[Any, Any, list[Any]]:
        """(compiled model, request, one request per stream) for a shape (-1 rows or 0 length:
        dynamic) and a stream count (0: the artifact's settings)."""
        model = self.model
        if length:
            model = model.clone()
            model.reshape({p.get_any_name(): [rows, length] for p in model.inputs})
        props = ov_properties(self.settings, self.threads)
        if streams:
            props.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
        try:
            compiled = self.core.compile_model(model, "CPU", props)
        except Exception as exc:
            raise LeanifyError(
                f"OpenVINO could not compile the model ({ov_reason(exc)}).",
                path=self.artifact.path,
                fix="Check that this openvino version supports the IR, or re-export it.",
            ) from exc
        streams = int(compiled.get_property("NUM_STREAMS"))
        # One request per stream; no Python callbacks (they need the GIL on OpenVINO's threads).
        parallel = [compiled.create_infer_request() for _ in range(streams)] \
            if streams > 1 else []
        return compiled, compiled.create_infer_request(), parallel

    @property
    def details(self) -> dict[str, Any]:
        details = {"inference_precision": self.precision, "performance_hint": self.hint,
                   "num_streams": self.streams, "inference_num_threads": self.num_threads}
        if self.multiple:
            details["sequence_multiple"] = self.multiple
        if self.batch_streams:
            details["batch_streams"] = self.batch_streams
        return details

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = min((len(v) for v in batch.values()), default=0)
        streams = self.batch_streams if rows > 1 else 0
        if not self.multiple:
            return self._infer(self._compiled(-1, 0, streams), batch)
        n = next(iter(batch.values())).shape[1]
        length = -(-n // self.multiple) * self.multiple
        padded = {k: np.pad(v, ((0, 0), (0, length - n))) for k, v in batch.items()} \
            if length != n else batch
        out = self._infer(self._compiled(1 if rows == 1 else -1, length, streams), padded)
        for i in self.per_token:
            name = self.output_names[i]
            out[name] = out[name][:, :n]
        return out

    def _infer(self, compiled: tuple[Any, Any, list[Any]],
               batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, request, parallel = compiled
        rows = min((len(v) for v in batch.values()), default=0)
        if not parallel or rows < 2:
            result = request.infer(dict(batch))
            return {n: result[i] for i, n in enumerate(self.output_names)}
        parts = np.array_split(np.arange(rows), min(len(parallel), rows))
        requests = parallel[:len(parts)]
        for request, part in zip(requests, parts, strict=True):
            request.start_async({k: v[part[0]:part[-1] + 1] for k, v in batch.items()})
        for request in requests:
            request.wait()
        return {n: np.concatenate([r.get_output_tensor(i).data.copy() for r in requests])
                for i, n in enumerate(self.output_names)}

    def close(self) -> None:
        self.compiled = {}
        self.model = None


def snippet(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    precision = ran.get("inference_precision", "f32")
    hint = ran.get("performance_hint", "LATENCY")
    multiple = int(ran.get("sequence_multiple") or 0)
    batch_streams = int(ran.get("batch_streams") or 0)
    config = [f'    "INFERENCE_PRECISION_HINT": "{precision}",  # the precision leanify measured',
              f'    "PERFORMANCE_HINT": "{hint}",',
              f'    "INFERENCE_NUM_THREADS": {int(ran.get("inference_num_threads") or threads)},']
    streams = int(ran.get("num_streams") or 1)
    if streams > 1:
        config.append(f'    "NUM_STREAMS": {streams},  # keep {streams} requests in flight '
                      "(ov.AsyncInferQueue) to use them all")
    lines = ["import numpy as np", "import openvino as ov", ""]
    if not multiple and not batch_streams:
        return [*lines, f'model = ov.Core().compile_model("{path}", "CPU", {{', *config, "})",
                "wanted = {i.get_any_name() for i in model.inputs}",
                "run = lambda feeds: model(feeds)[model.output(0)]  # first output"]
    lines += ["core = ov.Core()", f'ir = core.read_model("{path}")', "config = {", *config, "}",
              "wanted = {i.get_any_name() for i in ir.inputs}",
              "per_token = ir.output(0).get_partial_shape()[1].is_dynamic  # [batch, seq, ...]",
              "compiled = {}", "", "",
              "def compiled_for(shape, streams):",
              "    if (shape, streams) not in compiled:",
              "        model = ir.clone()",
              "        if shape[1]:  # static shapes run faster than dynamic ones",
              "            model.reshape({p.get_any_name(): list(shape) for p in model.inputs})",
              "        settings = config",
              "        if streams:  # a batch: THROUGHPUT, one part of it per stream",
              '            settings = {**config, "PERFORMANCE_HINT": "THROUGHPUT", '
              '"NUM_STREAMS": streams}',
              '        model = core.compile_model(model, "CPU", settings)',
              "        requests = [model.create_infer_request() for _ in range(max(streams, 1))]",
              "        compiled[shape, streams] = model, requests",
              "    return compiled[shape, streams]", "", "",
              "def run(feeds):",
              '    rows, n = feeds["attention_mask"].shape']
    if multiple:
        lines += [f"    length = -(-n // {multiple}) * {multiple}  # padded to a multiple of "
                  f"{multiple} (masked: same results)",
                  "    feeds = {k: np.pad(v, ((0, 0), (0, length - n))) for k, v in "
                  "feeds.items()}",
                  "    shape = (1 if rows == 1 else -1, length)  # a single row: static batch too"]
    else:
        lines.append("    shape = (-1, 0)  # dynamic")
    if batch_streams:
        lines += ["    if rows == 1:  # latency: one request with all the threads",
                  "        model, (request,) = compiled_for(shape, 0)",
                  "        out = request.infer(feeds)[model.output(0)]",
                  f"    else:  # a batch: one part per stream ({batch_streams}), in parallel",
                  f"        model, requests = compiled_for(shape, {batch_streams})",
                  f"        parts = np.array_split(np.arange(rows), min({batch_streams}, rows))",
                  "        for request, part in zip(requests, parts):",
                  "            request.start_async({k: v[part] for k, v in feeds.items()})",
                  "        for request in requests[:len(parts)]:",
                  "            request.wait()",
                  "        out = np.concatenate([r.get_output_tensor(0).data.copy() "
                  "for r in requests[:len(parts)]])"]
    else:
        lines += ["    model, (request,) = compiled_for(shape, 0)",
                  "    out = request.infer(feeds)[model.output(0)]"]
    lines += ["    return out[:, :n] if per_token else out  # first output", ""]
    return lines


RUNTIME = Runtime(
    name="openvino", formats=("openvino", "onnx"), module="openvino", package="openvino",
    open=lambda artifact, threads, trust_pickle=False: OpenVINORunner(artifact, threads),
    settings=SETTINGS, snippet=snippet, extra="openvino")
