"""`distill`: train a pruned (or smaller) HF student to imitate its teacher.

The teacher is the model the student was pruned from (recorded by `prune-transformer`), or
`teacher=PATH`. Transfer data is the user's text (labels used when the file has them and the
model is a classifier); it must not be the evaluation data. Checkpoints live in the run's work
folder, keyed by the pass and its input, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact
from leanify.models.load import load
from leanify.passes.common import final_path, require_format
from leanify.passes.prune_transformer import save_hf, torch_batches
from leanify.passes.registry import PassConfig, PassContext, artifact_key, register
from leanify.passes.torch_source import HIDDEN_STATE_TASKS, torch_source


@dataclass(frozen=True)
class DistillConfig(PassConfig):
    name: ClassVar[str] = "distill"
    data: str = ""  # transfer text: one or more files, separated by os.pathsep
    teacher: str = ""  # default: the model the student was pruned from
    epochs: float = 2.0
    batch_size: int = 64
    lr: float = 1e-4
    time_budget_min: float = 40.0
    hidden_weight: float = 0.0
    max_texts: int = 0  # 0: every text
    seed: int = 0


def transfer_data(paths: str, task: str, labels: dict[str, str] | None, max_texts: int = 0
                  ) -> tuple[list[str], list[int] | None]:
    """Unique texts from the files (and class ids when every file is labelled for a classifier)."""
    import os

    from leanify.measure.data import check_labels, read_dataset

    files = [Path(p) for p in paths.split(os.pathsep) if p]
    if not files:
        raise LeanifyError("distillation needs transfer text and none was given.",
                           fix="Pass --transfer-data FILE (unlabelled sentences from your domain, "
                               "not the evaluation data).")
    texts: list[str] = []
    ids: list[int] | None = [] if task == "text-classification" and labels else None
    for file in files:
        if ids is not None:
            try:
                data = read_dataset(file, "text-classification")
                mapping = check_labels(data, labels)
                texts += data.texts or []
                ids += [mapping[label] for label in data.labels or []]
                continue
            except LeanifyError:
                ids = None  # unlabelled file: distill from the teacher alone
        texts += read_dataset(file, "fidelity").all_texts()
    if ids is None:
        texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if max_texts and len(texts) > max_texts:
        texts = texts[:max_texts]
        ids = ids[:max_texts] if ids is not None else None
    return texts, ids


@register(DistillConfig)
def distill_pass(artifact: Artifact, config: DistillConfig, ctx: PassContext) -> Artifact:
    from leanify.train.distill import DistillSettings, distill

    require_format(artifact, ("hf",), config.name, fix="Give the student's Hugging Face folder.")
    done = ctx.finished(config, artifact)
    if done is not None:  # made earlier in this run folder: training is not repeated
        return load(done, name=f"{artifact.name}+{config.name}")
    teacher_path = config.teacher or artifact.meta.get("pruned_from")
    if not teacher_path:
        raise LeanifyError("the student has no teacher: it was not pruned by leanify.",
                           path=artifact.path, fix="Pass the teacher model (--teacher PATH).")
    teacher_artifact = load(teacher_path, name="teacher")
    task = artifact.meta.get("task") or "feature-extraction"
    texts, labels = transfer_data(config.data, task, artifact.meta.get("labels"),
                                  config.max_texts)
    student = torch_source(artifact, None, config.name).model
    teacher = torch_source(teacher_artifact, None, config.name).model
    transformers = require("transformers", "torch", "Pass 'distill'")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(artifact.tokenizer_path), local_files_only=True, trust_remote_code=False)
    settings = DistillSettings(
        task="embedding" if task in HIDDEN_STATE_TASKS else "classification",
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        hidden_weight=config.hidden_weight, seed=config.seed,
        layer_map=_layer_map(artifact, student, teacher) if config.hidden_weight > 0 else None,
        pooling="cls" if artifact.meta.get("pooling") == "cls" else "mean",
        time_budget_s=config.time_budget_min * 60 if config.time_budget_min else None)
    ctx.log(f"distilling on {len(texts):,} texts"
            + (" with labels" if labels is not None else ""))
    checkpoints = ctx.work_dir / "training" / f"{config.name}-{artifact_key(artifact, config)}"
    result = distill(teacher, student, tokenizer, texts, labels=labels, settings=settings,
                     work_dir=checkpoints, resume=True, threads=ctx.threads, log=ctx.log)
    check = torch_batches(artifact, ctx, student, 1)[0]
    with ctx.output_dir(config, artifact) as out:
        save_hf(student, artifact, out, config,
                {"distill": result.as_dict(), "pruned_from": str(teacher_artifact.path),
                 "prune": artifact.meta.get("prune")}, check)
    return load(final_path(out), name=f"{artifact.name}+{config.name}")


def _layer_map(artifact: Artifact, student: Any, teacher: Any) -> tuple[int, ...]:
    """Student layer i imitates the teacher layer it was kept from (or an even spread)."""
    kept = (artifact.meta.get("prune") or {}).get("kept_layers")
    if kept:
        return tuple(kept)
    n_teacher = teacher.config.num_hidden_layers
    n_student = student.config.num_hidden_layers
    return tuple(round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student))
