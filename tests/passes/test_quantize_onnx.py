"""quantize-dynamic and quantize-static: int8 graphs that load, run, and stay close to float."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.inputs import InputBuilder, bundled_texts
from leanify.models.load import SIDECAR, load
from leanify.passes.quantize_onnx import resolve_reduce_range
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_runner

VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})


@pytest.fixture
def ctx(tmp_path) -> PassContext:
    return PassContext(work_dir=tmp_path / "work", threads=2, isa_flags=VNNI)


@pytest.fixture(scope="module")
def tiny_export(tiny_hf, tmp_path_factory):
    ctx = PassContext(work_dir=tmp_path_factory.mktemp("q_export"), threads=2)
    return apply(load(tiny_hf), make_config("export-onnx"), ctx)


def ops_of(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def run(artifact, batch):
    runner = open_runner(artifact, threads=2)
    try:
        return runner.run({k: v for k, v in batch.items() if k in runner.input_names})
    finally:
        runner.close()


def token_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    keep = mask.astype(bool)
    a, b = a[keep], b[keep]
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) *
                                           np.linalg.norm(b, axis=1))))


def test_quantize_dynamic(tiny_export, ctx):
    before = tiny_export.sha256()
    out = apply(tiny_export, make_config("quantize-dynamic"), ctx)
    assert tiny_export.sha256() == before
    assert out.path.parent != tiny_export.path.parent
    ops = ops_of(out.path)
    assert ops.get("MatMulInteger", 0) >= 12 and "DynamicQuantizeLinear" in ops
    q = out.meta["quantization"]
    assert q["per_channel"] is True and q["reduce_range"] is False  # VNNI: no 7-bit weights
    sidecar = json.loads((out.path.parent / SIDECAR).read_text())
    assert sidecar["task"] == tiny_export.meta["task"] == out.meta["task"]
    assert out.meta["passes"] == ["export-onnx", "quantize-dynamic"]
    assert out.size_bytes() < 0.5 * tiny_export.size_bytes()  # the embedding table too
    batch = InputBuilder(tiny_export).batch(2, 32)
    cos = token_cosine(run(out, batch)["last_hidden_state"],
                       run(tiny_export, batch)["last_hidden_state"], batch["attention_mask"])
    assert cos > 0.98


def test_quantize_dynamic_fused_graph(tiny_export, ctx):
    fused = apply(tiny_export, make_config("ort-optimize"), ctx)
    out = apply(fused, make_config("quantize-dynamic"), ctx)
    ops = ops_of(out.path)
    assert ops.get("QAttention") == 2 and ops.get("QEmbedLayerNormalization") == 1
    assert out.meta["fusions"]["Attention"] == 2  # the fusion report rides along
    batch = InputBuilder(tiny_export).batch(3, 20)
    assert run(out, batch)["last_hidden_state"].shape == (3, 20, 32)


def test_reduce_range_auto():
    assert resolve_reduce_range(None, PassContext(Path("."), isa_flags=VNNI)) is False
    assert resolve_reduce_range(None, PassContext(Path("."), isa_flags=frozenset({"avx2"})))
    assert resolve_reduce_range(False, PassContext(Path("."), isa_flags=frozenset({"avx2"}))) \
        is False


def test_quantize_dynamic_without_vnni_reduces_range(tiny_export, tmp_path):
    ctx = PassContext(work_dir=tmp_path, threads=2, isa_flags=frozenset({"avx2"}))
    out = apply(tiny_export, make_config("quantize-dynamic", op_types=("MatMul",)), ctx)
    assert out.meta["quantization"]["reduce_range"] is True
    assert out.meta["quantization"]["op_types"] == ["MatMul"]
    assert "Gather" in ops_of(out.path)  # the embeddings stayed float


def test_quantize_dynamic_refuses_non_onnx(tiny_hf, ctx):
    with pytest.raises(LeanifyError, match="export-onnx"):
        apply(load(tiny_hf), make_config("quantize-dynamic"), ctx)


def test_quantize_dynamic_refuses_quantized(tiny_export, ctx):
    out = apply(tiny_export, make_config("quantize-dynamic"), ctx)
    with pytest.raises(LeanifyError, match="already quantized"):
        apply(out, make_config("quantize-dynamic"), ctx)


def test_quantize_gate_refuses_drift(tiny_export, ctx):
    with pytest.raises(LeanifyError, match="drifted"):
        apply(tiny_export, make_config("quantize-dynamic", min_cosine=1.01), ctx)
    artifacts = ctx.work_dir / "artifacts"
    assert not [p for p in artifacts.iterdir() if p.name.startswith("quantize-dynamic")]


def test_quantize_static_needs_calibration(tiny_export, ctx):
    with pytest.raises(LeanifyError, match="calibration data"):
        apply(tiny_export, make_config("quantize-static"), ctx)


def test_quantize_static_qdq(tiny_export, tmp_path):
    builder = InputBuilder(tiny_export)
    calls = []

    def calibration():
        calls.append(1)
        for size in (4, 4, 8):
            yield builder.batch(size, 24)

    ctx = PassContext(work_dir=tmp_path, threads=2, isa_flags=VNNI, calibration=calibration)
    out = apply(tiny_export, make_config("quantize-static", calibration_method="minmax"), ctx)
    assert calls
    ops = ops_of(out.path)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    q = out.meta["quantization"]
    assert q["format"] == "QDQ" and q["activation_type"] == "uint8" and q["weight_type"] == "int8"
    assert q["calibration_batches"] == 3
    assert "Softmax" not in q["op_types"] and "Add" not in q["op_types"]
    _assert_softmax_float(out.path)
    batch = builder.batch(2, 16)
    cos = token_cosine(run(out, batch)["last_hidden_state"],
                       run(tiny_export, batch)["last_hidden_state"], batch["attention_mask"])
    assert cos > 0.95


def _assert_softmax_float(path: Path) -> None:
    """No Softmax reads a dequantized tensor, and none feeds a QuantizeLinear."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Softmax":
            src = producers.get(node.input[0])
            assert src is None or src.op_type != "DequantizeLinear"
        if node.op_type == "QuantizeLinear":
            src = producers.get(node.input[0])
            assert src is None or src.op_type != "Softmax"


