"""Quality metrics on real models and real data, each checked against an independent computation.

The STS-B reference: all-MiniLM-L6-v2 fp32 on the full STS-B test split scores Spearman x100 =
82.03 (measured on this machine with max length 128; see examples/data/stsb/PROVENANCE.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import leanify
from leanify.errors import LeanifyError
from leanify.measure import evaluate as ev
from leanify.measure.data import Dataset, read_dataset
from leanify.measure.evaluate import Metric, embed, evaluate, pool, reference_outputs

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
STS_TEST = DATA / "stsb" / "sts-test.csv"
SST2_DEV = DATA / "sst2" / "dev.tsv"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


@pytest.fixture(scope="module")
def minilm():
    return leanify.load("minilm")


@pytest.fixture(scope="module")
def sts_test():
    return read_dataset(STS_TEST, "embedding-similarity")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, dst / name)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer BERT sentiment classifier built from a config (random weights)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        initializer_range=0.2,
    )
    model = BertForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("tiny_classifier")
    model.save_pretrained(folder, safe_serialization=True)
    _copy_tokenizer(minilm_path, folder)
    return folder


def _perturbed_copy(src: Path, dst: Path, scale: float, seed: int = 0) -> Path:
    """A copy of an HF folder whose weights carry Gaussian noise (scale x each tensor's std)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    noisy = {}
    for name, t in weights.items():
        if t.is_floating_point() and t.numel() > 1:
            t = t + torch.randn(t.shape, generator=g) * float(t.std()) * scale
        noisy[name] = t.contiguous()
    save_file(noisy, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _independent_sts(model_dir: Path, pairs, scores, max_length: int = 128) -> float:
    """Spearman x100 with transformers AutoModel + manual mean pooling, no leanify code."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def encode(sentences):
        out = []
        for i in range(0, len(sentences), 32):
            enc = tok(sentences[i:i + 32], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        return torch.cat(out).numpy()

    a = encode([p[0] for p in pairs])
    b = encode([p[1] for p in pairs])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(stats.spearmanr(cos, scores).statistic) * 100


# --- embedding-similarity -------------------------------------------------------------


def test_sts_subset_matches_independent_computation(minilm, minilm_path, sts_test):
    subset = sts_test.subset(list(range(0, 1379, 6))[:200])  # spread over every genre
    metric = evaluate(minilm, subset, "embedding-similarity")
    assert isinstance(metric, Metric)
    assert metric.name == "spearman" and metric.higher_is_better
    assert metric.details["pairs"] == 200 and metric.details["max_length"] == 128
    assert metric.value > 75
    independent = _independent_sts(minilm_path, subset.pairs, subset.scores)
    assert metric.value == pytest.approx(independent, abs=0.01)


@pytest.mark.acceptance
def test_full_sts_test_reference(minilm, sts_test):
    metric = evaluate(minilm, sts_test, "embedding-similarity")
    assert len(sts_test) == 1379
    assert metric.value == pytest.approx(82.03, abs=0.05)
    assert 70 < metric.details["pearson"] < 90


def test_classifier_refused_for_similarity(tiny_classifier, sts_test):
    with pytest.raises(LeanifyError, match="text classifier"):
        evaluate(leanify.load(tiny_classifier), sts_test.subset(range(5)),
                 "embedding-similarity")


# --- text-classification ---------------------------------------------------------------


def _independent_accuracy(model_dir: Path, texts, labels) -> tuple[float, np.ndarray]:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    preds = []
    for text in texts:  # one at a time: no padding at all
        enc = tok(text, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            preds.append(int(model(**enc).logits.argmax(-1)))
    preds = np.array(preds)
    return float(np.mean(preds == np.array([int(x) for x in labels]))) * 100, preds


def test_text_classification_matches_independent(tiny_classifier):
    from sklearn.metrics import f1_score

    artifact = leanify.load(tiny_classifier)
    assert artifact.meta["labels"] == {"0": "negative", "1": "positive"}
    data = read_dataset(SST2_DEV, "text-classification").subset(range(50))
    metric = evaluate(artifact, data, "text-classification", batch_size=8)
    expected, preds = _independent_accuracy(tiny_classifier, data.texts, data.labels)
    assert metric.name == "accuracy"
    assert metric.value == pytest.approx(expected, abs=1e-9)
    assert metric.details["accuracy"] == metric.value and metric.details["rows"] == 50
    gold = [int(x) for x in data.labels]
    assert metric.details["macro_f1"] == pytest.approx(
        f1_score(gold, preds, average="macro", zero_division=0) * 100)
    assert metric.details["label_map"] == {"1": "positive", "0": "negative"}
    assert sum(metric.details["predicted_counts"].values()) == 50
    again = evaluate(artifact, data, "text-classification", batch_size=16)
    assert again.value == metric.value  # deterministic, whatever the batching


def test_unknown_labels_fail_before_the_model_runs(tiny_classifier, monkeypatch):
    data = read_dataset(SST2_DEV, "text-classification").subset(range(4))
    data.labels = ["0", "neutral", "1", "1"]

    def no_runner(*args, **kwargs):
        raise AssertionError("the model must not be opened for bad data")

    monkeypatch.setattr(ev, "_open", no_runner)
    with pytest.raises(LeanifyError) as info:
        evaluate(leanify.load(tiny_classifier), data, "text-classification")
    assert "'neutral'" in str(info.value) and "positive" in str(info.value)
    assert str(SST2_DEV) in str(info.value)


def test_embedding_model_refused_for_classification(minilm):
    data = read_dataset(SST2_DEV, "text-classification").subset(range(3))
    with pytest.raises(LeanifyError, match="not a text classifier"):
        evaluate(minilm, data, "text-classification")


# --- fidelity --------------------------------------------------------------------------


def test_fidelity_embeddings_self_and_perturbed(minilm, minilm_path, sts_test, tmp_path):
    data = read_dataset(STS_TEST, "fidelity").subset(range(0, 1379, 70))
    texts = data.all_texts()
    assert len(texts) == 2 * len(data) == 40
    reference = reference_outputs(minilm, texts)
    assert reference.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)

    same = evaluate(minilm, data, "fidelity", reference=reference)
    assert same.name == "cosine_fidelity"
    assert same.value == pytest.approx(100.0, abs=1e-3)

    noisy = leanify.load(_perturbed_copy(minilm_path, tmp_path / "noisy", scale=0.05))
    worse = evaluate(noisy, data, "fidelity", reference=reference)
    assert 50 < worse.value < 99.9
    assert worse.details["min_cosine"] <= worse.value
    # The original model itself works as the reference too.
    assert evaluate(noisy, data, "fidelity", reference=minilm).value == pytest.approx(
        worse.value, abs=1e-4)


def test_fidelity_logits(tiny_classifier, tmp_path):
    data = read_dataset(SST2_DEV, "fidelity").subset(range(40))
    original = leanify.load(tiny_classifier)
    reference = reference_outputs(original, data.texts)
    assert reference.shape == (40, 2)
    same = evaluate(original, data, "fidelity", reference=reference)
    assert same.name == "top1_agreement" and same.value == 100.0
    assert same.details["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    noisy = leanify.load(_perturbed_copy(tiny_classifier, tmp_path / "noisy", scale=0.5))
    worse = evaluate(noisy, data, "fidelity", reference=reference)
    assert worse.details["mean_kl"] > 1e-4
    assert worse.value <= 100.0
    expected = np.mean(np.argmax(reference_outputs(noisy, data.texts), 1)
                       == np.argmax(reference, 1)) * 100
    assert worse.value == pytest.approx(expected)


def test_fidelity_onnx_export_against_hf(tiny_hf, tiny_onnx):
    """The same tiny encoder in ONNX Runtime agrees with its PyTorch original."""
    data = read_dataset(SST2_DEV, "fidelity").subset(range(24))
    reference = reference_outputs(leanify.load(tiny_hf), data.texts)
    onnx_model = leanify.load(tiny_onnx, tokenizer=tiny_hf)
    metric = evaluate(onnx_model, data, "fidelity", reference=reference, batch_size=5)
    assert metric.value == pytest.approx(100.0, abs=1e-3)


def test_static_shape_export_runs_in_fixed_batches(tiny_hf, tiny_encoder, tmp_path):
    """An ONNX export with a fixed (batch 4, sequence 32) shape: padded batches, same result."""
    import copy
    import warnings

    import torch

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.full((4, 32), 1000)
    path = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(tiny_encoder), (ids, torch.ones_like(ids),
                          torch.zeros_like(ids)), str(path), dynamo=False, input_names=names,
                          output_names=["last_hidden_state"], opset_version=17)
    static = leanify.load(path, tokenizer=tiny_hf)
    assert static.inputs[0].shape == (4, 32)
    data = read_dataset(SST2_DEV, "fidelity").subset(range(10))  # 10 texts: 3 batches of 4
    reference = reference_outputs(leanify.load(tiny_hf), data.texts, max_length=32)
    metric = evaluate(static, data, "fidelity", reference=reference)
    assert metric.value == pytest.approx(100.0, abs=1e-3)
    assert metric.details["max_length"] == 32


def test_fidelity_reference_problems(minilm, tiny_onnx):
    data = read_dataset(SST2_DEV, "fidelity").subset(range(5))
    with pytest.raises(LeanifyError, match="reference"):
        evaluate(minilm, data, "fidelity")
    with pytest.raises(LeanifyError, match="one row per text"):
        evaluate(minilm, data, "fidelity", reference=np.zeros((4, 384), dtype=np.float32))
    with pytest.raises(LeanifyError, match="tokenizer") as info:
        evaluate(leanify.load(tiny_onnx), data, "fidelity", reference=np.zeros((5, 32)))
    assert str(tiny_onnx) in str(info.value)


def test_wrong_dataset_for_task(minilm):
    data = read_dataset(SST2_DEV, "fidelity").subset(range(5))
    with pytest.raises(LeanifyError, match="sentence pairs"):
        evaluate(minilm, data, "embedding-similarity")
    with pytest.raises(LeanifyError, match="unknown task"):
        evaluate(minilm, data, "bleu")


# --- pooling ---------------------------------------------------------------------------


def test_pooling_modes_follow_the_mask():
    hidden = np.array([[[1.0, 2.0], [3.0, 6.0], [100.0, -100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 4.0]])
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[1.0, 2.0]])
    np.testing.assert_allclose(pool(hidden, mask, "max"), [[3.0, 6.0]])
    np.testing.assert_allclose(pool(hidden, mask, "lasttoken"), [[3.0, 6.0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean+cls"), [[1.0, 2.0, 2.0, 4.0]])
    with pytest.raises(LeanifyError, match="pooling"):
        pool(hidden, mask, "median")


def test_embed_normalises_per_meta(tiny_hf):
    from leanify.runtimes import open_runner

    artifact = leanify.load(tiny_hf)
    texts = ["a short one", "a much longer sentence with many more words in it", "mid"]
    runner = open_runner(artifact)
    try:
        raw = embed(runner, artifact, texts, batch_size=2)
        normed_artifact = type(artifact)(artifact.format, artifact.path, artifact.name,
                                         artifact.inputs, {**artifact.meta, "normalize": True})
        normed = embed(runner, normed_artifact, texts, batch_size=2)
        one_by_one = np.concatenate([embed(runner, artifact, [t]) for t in texts])
    finally:
        runner.close()
    assert raw.shape == (3, 32) and raw.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(raw, one_by_one, atol=1e-5)  # padding does not leak in


def test_metric_as_dict():
    m = Metric("accuracy", 90.0, details={"rows": 10})
    assert m.as_dict() == {"name": "accuracy", "value": 90.0, "higher_is_better": True,
                           "details": {"rows": 10}}
    assert len(Dataset(Path("x"), "fidelity", texts=["a"])) == 1
