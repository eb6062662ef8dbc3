"""`prune-unstructured`: global magnitude pruning of a torch module's weights, saved as `.pt2`.

The result is a dense model with zeros in it: smaller once compressed (the sidecar records the
gzip size of the weights before and after, measured), not faster in a dense runtime. The pass
says so in its record; sparse CSR execution (leanify.prune.sparsify_linears) is a Python-side
option because torch.export and ONNX do not carry CSR weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from leanify.models.artifact import Artifact
from leanify.passes.prune_channels import module_source, save_checked
from leanify.passes.registry import PassConfig, PassContext, register


@dataclass(frozen=True)
class PruneUnstructuredConfig(PassConfig):
    name: ClassVar[str] = "prune-unstructured"

    amount: float = 0.5  # share of the weights set to zero, ranked over all layers together
    layer_types: tuple[str, ...] = ("linear", "conv")
    skip: tuple[str, ...] = ()  # layer names left dense
    atol: float = 1e-4  # saved program vs pruned module in memory


@register(PruneUnstructuredConfig)
def prune_unstructured_pass(artifact: Artifact, config: PruneUnstructuredConfig,
                            ctx: PassContext) -> Artifact:
    from leanify.prune.unstructured import prune_unstructured

    module, _example, source = module_source(artifact, config.name)
    model, summary = prune_unstructured(copy.deepcopy(module), config.amount,
                                        layer_types=config.layer_types, skip=config.skip,
                                        inplace=True)
    ctx.log(f"sparsity {summary.sparsity:.1%}, gzip size x{summary.compressed_ratio:.2f}; "
            f"{summary.note}")
    for warning in summary.warnings:
        ctx.log(warning)
    return save_checked(artifact, config, ctx, source, model, config.atol,
                        lambda: {"sparsity": summary.to_dict()})
