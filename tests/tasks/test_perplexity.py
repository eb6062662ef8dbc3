"""`perplexity`: the Hugging Face sliding-window protocol, checked against a straightforward
computation written here from the protocol's description (labels -100 on the overlap, the
model's own cross-entropy loss), on a Llama and a GPT-2 built from configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.measure.evaluate import evaluate
from leanify.models.load import load

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data" / "shakespeare" / "demo.txt"


def reference_perplexity(folder: Path, text: str, max_length: int, stride: int) -> float:
    """transformers' documented recipe, independent of leanify: tokenizer + model loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(text, return_tensors="pt").input_ids
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        valid = int((target_ids != -100).sum()) - 1  # the labels shift left by one
        nll_sum += float(loss) * valid
        n_tokens += valid
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


@pytest.fixture(scope="module")
def demo_text(tmp_path_factory) -> Path:
    """The first 120 lines of the shipped demo text (a few thousand tokens)."""
    path = tmp_path_factory.mktemp("ppl") / "demo.txt"
    path.write_text("\n".join(DEMO.read_text().splitlines()[:120]), encoding="utf-8")
    return path


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_perplexity_agrees_with_the_reference_recipe(model, demo_text, request):
    folder = request.getfixturevalue(model)
    dataset = read_dataset(demo_text, "perplexity")
    metric = evaluate(load(folder), dataset, "perplexity", max_length=128, threads=1)
    details = metric.details
    assert metric.name == "perplexity" and metric.higher_is_better is False
    assert details["window"] == 128 and details["stride"] == 64 and details["windows"] > 10
    assert details["scored_tokens"] == details["tokens"] - 1  # every token but the first once
    text = "\n".join(dataset.texts)
    expected = reference_perplexity(folder, text, 128, 64)
    assert metric.value == pytest.approx(expected, rel=0.01)
    # an untrained model over 512 tokens is near uniform: a real check that logits were used
    assert 100 < metric.value < 2000


def test_perplexity_refuses_an_encoder(tiny_hf, demo_text):
    with pytest.raises(LeanifyError, match="perplexity scores causal language models"):
        evaluate(load(tiny_hf), read_dataset(demo_text, "perplexity"), "perplexity")


def test_the_gate_reads_perplexity_as_a_relative_increase():
    from leanify.search.select import Targets, judge

    def candidate(value):
        return {"metric": {"name": "perplexity", "value": value, "higher_is_better": False,
                           "details": {"drop_unit": "percent"}},
                "points": [{"batch_size": 1, "seq_len": 128, "speedup": 1.5}],
                "latency_ms": {"p50": 10.0}}

    base = {"metric": {"value": 40.0}}
    ok, bad = candidate(40.6), candidate(41.0)  # +1.5% and +2.5%
    judge(ok, base, Targets(max_drop=2.0))
    judge(bad, base, Targets(max_drop=2.0))
    assert ok["accepted"] and ok["metric_drop"] == pytest.approx(1.5)
    assert not bad["accepted"] and "dropped 2.50% > allowed 2%" in bad["reason"]
