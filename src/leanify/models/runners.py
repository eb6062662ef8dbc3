"""Runners: one "run this batch" face over every runtime.

`open_runner(artifact, threads)` builds the model in its runtime; `runner.run(batch)` takes a
dict of numpy arrays and returns a dict of numpy arrays. Conversions to and from the runtime's
tensors happen inside `run`, so a timed `run` costs what a service would pay.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact


class Runner:
    """Base: checks input names, then calls the runtime-specific `_run`."""

    runtime = "unknown"

    def __init__(self, artifact: Artifact, threads: int | None):
        self.artifact = artifact
        self.threads = threads

    @property
    def input_names(self) -> list[str]:
        return self.artifact.input_names

    @property
    def details(self) -> dict[str, Any]:
        """Runtime settings in effect, read back from the runtime where it can tell."""
        return {}

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(batch)
        return self._run(batch)

    def check(self, batch: Mapping[str, Any]) -> None:
        names = self.input_names
        unknown = sorted(set(batch) - set(names))
        if unknown:
            raise LeanifyError(
                f"the model has no input named {', '.join(map(repr, unknown))}; its inputs are "
                f"{', '.join(names) or 'unknown'}.",
                path=self.artifact.path,
                fix="Rename the input(s) to match the model.",
            )
        missing = [s.name for s in self.artifact.inputs if not s.optional and s.name not in batch]
        if missing:
            raise LeanifyError(
                f"the batch lacks required input(s) {', '.join(missing)}.",
                path=self.artifact.path,
                fix="Provide every input the model declares.",
            )
        for spec in self.artifact.inputs:  # a model with fixed dims runs only those
            if spec.name not in batch or spec.shape is None or self.artifact.format == "hf":
                continue
            got = tuple(np.shape(batch[spec.name]))
            fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)]
            if len(got) != len(spec.shape) or any(got[i] != d for i, d in fixed):
                raise LeanifyError(
                    f"input '{spec.name}' has the fixed shape {list(spec.shape)} in the model; "
                    f"it cannot run shape {list(got)}.",
                    path=self.artifact.path,
                    fix="Benchmark at the model's shape (--batch-size/--seq-len), or re-export "
                    "it with dynamic batch and sequence dims.",
                )

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime's resources (sessions, thread pools)."""


def open_runner(
    artifact: Artifact, threads: int | None = None, *, trust_pickle: bool = False
) -> Runner:
    """Open the artifact in its runtime. `threads` caps intra-op threads (None: runtime default)."""
    if artifact.format == "onnx":
        return OrtRunner(artifact, threads)
    if artifact.format == "openvino":
        return OpenVINORunner(artifact, threads)
    if artifact.format == "hf":
        return HFRunner(artifact, threads, trust_pickle)
    if artifact.format == "torchscript":
        return TorchScriptRunner(artifact, threads)
    if artifact.format == "pt2":
        return Pt2Runner(artifact, threads, trust_pickle)
    if artifact.format == "torch-module":
        return ModuleRunner(artifact, threads)
    raise LeanifyError(f"no runner for format '{artifact.format}'.", path=artifact.path)


# --- ONNX Runtime ----------------------------------------------------------------------


class OrtRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        from leanify.models.openvino_ir import runtime_settings

        ort = require("onnxruntime", "onnx", "Running ONNX models")
        # Settings from the artifact (a runtime-settings candidate) win over the thread budget.
        self.settings = runtime_settings(artifact)
        opts = ort.SessionOptions()
        threads = self.settings.get("intra_op_num_threads", threads)
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if "allow_spinning" in self.settings:
            opts.add_session_config_entry("session.intra_op.allow_spinning",
                                          "1" if self.settings["allow_spinning"] else "0")
        if "graph_optimization_level" in self.settings:
            opts.graph_optimization_level = {
                "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[self.settings["graph_optimization_level"]]
        self.intra_threads = threads or 0
        try:
            self.session = ort.InferenceSession(
                str(artifact.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            first = first_line(exc)
            raise LeanifyError(
                f"ONNX Runtime could not open the model ({first}).",
                path=artifact.path,
                fix="Check that the model's opset and operators are supported by this "
                "onnxruntime version, or re-export it.",
            ) from exc
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def details(self) -> dict[str, Any]:
        return {"intra_op_num_threads": self.intra_threads,
                "allow_spinning": self.settings.get("allow_spinning", True),
                "graph_optimization_level": self.settings.get("graph_optimization_level",
                                                              "all")}

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, dict(batch))
        return dict(zip(self.output_names, outputs, strict=True))

    def close(self) -> None:
        self.session = None


# --- OpenVINO --------------------------------------------------------------------------


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
        from leanify.models.openvino_ir import (
            padding_problem,
            precision_name,
            read_ir,
            runtime_settings,
        )

        ov = require("openvino", "openvino", "Running OpenVINO models")
        self.settings = runtime_settings(artifact)
        self.multiple = int(self.settings.get("sequence_multiple") or 0)
        self.batch_streams = int(self.settings.get("batch_streams") or 0)
        if self.multiple and (problem := padding_problem(artifact.inputs)):
            raise LeanifyError(
                f"runtime setting sequence_multiple={self.multiple} needs padded text inputs, "
                f"but {problem}.", path=artifact.path.parent / "leanify_model.json",
                fix="Remove 'sequence_multiple' from the sidecar's 'runtime' entry.")
        self.core = ov.Core()
        self.model = read_ir(artifact.path)
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
        from leanify.models.openvino_ir import _ov_reason, ov_properties

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
                f"OpenVINO could not compile the model ({_ov_reason(exc)}).",
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


# --- PyTorch ---------------------------------------------------------------------------


def _torch(threads: int | None):
    torch = require("torch", "torch", "Running PyTorch models")
    if threads:
        torch.set_num_threads(threads)
        try:  # only allowed before the first parallel op of the process
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    return torch


def _to_numpy(outputs: Any, prefix: str = "output") -> dict[str, np.ndarray]:
    """Flatten a model's output (tensor, tuple, dict, ModelOutput) into named arrays."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return {prefix if prefix != "output" else "output_0": outputs.detach().numpy()}
    flat: dict[str, np.ndarray] = {}
    if isinstance(outputs, Mapping):  # ModelOutput is a Mapping of its non-None fields
        items = list(outputs.items())
    elif isinstance(outputs, list | tuple):
        items = [(f"{prefix}_{i}", v) for i, v in enumerate(outputs)]
    else:
        raise LeanifyError(f"the model returned a {type(outputs).__name__}, not tensors.")
    for key, value in items:
        if isinstance(value, torch.Tensor):
            flat[key] = value.detach().numpy()
        elif isinstance(value, Mapping | list | tuple):
            flat.update(_to_numpy(value, key))
    return flat


class _TorchRunner(Runner):
    runtime = "torch"

    def _call(self, inputs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        with torch.inference_mode():
            return _to_numpy(self._call(tensors))


def build_hf_model(artifact: Artifact, cls: Any = None, *,
                   attn_implementation: str | None = None) -> Any:
    """A transformers model from an `hf` artifact, offline, never running the folder's code.

    `cls` defaults to the class config.json names (a transformers class, else AutoModel).
    Pickled weights reach here only if the user trusted them at load; transformers then
    reads them weights-only.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    transformers = require("transformers", "torch", "Building Hugging Face models")
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars
    transformers.utils.logging.set_verbosity_error()
    if cls is None:
        arch = artifact.meta.get("architecture")
        cls = getattr(transformers, arch, None) if arch else None
        if cls is None or not hasattr(cls, "from_pretrained"):
            cls = transformers.AutoModel
    kwargs: dict[str, Any] = {
        "use_safetensors": artifact.meta.get("weights_format") == "safetensors",
        "local_files_only": True, "trust_remote_code": False,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return cls.from_pretrained(str(artifact.path), **kwargs).eval()
    except Exception as exc:
        raise LeanifyError(
            f"transformers could not build the model ({first_line(exc)}).",
            path=artifact.path,
            fix="Check config.json against the weights, or re-save with save_pretrained.",
        ) from exc


class HFRunner(_TorchRunner):
    """A Hugging Face folder in PyTorch eager, built from transformers' own classes only."""

    runtime = "torch-eager"

    def __init__(self, artifact: Artifact, threads: int | None, trust_pickle: bool = False):
        super().__init__(artifact, threads)
        self.torch = _torch(threads)
        if artifact.meta.get("weights_format") != "safetensors" and not trust_pickle:
            from leanify.models.safety import refuse_pickle

            raise refuse_pickle(artifact.path, "This model's weights file")
        self.model = build_hf_model(artifact)
        import inspect

        accepted = set(inspect.signature(self.model.forward).parameters)
        self.accepted = accepted

    @property
    def input_names(self) -> list[str]:
        return [n for n in self.artifact.input_names if n in self.accepted]

    def _call(self, inputs: dict[str, Any]) -> Any:
        return self.model(**inputs)


class TorchScriptRunner(_TorchRunner):
    runtime = "torchscript"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        self.torch = _torch(threads)
        import warnings

        with warnings.catch_warnings():  # TorchScript is deprecated, and still asked for
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = self.torch.jit.load(str(artifact.path), map_location="cpu").eval()

    def _call(self, inputs: dict[str, Any]) -> Any:
        return self.model(*[inputs[n] for n in self.input_names if n in inputs])


class Pt2Runner(_TorchRunner):
    runtime = "torch-export"

    def __init__(self, artifact: Artifact, threads: int | None, trust_pickle: bool = False):
        super().__init__(artifact, threads)
        from leanify.models.load import load_pt2_program

        self.torch = _torch(threads)
        program = load_pt2_program(artifact.path, trust_pickle)
        self.model = program.module()
        # Inputs exported as keywords must be passed as keywords, the rest by position.
        names = self.artifact.input_names
        try:
            spec = program.call_spec.in_spec
            kwargs_spec = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]
            n_kw = kwargs_spec.num_children
        except (AttributeError, IndexError):
            n_kw = 0
        self.positional, self.keywords = names[: len(names) - n_kw], names[len(names) - n_kw:]

    def _call(self, inputs: dict[str, Any]) -> Any:
        return self.model(*[inputs[n] for n in self.positional],
                          **{n: inputs[n] for n in self.keywords})


class ModuleRunner(_TorchRunner):
    """An in-memory torch.nn.Module, in eager mode, in this process."""

    runtime = "torch-eager"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        self.torch = _torch(threads)
        self.model, _example = artifact.module
        self.model.eval()

    def _call(self, inputs: dict[str, Any]) -> Any:
        return self.model(**inputs)
