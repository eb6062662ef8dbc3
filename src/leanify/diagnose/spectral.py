"""Spectral analysis of the weight matrices with the weightwatcher library (`leanify[diagnose]`).

Per layer: the power-law exponent alpha of the eigenvalue spectrum of W^T W, the stable rank
(squared Frobenius norm over squared spectral norm) and the spectral norm. Heavy-tailed
self-regularization theory reads alpha between 2 and 6 as well trained; above 6 as
under-trained (the layer carries little learned structure, a candidate to shrink), below 2 as
over-fit. Alpha means nothing on randomly initialised weights.

Every format goes through the same door: the matrices (see common.weight_matrices) are put
into plain torch Linear layers, so ONNX and TorchScript models get the same analysis.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from leanify.errors import MissingDependencyError

UNDER_TRAINED = 6.0
OVER_FIT = 2.0


def _import_weightwatcher():
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own import notes
            import weightwatcher
    except ImportError as exc:
        raise MissingDependencyError("weightwatcher", "diagnose",
                                     "Spectral analysis (alpha per layer)") from exc
    return weightwatcher


def _num(value: Any, digits: int = 4) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return round(v, digits) if math.isfinite(v) else None


def analyze(matrices: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """weightwatcher's per-layer metrics for {name: (out, in) matrix}."""
    ww = _import_weightwatcher()
    import torch

    names = list(matrices)
    holder = torch.nn.ModuleDict()
    for i, name in enumerate(names):
        w = torch.from_numpy(np.ascontiguousarray(matrices[name], dtype=np.float32))
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(w)
        holder[f"m{i}"] = layer
    with contextlib.redirect_stdout(io.StringIO()):
        watcher = ww.WeightWatcher(model=holder, log_level=logging.ERROR)
        frame = watcher.analyze(plot=False, randomize=False, mp_fit=False)
    layers = []
    for row in frame.to_dict("records"):
        key = str(row.get("name", ""))
        if not key.startswith("m") or not key[1:].isdigit():
            continue
        alpha = _num(row.get("alpha"))
        flag = None
        if alpha is not None and alpha > UNDER_TRAINED:
            flag = "under-trained"
        elif alpha is not None and alpha < OVER_FIT:
            flag = "over-fit"
        layers.append({
            "name": names[int(key[1:])],
            "shape": list(matrices[names[int(key[1:])]].shape),
            "alpha": alpha,
            "stable_rank": _num(row.get("stable_rank")),
            "spectral_norm": _num(row.get("spectral_norm")),
            "log_norm": _num(row.get("log_norm")),
            "flag": flag,
        })
    alphas = [r["alpha"] for r in layers if r["alpha"] is not None]
    return {
        "library": f"weightwatcher {getattr(ww, '__version__', '')}".strip(),
        "layers": layers,
        "summary": {
            "layers": len(layers),
            "mean_alpha": round(float(np.mean(alphas)), 3) if alphas else None,
            "under_trained": sum(r["flag"] == "under-trained" for r in layers),
            "over_fit": sum(r["flag"] == "over-fit" for r in layers),
        },
        "thresholds": {"under_trained_alpha_above": UNDER_TRAINED,
                       "over_fit_alpha_below": OVER_FIT},
    }
