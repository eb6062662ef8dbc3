"""PyTorch eager: Hugging Face folders (built from transformers' own classes only) and
in-memory `torch.nn.Module`s. Also the torch helpers the other torch runtimes share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, first_line, require
from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runner, Runtime


def torch_for(threads: int | None):
    torch = require("torch", "torch", "Running PyTorch models")
    if threads:
        torch.set_num_threads(threads)
        try:  # only allowed before the first parallel op of the process
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    return torch


def to_numpy(outputs: Any, prefix: str = "output") -> dict[str, np.ndarray]:
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
            flat.update(to_numpy(value, key))
    return flat


class TorchRunner(Runner):
    runtime = "torch"

    def _call(self, inputs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in batch.items()}
        with torch.inference_mode():
            return to_numpy(self._call(tensors))


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


class HFRunner(TorchRunner):
    """A Hugging Face folder in PyTorch eager, built from transformers' own classes only."""

    runtime = "torch-eager"

    def __init__(self, artifact: Artifact, threads: int | None, trust_pickle: bool = False):
        super().__init__(artifact, threads)
        self.torch = torch_for(threads)
        if artifact.meta.get("weights_format") != "safetensors" and not trust_pickle:
            from leanify.models.safety import refuse_pickle

            raise refuse_pickle(artifact.path, "This model's weights file")
        self.model = build_hf_model(artifact)
        # the sidecar's `weights` (set by the lm-int8-dynamic pass); torch-eager keeps no
        # settings schema of its own (its other models take none), so it is checked here
        self.weights = (artifact.meta.get("runtime") or {}).get("weights") or "fp32"
        if self.weights not in WEIGHTS:
            raise LeanifyError(f"runtime setting weights={self.weights!r} is invalid.",
                               path=artifact.path, fix=f"Use {' or '.join(WEIGHTS)}.")
        if self.weights == "int8-dynamic":
            import warnings

            with warnings.catch_warnings():  # torch.ao is deprecated in 2.13, and works
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                self.model = self.torch.ao.quantization.quantize_dynamic(
                    self.model, {self.torch.nn.Linear}, dtype=self.torch.qint8)
        import inspect

        accepted = set(inspect.signature(self.model.forward).parameters)
        self.accepted = accepted

    @property
    def input_names(self) -> list[str]:
        return [n for n in self.artifact.input_names if n in self.accepted]

    @property
    def details(self) -> dict[str, Any]:
        return {"weights": self.weights} if self.weights != "fp32" else {}

    def _call(self, inputs: dict[str, Any]) -> Any:
        if self.artifact.meta.get("task") == "text-generation":  # logits only: no KV cache
            return self.model(**inputs, use_cache=False)
        return self.model(**inputs)


class ModuleRunner(TorchRunner):
    """An in-memory torch.nn.Module, in eager mode, in this process."""

    runtime = "torch-eager"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        self.torch = torch_for(threads)
        self.model, _example = artifact.module
        self.model.eval()

    def _call(self, inputs: dict[str, Any]) -> Any:
        return self.model(**inputs)


def _open(artifact: Artifact, threads: int | None, trust_pickle: bool = False) -> Runner:
    if artifact.format == "torch-module":
        return ModuleRunner(artifact, threads)
    return HFRunner(artifact, threads, trust_pickle)


# `weights`: int8-dynamic quantizes every nn.Linear when the model opens (passes/lm_int8.py)
WEIGHTS = ("fp32", "int8-dynamic")
RUNTIME = Runtime(name="torch-eager", formats=("hf", "torch-module"), module="torch",
                  package="torch", open=_open, extra="torch")
