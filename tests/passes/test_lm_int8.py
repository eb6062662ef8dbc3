"""`lm-int8-dynamic`: a causal LM with int8 linear weights, applied when it opens, scored by
perplexity and generating; and the planner offers it for causal LMs only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.measure.evaluate import evaluate
from leanify.models.load import load
from leanify.passes.registry import PassContext, apply, make_config
from leanify.search.plan import plan

DEMO = Path(__file__).resolve().parents[2] / "examples" / "data" / "shakespeare" / "demo.txt"


@pytest.fixture
def ctx(tmp_path) -> PassContext:
    return PassContext(work_dir=tmp_path / "work", threads=1)


def test_int8_weights_of_a_gpt2_score_and_generate(tiny_gpt2, ctx, tmp_path):
    source = load(tiny_gpt2)
    before = {f.name: f.read_bytes() for f in tiny_gpt2.iterdir() if f.is_file()}
    out = apply(source, make_config("lm-int8-dynamic"), ctx)
    assert out.meta["runtime"] == {"weights": "int8-dynamic"}
    assert out.meta["task"] == "text-generation" and out.meta["kv_bytes_per_token"] == 1024
    assert before == {f.name: f.read_bytes() for f in tiny_gpt2.iterdir() if f.is_file()}

    from leanify.runtimes import open_generator, open_runner

    runner = open_runner(out, threads=1)
    assert runner.details == {"weights": "int8-dynamic"}
    import torch

    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
               for m in runner.model.modules())
    text = tmp_path / "text.txt"
    text.write_text("\n".join(DEMO.read_text().splitlines()[:40]), encoding="utf-8")
    data = read_dataset(text, "perplexity")
    fp32 = evaluate(source, data, "perplexity", max_length=64, threads=1)
    int8 = evaluate(out, data, "perplexity", max_length=64, threads=1)
    assert int8.details["token_ids_sha256"] == fp32.details["token_ids_sha256"]
    assert int8.value != fp32.value  # quantization really ran
    assert int8.value == pytest.approx(fp32.value, rel=0.05)
    gen = open_generator(out, threads=1).generate(np.arange(1, 17)[None], 4)
    assert gen.tokens.shape == (1, 4)


def test_the_planner_offers_int8_weights_to_causal_lms_only(tiny_llama, tiny_hf):
    names = [c.name for c in plan(load(tiny_llama), only=["all"])]
    assert "torch-int8-weights" in names  # beside the OpenVINO GenAI ones
    assert {n for n in names if not n.startswith("openvino-")} == {"torch-int8-weights"}
    assert "torch-int8-weights" not in [c.name for c in plan(load(tiny_hf))]


def test_the_pass_refuses_an_encoder(tiny_hf, ctx):
    with pytest.raises(LeanifyError, match="takes causal language models"):
        apply(load(tiny_hf), make_config("lm-int8-dynamic"), ctx)
