"""Quantization sensitivity: how far the outputs move when only one layer is int8.

For every repeated block (or, in models without blocks, every weight layer) ONNX Runtime's
dynamic int8 quantization is applied to that block's MatMul/Conv nodes alone
(`nodes_to_quantize`), and the model's outputs on a real batch are compared with the float
model's: mean cosine over real tokens, and relative L2 error. The most sensitive layers are
the ones to keep in float when the whole model drifts too far; the "all layers" row shows what
quantizing everything does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leanify.diagnose.common import layer_key, layer_sort_key
from leanify.errors import require

OPS = ("MatMul", "Conv")
MAX_GROUPS = 24
SENSITIVE = 2.0  # error at least this many times the median layer's: keep it in float


def groups(model: Any) -> dict[str, list[str]]:
    """{block: names of its MatMul/Conv nodes with a constant weight}."""
    consts = {t.name for t in model.graph.initializer}
    by_block: dict[str, list[str]] = {}
    loose: list[tuple[str, int]] = []
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in OPS or len(node.input) < 2 or node.input[1] not in consts:
            continue
        key = layer_key(node.name)
        if key is None:
            loose.append((node.name, sizes.get(node.input[1], 0)))
        else:
            by_block.setdefault(key, []).append(node.name)
    if not by_block:  # no repeated blocks: each weight layer is its own group, largest first
        loose.sort(key=lambda nl: -nl[1])
        return {name: [name] for name, _ in loose[:MAX_GROUPS]}
    if loose:
        by_block["outside the blocks"] = [name for name, _ in loose]
    return dict(sorted(by_block.items(), key=lambda kv: layer_sort_key(kv[0]))[:MAX_GROUPS + 1])


def _error(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
           mask: np.ndarray | None) -> tuple[float, float]:
    from leanify.passes.common import mean_cosine

    cosine = mean_cosine(ref, got, mask)
    num = den = 0.0
    for name, value in ref.items():
        a = np.asarray(value, np.float64)
        b = np.asarray(got[name], np.float64)
        if mask is not None and a.ndim == 3 and a.shape[:2] == mask.shape:
            a, b = a[mask.astype(bool)], b[mask.astype(bool)]  # padding carries no meaning
        num += float(np.sum((b - a) ** 2))
        den += float(np.sum(a**2))
    return cosine, float(np.sqrt(num / max(den, 1e-30)))


def per_layer(path: str | Path, batch: Mapping[str, np.ndarray], threads: int | None,
              isa_flags: frozenset[str] = frozenset()) -> dict[str, Any]:
    onnx = require("onnx", "onnx", "Quantization sensitivity")
    require("onnxruntime", "onnx", "Quantization sensitivity")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from leanify.passes.quantize_onnx import VNNI_FLAGS, _Quiet
    from leanify.runtimes.onnxruntime import run_once

    model = onnx.load(str(path), load_external_data=False)
    unnamed = [n for n in model.graph.node if n.op_type in OPS and not n.name]
    source: Any = str(path)
    if unnamed:  # nodes_to_quantize needs names: name them in a copy
        model = onnx.load(str(path))
        for i, node in enumerate(model.graph.node):
            if not node.name:
                node.name = f"leanify_node_{i}"
        source = model
    found = groups(model)
    if not found:
        return {"layers": [], "reason": "the graph has no MatMul or Conv with constant weights"}
    ref = run_once(Path(path), batch, threads)
    mask = batch.get("attention_mask")
    rows = []
    with tempfile.TemporaryDirectory(prefix="leanify-sensitivity-") as scratch:
        target = Path(scratch) / "q.onnx"
        jobs = [*found.items(), ("all layers", [n for v in found.values() for n in v])]
        for name, nodes in jobs:
            with _Quiet():
                quantize_dynamic(
                    source, str(target), op_types_to_quantize=list(OPS), per_channel=True,
                    reduce_range=not (VNNI_FLAGS & set(isa_flags)),
                    weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "MatMulConstBOnly": True})
            cosine, rel = _error(ref, run_once(target, batch, threads), mask)
            rows.append({"layer": name, "nodes": len(nodes), "cosine": round(cosine, 6),
                         "relative_error": round(rel, 6)})
    layers = [r for r in rows if r["layer"] != "all layers"]
    median = float(np.median([r["relative_error"] for r in layers])) if layers else 0.0
    for r in layers:
        r["sensitive"] = bool(len(layers) > 2 and r["relative_error"] >= SENSITIVE * median
                              and r["relative_error"] > 1e-3)
    return {
        "method": "onnxruntime quantize_dynamic, int8 per-channel weights, one layer at a time",
        "compared": "mean cosine over real tokens, relative L2 error, vs the float outputs",
        "batch_shapes": {k: list(v.shape) for k, v in batch.items()},
        "layers": layers,
        "all_layers": next(r for r in rows if r["layer"] == "all layers"),
        "most_sensitive": [r["layer"] for r in sorted(layers, key=lambda r: -r["relative_error"])
                           if r["sensitive"]],
    }
