"""Low-rank factorization of Linear layers: W (out x in) ~ U_r (out x r) @ V_r (r x in).

Each chosen layer becomes two Linears (in -> r without bias, r -> out with the bias): fewer
FLOPs when r * (in + out) < in * out. The rank comes from an energy threshold (the share of
sum(sigma^2) kept) or a FLOPs target (the share of the layer's FLOPs kept), rounded up to a
multiple of `round_to` so the kernels stay fast. Fewer FLOPs is not always less time on a CPU
(two small GEMMs can lose to one larger one), so a layer stays factorized only where it is
measured faster at its real input and its outputs stay close; every decision is reported.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

from leanify.errors import LeanifyError, require
from leanify.prune.timing import Timer, compare_ms, layer_inputs, median_ms


@dataclass
class RankDecision:
    layer: str
    shape: tuple[int, int]  # (out, in)
    rank: int  # 0: no rank saves FLOPs
    flops_kept: float  # factorized FLOPs / dense FLOPs
    error: float  # relative output error on the real input: ||y_r - y|| / ||y||
    dense_ms: float
    factored_ms: float
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_rank(singular_values: Any, out_features: int, in_features: int, *,
                energy: float | None = 0.9, flops_target: float | None = None,
                round_to: int = 8) -> int:
    """The rank to keep, rounded up to a multiple of `round_to`; 0 when none saves FLOPs.

    `flops_target` (fraction of the layer's FLOPs to keep) wins over `energy` when given.
    """
    full = min(out_features, in_features)
    if flops_target is not None:
        rank = int(flops_target * out_features * in_features / (out_features + in_features))
    else:
        s2 = [float(s) ** 2 for s in singular_values]
        total, acc, rank = sum(s2), 0.0, full
        for i, v in enumerate(s2):
            acc += v
            if total == 0 or acc >= energy * total:
                rank = i + 1
                break
    rank = max(round_to, math.ceil(max(rank, 1) / round_to) * round_to)
    if rank >= full or rank * (out_features + in_features) >= out_features * in_features:
        return 0
    return rank


def factorize(linear: Any, rank: int) -> Any:
    """Two Linears whose product is the rank-`rank` truncated SVD of `linear`'s weight."""
    import torch

    w = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = torch.nn.Linear(linear.in_features, rank, bias=False)
    second = torch.nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        # Split sigma evenly between the two factors: both stay well scaled.
        first.weight.copy_((root[:, None] * vh[:rank]).float())
        second.weight.copy_((u[:, :rank] * root[None, :]).float())
        if linear.bias is not None:
            second.bias.copy_(linear.bias.detach())
    return torch.nn.Sequential(first, second).eval()


def factorize_linears(
    module: Any,
    example_inputs: Any,
    *,
    energy: float = 0.9,
    flops_target: float | None = None,
    round_to: int = 8,
    max_error: float = 0.05,
    min_speedup: float = 1.1,
    layers: list[str] | None = None,
    timer: Timer | None = None,
    inplace: bool = False,
) -> tuple[Any, list[RankDecision]]:
    """Factorize the Linear layers (all, or those named in `layers`) where it pays.

    A layer is factorized only if its chosen rank saves FLOPs, the relative error of its output
    on the input it really sees (from `example_inputs`) is at most `max_error`, and the
    factorized pair is at least `min_speedup` times faster in a warm-up-excluded median
    microbenchmark (`timer` replaces it in tests). Returns the module and every decision.
    """
    torch = require("torch", "torch", "Low-rank factorization")
    if flops_target is not None and not 0.0 < flops_target < 1.0:
        raise LeanifyError(f"flops_target must be a fraction in (0, 1); got {flops_target}.",
                           fix="Use e.g. flops_target=0.5 to keep half of each layer's FLOPs.")
    if flops_target is None and not 0.0 < energy < 1.0:
        raise LeanifyError(f"energy must be a fraction in (0, 1); got {energy}.",
                           fix="Use e.g. energy=0.9 to keep 90% of the spectrum's energy.")
    if round_to < 1:
        raise LeanifyError(f"round_to must be at least 1; got {round_to}.", fix="Use 8 or 16.")
    timer = timer or median_ms
    model = module if inplace else copy.deepcopy(module)
    model.eval()
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n and (layers is None or n in layers)}
    missing = sorted(set(layers or ()) - set(linears))
    if missing:
        raise LeanifyError(f"no Linear layer named {', '.join(missing)}.",
                           fix="Use names from module.named_modules().")
    inputs = layer_inputs(model, example_inputs, (torch.nn.Linear,))
    decisions = []
    for name, layer in linears.items():
        if name not in inputs:
            continue  # never runs on these inputs
        decision, pair = _decide(name, layer, inputs[name], energy, flops_target, round_to,
                                 max_error, min_speedup, timer)
        decisions.append(decision)
        if decision.kept:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, pair)
    return model, decisions


def _decide(name: str, layer: Any, x: Any, energy: float, flops_target: float | None,
            round_to: int, max_error: float, min_speedup: float, timer: Timer
            ) -> tuple[RankDecision, Any]:
    import torch

    out_f, in_f = layer.out_features, layer.in_features
    s = torch.linalg.svdvals(layer.weight.detach().double())
    rank = choose_rank(s.tolist(), out_f, in_f, energy=energy, flops_target=flops_target,
                       round_to=round_to)
    if rank == 0:
        return RankDecision(name, (out_f, in_f), 0, 1.0, 0.0, 0.0, 0.0, False,
                            "no rank below full saves FLOPs"), None
    pair = factorize(layer, rank)
    flops_kept = rank * (in_f + out_f) / (in_f * out_f)
    with torch.no_grad():
        ref, got = layer(x), pair(x)
        error = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
        if error > max_error:  # not worth timing
            return RankDecision(name, (out_f, in_f), rank, round(flops_kept, 4),
                                round(error, 6), 0.0, 0.0, False,
                                f"output error {error:.3g} > {max_error:g}"), None
        dense_ms, factored_ms = compare_ms(timer, lambda: layer(x), lambda: pair(x), "factorized")
    if factored_ms * min_speedup <= dense_ms:
        kept, reason = True, f"{dense_ms / factored_ms:.2f}x faster at input {tuple(x.shape)}"
    else:
        kept, reason = False, f"not {min_speedup:g}x faster at input {tuple(x.shape)}"
    return RankDecision(name, (out_f, in_f), rank, round(flops_kept, 4), round(error, 6),
                        round(dense_ms, 4), round(factored_ms, 4), kept, reason), pair
