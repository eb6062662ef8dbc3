"""Structured pruning of BERT encoders: layers and FFN neurons, saved as a normal HF model."""

from __future__ import annotations

import copy

import pytest
import torch

from leanify.errors import LeanifyError
from leanify.prune.transformer import choose_layers, prune_encoder, round_width


@pytest.fixture(scope="module")
def bert4(minilm_path):
    """A 4-layer BERT (random weights, fixed seed) and real tokenized calibration batches."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertModel(config).eval()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    texts = ["The cat sat on the mat.", "A man is playing a guitar on stage tonight.",
             "Stocks fell sharply.", "She reads the letter twice before answering it."] * 4
    batches = [dict(tok(texts[i:i + 8], padding=True, return_tensors="pt")) for i in (0, 8)]
    return model, batches


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_round_width_keeps_kernel_friendly_multiples():
    assert round_width(1536 * 0.5, 16, 1536) == 768
    assert round_width(100, 16, 1536) == 96
    assert round_width(3, 16, 1536) == 16  # never below one multiple
    assert round_width(2000, 16, 1536) == 1536
    assert round_width(37.4, 1, 64) == 37


def test_prune_drops_layers_and_neurons_and_updates_config(bert4):
    model, batches = bert4
    student = copy.deepcopy(model)
    report = prune_encoder(student, batches, ffn_keep=0.5, layers_keep=2, round_to=16)
    assert len(student.encoder.layer) == 2 == student.config.num_hidden_layers
    assert student.config.intermediate_size == 64 == report.intermediate_after
    for layer in student.encoder.layer:
        assert layer.intermediate.dense.out_features == 64
        assert layer.output.dense.in_features == 64
    assert report.params_after == _params(student) < report.params_before == _params(model)
    assert len(report.kept_layers) == 2 and report.kept_layers == sorted(report.kept_layers)
    with torch.inference_mode():
        out = student(**batches[0]).last_hidden_state
    assert out.shape == model(**batches[0]).last_hidden_state.shape


def test_a_pruner_that_prunes_nothing_is_an_error(bert4):
    model, batches = bert4
    with pytest.raises(LeanifyError, match="removed no parameters"):
        prune_encoder(copy.deepcopy(model), batches, ffn_keep=1.0, layers_keep=None)
    with pytest.raises(LeanifyError, match="ffn_keep"):
        prune_encoder(copy.deepcopy(model), batches, ffn_keep=0.0)
    with pytest.raises(LeanifyError, match="between 1 and 4"):
        prune_encoder(copy.deepcopy(model), batches, layers_keep=9)


def test_depth_pruning_drops_the_layer_that_changes_the_output_least(bert4):
    model, batches = bert4
    model = copy.deepcopy(model)
    # make layer 2 a near identity: its residual branches add nothing, and its input is
    # already layer-normalized, so LayerNorm(x + 0) ~ x
    layer = model.encoder.layer[2]
    with torch.no_grad():
        for linear in (layer.attention.output.dense, layer.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
    kept, scores = choose_layers(model, batches, keep=3)
    assert kept == [0, 1, 3]
    assert scores[2] == max(scores.values()) and scores[2] > 0.999
    assert len(model.encoder.layer) == 4  # the trial removals are undone


@pytest.mark.parametrize("criterion", ["activation", "magnitude"])
def test_importance_keeps_the_neurons_that_matter(bert4, criterion):
    model, batches = bert4
    model = copy.deepcopy(model)
    dead = torch.arange(0, 128, 2)  # silence every even neuron of every layer
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.output.dense.weight[:, dead] = 0
            layer.intermediate.dense.weight[dead] *= 0.01
    before = model.encoder.layer[0].output.dense.weight.clone()
    prune_encoder(model, batches, ffn_keep=0.5, importance=criterion, round_to=16)
    kept_cols = model.encoder.layer[0].output.dense.weight
    # every kept neuron is a live (odd) one: its output weights are the odd columns
    assert torch.equal(kept_cols, before[:, 1::2])


def test_taylor_importance_needs_a_loss_and_uses_it(bert4):
    model, batches = bert4
    with pytest.raises(LeanifyError, match="Taylor"):
        prune_encoder(copy.deepcopy(model), batches, ffn_keep=0.5, importance="taylor")

    def loss(m, batch):
        return m(**batch).last_hidden_state.pow(2).mean()

    student = copy.deepcopy(model)
    report = prune_encoder(student, batches, ffn_keep=0.5, importance="taylor", loss_fn=loss)
    assert report.intermediate_after == 64
    assert all(p.grad is None for p in student.parameters())
