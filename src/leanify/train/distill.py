"""Knowledge distillation on CPU: a student learns to reproduce its teacher.

Losses: sentence embeddings (1 - cosine + MSE to the teacher's pooled embedding), classification
(KL on temperature-softened logits, plus cross-entropy when labels are given) and, optionally,
intermediate hidden states through a student-to-teacher layer map.

The trainer is built for a 2-core CPU: texts are tokenized once, batches hold texts of similar
length (little padding), and the teacher's targets are computed once and cached unless hidden
states are matched. AdamW with linear warm-up and decay, gradient clipping, a deterministic
seed, a progress bar with loss and ETA, a held-out dev split for early stopping, a time budget,
and atomic checkpoints every N steps that `resume=True` continues from exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError

TASKS = ("embedding", "classification")


@dataclass(frozen=True)
class DistillSettings:
    task: str = "embedding"
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of steps
    clip: float = 1.0
    temperature: float = 2.0  # classification: softening of both logit sets
    label_weight: float = 0.5  # classification with labels: CE weight; KL gets the rest
    hidden_weight: float = 0.0  # intermediate hidden states (needs the teacher every step)
    layer_map: tuple[int, ...] | None = None  # student layer i imitates teacher layer map[i]
    pooling: str = "mean"  # embedding: how token states become one vector ("mean" | "cls")
    max_length: int = 128
    freeze_embeddings: bool = True  # the word-embedding table is most of a small student
    seed: int = 0
    dev_size: int = 500
    eval_every: int = 500
    patience: int = 4  # evaluations without improvement before stopping
    checkpoint_every: int = 500
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise LeanifyError(f"unknown distillation task {self.task!r}.",
                               fix=f"Use one of: {', '.join(TASKS)}.")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise LeanifyError("epochs, batch size and learning rate must be positive.")


@dataclass
class DistillResult:
    steps: int
    total_steps: int
    epochs: float
    best_dev: float | None
    dev_metric: str
    stopped: str  # "done" | "early-stop" | "time-budget"
    wall_s: float
    train_texts: int
    dev_texts: int
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- data -----------------------------------------------------------------------------------


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), 4096):
        enc = tokenizer(list(texts[start:start + 4096]), truncation=True, max_length=max_length)
        ids.extend(enc["input_ids"])
    return ids


def collate(ids: Sequence[list[int]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """Shuffled batches of texts with similar lengths: sort within chunks of 50 batches."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort([lengths[i] for i in part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


# --- model outputs --------------------------------------------------------------------------


def pooled(hidden: Any, mask: Any, mode: str) -> Any:
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _target(model: Any, batch: dict[str, Any], settings: DistillSettings,
            hidden_states: bool = False) -> tuple[Any, Any]:
    out = model(**batch, output_hidden_states=hidden_states)
    if settings.task == "embedding":
        value = pooled(out.last_hidden_state, batch["attention_mask"], settings.pooling)
    else:
        value = out.logits
    return value, (out.hidden_states if hidden_states else None)


def _loss(student_value: Any, teacher_value: Any, labels: Any, settings: DistillSettings
          ) -> Any:
    import torch.nn.functional as F

    if settings.task == "embedding":
        cos = F.cosine_similarity(student_value, teacher_value, dim=-1)
        return (1 - cos).mean() + F.mse_loss(student_value, teacher_value)
    t = settings.temperature
    kl = F.kl_div(F.log_softmax(student_value / t, -1), F.log_softmax(teacher_value / t, -1),
                  log_target=True, reduction="batchmean") * t * t
    if labels is None:
        return kl
    ce = F.cross_entropy(student_value, labels)
    return (1 - settings.label_weight) * kl + settings.label_weight * ce


