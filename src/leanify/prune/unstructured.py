"""Unstructured (global magnitude) pruning, reported honestly.

Zeroing the smallest weights shrinks the *compressed* model (zeros compress well), not its dense
latency: a dense kernel multiplies zeros as fast as any other number (NOTES.md: a 90% masked
2048x2048 linear ran 9.3 ms vs 6.9 ms dense). Sparse CSR execution of a Linear layer only wins
at high sparsity (90%: 3.7 vs 9.0 ms; 50%: 14.2 vs 6.9 ms), so `sparsify_linears` measures each
layer at its real input and swaps in a CSR layer only where that is measurably faster.
"""

from __future__ import annotations

import copy
import gzip
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from leanify.errors import LeanifyError, require
from leanify.prune.timing import Timer, compare_ms, layer_inputs, median_ms

DENSE_NOTE = ("unstructured sparsity shrinks the compressed size only: dense kernels multiply "
              "the zeros too, so dense latency does not improve")


@dataclass
class SparsitySummary:
    amount: float
    sparsity: float  # measured share of zeros over the pruned layers' weights
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    gzip_bytes_before: int = 0
    gzip_bytes_after: int = 0
    raw_bytes: int = 0
    note: str = DENSE_NOTE
    warnings: list[str] = field(default_factory=list)

    @property
    def compressed_ratio(self) -> float:
        return self.gzip_bytes_after / self.gzip_bytes_before if self.gzip_bytes_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compressed_ratio": round(self.compressed_ratio, 4)}


def _prunable(module: Any, layer_types: Sequence[str]) -> list[tuple[str, Any]]:
    import torch

    kinds = {"linear": torch.nn.Linear, "conv": torch.nn.modules.conv._ConvNd}
    unknown = [k for k in layer_types if k not in kinds]
    if unknown:
        raise LeanifyError(f"unknown layer type(s) {unknown} for unstructured pruning.",
                           fix="Use 'linear' and/or 'conv'.")
    types = tuple(kinds[k] for k in layer_types)
    return [(n, m) for n, m in module.named_modules() if isinstance(m, types)]


def gzip_size(module: Any) -> tuple[int, int]:
    """(raw, gzip-compressed) bytes of the module's weights serialized as safetensors."""
    safetensors_torch = require("safetensors.torch", "torch", "Measuring compressed size")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    raw = safetensors_torch.save(state)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as fh:
        fh.write(raw)
    return len(raw), len(buf.getvalue())


def weight_sparsity(module: Any, layer_types: Sequence[str] = ("linear", "conv")
                    ) -> tuple[float, dict[str, float]]:
    """Measured share of exact zeros in the layers' weights: (overall, per layer)."""
    zeros = total = 0
    per: dict[str, float] = {}
    for name, layer in _prunable(module, layer_types):
        w = layer.weight.detach()
        z = int((w == 0).sum())
        per[name] = round(z / w.numel(), 4)
        zeros, total = zeros + z, total + w.numel()
    return (zeros / total if total else 0.0), per


