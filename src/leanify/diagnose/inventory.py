"""Inventory: parameters, size, dtypes, FLOPs at the typical input, largest layers, signature.

FLOPs count matrix products and convolutions (one multiply-accumulate = 2 FLOPs), as most
papers do; element-wise ops are left out. PyTorch formats are counted while they run
(torch.utils.flop_counter); ONNX models from the tensor shapes ONNX Runtime's profiler records
for every node of the unoptimized graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leanify.diagnose.common import layer_key
from leanify.models.artifact import Artifact

LARGEST = 10


def static(artifact: Artifact) -> dict[str, Any]:
    """What the files say, without loading a runtime."""
    size = artifact.size_bytes() if artifact.path is not None else None
    return {
        "name": artifact.name,
        "format": artifact.format,
        "path": str(artifact.path) if artifact.path else None,
        "params": artifact.meta.get("params"),
        "size_mb": round(size / 2**20, 3) if size is not None else None,
        "task": artifact.meta.get("task"),
        "architecture": artifact.meta.get("architecture"),
        "inputs": [{"name": s.name, "dtype": s.dtype,
                    "shape": list(s.shape) if s.shape else None} for s in artifact.inputs],
    }


def dtype_counts(named: Mapping[str, Any]) -> dict[str, int]:
    """Parameters per dtype, from {name: (dtype name, element count)}."""
    out: dict[str, int] = {}
    for dtype, count in named.values():
        out[dtype] = out.get(dtype, 0) + int(count)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def onnx_dtypes(path: str | Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    named = {t.name: (onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name,
                      math.prod(t.dims)) for t in model.graph.initializer}
    return dtype_counts(named)


def largest(matrices: Mapping[str, np.ndarray], flops: Mapping[str, float] | None = None
            ) -> list[dict[str, Any]]:
    rows = [{"name": name, "shape": list(w.shape), "params": int(w.size),
             "flops": (flops or {}).get(name)} for name, w in matrices.items()]
    return sorted(rows, key=lambda r: -r["params"])[:LARGEST]


def outputs_of(outputs: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": k, "dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v))}
            for k, v in outputs.items()]


# --- FLOPs ---------------------------------------------------------------------------------


def torch_flops(run: Callable[[], Any]) -> dict[str, Any]:
    """Count FLOPs of one `run()`; per module where the model is a plain nn.Module."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        run()
    total = int(counter.get_total_flops())
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()
                  if k != "Global"}
    # module keys start with the root's class name: drop it to match named_modules()
    per_module = {k.split(".", 1)[1] if "." in k else "": int(v) for k, v in per_module.items()}
    leaves = {k: v for k, v in per_module.items()
              if k and not any(o.startswith(k + ".") for o in per_module)}
    return {"total": total, "per_module": leaves, "method": "torch.utils.flop_counter"}


def _numel(shape: list[int]) -> int:
    return math.prod(int(d) for d in shape)


def _shapes(entry: list[dict[str, list[int]]]) -> list[list[int]]:
    return [next(iter(d.values())) for d in entry if d]


def onnx_flops(events: list[dict[str, Any]]) -> dict[str, Any]:
    """FLOPs of matrix products and convolutions from one profiled run's node shapes."""
    per_node: dict[str, int] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or "input_type_shape" not in args:
            continue
        op = args.get("op_name", "")
        ins = _shapes(args["input_type_shape"])
        outs = _shapes(args.get("output_type_shape", []))
        if not ins or not outs:
            continue
        out = outs[0]
        try:
            if op in ("MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul",
                      "MatMulIntegerToFloat"):
                flops = 2 * _numel(out) * int(ins[0][-1])
            elif op == "Gemm":
                flops = 2 * _numel(out) * (_numel(ins[0]) // max(int(out[0]), 1))
            elif op in ("Conv", "ConvInteger", "QLinearConv"):
                weight = ins[1] if op != "QLinearConv" else ins[3]
                flops = 2 * _numel(out) * _numel(weight[1:])
            else:
                continue
        except (IndexError, ValueError, TypeError):
            continue
        name = e["name"].removesuffix("_kernel_time")
        per_node[name] = per_node.get(name, 0) + flops
    return {"total": int(sum(per_node.values())), "per_module": per_node,
            "method": "onnxruntime profile shapes (unoptimized graph)"}


def flops_record(counted: dict[str, Any], point: tuple[int, int], sequence: bool
                 ) -> dict[str, Any]:
    total = counted["total"]
    blocks: dict[str, int] = {}
    for name, value in counted["per_module"].items():
        key = layer_key(name) or "outside the blocks"
        blocks[key] = blocks.get(key, 0) + value
    per = point[0] * (point[1] if sequence else 1)
    return {
        "point": {"batch_size": point[0], "seq_len": point[1] if sequence else None},
        "flops": total,
        "gflops": round(total / 1e9, 4),
        "macs": total // 2,
        "flops_per_token" if sequence else "flops_per_item": int(total / max(per, 1)),
        "method": counted["method"],
        "counted": "matrix products and convolutions (1 MAC = 2 FLOPs)",
        "per_block": dict(sorted(blocks.items(), key=lambda kv: -kv[1])),
    }