def test_quantize_static_s8s8_percentile(tiny_export, tmp_path):
    """Histogram calibrators get rows of one shape, even from ragged batches."""
    builder = InputBuilder(tiny_export)

    def calibration():
        yield builder.batch(3, 12)
        yield builder.batch(2, 30)

    ctx = PassContext(work_dir=tmp_path, threads=2, isa_flags=VNNI, calibration=calibration)
    out = apply(tiny_export, make_config("quantize-static", activation_type="int8",
                                         calibration_method="percentile",
                                         calibration_seq_len=16), ctx)
    assert out.meta["quantization"]["calibration_batches"] == 5  # one row each
    assert out.meta["quantization"]["activation_type"] == "int8"


def test_quantize_static_empty_calibration(tiny_export, tmp_path):
    ctx = PassContext(work_dir=tmp_path, threads=2, isa_flags=VNNI, calibration=lambda: iter(()))
    with pytest.raises(LeanifyError):
        apply(tiny_export, make_config("quantize-static"), ctx)
    assert not list((tmp_path / "artifacts").glob("quantize-static-*"))


@pytest.mark.slow
def test_minilm_int8_recipe(minilm_path, tmp_path):
    """The default recipe on the real MiniLM: small, and embeddings close to fp32."""
    from leanify.passes.registry import run_pipeline

    ctx = PassContext(work_dir=tmp_path, threads=2, isa_flags=VNNI)
    source = load(minilm_path)
    pipeline = [make_config("export-onnx"), make_config("ort-optimize"),
                make_config("quantize-dynamic")]
    out = run_pipeline(source, pipeline, ctx)
    assert out.size_bytes() < 25 * 2**20
    assert out.meta["pooling"] == "mean" and out.meta["task"] == "sentence-embedding"
    assert out.meta["fusions"]["Attention"] == 6

    texts = [t for t in bundled_texts() if len(t) > 20][:32]
    assert len(texts) == 32
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out.path.parent / "tokenizer.json"))
    tok.enable_truncation(max_length=128)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    batch = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
             "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
    assert (batch["attention_mask"] == 0).any()  # padded rows are part of the check

    def pooled(hidden):
        w = batch["attention_mask"][..., None].astype(np.float64)
        return (hidden * w).sum(1) / w.sum(1)

    ref = pooled(run(source, batch)["last_hidden_state"])
    got = pooled(run(out, batch)["last_hidden_state"])
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.98, cos.min()
