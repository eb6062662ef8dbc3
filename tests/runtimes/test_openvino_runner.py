"""OpenVINO IR artifacts: loading, the runner, settings, damaged files, bench and info."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import openvino  # noqa: F401  required (the all extra): a missing runtime fails, never skips
import pytest

from leanify.errors import LeanifyError
from leanify.models.inputs import InputBuilder
from leanify.models.load import SIDECAR, load
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_runner
from leanify.runtimes.openvino import OpenVINORunner

CLI = [sys.executable, "-m", "leanify.cli"]


@pytest.fixture(scope="module")
def tiny_ir(tiny_hf, tmp_path_factory) -> Path:
    """The tiny BERT as an IR (export-openvino), with its tokenizer files beside it."""
    ctx = PassContext(work_dir=tmp_path_factory.mktemp("ov_runner"), threads=2)
    return apply(load(tiny_hf), make_config("export-openvino"), ctx).path


def with_settings(artifact, **settings):
    return replace(artifact, meta={**artifact.meta, "runtime": settings})


def run(artifact, batch):
    runner = open_runner(artifact, threads=2)
    try:
        return runner.run({k: v for k, v in batch.items() if k in runner.input_names}), \
            runner.details
    finally:
        runner.close()


def test_load_ir_file_and_folder(tiny_ir):
    art = load(tiny_ir)
    assert art.format == "openvino"
    assert art.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    ids = art.inputs[0]
    assert ids.dtype == "int64" and ids.shape == ("batch", "sequence")
    assert ids.high == 30522  # the vocabulary, read from the embedding Gather
    assert art.meta["outputs"] == ["last_hidden_state"]
    assert art.meta["tokenizer"] == str(tiny_ir.parent)
    assert 100_000 < art.meta["params"] < 2_000_000
    # the .bin counts: files, size and hash cover the weights
    assert [p.suffix for p in art.files()] == [".xml", ".bin"]
    assert art.size_bytes() > tiny_ir.with_suffix(".bin").stat().st_size
    folder = load(tiny_ir.parent)
    assert folder.format == "openvino" and folder.path == tiny_ir


def test_runner_matches_onnx_runtime_at_f32_and_reports_precision(tiny_ir, tiny_hf):
    art = load(tiny_ir)
    batch = InputBuilder(art).batch(3, 24)
    got, details = run(with_settings(art, inference_precision="f32"), batch)
    assert details["inference_precision"] == "f32"
    assert details["performance_hint"] == "LATENCY" and details["inference_num_threads"] == 2
    ref = run(load(tiny_hf), batch)[0]["last_hidden_state"]
    assert np.max(np.abs(got["last_hidden_state"] - ref)) < 1e-4


def test_bf16_setting_runs_in_bf16_and_changes_numbers(tiny_ir):
    from leanify.measure.machine import cpu_info
    from leanify.passes.precision import native_bf16

    if not native_bf16(frozenset(cpu_info()["isa_flags"])):
        pytest.skip("this CPU has no native bf16")
    art = load(tiny_ir)
    batch = InputBuilder(art).batch(2, 16)
    f32, _ = run(with_settings(art, inference_precision="f32"), batch)
    bf16, details = run(with_settings(art, inference_precision="bf16"), batch)
    _, default_details = run(art, batch)  # no setting: OpenVINO's own default
    assert details["inference_precision"] == "bf16"
    assert default_details["inference_precision"] == "bf16"  # what "fp32" IRs silently get
    diff = np.max(np.abs(f32["last_hidden_state"] - bf16["last_hidden_state"]))
    assert 1e-4 < diff < 0.5


def test_streams_split_the_batch_and_give_the_same_outputs(tiny_ir):
    art = load(tiny_ir)
    batch = InputBuilder(art).batch(5, 16)
    one, _ = run(with_settings(art, inference_precision="f32"), batch)
    two, details = run(with_settings(art, inference_precision="f32",
                                     performance_hint="THROUGHPUT", num_streams=2), batch)
    assert details["num_streams"] == 2 and details["performance_hint"] == "THROUGHPUT"
    assert two["last_hidden_state"].shape == (5, 16, 32)
    np.testing.assert_allclose(two["last_hidden_state"], one["last_hidden_state"], atol=1e-5)


def test_static_shapes_and_batch_streams_give_the_same_outputs(tiny_ir):
    art = load(tiny_ir)
    batch = InputBuilder(art).batch(3, 21)
    batch["attention_mask"][-1, 9:] = 0  # the last row is padded already
    dynamic, _ = run(with_settings(art, inference_precision="f32"), batch)
    runner = open_runner(with_settings(art, inference_precision="f32", sequence_multiple=16,
                                       batch_streams=2), 2)
    try:
        padded = runner.run({k: v for k, v in batch.items() if k in runner.input_names})
        longer = InputBuilder(art).batch(2, 40)
        runner.run({k: v for k, v in longer.items() if k in runner.input_names})
        one_row = {k: v[:1, :5] for k, v in batch.items() if k in runner.input_names}
        single = runner.run(one_row)["last_hidden_state"]
        # (rows, padded length, streams), compiled when used (the start-up probe is dropped):
        # batches padded 21 -> 32 and 40 -> 48 on two streams; a single row: static batch too,
        # on the latency model
        assert sorted(runner.compiled) == [(-1, 32, 2), (-1, 48, 2), (1, 16, 0)]
        assert len(runner.compiled[-1, 32, 2][2]) == 2  # one request per stream
        assert runner.details["sequence_multiple"] == 16 and runner.details["batch_streams"] == 2
        assert runner.details["performance_hint"] == "LATENCY"
    finally:
        runner.close()
    got, want = padded["last_hidden_state"], dynamic["last_hidden_state"]
    assert got.shape == want.shape == (3, 21, 32)
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)  # masked padding: same
    alone, _ = run(with_settings(art, inference_precision="f32"), one_row)
    assert single.shape == (1, 5, 32)
    np.testing.assert_allclose(single, alone["last_hidden_state"], atol=1e-5)


def test_sequence_multiple_needs_an_attention_mask(tiny_cnn_onnx, tmp_path):
    ctx = PassContext(work_dir=tmp_path / "work", threads=2)
    ir = apply(load(tiny_cnn_onnx), make_config("export-openvino"), ctx)
    with pytest.raises(LeanifyError, match="no 'attention_mask' input") as err:
        apply(ir, make_config("runtime-settings", sequence_multiple=32), ctx)
    assert "Leave sequence_multiple out" in err.value.render()
    with pytest.raises(LeanifyError, match="needs padded text inputs"):
        open_runner(with_settings(ir, sequence_multiple=32), 2)


def copy_ir(tiny_ir: Path, target: Path) -> Path:
    target.mkdir()
    for f in tiny_ir.parent.iterdir():
        shutil.copy(f, target / f.name)
    return target / tiny_ir.name


def test_missing_bin_is_a_clear_error(tiny_ir, tmp_path):
    ir = copy_ir(tiny_ir, tmp_path / "m")
    ir.with_suffix(".bin").unlink()
    with pytest.raises(LeanifyError, match=r"weights file 'openvino_model\.bin'.*missing"):
        load(ir)


def test_truncated_bin_is_a_clear_error(tiny_ir, tmp_path):
    ir = copy_ir(tiny_ir, tmp_path / "m")
    data = ir.with_suffix(".bin").read_bytes()
    ir.with_suffix(".bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(LeanifyError, match="truncated") as err:
        load(ir)
    assert "re-export" in err.value.render()


def test_bad_runtime_setting_in_sidecar_is_refused(tiny_ir, tmp_path):
    ir = copy_ir(tiny_ir, tmp_path / "m")
    sidecar = ir.parent / SIDECAR
    meta = json.loads(sidecar.read_text())
    meta["runtime"] = {"inference_precision": "f64"}
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(LeanifyError, match="inference_precision='f64' is invalid"):
        load(ir)


def test_cli_info_and_bench_on_an_ir(tiny_ir, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    info = subprocess.run([*CLI, "info", str(tiny_ir), "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["format"] == "openvino"
    out = tmp_path / "bench.json"
    proc = subprocess.run([*CLI, "bench", str(tiny_ir), "--batch-size", "2", "--seq-len", "16",
                           "--rounds", "1", "--min-iters", "3", "--min-time", "0.1",
                           "--warmup", "0.05", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    model = record["models"][0]
    assert model["runtime"] == "openvino" and model["format"] == "openvino"
    assert model["runtime_settings"]["inference_precision"] in ("f32", "bf16", "f16")
    assert model["input_source"] == "tokenizer"
    assert record["results"][0]["latency_ms"]["p50"] > 0


def test_runner_refuses_a_damaged_graph(tiny_ir, tmp_path):
    ir = copy_ir(tiny_ir, tmp_path / "m")
    ir.write_text(ir.read_text()[:2000])  # cut XML
    with pytest.raises(LeanifyError, match="not a readable OpenVINO IR"):
        load(ir)
    art = load(tiny_ir)
    with pytest.raises(LeanifyError, match="input named 'pixels'"):
        OpenVINORunner(art, 1).run({"pixels": np.zeros((1, 2), np.float32)})


def test_doctor_on_an_ir_reports_its_outputs_and_timings(tiny_ir):
    # an IR goes to the runtime's own probe (no per-operator profile leanify reads), not to
    # the ONNX Runtime probe whose sections all failed on an .xml
    from leanify.diagnose.doctor import DoctorSettings, doctor

    rec = doctor(tiny_ir, DoctorSettings(threads=1, quick=True))
    status = {k: v["status"] for k, v in rec["sections"].items()}
    assert status["signature"] == "done" and status["latency_curve"] == "done", status
    assert status["profile"] == "skipped" and "openvino" in rec["sections"]["profile"]["reason"]
    assert not [k for k, v in status.items() if v == "failed"], rec["sections"]
    assert rec["inventory"]["outputs"]
