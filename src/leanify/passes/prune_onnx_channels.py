"""`prune-onnx-channels`: post-training channel pruning of an ONNX CNN (no training).

The inner channels of each convolution pair (conv -> activation -> conv: ResNet blocks,
bottlenecks, VGG stacks) are cut to `keep`, chosen on the user's calibration images, and the
second convolution is refitted by least squares to give back the original's output there
(see leanify.prune.onnx_channels). The model stays fp32 and dense, so every runtime runs it
faster, and int8 passes can follow. Its outputs change: the accuracy gate judges it, and this
pass refuses a result whose outputs drifted beyond `min_cosine` on a real batch.
Needs `ctx.calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact
from leanify.passes.common import check_batch, mean_cosine, require_format, write_output
from leanify.passes.export_onnx import MODEL_FILE
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.runtimes.onnxruntime import run_once

MAX_BYTES = 1_500_000_000  # protobuf caps one message at 2 GB


@dataclass(frozen=True)
class PruneOnnxChannelsConfig(PassConfig):
    name: ClassVar[str] = "prune-onnx-channels"

    keep: float = 0.5  # share of each pair's inner channels kept
    round_to: int = 8  # kept widths are multiples of this (vector-friendly)
    max_images: int = 256  # calibration images the statistics and the refit use
    ridge: float = 1e-3  # least-squares damping, relative to the mean diagonal
    min_cosine: float = 0.9  # outputs vs the unpruned model on a real batch


@register(PruneOnnxChannelsConfig)
def prune_onnx_channels_pass(artifact: Artifact, config: PruneOnnxChannelsConfig,
                             ctx: PassContext) -> Artifact:
    require_format(artifact, ("onnx",), config.name,
                   fix="Run 'export-onnx' first to get an ONNX model.")
    if ctx.calibration is None:
        raise LeanifyError(
            "channel pruning chooses and refits channels on calibration images, and none "
            "were given.", fix="Give calibration data (the user's images, never the "
            "evaluation split).")
    onnx = require("onnx", "onnx", f"Pass '{config.name}'")
    from leanify.prune.onnx_channels import prune_onnx_channels

    if artifact.size_bytes() > MAX_BYTES:  # the sessions it builds are in-memory protobufs
        raise LeanifyError(
            f"pass '{config.name}' takes ONNX CNNs under {MAX_BYTES / 1e9:.1f} GB; "
            f"{artifact.name} is larger.", path=artifact.path,
            fix="Choose another candidate for this model.")

    model = onnx.load(str(artifact.path))
    pruned, summary = prune_onnx_channels(
        model, ctx.calibration(), keep=config.keep, round_to=config.round_to,
        max_images=config.max_images, ridge=config.ridge, threads=ctx.threads)
    if not summary.pairs:
        why = "; ".join(summary.skipped[:3]) or "no conv -> activation -> conv chain"
        raise LeanifyError(f"pass '{config.name}' found no convolution pair to prune ({why}).",
                           path=artifact.path,
                           fix="This pass prunes CNNs; choose another candidate.")
    ctx.log(summary.text())
    batch = check_batch(artifact, ctx)
    before = run_once(artifact.path, batch, ctx.threads)

    def build(out: Path) -> tuple[str, dict[str, Any]]:
        path = out / MODEL_FILE
        onnx.save(pruned, str(path))
        cosine = mean_cosine(before, run_once(path, batch, ctx.threads))
        if not cosine >= config.min_cosine:
            raise LeanifyError(
                f"the pruned model's outputs drifted from the original's (mean cosine "
                f"{cosine:.3f} < {config.min_cosine}).", path=artifact.path,
                fix="Keep more channels (a larger keep) or give more calibration images.")
        return MODEL_FILE, {"pruning": summary.to_dict(),
                            "prune_check": {"mean_cosine": round(cosine, 6)}}

    return write_output(artifact, config, ctx, build)
