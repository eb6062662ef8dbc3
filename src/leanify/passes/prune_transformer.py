"""`prune-transformer`: fewer encoder layers and FFN neurons, still a normal HF model.

The pruned model is saved with `save_pretrained` (safetensors, `config.json` updated with
`num_hidden_layers` and `intermediate_size`) and then reloaded with plain `from_pretrained`,
which must give the outputs the pruned model gave in memory: what the user gets back is a model
any transformers user can load. Importance is measured on the calibration split (the user's
data), never the evaluation split; without calibration data, the bundled sample text is used.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.passes.common import carry_over, final_path, require_format
from leanify.passes.registry import PassConfig, PassContext, register
from leanify.passes.torch_source import HIDDEN_STATE_TASKS, torch_source

# sentence-transformers' files: pooling and normalization travel with the weights
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json")


@dataclass(frozen=True)
class PruneTransformerConfig(PassConfig):
    name: ClassVar[str] = "prune-transformer"
    layers: int = 0  # encoder layers to keep (0: all)
    ffn_keep: float = 1.0  # fraction of FFN neurons kept in every layer
    importance: str = "activation"  # activation | magnitude | taylor (classification)
    round_to: int = 16
    calibration_batches: int = 8


def torch_batches(artifact: Artifact, ctx: PassContext, model: Any, limit: int
                  ) -> list[dict[str, Any]]:
    """Calibration batches as torch tensors, only the inputs the model's forward takes."""
    import inspect

    import torch

    from leanify.models.inputs import InputBuilder

    accepted = set(inspect.signature(model.forward).parameters)
    if ctx.calibration is not None:
        source = list(_take(ctx.calibration(), limit))
    else:
        builder = InputBuilder(artifact)
        source = [builder.batch(16, 64) for _ in range(min(limit, 4))]
    return [{k: torch.from_numpy(np.asarray(v)) for k, v in b.items() if k in accepted}
            for b in source]


def _take(batches: Any, limit: int) -> Any:
    for i, batch in enumerate(batches):
        if i >= limit:
            return
        yield batch


def copy_model_extras(source: Path | None, out: Path) -> None:
    """Copy sentence-transformers' pooling/normalize description (not the weights)."""
    if source is None or not source.is_dir():
        return
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    for sub in source.iterdir():
        if sub.is_dir() and sub.name[:1].isdigit() and "Pooling" in sub.name:
            shutil.copytree(sub, out / sub.name, dirs_exist_ok=True)


def save_hf(model: Any, artifact: Artifact, out: Path, config: PassConfig,
            extra: dict[str, Any], check_batch: dict[str, Any]) -> None:
    """save_pretrained + tokenizer + pooling files, then prove it reloads to the same outputs."""
    torch = require("torch", "torch", f"Pass '{config.name}'")
    model.save_pretrained(str(out), safe_serialization=True)
    copy_model_extras(artifact.path if artifact.path.is_dir() else None, out)
    carry_over(artifact, out, config, extra)
    reloaded = type(model).from_pretrained(str(out), local_files_only=True,
                                           use_safetensors=True).eval()
    model.eval()
    with torch.inference_mode():
        want, got = model(**check_batch), reloaded(**check_batch)
    key = "logits" if hasattr(want, "logits") and want.logits is not None else "last_hidden_state"
    diff = float((getattr(want, key) - getattr(got, key)).abs().max())
    if diff > 1e-4:
        raise LeanifyError(
            f"the saved model does not reproduce the pruned model (max diff {diff:.2e}).",
            path=out, fix="Report this: the architecture may keep widths outside config.json.")


def task_loss(task: str) -> Any:
    """Taylor importance needs a loss: pseudo-label cross-entropy for classifiers."""
    if task in HIDDEN_STATE_TASKS:
        return None

    def loss(model: Any, batch: dict[str, Any]) -> Any:
        import torch

        logits = model(**batch).logits
        return torch.nn.functional.cross_entropy(logits, logits.detach().argmax(-1))

    return loss


@register(PruneTransformerConfig)
def prune_transformer(artifact: Artifact, config: PruneTransformerConfig,
                      ctx: PassContext) -> Artifact:
    from leanify.prune.transformer import prune_encoder

    require_format(artifact, ("hf",), config.name,
                   fix="Give the Hugging Face model folder; for other torch modules use "
                       "the prune-channels pass.")
    done = ctx.finished(config, artifact)
    if done is not None:  # made earlier in this run folder: training is not repeated
        return load(done, name=f"{artifact.name}+{config.name}")
    source = torch_source(artifact, None, config.name)
    model = source.model
    task = artifact.meta.get("task") or "feature-extraction"
    batches = torch_batches(artifact, ctx, model, config.calibration_batches)
    if config.importance == "taylor" and task in HIDDEN_STATE_TASKS:
        raise LeanifyError("Taylor importance needs a loss; embedding models have none here.",
                           fix="Use --importance activation (the default) or magnitude.")
    report = prune_encoder(
        model, batches, ffn_keep=config.ffn_keep, layers_keep=config.layers or None,
        importance=config.importance, round_to=config.round_to, loss_fn=task_loss(task),
        log=ctx.log)
    ctx.log(f"pruned {report.params_before:,} -> {report.params_after:,} parameters, "
            f"layers {report.kept_layers}, FFN width {report.intermediate_after}")
    with ctx.output_dir(config, artifact) as out:
        save_hf(model, artifact, out, config,
                {"prune": report.as_dict(), "pruned_from": str(artifact.path)}, batches[0])
    return load(final_path(out), name=f"{artifact.name}+{config.name}")
