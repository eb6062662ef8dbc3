"""The distillation trainer: it learns, it resumes exactly, it stops when told."""

from __future__ import annotations

import copy
import json
from importlib import resources

import numpy as np
import pytest
import torch

from leanify.errors import LeanifyError
from leanify.prune.transformer import prune_encoder
from leanify.train.distill import DistillSettings, distill, length_batches


@pytest.fixture(scope="module")
def texts() -> list[str]:
    raw = resources.files("leanify.data").joinpath("sample_texts.txt").read_text("utf-8")
    return [line.strip() for line in raw.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tok(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def _bert(layers: int = 4, classes: int | None = None):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=classes or 2)
    return (BertForSequenceClassification(config) if classes else BertModel(config)).eval()


def _student(teacher, tok, texts):
    student = copy.deepcopy(teacher)
    batches = [dict(tok(texts[:16], padding=True, truncation=True, max_length=32,
                        return_tensors="pt"))]
    prune_encoder(student, batches, ffn_keep=0.5, layers_keep=2, round_to=8)
    return student


SETTINGS = DistillSettings(epochs=2, batch_size=16, lr=5e-4, max_length=32, dev_size=60,
                           eval_every=20, checkpoint_every=10, patience=100)


def test_length_batches_cover_every_text_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(3, 60, size=1000))
    batches = length_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 10  # random batches would spread over ~50 tokens


def test_embedding_student_gets_closer_to_its_teacher(tok, texts, tmp_path, minilm_path):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(minilm_path).eval()  # real MiniLM: real embeddings
    student = copy.deepcopy(teacher)
    batches = [dict(tok(texts[:32], padding=True, return_tensors="pt"))]
    prune_encoder(student, batches, ffn_keep=0.25, layers_keep=1)
    settings = DistillSettings(**{**SETTINGS.__dict__, "epochs": 1.0, "lr": 2e-4})
    result = distill(teacher, student, tok, texts, settings=settings, work_dir=tmp_path,
                     progress=False, log=lambda _m: None)
    assert result.stopped == "done" and result.steps == result.total_steps
    assert result.dev_metric == "cosine to teacher"
    start, best = result.history[0], result.best_dev
    assert start["step"] == 0
    assert best > start["dev"] + 0.1, result.history  # it learned (~0.35 -> ~0.55 here)
    assert best == max(h["dev"] for h in result.history[1:])
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert saved["step"] == result.steps


def test_resume_after_ctrl_c_gives_the_same_student(tok, texts, tmp_path, monkeypatch):
    teacher = _bert()
    settings = DistillSettings(**{**SETTINGS.__dict__, "epochs": 1.0})
    straight = _student(teacher, tok, texts)
    distill(teacher, straight, tok, texts, settings=settings, progress=False,
            log=lambda _m: None)

    interrupted = _student(teacher, tok, texts)
    real_clip, calls = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def clip_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 17:  # mid-step, between two checkpoints
            raise KeyboardInterrupt
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_stop)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, interrupted, tok, texts, settings=settings, work_dir=tmp_path,
                progress=False, log=lambda _m: None)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 16

    resumed = _student(teacher, tok, texts)
    messages: list[str] = []
    distill(teacher, resumed, tok, texts, settings=settings, work_dir=tmp_path, resume=True,
            progress=False, log=messages.append)
    assert any("resuming at step 16" in m for m in messages)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_refuses_a_checkpoint_of_other_settings(tok, texts, tmp_path):
    teacher = _bert()
    distill(teacher, _student(teacher, tok, texts), tok, texts,
            settings=DistillSettings(**{**SETTINGS.__dict__, "epochs": 0.3}),
            work_dir=tmp_path, progress=False, log=lambda _m: None)
    with pytest.raises(LeanifyError, match="other settings"):
        distill(teacher, _student(teacher, tok, texts), tok, texts,
                settings=DistillSettings(**{**SETTINGS.__dict__, "lr": 1e-3}),
                work_dir=tmp_path, resume=True, progress=False, log=lambda _m: None)


def test_time_budget_stops_early_and_keeps_the_best(tok, texts):
    teacher = _bert()
    student = _student(teacher, tok, texts)
    settings = DistillSettings(**{**SETTINGS.__dict__, "epochs": 50, "time_budget_s": 2.0})
    result = distill(teacher, student, tok, texts, settings=settings, progress=False,
                     log=lambda _m: None)
    assert result.stopped == "time-budget"
    assert result.steps < result.total_steps
    assert result.wall_s < 30


def test_classifier_distills_with_labels_and_hidden_states(tok, texts):
    teacher = _bert(classes=2)
    with torch.inference_mode():  # labels the teacher can be imitated on
        enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        labels = teacher(**enc).logits.argmax(-1).tolist()
    student = _student(teacher, tok, texts)
    settings = DistillSettings(**{**SETTINGS.__dict__, "task": "classification",
                                  "hidden_weight": 1.0, "layer_map": (1, 3)})
    result = distill(teacher, student, tok, texts, labels=labels, settings=settings,
                     progress=False, log=lambda _m: None)
    assert result.dev_metric == "accuracy"
    assert result.best_dev >= result.history[0]["dev"]
    assert result.best_dev > 0.6


def test_bad_inputs_are_clear_errors(tok, texts):
    teacher = _bert()
    with pytest.raises(LeanifyError, match="transfer text"):
        distill(teacher, copy.deepcopy(teacher), tok, texts[:3], progress=False)
    with pytest.raises(LeanifyError, match="layer map"):
        distill(teacher, copy.deepcopy(teacher), tok, texts, progress=False,
                settings=DistillSettings(hidden_weight=1.0))
    with pytest.raises(LeanifyError, match="unknown distillation task"):
        DistillSettings(task="translation")
