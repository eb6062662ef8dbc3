"""`export-openvino-llm` in its own environment (.venv-optimum): tiny causal LMs built from
configs become OpenVINO GenAI folders that score perplexity, generate, and take prompt lookup;
the planner offers them only when the exporter and openvino-genai are installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import read_dataset
from leanify.measure.evaluate import evaluate
from leanify.models.load import load
from leanify.passes.export_openvino_llm import PYTHON_ENV, optimum_python
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_generator
from leanify.search.plan import plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "shakespeare"


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join((EXAMPLES / "demo.txt").read_text().splitlines()[:60]),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def calibration(tiny_llama):
    """Token windows of the calibration text, as the optimize loop hands them to passes."""
    from leanify import tasks

    data = read_dataset(EXAMPLES / "calibration.txt", "perplexity")
    return tasks.get("perplexity").calibration(load(tiny_llama), data,
                                               tasks.EvalSettings(batch_size=16, max_length=64))


@pytest.fixture(scope="module")
def llama_int8(tiny_llama, tmp_path_factory):
    assert optimum_python() is not None, "CI builds .venv-optimum (make optimum-env)"
    ctx = PassContext(work_dir=tmp_path_factory.mktemp("work"), threads=1)
    return apply(load(tiny_llama), make_config("export-openvino-llm"), ctx)


def test_int8_export_scores_like_the_source_and_generates(tiny_llama, llama_int8, text):
    out = llama_int8
    assert out.format == "openvino" and out.meta["run_with"] == "openvino-genai"
    assert out.meta["task"] == "text-generation"
    # 2 x layers 2 x kv heads 2 x head dim 16 x 1 byte (the u8 KV cache)
    assert out.meta["kv_bytes_per_token"] == 128
    assert out.meta["weight_compression"]["weights"] == "int8"
    folder = out.path.parent
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"):
        assert (folder / name).is_file() and str(folder / name) in out.meta["external_data"]

    data = read_dataset(text, "perplexity")
    fp32 = evaluate(load(tiny_llama), data, "perplexity", max_length=64, threads=1)
    int8 = evaluate(out, data, "perplexity", max_length=64, threads=1)
    assert int8.details["token_ids_sha256"] == fp32.details["token_ids_sha256"]
    assert int8.value == pytest.approx(fp32.value, rel=0.02)

    runner = open_generator(out, threads=1)
    ids = np.arange(5, 37, dtype=np.int64)[None]
    gen = runner.generate(ids, 8)
    assert gen.tokens.shape == (1, 8) and len(gen.token_ms) == 8
    assert all(b >= a for a, b in zip(gen.token_ms, gen.token_ms[1:], strict=False))
    # greedy: the first new token is the top-1 of the full forward pass
    logits = runner.run({"input_ids": ids})["logits"]
    assert logits.shape == (1, 32, 512) and gen.tokens[0, 0] == logits[0, -1].argmax()
    batched = runner.generate(np.vstack([ids, ids + 3]), 6)
    assert batched.tokens.shape == (2, 6) and len(batched.token_ms) == 6
    assert batched.token_ms[-1] > batched.token_ms[0] > 0
    runner.close()


def test_a_users_own_export_folder_loads_as_a_generator(llama_int8, tmp_path):
    """An optimum-cli export (no leanify sidecar) is recognised from its IR and config."""
    folder = tmp_path / "export"
    shutil.copytree(llama_int8.path.parent, folder)
    (folder / "leanify_model.json").unlink()
    art = load(folder)
    assert art.meta["task"] == "text-generation" and art.meta["run_with"] == "openvino-genai"
    assert [s.name for s in art.inputs if not s.optional] == ["input_ids"]
    gen = open_generator(art, threads=1).generate(np.arange(3, 19)[None], 4)
    assert gen.tokens.shape == (1, 4)


def test_int4_awq_on_calibration_text_and_a_second_architecture(tiny_gpt2, calibration,
                                                                 tmp_path, text):
    ctx = PassContext(work_dir=tmp_path / "work", threads=1, calibration=calibration)
    config = make_config("export-openvino-llm", weights="int4", group_size=16, awq=True,
                         scale_estimation=True, samples=8)
    out = apply(load(tiny_gpt2), config, ctx)
    info = out.meta["weight_compression"]
    assert info["weights"] == "int4" and info["awq"] and info["calibration_windows"] == 8
    data = read_dataset(text, "perplexity")
    fp32 = evaluate(load(tiny_gpt2), data, "perplexity", max_length=64, threads=1)
    int4 = evaluate(out, data, "perplexity", max_length=64, threads=1)
    assert int4.value != fp32.value  # int4 really ran
    assert int4.value == pytest.approx(fp32.value, rel=0.1)
    assert open_generator(out, threads=1).generate(np.arange(1, 9)[None], 3).tokens.shape == \
        (1, 3)


def test_data_aware_int4_needs_calibration_text(tiny_llama, tmp_path):
    ctx = PassContext(work_dir=tmp_path / "work", threads=1)
    with pytest.raises(LeanifyError, match="calibration"):
        apply(load(tiny_llama), make_config("export-openvino-llm", weights="int4", awq=True),
              ctx)


def test_prompt_lookup_is_a_runtime_setting_checked_on_greedy_tokens(llama_int8, tmp_path):
    ctx = PassContext(work_dir=tmp_path / "work", threads=1)
    out = apply(llama_int8, make_config("runtime-settings", prompt_lookup=3), ctx)
    assert out.meta["runtime"] == {"prompt_lookup": 3}
    check = out.meta["runtime_check"]["greedy"]
    assert check["top1_consistency_after"] >= check["top1_consistency_before"] - 0.03
    runner = open_generator(out, threads=1)
    assert runner.details == {"prompt_lookup": 3, "max_ngram_size": 3}
    gen = runner.generate(np.tile(np.arange(10, 18), 4)[None], 12)  # repeats: lookup hits
    assert gen.tokens.shape == (1, 12) and len(gen.token_ms) == 12
    with pytest.raises(LeanifyError, match="kv_cache_precision"):
        apply(llama_int8, make_config("runtime-settings", kv_cache_precision="u4"), ctx)


def test_the_planner_offers_openvino_candidates_when_the_exporter_is_installed(
        tiny_llama, monkeypatch, tmp_path):
    names = [c.name for c in plan(load(tiny_llama))]
    assert names == ["openvino-int8", "openvino-int4-awq", "openvino-int8-lookup",
                     "openvino-int8-lookup8"]
    everything = [c.name for c in plan(load(tiny_llama), only=["all"])]
    assert {"torch-int8-weights", "openvino-int4", "openvino-int8-kv-f16",
            "openvino-int4-awq-lookup"} <= set(everything)
    awq = next(c for c in plan(load(tiny_llama)) if c.name == "openvino-int4-awq")
    assert awq.needs_calibration
    assert "openvino-int4-awq" not in [c.name for c in plan(load(tiny_llama),
                                                            calibration=False)]
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "missing" / "python"))
    assert optimum_python() == tmp_path / "missing" / "python"
    with pytest.raises(LeanifyError, match="optimum-env"):
        apply(load(tiny_llama), make_config("export-openvino-llm"),
              PassContext(work_dir=tmp_path / "work", threads=1))


def test_the_sidecar_records_what_the_export_did(llama_int8):
    sidecar = json.loads((llama_int8.path.parent / "leanify_model.json").read_text())
    assert sidecar["export-openvino-llm"]["weights"] == "int8"
    assert sidecar["exporter"]["optimum_intel"]


def test_the_snippet_generates_the_same_greedy_tokens_in_a_fresh_process(llama_int8, tmp_path):
    """The report's plain openvino-genai code, run without leanify, gives leanify's tokens."""
    import subprocess
    import sys

    from leanify.report.snippet import usage_snippet

    run_dir = tmp_path / "run"
    shutil.copytree(llama_int8.path.parent, run_dir / "model")
    selected = {"artifact": "model/openvino_model.xml", "format": "openvino",
                "runtime": "openvino-genai", "runtime_settings": {"prompt_lookup": 2}}
    code = usage_snippet(run_dir, selected, "perplexity", threads=1)
    assert "import leanify" not in code and "prompt_lookup" in code
    script = code.replace('print(generate("What makes a language model lean?"))', "") + "\n".join([
        "import json, numpy as np, openvino as ov",
        "ids = pipe.get_tokenizer().encode('ROMEO: what light', add_special_tokens=False)"
        ".input_ids.data",
        "config.max_new_tokens = config.min_new_tokens = 10; config.ignore_eos = True",
        "out = pipe.generate(ov_genai.TokenizedInputs(ov.Tensor(ids), "
        "ov.Tensor(np.ones_like(ids))), config)",
        "print(json.dumps({'ids': ids.tolist(), 'tokens': list(out.tokens[0])}))",
        "assert generate('ROMEO:', chat=False)  # the text path runs too"])
    (run_dir / "snippet.py").write_text(script, encoding="utf-8")
    proc = subprocess.run([sys.executable, "snippet.py"], cwd=run_dir, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    from dataclasses import replace

    art = load(run_dir / "model")
    art = replace(art, meta={**art.meta, "runtime": {"prompt_lookup": 2}})
    ours = open_generator(art, threads=1).generate(np.asarray(got["ids"], np.int64), 10)
    assert ours.tokens[0].tolist() == got["tokens"]
