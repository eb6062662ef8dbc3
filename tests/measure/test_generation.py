"""The generation workload: prompts, the decode loop's timings, and `leanify bench` on two
causal LMs (Llama and GPT-2, built from configs), each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from leanify.measure import generation, workload
from leanify.models.load import load


def test_prompts_are_fresh_windows_of_exact_length(tiny_llama):
    prompts = generation.Prompts(load(tiny_llama))
    assert prompts.source.startswith("bundled text")
    first, second = prompts.next(2, 64), prompts.next(2, 64)
    assert first.shape == second.shape == (2, 64)
    assert not np.array_equal(first[0], first[1])  # rows of one call differ
    assert not np.array_equal(first, second)  # and calls differ (no prefix-cache hits)
    assert prompts.next(1, 50_000).shape == (1, 50_000)  # longer than the text: repeated
    assert workload.for_artifact(load(tiny_llama)) is workload.GENERATION


def test_greedy_loop_matches_transformers_generate(tiny_gpt2):
    import torch

    from leanify.runtimes import open_generator

    runner = open_generator(load(tiny_gpt2), threads=1)
    ids = generation.Prompts(runner.artifact).next(2, 24)
    gen = runner.generate(ids, 6)
    with torch.inference_mode():
        ref = runner.model.generate(torch.from_numpy(ids), max_new_tokens=6, do_sample=False,
                                    min_new_tokens=6, pad_token_id=0)
    assert gen.tokens.tolist() == ref[:, 24:].tolist()
    assert len(gen.token_ms) == 6 and gen.token_ms == sorted(gen.token_ms)
    figures = generation.call_figures({"token_ms": gen.token_ms}, 2, 24)
    assert figures["prefill_tokens_per_s"] == pytest.approx(48_000 / gen.ttft_ms)
    assert figures["decode_tokens_per_s"] == pytest.approx(
        2 * 5 * 1000 / (gen.e2e_ms - gen.ttft_ms))


def test_cli_bench_two_causal_lms(tmp_path, tiny_llama, tiny_gpt2):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "leanify.cli", "bench", str(tiny_llama), str(tiny_gpt2),
         "--prompt-tokens", "32", "--new-tokens", "8", "--rounds", "2", "--threads", "1",
         "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TTFT" in proc.stdout
    record = json.loads(out.read_text())
    assert record["workload"]["name"] == "generation" and record["workload"]["new_tokens"] == 8
    rows = {r["model"]: r for r in record["results"]}
    assert set(rows) == {tiny_llama.name, tiny_gpt2.name}
    for row in rows.values():
        assert row["calls"] == 2 and row["concurrency"] == 1 and row["prompt_tokens"] == 32
        assert 0 < row["ttft_ms"]["p50"] < row["e2e_ms"]
        assert 0 < row["tpot_ms"]["p50"] <= row["tpot_ms"]["p95"]
        assert row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0
        assert row["peak_rss_mb"] > 0
    # KV cache from the config: per-token bytes x (prompt + new tokens)
    assert rows[tiny_llama.name]["kv_cache_mb"] == round(512 * 40 / 2**20, 3)
    assert rows[tiny_gpt2.name]["kv_cache_mb"] == round(1024 * 40 / 2**20, 3)
    assert "decode_speedup" in rows[tiny_gpt2.name]["vs_baseline"]
    models = {m["name"]: m for m in record["models"]}
    assert models[tiny_llama.name]["runtime"] == "torch-generate"
    assert models[tiny_llama.name]["load_s"] > 0


def test_bench_refuses_mixing_a_causal_lm_with_an_encoder(tiny_llama, tiny_hf):
    from leanify.errors import LeanifyError
    from leanify.measure.bench import BenchSession, BenchSettings

    with pytest.raises(LeanifyError, match="every model is timed generating text"), \
            BenchSession([tiny_llama, tiny_hf], BenchSettings(prompt_tokens=(8,))):
        pass


def test_generation_settings_are_checked_before_work():
    from leanify.errors import LeanifyError
    from leanify.measure.bench import BenchSettings

    for bad in (dict(new_tokens=1), dict(prompt_tokens=(0,)), dict(prompt_tokens=())):
        with pytest.raises(LeanifyError, match="new tokens at least 2"):
            BenchSettings(**bad).check()
