"""prune-transformer and distill passes: normal HF models out, lineage kept, work reused."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from leanify.errors import LeanifyError
from leanify.models.load import load
from leanify.passes.registry import PassContext, apply, make_config

SAMPLE = str(resources.files("leanify.data").joinpath("sample_texts.txt"))


def _calibration(folder, n=2):
    from leanify.measure.data import text_batches

    texts = ["A man is playing a guitar.", "The cat sleeps.", "Markets rallied today.",
             "She wrote a long letter to her brother in Rome."] * 4

    def batches():
        yield from list(text_batches(texts, folder, 8, 64, ["input_ids", "attention_mask",
                                                            "token_type_ids"]))[:n]

    return batches


@pytest.mark.slow
def test_pruned_minilm_loads_with_plain_from_pretrained(minilm_path, tmp_path):
    """The acceptance check: what leanify saves, AutoModel loads, with the same outputs."""
    from transformers import AutoModel, AutoTokenizer

    from leanify.passes.prune_transformer import PruneTransformerConfig, save_hf
    from leanify.prune.transformer import prune_encoder

    tok = AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tok(["A plane is taking off.", "A man is playing a large flute on stage."],
                     padding=True, return_tensors="pt"))
    model = AutoModel.from_pretrained(minilm_path).eval()
    prune_encoder(model, [batch], layers_keep=3, ffn_keep=0.5)
    with torch.inference_mode():
        before_saving = model(**batch).last_hidden_state
    out = tmp_path / "pruned"
    out.mkdir()
    save_hf(model, load(minilm_path), out, PruneTransformerConfig(layers=3, ffn_keep=0.5),
            {}, batch)

    reloaded = AutoModel.from_pretrained(out).eval()  # plain transformers, nothing else
    with torch.inference_mode():
        after = reloaded(**batch).last_hidden_state
    assert torch.allclose(before_saving, after, atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["intermediate_size"] == 768
    artifact = load(out)  # sentence-transformers pooling travels with it
    assert artifact.meta["pooling"] == "mean" and artifact.meta["task"] == "sentence-embedding"


def test_prune_then_distill_passes_on_a_tiny_bert(tiny_hf, tmp_path):
    ctx = PassContext(work_dir=tmp_path, calibration=_calibration(tiny_hf))
    source = load(tiny_hf)
    pruned = apply(source, make_config("prune-transformer", layers=1, ffn_keep=0.5,
                                       round_to=16), ctx)
    assert pruned.format == "hf"
    assert pruned.meta["pruned_from"] == str(tiny_hf)
    assert pruned.meta["prune"]["kept_layers"] in ([0], [1])
    assert pruned.meta["params"] < source.meta["params"]
    config = json.loads((pruned.path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["intermediate_size"] == 32

    distill = make_config("distill", data=SAMPLE, epochs=0.3, batch_size=32, lr=5e-4)
    student = apply(pruned, distill, ctx)
    record = student.meta["distill"]
    assert record["steps"] > 0 and record["dev_metric"] == "cosine to teacher"
    assert student.meta["passes"] == [pruned.meta["passes"][0], distill.label()]
    assert (tmp_path / "training").is_dir()  # checkpoints outside the output folder

    again = apply(pruned, distill, ctx)  # the same pass on the same input: reused, not retrained
    assert again.path == student.path
    assert again.sha256() == student.sha256()


def test_pruning_an_onnx_file_or_distilling_without_teacher_is_a_clear_error(
        tiny_hf, tiny_onnx, tmp_path):
    ctx = PassContext(work_dir=tmp_path)
    with pytest.raises(LeanifyError, match="takes hf"):
        apply(load(tiny_onnx), make_config("prune-transformer", layers=1), ctx)
    with pytest.raises(LeanifyError, match="no teacher"):
        apply(load(tiny_hf), make_config("distill", data=SAMPLE), ctx)
    with pytest.raises(LeanifyError, match="transfer text"):
        apply(load(tiny_hf), make_config("distill", teacher=str(tiny_hf)), ctx)


def test_transfer_data_reads_labels_for_classifiers(tmp_path):
    from leanify.passes.distill import transfer_data

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\nawful\t0\ngood film\t1\n", encoding="utf-8")
    texts, labels = transfer_data(str(data), "text-classification", {"0": "NEG", "1": "POS"})
    assert texts == ["good film", "awful", "good film"] and labels == [1, 0, 1]
    texts, labels = transfer_data(str(data), "sentence-embedding", None)
    assert texts == ["good film", "awful"] and labels is None  # unlabelled: unique texts


def test_the_student_keeps_the_input_untouched(tiny_hf, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()}
    ctx = PassContext(work_dir=tmp_path, calibration=_calibration(tiny_hf))
    apply(load(tiny_hf), make_config("prune-transformer", ffn_keep=0.5), ctx)
    after = {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()}
    assert before == after