def prune_unstructured(module: Any, amount: float = 0.5, *,
                       layer_types: Sequence[str] = ("linear", "conv"),
                       skip: Sequence[str] = (), inplace: bool = False
                       ) -> tuple[Any, SparsitySummary]:
    """Zero the `amount` smallest-magnitude weights over all chosen layers together (global).

    Returns a plain module (the pruning masks are folded into the weights) and a summary with
    the measured sparsity and the gzip size of the weights before and after.
    """
    torch = require("torch", "torch", "Unstructured pruning")
    from torch.nn.utils import prune

    if not 0.0 < amount < 1.0:
        raise LeanifyError(f"amount must be a fraction in (0, 1); got {amount}.",
                           fix="Use e.g. amount=0.8 to zero 80% of the weights.")
    model = module if inplace else copy.deepcopy(module)
    layers = [(n, m) for n, m in _prunable(model, layer_types) if n not in set(skip)]
    if not layers:
        raise LeanifyError("the module has no layer to prune (nn.Linear / nn.Conv*).",
                           fix="Check layer_types and skip.")
    _raw, gz_before = gzip_size(model)
    with torch.no_grad():
        prune.global_unstructured([(m, "weight") for _n, m in layers],
                                  pruning_method=prune.L1Unstructured, amount=amount)
        for _n, m in layers:
            prune.remove(m, "weight")  # fold the mask: a plain module with zeros in it
    raw, gz_after = gzip_size(model)
    names = {n for n, _m in layers}
    _total, per = weight_sparsity(model, layer_types)
    per = {k: v for k, v in per.items() if k in names}
    numel = {n: m.weight.numel() for n, m in layers}
    measured = sum(per[n] * numel[n] for n in per) / sum(numel.values())
    summary = SparsitySummary(amount=amount, sparsity=round(measured, 4), layer_sparsity=per,
                              gzip_bytes_before=gz_before, gzip_bytes_after=gz_after,
                              raw_bytes=raw)
    # Global ranking compares magnitudes across layers: a layer with small weights can lose
    # (nearly) all of them, which usually breaks the model.
    summary.warnings = [f"layer '{n}' is {v:.0%} zeros: global magnitude pruning emptied it"
                        for n, v in per.items() if v >= 0.99]
    if measured < 0.5 * amount:
        raise LeanifyError(f"pruning asked for {amount:.0%} zeros but measured {measured:.1%}.",
                           fix="Please report this; the module may share or tie its weights.")
    return model.eval(), summary


# --- Sparse CSR execution, only where measured faster ------------------------------------


def _csr_linear_class() -> type:
    import torch

    class CsrLinear(torch.nn.Module):
        """y = x W^T + b with W stored as a sparse CSR matrix (torch.mm on CSR)."""

        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight = linear.weight.detach().to_sparse_csr()
            self.bias = None if linear.bias is None else linear.bias.detach().clone()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, self.in_features)
            y = torch.mm(self.weight, flat.t()).t()
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)

    return CsrLinear


@dataclass
class SparseDecision:
    layer: str
    sparsity: float
    dense_ms: float
    csr_ms: float
    sparse: bool
    reason: str


def sparsify_linears(module: Any, example_inputs: Any, *, min_speedup: float = 1.1,
                     min_sparsity: float = 0.5, timer: Timer | None = None,
                     inplace: bool = False) -> tuple[Any, list[SparseDecision]]:
    """Swap a Linear for a CSR layer only where that is measured faster at its real input.

    Each layer is timed dense and CSR on the input it receives when the module runs
    `example_inputs` (warm-up excluded, median); a layer turns sparse only if CSR is at least
    `min_speedup` times faster and its outputs agree. Every decision is returned. The result
    runs in PyTorch eager; torch.export and ONNX do not take CSR weights.
    """
    torch = require("torch", "torch", "Sparse execution")
    import warnings

    timer = timer or median_ms
    model = module if inplace else copy.deepcopy(module)
    model.eval()
    inputs = layer_inputs(model, example_inputs, (torch.nn.Linear,))
    csr_cls = _csr_linear_class()
    decisions: list[SparseDecision] = []
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, torch.nn.Linear) or not name or name not in inputs:
            continue
        sparsity = float((layer.weight == 0).float().mean())
        if sparsity < min_sparsity:
            decisions.append(SparseDecision(name, round(sparsity, 4), 0.0, 0.0, False,
                                            f"sparsity below {min_sparsity:.0%}: not timed"))
            continue
        x = inputs[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            candidate = csr_cls(layer)
        with torch.no_grad():
            dense_ms, csr_ms = compare_ms(timer, lambda layer=layer, x=x: layer(x),
                                          lambda c=candidate, x=x: c(x), "csr")
            agree = torch.allclose(candidate(x), layer(x), rtol=1e-4, atol=1e-4)
        faster = csr_ms * min_speedup <= dense_ms
        keep = faster and agree
        reason = ("CSR faster" if keep else "CSR outputs disagree" if faster
                  else f"CSR not {min_speedup:g}x faster")
        decisions.append(SparseDecision(name, round(sparsity, 4), round(dense_ms, 4),
                                        round(csr_ms, 4), keep, reason))
        if keep:
            _set_submodule(model, name, candidate)
    return model, decisions


def _set_submodule(model: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
