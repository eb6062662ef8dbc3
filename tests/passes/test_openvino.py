"""export-openvino, nncf-quantize, nncf-compress-weights and runtime-settings on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import nncf  # noqa: F401  required (the all extra): a missing runtime fails, never skips
import numpy as np
import openvino  # noqa: F401  required (the all extra): a missing runtime fails, never skips
import pytest

from leanify.errors import LeanifyError
from leanify.measure.data import text_batches
from leanify.models.inputs import InputBuilder
from leanify.models.load import SIDECAR, load
from leanify.passes.nncf_quantize import calibration_rows
from leanify.passes.registry import PassContext, apply, make_config, run_pipeline
from leanify.runtimes import open_runner

STSB_DEV = Path(__file__).resolve().parents[2] / "examples" / "data" / "stsb" / "sts-dev.csv"


def dev_texts(n: int) -> list[str]:
    rows = [line.split("\t") for line in STSB_DEV.read_text(encoding="utf-8").splitlines()]
    return [r[5] for r in rows if len(r) >= 7][:n]


def calibration(folder: Path, n: int = 40):
    texts = dev_texts(n)

    def batches():
        yield from text_batches(texts, folder, 16, 128,
                                ["input_ids", "attention_mask", "token_type_ids"])

    return batches


@pytest.fixture
def ctx(tmp_path, tiny_hf) -> PassContext:
    return PassContext(work_dir=tmp_path / "work", threads=2, calibration=calibration(tiny_hf))


@pytest.fixture(scope="module")
def tiny_ir(tiny_hf, tmp_path_factory):
    ctx = PassContext(work_dir=tmp_path_factory.mktemp("ov_passes"), threads=2)
    return apply(load(tiny_hf), make_config("export-openvino"), ctx)


def outputs(artifact, batch, **settings):
    from dataclasses import replace

    if settings:
        artifact = replace(artifact, meta={**artifact.meta, "runtime": settings})
    runner = open_runner(artifact, threads=2)
    try:
        return runner.run({k: v for k, v in batch.items() if k in runner.input_names})
    finally:
        runner.close()


def op_types(artifact) -> dict[str, int]:
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(str(artifact.path)).get_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return counts


def test_export_from_hf_checks_agreement_and_carries_the_tokenizer(tiny_ir, tiny_hf):
    assert tiny_ir.format == "openvino"
    assert tiny_ir.meta["passes"] == ["export-openvino"]
    assert (tiny_ir.path.parent / "tokenizer.json").is_file()
    assert tiny_ir.path.with_suffix(".bin").is_file()
    meta = json.loads((tiny_ir.path.parent / SIDECAR).read_text())
    assert meta["export_check"]["max_diff"]["last_hidden_state"] < 1e-4
    assert meta["task"] == "feature-extraction"
    # weights stay fp32 in the IR (compress_to_fp16=False): the precision is a setting
    import openvino as ov

    types = {op.get_element_type().get_type_name() for op in
             ov.Core().read_model(str(tiny_ir.path)).get_ops() if op.get_type_name() == "Constant"}
    assert "f16" not in types and "f32" in types
    batch = InputBuilder(tiny_ir).batch(2, 20)
    got = outputs(tiny_ir, batch, inference_precision="f32")["last_hidden_state"]
    ref = outputs(load(tiny_hf), batch)["last_hidden_state"]
    assert np.max(np.abs(got - ref)) < 1e-4


def test_export_from_onnx_and_refuses_ort_fused_graphs(tiny_hf, ctx):
    onnx_art = apply(load(tiny_hf), make_config("export-onnx"), ctx)
    ir = apply(onnx_art, make_config("export-openvino"), ctx)
    assert ir.format == "openvino" and ir.meta["passes"] == ["export-onnx", "export-openvino"]
    fused = apply(onnx_art, make_config("ort-optimize"), ctx)
    with pytest.raises(LeanifyError, match="fused operators"):
        apply(fused, make_config("export-openvino"), ctx)


def test_calibration_rows_are_single_texts_without_padding(tiny_hf):
    rows = calibration_rows(calibration(tiny_hf, 20)(),
                            ["input_ids", "attention_mask", "token_type_ids"])
    assert len(rows) == 20
    assert all(r["attention_mask"].all() for r in rows)  # no padding positions left
    assert len({r["input_ids"].shape[1] for r in rows}) > 1  # each text at its own length


def test_nncf_quantize_static_int8(tiny_ir, ctx):
    before = tiny_ir.sha256()
    q = apply(tiny_ir, make_config("nncf-quantize"), ctx)
    assert tiny_ir.sha256() == before  # the input is never written to
    assert q.format == "openvino"
    info = q.meta["quantization"]
    assert info["calibration_rows"] == 40 and info["preset"] == "mixed"
    assert info["model_type"] == "transformer"
    assert op_types(q).get("FakeQuantize", 0) >= 8  # the Q/K/V/O and FFN MatMuls
    assert q.meta["quant_check"]["mean_cosine"] > 0.95
    assert q.size_bytes() < tiny_ir.size_bytes()
    with pytest.raises(LeanifyError, match="already quantized"):
        apply(q, make_config("nncf-quantize"), ctx)


def test_nncf_quantize_needs_calibration_and_an_ir(tiny_ir, tiny_hf, tmp_path):
    bare = PassContext(work_dir=tmp_path / "w", threads=2)
    with pytest.raises(LeanifyError, match="needs calibration data"):
        apply(tiny_ir, make_config("nncf-quantize"), bare)
    with pytest.raises(LeanifyError, match="takes openvino models"):
        apply(load(tiny_hf), make_config("nncf-quantize"), bare)


@pytest.mark.acceptance  # an extended recipe (openvino-int8-acc): `make test-acceptance`
def test_accuracy_control_keeps_layers_in_float_to_hold_the_drop(tiny_ir, ctx):
    loose = apply(tiny_ir, make_config("nncf-quantize", max_drop=50.0), ctx)
    control = loose.meta["quantization"]["accuracy_control"]
    assert control["validation_rows"] == 8 and loose.meta["quantization"]["calibration_rows"] == 32
    assert op_types(loose).get("FakeQuantize", 0) >= 8
    # a drop of zero cannot hold with anything in int8: every layer goes back to float
    with pytest.raises(LeanifyError, match="every layer to float"):
        apply(tiny_ir, make_config("nncf-quantize", max_drop=0.0), ctx)


@pytest.mark.parametrize(("mode", "bits"), [("int8_asym", {"u8"}), ("int4_sym", {"i4"})])
def test_compress_weights(tiny_ir, ctx, mode, bits):
    out = apply(tiny_ir, make_config("nncf-compress-weights", mode=mode, group_size=16), ctx)
    info = out.meta["quantization"]
    assert info["mode"] == "weight-only" and bits <= set(info["weight_types"])
    assert out.size_bytes() < tiny_ir.size_bytes() * 0.6
    assert out.meta["quant_check"]["mean_cosine"] > 0.95
    assert "FakeQuantize" not in op_types(out)  # activations stay float


def test_runtime_settings_persist_and_apply(tiny_ir, ctx):
    out = apply(tiny_ir, make_config("runtime-settings", inference_precision="f32",
                                     performance_hint="THROUGHPUT", num_streams=2), ctx)
    sidecar = json.loads((out.path.parent / SIDECAR).read_text())
    assert sidecar["runtime"] == {"inference_precision": "f32", "performance_hint": "THROUGHPUT",
                                  "num_streams": 2}
    ran = sidecar["runtime_check"]["ran_with"]
    assert ran["inference_precision"] == "f32" and ran["num_streams"] == 2
    reloaded = load(out.path)
    runner = open_runner(reloaded, threads=2)
    try:
        assert runner.details["inference_precision"] == "f32"
        assert runner.details["performance_hint"] == "THROUGHPUT"
    finally:
        runner.close()
    # the same weights, not a re-export; settings carry through later passes
    weights = out.path.with_suffix(".bin").read_bytes()
    assert weights == tiny_ir.path.with_suffix(".bin").read_bytes()
    q = apply(out, make_config("nncf-quantize"), ctx)
    assert q.meta["runtime"]["inference_precision"] == "f32"


def test_runtime_settings_for_onnx_runtime(tiny_hf, ctx):
    onnx_art = run_pipeline(load(tiny_hf), [make_config("export-onnx"),
                                             make_config("runtime-settings",
                                                         allow_spinning=False,
                                                         graph_optimization_level="basic")], ctx)
    assert onnx_art.format == "onnx"
    runner = open_runner(onnx_art, threads=1)
    try:
        assert runner.details == {"intra_op_num_threads": 1, "allow_spinning": False,
                                  "graph_optimization_level": "basic"}
    finally:
        runner.close()


def test_runtime_settings_refuse_what_the_runtime_lacks(tiny_ir, tiny_hf, ctx):
    with pytest.raises(LeanifyError, match="not a runtime setting of openvino"):
        apply(tiny_ir, make_config("runtime-settings", allow_spinning=False), ctx)
    with pytest.raises(LeanifyError, match="performance_hint='FAST' is invalid"):
        apply(tiny_ir, make_config("runtime-settings", performance_hint="FAST"), ctx)
    with pytest.raises(LeanifyError, match="runs on torch-eager"):
        apply(load(tiny_hf), make_config("runtime-settings", inference_precision="f32"), ctx)
    with pytest.raises(LeanifyError, match="no setting"):
        apply(tiny_ir, make_config("runtime-settings"), ctx)


def test_runtime_settings_copy_user_files_never_link(tiny_onnx, ctx):
    out = apply(load(tiny_onnx), make_config("runtime-settings", allow_spinning=False), ctx)
    assert out.path.stat().st_ino != tiny_onnx.stat().st_ino
    assert out.path.stat().st_nlink == 1
