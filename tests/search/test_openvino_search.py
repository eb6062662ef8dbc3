"""OpenVINO and runtime settings in the search: the plan, the record, the report, the snippet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nncf  # noqa: F401  required (the all extra): a missing runtime fails, never skips
import numpy as np
import openvino  # noqa: F401  required (the all extra): a missing runtime fails, never skips
import pytest

from leanify.measure.machine import usable_cores
from leanify.models.load import load
from leanify.passes.registry import PassContext, make_config, run_pipeline
from leanify.report.snippet import usage_snippet
from leanify.search.plan import plan
from leanify.tasks.text import EXAMPLE_TEXTS

STSB = Path(__file__).resolve().parents[2] / "examples" / "data" / "stsb" / "sts-test.csv"
CLI = [sys.executable, "-m", "leanify.cli"]
BF16 = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})


def by_name(candidates):
    return {c.name: [cfg.label() for cfg in c.pipeline] for c in candidates}


def test_plan_adds_openvino_and_runtime_setting_candidates(tiny_hf):
    default = by_name(plan(load(tiny_hf), isa_flags=BF16))
    assert {"openvino-int8", "openvino-bf16", "onnx-fused-int8-dynamic",
            "openvino-int8-static-shapes"} <= set(default)
    assert not {"openvino-fp32", "openvino-int8-acc", "openvino-int8-throughput"} & set(default)
    batch_only = by_name(plan(load(tiny_hf), isa_flags=BF16, batch_sizes=(32,)))
    assert ("openvino-int8-throughput" in batch_only) == (usable_cores() > 1)
    names = by_name(plan(load(tiny_hf), isa_flags=BF16, max_drop=0.7, only=["all"]))
    assert names["openvino-fp32"] == ["export-onnx", "export-openvino",
                                      "runtime-settings(inference_precision=f32)"]
    assert names["openvino-bf16"][-1] == "runtime-settings(inference_precision=bf16)"
    assert names["openvino-int8"] == ["export-onnx", "export-openvino", "nncf-quantize"]
    assert names["openvino-int8-acc"][-1] == "nncf-quantize(max_drop=0.7)"
    assert names["onnx-fused-int8-dynamic-nospin"][-1] == \
        "runtime-settings(allow_spinning=False)"
    if usable_cores() > 1:
        assert names["openvino-int8-throughput"][-1] == (
            f"runtime-settings(performance_hint=THROUGHPUT,num_streams={usable_cores()})")
    streams = f",batch_streams={usable_cores()}" if usable_cores() > 1 else ""
    assert names["openvino-int8-static-shapes"][-1] == \
        f"runtime-settings(sequence_multiple=32{streams})"
    assert not any("weights" in n for n in names)  # weight-only: large models only


def test_plan_skips_bf16_without_native_bf16_and_adds_weight_only_for_large(tiny_hf):
    art = load(tiny_hf)
    names = by_name(plan(art, isa_flags=frozenset({"avx2"}), only=["all"]))
    assert "openvino-bf16" not in names and "openvino-fp32" in names
    big = replace(art, meta={**art.meta, "params": 7_000_000_000})
    names = by_name(plan(big, isa_flags=BF16))
    assert names["openvino-int8-weights"][-1] == "nncf-compress-weights"
    assert names["openvino-int4-weights"][-1] == "nncf-compress-weights(mode=int4_sym)"
    # no calibration: static int8 (ORT or NNCF) is left out
    names = by_name(plan(art, isa_flags=BF16, calibration=False))
    assert not any("nncf-quantize" in "".join(p) for p in names.values())


def test_plan_from_onnx_starts_with_the_ir_export(tiny_onnx, tiny_cnn_onnx):
    names = by_name(plan(load(tiny_onnx), isa_flags=BF16))
    assert names["openvino-int8"] == ["export-openvino", "nncf-quantize"]
    assert "openvino-int8-static-shapes" in names
    # no attention mask: padding would change the results, so no static-shape candidate
    assert "openvino-int8-static-shapes" not in by_name(plan(load(tiny_cnn_onnx), only=["all"]))


def run_snippet(code: str, cwd: Path) -> np.ndarray:
    script = cwd / "snippet.py"
    result = "emb" if "emb =" in code else "outputs"
    script.write_text(code + f"\nnp.save('snippet_out.npy', {result})\n", encoding="utf-8")
    # a fresh interpreter, without leanify on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "import leanify" not in code and "from leanify" not in code
    return np.load(cwd / "snippet_out.npy")


def leanify_embeddings(model_file: Path) -> np.ndarray:
    from leanify.measure.evaluate import embed
    from leanify.runtimes import open_runner

    art = load(model_file)
    runner = open_runner(art, threads=2)
    try:
        return embed(runner, art, EXAMPLE_TEXTS, batch_size=32, max_length=128)
    finally:
        runner.close()


@pytest.mark.parametrize("steps", [
    [("export-openvino", {}), ("runtime-settings", {"inference_precision": "bf16"})],
    [("export-openvino", {}), ("runtime-settings", {"inference_precision": "f32"})],
    [("export-onnx", {}), ("runtime-settings", {"allow_spinning": False})],
    [("export-openvino", {}), ("runtime-settings", {"inference_precision": "f32",
                                                    "sequence_multiple": 32,
                                                    "batch_streams": 2})],
], ids=["openvino-bf16", "openvino-f32", "onnx-nospin", "openvino-static-shapes"])
def test_snippet_reproduces_leanify_outputs_in_a_fresh_process(tiny_hf, tmp_path, steps):
    from leanify.measure.machine import cpu_info
    from leanify.passes.precision import native_bf16

    if "bf16" in str(steps) and not native_bf16(frozenset(cpu_info()["isa_flags"])):
        pytest.skip("this CPU has no native bf16")
    ctx = PassContext(work_dir=tmp_path / "work", threads=2)
    art = run_pipeline(load(tiny_hf), [make_config(n, **p) for n, p in steps], ctx)
    out = tmp_path / "run"
    shutil.copytree(art.path.parent, out / "model")
    model_file = out / "model" / art.path.name
    from leanify.runtimes import open_runner

    runner = open_runner(load(model_file), threads=2)
    ran = runner.details
    runner.close()
    selected = {"artifact": f"model/{art.path.name}", "format": art.format,
                "runtime": runner.runtime, "runtime_settings": ran}
    code = usage_snippet(out, selected, "embedding-similarity", threads=2)
    if art.format == "openvino":
        assert f'"INFERENCE_PRECISION_HINT": "{ran["inference_precision"]}"' in code
        assert ("// 32) * 32" in code) == ("sequence_multiple" in str(steps))
    else:
        assert "allow_spinning\", \"0\"" in code
    got = run_snippet(code, out)
    want = leanify_embeddings(model_file)
    assert got.shape == want.shape == (2, 32)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def optimize(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "optimize", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def stsb_rows(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "sts.csv"
    path.write_text("\n".join(STSB.read_text(encoding="utf-8").splitlines()[:rows]) + "\n",
                    encoding="utf-8")
    return path


@pytest.mark.acceptance
def test_optimize_records_runtime_and_precision(tiny_hf, tmp_path):
    """On a model this small PyTorch's per-call overhead dominates the baseline: openvino-fp32
    runs several times faster at both points (int8 may not: its quantize steps cost more than
    they save here), --max-drop 50 passes it, so an OpenVINO model is selected, exit 0."""
    out = tmp_path / "run"
    proc = optimize(str(tiny_hf), "--task", "fidelity", "--data", str(stsb_rows(tmp_path, 80)),
                    "--out", str(out), "--candidates", "openvino-int8,openvino-fp32",
                    "--batch-size", "1,4", "--seq-len", "32", "--rounds", "1",
                    "--calibration-size", "20", "--max-drop", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "leanify.json").read_text())
    cands = {c["name"]: c for c in record["candidates"]}
    for c in cands.values():
        assert c["status"] == "done", c.get("reason")
        assert c["runtime"] == "openvino" and c["format"] == "openvino"
        assert c["runtime_settings"]["inference_precision"] in ("f32", "bf16")
    assert cands["openvino-fp32"]["runtime_settings"]["inference_precision"] == "f32"
    assert cands["openvino-fp32"]["pass_meta"]["runtime"] == {"inference_precision": "f32"}
    # 20 calibration pairs: up to 40 distinct texts, one calibration row each
    assert 20 <= cands["openvino-int8"]["pass_meta"]["quantization"]["calibration_rows"] <= 40
    selected = record["selected"]
    assert selected is not None and record["targets_met"] is True, record["verdict"]
    assert selected["runtime"] == "openvino"
    assert selected["runtime_settings"]["inference_precision"] in ("f32", "bf16")
    assert "import openvino as ov" in selected["snippet"]
    html = (out / "report.html").read_text()
    assert "precision that ran" in html and "INFERENCE_PRECISION_HINT" in html
    assert "runtime: openvino" in proc.stdout


@pytest.mark.slow
def test_minilm_openvino_int8_scores_and_its_snippet_matches(tmp_path):
    """The real MiniLM through optimize's own recipe (export, NNCF int8 calibrated by the
    task's transform over STS-B dev), scored on STS-B test, and its snippet. Built through
    the pipeline, not the CLI: whether int8 OpenVINO beats PyTorch depends on the CPU (slower
    than ONNX Runtime int8 without VNNI), and the selection is tested on the tiny model."""
    from leanify import tasks
    from leanify.measure.data import read_dataset
    from leanify.measure.evaluate import evaluate

    source = load("minilm")
    task = tasks.get("embedding-similarity")
    calibration = read_dataset(STSB.with_name("sts-dev.csv"), task.name).subset(range(100))
    ctx = PassContext(work_dir=tmp_path / "work", threads=2,
                      calibration=task.calibration(source, calibration))
    steps = [("export-onnx", {}), ("export-openvino", {}), ("nncf-quantize", {})]
    art = run_pipeline(source, [make_config(n, **p) for n, p in steps], ctx)
    assert art.meta["quantization"]["ops"]["FakeQuantize"] >= 36
    test_rows = read_dataset(stsb_rows(tmp_path, 300), task.name)
    base = evaluate(source, test_rows, task.name, threads=2).value
    int8 = evaluate(art, test_rows, task.name, threads=2).value
    assert base > 80  # MiniLM on real STS-B pairs
    assert abs(int8 - base) < 1.5  # static int8 keeps the embedding
    out = tmp_path / "run"
    shutil.copytree(art.path.parent, out / "model")
    from leanify.runtimes import open_runner

    runner = open_runner(load(out / "model" / art.path.name), threads=2)
    selected = {"artifact": f"model/{art.path.name}", "format": "openvino",
                "runtime": "openvino", "runtime_settings": runner.details}
    runner.close()
    got = run_snippet(usage_snippet(out, selected, task.name, threads=2), out)
    want = leanify_embeddings(out / selected["artifact"])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_pipelines_sharing_a_prefix_build_it_once(tiny_hf, tmp_path):
    """optimize passes one `built` memo: the OpenVINO candidates share one ONNX export."""
    logged: list[str] = []
    ctx = PassContext(work_dir=tmp_path / "work", threads=2, built={}, log=logged.append)
    source = load(tiny_hf)
    fp32 = run_pipeline(source, [make_config("export-onnx"), make_config("export-openvino")], ctx)
    f32 = run_pipeline(source, [make_config("export-onnx"), make_config("export-openvino"),
                                make_config("runtime-settings", inference_precision="f32")], ctx)
    assert [line.split(" on ")[0] for line in logged] == [
        "export-onnx", "export-openvino", "runtime-settings(inference_precision=f32)"]
    assert f32.meta["passes"][:2] == fp32.meta["passes"]
    assert f32.path.parent.name.startswith("runtime-settings-")
