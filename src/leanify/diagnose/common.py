"""Small helpers the diagnosis modules share: layer names, weight matrices, child processes."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from leanify.models.artifact import Artifact

# A repeated block: "encoder.layer.3", "/encoder/layer.3/...", "h.3", "blocks.3", "layers.3".
_LAYER = re.compile(r"(?:^|[./])(?:([A-Za-z_]\w*)[./])?(layer|layers|h|block|blocks|stages?)"
                    r"[._/](\d+)(?=[./]|$)")
_WRAPPERS = {"inner", "model", "module", "base_model", "_orig_mod"}


def layer_key(name: str) -> str | None:
    """The repeated block a node or module belongs to (e.g. 'encoder.layer.3'), or None."""
    matches = list(_LAYER.finditer(name.replace("/", ".")))
    if not matches:
        return None
    parent, kind, index = matches[-1].groups()
    prefix = f"{parent}." if parent and parent not in _WRAPPERS else ""
    return f"{prefix}{kind}.{index}"


def layer_sort_key(name: str) -> tuple:
    """Natural order: layer.2 before layer.10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def pctl(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def weight_matrices(artifact: Artifact, model: Any = None) -> dict[str, np.ndarray]:
    """The weight matrices of linear and convolution layers, as (out, in) float arrays.

    Convolution kernels are flattened to (out channels, in channels x kernel). Embedding
    tables and norms are left out: they are not matrix products. `model` is the loaded torch
    module for torch formats (None for ONNX).
    """
    if artifact.format == "onnx":
        return _onnx_matrices(artifact)
    import torch

    out: dict[str, np.ndarray] = {}
    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d):
                w = module.weight.detach().float()
                out[name or "root"] = w.reshape(w.shape[0], -1).numpy()
        if out:
            return out
    state = dict(model.state_dict()) if model is not None else {}
    for key, tensor in state.items():
        if not key.endswith("weight") or "embed" in key.lower() or "norm" in key.lower():
            continue
        if tensor.dim() in (2, 3, 4) and tensor.is_floating_point():
            w = tensor.detach().float()
            out[key.removesuffix(".weight")] = w.reshape(w.shape[0], -1).numpy()
    return out


def _onnx_matrices(artifact: Artifact) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact.path))
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        tensor = inits.get(node.input[1])
        if tensor is None or tensor.data_type not in (onnx.TensorProto.FLOAT,
                                                      onnx.TensorProto.FLOAT16):
            continue
        w = numpy_helper.to_array(tensor).astype(np.float32)
        if node.op_type == "MatMul" and w.ndim == 2:
            w = w.T  # ONNX MatMul weights are (in, out)
        elif node.op_type == "Gemm" and w.ndim == 2:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = w if trans_b else w.T
        elif w.ndim < 2:
            continue
        out[node.name or node.input[1]] = w.reshape(w.shape[0], -1)
    return out


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in a fresh spawned process: its runtime's threads meet no other runtime's."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_quietly, fn, *args).result()


def _quietly(fn: Callable[..., Any], *args: Any) -> Any:
    """Libraries print notes (profiler, weightwatcher) that would tear the terminal report;
    errors still come back through the pool. LEANIFY_DEBUG=1 keeps them."""
    import os

    if os.environ.get("LEANIFY_DEBUG") != "1":
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    return fn(*args)
