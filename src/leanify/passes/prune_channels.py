"""`prune-channels`: structured channel pruning of an in-memory torch module, saved as `.pt2`.

Torch-Pruning's dependency graph removes whole conv filters and linear neurons (with the batch
norms, residual adds and concats that depend on them); see leanify.prune.channels. The pruned
module's outputs keep their shape but not their values: recovering accuracy (fine-tuning or
distillation) and judging it is the job of what follows, the accuracy gate included. The saved
program is checked against the pruned module in memory, at a batch other than the example's.

Also holds what the torch-module passes here share: taking the module, saving it checked.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.passes.common import check_agreement, check_batch, require_format, write_output
from leanify.passes.export_torch import PT2_FILE, export_program, run_pt2, run_torch
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.passes.torch_source import torch_source

TORCH_MODULE_FIX = ("Give an in-memory torch.nn.Module: leanify.load(module, "
                    "example_inputs=...).")


@dataclass(frozen=True)
class PruneChannelsConfig(PassConfig):
    name: ClassVar[str] = "prune-channels"

    ratio: float = 0.3  # share of each layer's channels removed
    importance: str = "l2"  # l1, l2, taylor, activation
    round_to: int = 8  # widths stay multiples of this; 0: exact ratios
    global_pruning: bool = False
    target_macs: float = 0.0  # > 0: prune in steps until MACs fall to this fraction
    ignored_layers: tuple[str, ...] = ()  # () : the last layer (the head)
    calibration_batches: int = 8  # taylor / activation statistics
    atol: float = 1e-4  # saved program vs pruned module in memory


def module_source(artifact: Artifact, pass_name: str) -> tuple[Any, dict[str, Any], Any]:
    """(the user's module, its example inputs as a dict, the TorchSource) of a torch-module."""
    require_format(artifact, ("torch-module",), pass_name, fix=TORCH_MODULE_FIX)
    source = torch_source(artifact, None, pass_name)
    return source.model, dict(source.example), source


def calibration_batches(ctx: PassContext, example: dict[str, Any], limit: int) -> list[Any]:
    """Up to `limit` calibration batches as tensors; the example batch when there are none."""
    import torch

    if ctx.calibration is None:
        return [example]
    out = []
    for batch in ctx.calibration():
        missing = [k for k in example if k not in batch]
        if missing:
            raise LeanifyError(
                f"the calibration batches lack the module's input(s) {', '.join(missing)}.",
                fix="Name the calibration arrays like the module's forward arguments.")
        out.append({k: torch.from_numpy(np.ascontiguousarray(batch[k])) for k in example})
        if len(out) >= limit:
            break
    return out or [example]


def save_checked(artifact: Artifact, config: PassConfig, ctx: PassContext, source: Any,
                 model: Any, atol: float, extra: Callable[[], dict[str, Any]]) -> Artifact:
    """Export `model` with torch.export into the pass's folder, check it, load it back."""
    batch = check_batch(artifact, ctx)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        program = export_program(model, source, artifact, out / PT2_FILE)
        expected = run_torch(model, source, batch, keywords=True)
        diffs = check_agreement(expected, run_pt2(program, source, batch), atol,
                                f"the {config.name} .pt2 program", artifact.path)
        return PT2_FILE, {**extra(), "export_check": {"max_diff": diffs}}

    return write_output(artifact, config, ctx, build)


@register(PruneChannelsConfig)
def prune_channels_pass(artifact: Artifact, config: PruneChannelsConfig,
                        ctx: PassContext) -> Artifact:
    from leanify.prune.channels import prune_channels

    module, example, source = module_source(artifact, config.name)
    batches = calibration_batches(ctx, example, config.calibration_batches) \
        if config.importance in ("taylor", "activation") else None
    model, summary = prune_channels(
        copy.deepcopy(module), example, ratio=config.ratio, importance=config.importance,
        round_to=config.round_to or None, global_pruning=config.global_pruning,
        target_macs=config.target_macs or None,
        ignored_layers=list(config.ignored_layers) or None, calibration=batches, inplace=True,
    )
    ctx.log(summary.text().splitlines()[0])
    out = save_checked(artifact, config, ctx, source, model, config.atol,
                       lambda: {"pruning": summary.to_dict()})
    if out.input_names != artifact.input_names:
        raise LeanifyError("the pruned program's inputs differ from the module's.",
                           fix="Please report this.")
    return out