def _hidden_loss(student_hidden: Any, teacher_hidden: Any, layer_map: Sequence[int],
                 mask: Any) -> Any:
    """MSE between student layer i's output and teacher layer layer_map[i]'s, on real tokens."""
    m = mask.unsqueeze(-1).to(student_hidden[0].dtype)
    total = 0.0
    for i, j in enumerate(layer_map):
        diff = (student_hidden[i + 1] - teacher_hidden[j + 1]) * m
        total = total + diff.pow(2).sum() / (m.sum() * diff.shape[-1])
    return total / len(layer_map)


# --- checkpoints ----------------------------------------------------------------------------


def _fingerprint(settings: DistillSettings, texts: Sequence[str], student: Any) -> str:
    fixed = {k: v for k, v in asdict(settings).items() if k != "time_budget_s"}  # may change
    h = hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode())
    h.update(str(len(texts)).encode())
    for text in texts[:: max(1, len(texts) // 1000)]:
        h.update(text.encode())
    h.update(str(sum(p.numel() for p in student.parameters())).encode())
    return h.hexdigest()[:16]


def _targets_key(settings: DistillSettings, texts: Sequence[str], teacher: Any) -> str:
    """What the teacher's cached targets depend on: texts, teacher, task, pooling, length."""
    h = hashlib.sha256(f"{settings.task}:{settings.pooling}:{settings.max_length}".encode())
    h.update(str(len(texts)).encode())
    for text in texts[:: max(1, len(texts) // 1000)]:
        h.update(text.encode())
    for p in list(teacher.parameters())[:: 7]:
        h.update(f"{tuple(p.shape)}:{float(p.detach().float().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _state_dict(model: Any) -> dict[str, Any]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _save_checkpoint(folder: Path, student: Any, optimizer: Any, scheduler: Any,
                     state: dict[str, Any], best: dict[str, Any] | None, rng: Any) -> None:
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(_state_dict(student), str(tmp / "student.safetensors"))
        if best is not None:
            save_file(best, str(tmp / "best.safetensors"))
        # optimizer state is tensors and numbers only: it reads back with weights_only=True
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")

    _atomic_dir(folder, write)


def _load_checkpoint(folder: Path, student: Any, optimizer: Any, scheduler: Any
                     ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    import torch
    from safetensors.torch import load_file

    student.load_state_dict(load_file(str(folder / "student.safetensors")))
    opt = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(opt["rng"])  # dropout continues as if never stopped
    best = (load_file(str(folder / "best.safetensors"))
            if (folder / "best.safetensors").is_file() else None)
    return json.loads((folder / "state.json").read_text(encoding="utf-8")), best


# --- the trainer ----------------------------------------------------------------------------


def _teacher_targets(teacher: Any, ids: Sequence[list[int]], pad_id: int,
                     settings: DistillSettings, cache: Path | None,
                     progress: Callable[[str, int, int], None]) -> Any:
    """The teacher's pooled embedding / logits for every text, computed once (and cached)."""
    import torch

    if cache is not None and cache.is_file():
        return torch.from_numpy(np.load(cache))
    order = np.argsort([len(x) for x in ids], kind="stable")
    values: list[Any] = [None] * len(ids)
    bs = max(64, settings.batch_size * 2)
    with torch.inference_mode():
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            value, _ = _target(teacher, collate([ids[i] for i in idx], pad_id), settings)
            for row, i in enumerate(idx):
                values[i] = value[row].float()
            progress("teacher targets", min(start + bs, len(order)), len(order))
    targets = torch.stack(values)
    if cache is not None:
        tmp = cache.with_name(cache.name + ".partial.npy")
        np.save(tmp, targets.numpy())
        os.replace(tmp, cache)
    return targets


def distill(
    teacher: Any,
    student: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
    settings: DistillSettings | None = None,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DistillResult:
    """Train `student` (in place) to imitate `teacher` on `texts`; returns what happened.

    The last `settings.dev_size` texts of a seeded shuffle are held out: the student is
    evaluated on them every `eval_every` steps (cosine to the teacher's embedding, or agreement
    with the teacher's / the gold label) and the best state is the one left in `student`.
    With `work_dir`, checkpoints go to `work_dir/checkpoint` every `checkpoint_every` steps;
    `resume=True` continues from the last one (same settings and data only).
    """
    import torch

    settings = settings or DistillSettings()
    if len(texts) < 10:
        raise LeanifyError(f"distillation needs transfer text; got {len(texts)} texts.",
                           fix="Give a file with at least a few thousand unlabelled sentences.")
    if labels is not None and len(labels) != len(texts):
        raise LeanifyError("labels and texts differ in length.")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    start_time = time.perf_counter()

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = _tokenize(tokenizer, texts, settings.max_length)
    perm = rng.permutation(len(ids))
    n_dev = min(settings.dev_size, max(1, len(ids) // 10))
    dev_idx, train_idx = perm[-n_dev:], perm[:-n_dev]
    label_t = torch.tensor(list(labels), dtype=torch.long) if labels is not None else None

    folder = Path(work_dir) if work_dir is not None else None
    fingerprint = _fingerprint(settings, texts, student)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    bar = _Progress(progress)

    teacher.eval()
    need_hidden = settings.hidden_weight > 0
    layer_map = settings.layer_map
    if need_hidden and layer_map is None:
        raise LeanifyError("a hidden-state loss needs a layer map (student layer -> teacher).",
                           fix="Pass layer_map, e.g. (1, 3, 5) for a 3-layer student of 6.")
    cache = (folder / f"teacher-{_targets_key(settings, texts, teacher)}.npy"
             if folder is not None else None)
    targets = _teacher_targets(teacher, ids, pad_id, settings, cache, bar.update)

    if settings.freeze_embeddings and hasattr(student, "get_input_embeddings"):
        student.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    steps_per_epoch = math.ceil(len(train_idx) / settings.batch_size)
    total = max(1, math.ceil(settings.epochs * steps_per_epoch))
    warm = max(1, int(settings.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))

    state: dict[str, Any] = {"fingerprint": fingerprint, "step": 0, "best_dev": None,
                             "bad_evals": 0, "elapsed_s": 0.0, "history": []}
    best: dict[str, Any] | None = None
    ckpt = folder / "checkpoint" if folder is not None else None
    if resume and ckpt is not None and (ckpt / "state.json").is_file():
        saved = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        if saved.get("fingerprint") != fingerprint:
            raise LeanifyError(
                "the checkpoint was made with other settings, data or student.", path=ckpt,
                fix="Resume with the same settings, or start over without --resume.")
        state, best = _load_checkpoint(ckpt, student, optimizer, scheduler)
        log(f"resuming at step {state['step']} of {total}")

    dev_metric = ("cosine to teacher" if settings.task == "embedding"
                  else "accuracy" if labels is not None else "agreement with teacher")

    def evaluate() -> float:
        student.eval()
        scores = []
        with torch.inference_mode():
            order = dev_idx[np.argsort([len(ids[i]) for i in dev_idx], kind="stable")]
            for start in range(0, len(order), 64):
                idx = order[start:start + 64]
                value, _ = _target(student, collate([ids[i] for i in idx], pad_id), settings)
                ref = targets[idx]
                if settings.task == "embedding":
                    scores.append(torch.nn.functional.cosine_similarity(value, ref, dim=-1))
                else:
                    gold = label_t[idx] if label_t is not None else ref.argmax(-1)
                    scores.append((value.argmax(-1) == gold).float())
        student.train()
        return float(torch.cat(scores).mean())

    def checkpoint(rng: Any = None) -> None:
        if ckpt is not None:
            state["elapsed_s"] = elapsed()
            _save_checkpoint(ckpt, student, optimizer, scheduler, state, best,
                             torch.get_rng_state() if rng is None else rng)

    resumed_elapsed = float(state.get("elapsed_s", 0.0))

    def elapsed() -> float:
        return resumed_elapsed + time.perf_counter() - start_time

    if not state["history"]:  # where the student starts: the bar it must clear
        state["history"].append({"step": 0, "loss": None, "dev": evaluate(), "elapsed_s": 0.0})
    stopped = "done"
    student.train()
    step = int(state["step"])
    step_rng, in_step = torch.get_rng_state(), False
    running = None
    try:
        while step < total:
            epoch = step // steps_per_epoch
            # the same seeded order per epoch, so a resumed run sees the batches it would have
            batches = length_batches([len(ids[i]) for i in train_idx], settings.batch_size,
                                     np.random.default_rng(settings.seed + 1 + epoch))
            for b in batches[step - epoch * steps_per_epoch:]:
                step_rng, in_step = torch.get_rng_state(), True  # a Ctrl-C'd step restarts here
                idx = train_idx[b]
                batch = collate([ids[i] for i in idx], pad_id)
                value, s_hidden = _target(student, batch, settings, need_hidden)
                loss = _loss(value, targets[idx], label_t[idx] if label_t is not None else None,
                             settings)
                if need_hidden:
                    with torch.inference_mode():
                        _, t_hidden = _target(teacher, batch, settings, True)
                    loss = loss + settings.hidden_weight * _hidden_loss(
                        s_hidden, [h.clone() for h in t_hidden], layer_map,
                        batch["attention_mask"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.clip)
                optimizer.step()
                scheduler.step()
                step += 1
                state["step"], in_step = step, False
                value = float(loss.detach())
                running = value if running is None else 0.98 * running + 0.02 * value
                bar.update("distilling", step, total, loss=running, dev=state["best_dev"])
                if step % settings.eval_every == 0 or step == total:
                    score = evaluate()
                    state["history"].append({"step": step, "loss": running, "dev": score,
                                             "elapsed_s": round(elapsed(), 1)})
                    if state["best_dev"] is None or score > state["best_dev"]:
                        state["best_dev"], state["bad_evals"] = score, 0
                        best = _state_dict(student)
                    else:
                        state["bad_evals"] += 1
                    if state["bad_evals"] >= settings.patience:
                        stopped = "early-stop"
                if step % settings.checkpoint_every == 0 and step < total:
                    checkpoint()
                if stopped != "done":
                    break
                if settings.time_budget_s is not None and elapsed() > settings.time_budget_s:
                    stopped = "time-budget"
                    break
                if step >= total:
                    break
            if stopped != "done":
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep the finished steps; `resume=True` redoes the interrupted one exactly
        checkpoint(step_rng if in_step else None)
        bar.close()
        raise
    bar.close()
    if stopped == "time-budget" or state["history"] == [] or state["history"][-1]["step"] != step:
        score = evaluate()
        state["history"].append({"step": step, "loss": running or 0.0, "dev": score,
                                 "elapsed_s": round(elapsed(), 1)})
        if state["best_dev"] is None or score > state["best_dev"]:
            state["best_dev"], best = score, _state_dict(student)
    if best is not None:
        student.load_state_dict(best)
    checkpoint()
    student.eval()
    log(f"distillation {stopped} at step {step}/{total}: best dev {dev_metric} "
        f"{state['best_dev']:.4f} in {elapsed() / 60:.1f} min")
    return DistillResult(
        steps=step, total_steps=total, epochs=round(step / steps_per_epoch, 3),
        best_dev=state["best_dev"], dev_metric=dev_metric, stopped=stopped,
        wall_s=round(elapsed(), 1), train_texts=len(train_idx), dev_texts=len(dev_idx),
        history=state["history"])


class _Progress:
    """A rich progress bar with loss and ETA on stderr (silent when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[str, Any] = {}

    def update(self, what: str, done: int, total: int, **fields: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what, total=total, info="", completed=done)
        info = " ".join(f"{k} {v:.4f}" for k, v in fields.items() if v is not None)
        self.bar.update(self.tasks[what], completed=done, total=total, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
