"""Causal LMs: Hugging Face folders recognised from config.json, KV-cache sizes from the
config, and the packaged SmolLM2 GGUF converted, cached and generating."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models import causal_lm
from leanify.models.load import load


def test_llama_and_gpt2_folders_are_text_generators(tiny_llama, tiny_gpt2):
    llama, gpt2 = load(tiny_llama), load(tiny_gpt2)
    assert llama.meta["task"] == gpt2.meta["task"] == "text-generation"
    assert llama.meta["architecture"] == "LlamaForCausalLM"
    assert gpt2.meta["architecture"] == "GPT2LMHeadModel"  # not *ForCausalLM: still one
    # 2 (K and V) x 2 layers x kv heads x head dim 16 x 4 bytes, per token
    assert llama.meta["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # 2 of 4 heads are KV
    assert gpt2.meta["kv_bytes_per_token"] == 2 * 2 * 4 * 16 * 4
    assert llama.meta["vocab_size"] == 512 and llama.tokenizer_path == tiny_llama


def test_recognition_from_the_config_alone():
    assert causal_lm.is_causal_lm({"architectures": ["Qwen2ForCausalLM"]})
    assert causal_lm.is_causal_lm({"model_type": "mistral"})
    assert not causal_lm.is_causal_lm({"architectures": ["BertModel"], "model_type": "bert"})
    assert causal_lm.kv_bytes(30, 3, 64, 1) == 46080  # SmolLM2-135M, fp32
    assert causal_lm.kv_bytes(None, 3, 64, 1) is None


def test_a_causal_lm_with_custom_code_is_refused(tiny_llama, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    for file in tiny_llama.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilLM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LeanifyError, match="never runs code shipped with a model"):
        load(folder)


@pytest.fixture(scope="session")
def smollm2(smollm2_cache):
    """The packaged GGUF, converted once into a private cache; (artifact, seconds taken)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LEANIFY_CACHE", str(smollm2_cache))
    start = time.perf_counter()
    artifact = load("smollm2")
    yield artifact, time.perf_counter() - start
    mp.undo()


def test_smollm2_gguf_converts_once_and_generates(smollm2, smollm2_cache, monkeypatch):
    artifact, first_s = smollm2
    assert artifact.meta["task"] == "text-generation"
    assert artifact.meta["num_hidden_layers"] == 30 and artifact.meta["num_key_value_heads"] == 3
    assert artifact.meta["vocab_size"] == 49152 and 134e6 < artifact.meta["params"] < 135e6
    assert artifact.meta["converted_from"]["format"] == "gguf"
    assert artifact.path.parent.parent == smollm2_cache  # cache/gguf/<sha256>
    monkeypatch.setenv("LEANIFY_CACHE", str(smollm2_cache))
    start = time.perf_counter()
    again = load("smollm2")
    assert again.path == artifact.path and time.perf_counter() - start < min(5.0, first_s)

    from leanify.models.inputs import load_tokenizer
    from leanify.runtimes import open_generator

    tok, _pad, _ = load_tokenizer(artifact.tokenizer_path)
    runner = open_generator(artifact, threads=2)
    ids = np.asarray([tok.encode("The capital of France is").ids], np.int64)
    gen = runner.generate(ids, 4)
    assert gen.tokens.shape == (1, 4) and len(gen.token_ms) == 4
    # the loop is greedy decoding: transformers' own generate agrees token for token
    import torch

    with torch.inference_mode():
        ref = runner.model.generate(torch.from_numpy(ids), max_new_tokens=4, do_sample=False)
    assert gen.tokens.tolist() == ref[:, ids.shape[1]:].tolist()
    assert "Paris" in tok.decode(gen.tokens[0].tolist())
