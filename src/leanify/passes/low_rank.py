"""`low-rank`: truncated-SVD factorization of a torch module's Linear layers, saved as `.pt2`.

A layer is factorized only where that is measured faster (microbenchmark at the input the
layer really sees, from the module's example inputs, with the pass's threads) and its output
stays close; see leanify.prune.low_rank. The record lists every layer's decision. A module
where no layer qualifies is an error, not a silent copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.passes.prune_channels import module_source, save_checked
from leanify.passes.registry import PassConfig, PassContext, register


@dataclass(frozen=True)
class LowRankConfig(PassConfig):
    name: ClassVar[str] = "low-rank"

    energy: float = 0.9  # share of sum(sigma^2) kept when flops_target is 0
    flops_target: float = 0.0  # > 0: keep this fraction of each layer's FLOPs instead
    round_to: int = 8
    max_error: float = 0.05  # relative output error of one layer on its real input
    min_speedup: float = 1.1
    layers: tuple[str, ...] = ()  # (): every Linear
    atol: float = 1e-4  # saved program vs factorized module in memory


@register(LowRankConfig)
def low_rank_pass(artifact: Artifact, config: LowRankConfig, ctx: PassContext) -> Artifact:
    import torch

    from leanify.prune.low_rank import factorize_linears

    module, example, source = module_source(artifact, config.name)
    threads = torch.get_num_threads()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)  # time layers with the threads the model will get
    try:
        model, decisions = factorize_linears(
            copy.deepcopy(module), example, energy=config.energy,
            flops_target=config.flops_target or None, round_to=config.round_to,
            max_error=config.max_error, min_speedup=config.min_speedup,
            layers=list(config.layers) or None, inplace=True,
        )
    finally:
        torch.set_num_threads(threads)
    for d in decisions:
        ctx.log(f"{d.layer} {d.shape[0]}x{d.shape[1]} rank {d.rank}: "
                f"{'factorized' if d.kept else 'dense'} ({d.reason})")
    if not any(d.kept for d in decisions):
        why = "; ".join(f"{d.layer}: {d.reason}" for d in decisions[:5])
        raise LeanifyError(
            f"low-rank factorization kept no layer of {artifact.name}: none was measured "
            f"faster with a small enough error ({why}).",
            fix="Skip this pass for this model, or lower energy / flops_target or raise "
            "max_error if you accept a larger error.",
        )
    return save_checked(artifact, config, ctx, source, model, config.atol,
                        lambda: {"low_rank": [d.to_dict() for d in decisions]})
