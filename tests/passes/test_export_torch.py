"""export-pt2, export-torchscript, torch-dynamic-int8, bf16 and fp16: files that load and run."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from leanify.errors import LeanifyError
from leanify.models.inputs import InputBuilder
from leanify.models.load import SIDECAR, load
from leanify.models.safety import sniff_torch_archive
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_runner

TEXT = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture
def ctx(tmp_path) -> PassContext:
    return PassContext(work_dir=tmp_path / "work", threads=2,
                       isa_flags=frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))


def run(artifact, batch):
    runner = open_runner(artifact, threads=2)
    try:
        return runner.run({k: v for k, v in batch.items() if k in runner.input_names})
    finally:
        runner.close()


def hidden(outputs):
    for key in ("last_hidden_state", "output_0"):
        if key in outputs:
            return outputs[key]
    raise AssertionError(sorted(outputs))


@pytest.fixture(scope="module")
def batches(tiny_hf):
    builder = InputBuilder(load(tiny_hf))
    small, big = builder.batch(1, 9), builder.batch(4, 33)
    big["attention_mask"][-1, 20:] = 0
    return small, big


def test_export_pt2_from_hf(tiny_hf, ctx, batches):
    source = load(tiny_hf)
    before = source.sha256()
    out = apply(source, make_config("export-pt2"), ctx)
    assert source.sha256() == before
    assert out.format == "pt2" and sniff_torch_archive(out.path) == "pt2"
    assert out.input_names == TEXT
    assert all(isinstance(d, str) for s in out.inputs for d in s.shape)  # batch, seq dynamic
    assert out.meta["task"] == source.meta["task"]
    assert (out.path.parent / "vocab.txt").is_file()
    assert json.loads((out.path.parent / SIDECAR).read_text())["max_length"] == 128
    for batch in batches:  # two shapes, neither the export example's
        np.testing.assert_allclose(hidden(run(out, batch)), hidden(run(source, batch)),
                                   atol=1e-4)


def test_export_pt2_from_torch_module(tiny_encoder, example_batch, ctx):
    import torch

    ids, mask, types = example_batch(2, 12)
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    out = apply(load(tiny_encoder, example_inputs=example), make_config("export-pt2"), ctx)
    batch = {k: v.numpy() for k, v in zip(TEXT, example_batch(3, 20), strict=True)}
    with torch.no_grad():
        ref = tiny_encoder(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(hidden(run(out, batch)), ref, atol=1e-4)


def test_export_torchscript(tiny_hf, ctx, batches):
    source = load(tiny_hf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = apply(source, make_config("export-torchscript"), ctx)
    # The pass silences TorchScript's deprecation notices for what it calls (trace, save);
    # leanify.load's own torch.jit.load may still warn.
    noisy = [str(w.message) for w in caught if "jit.trace" in str(w.message)
             or "jit.save" in str(w.message) or issubclass(w.category, FutureWarning)]
    assert not noisy, noisy
    assert out.format == "torchscript" and sniff_torch_archive(out.path) == "torchscript"
    assert out.input_names == TEXT
    for batch in batches:
        np.testing.assert_allclose(hidden(run(out, batch)), hidden(run(source, batch)),
                                   atol=1e-4)


def test_export_torch_refuses_onnx(tiny_onnx, ctx):
    for name in ("export-pt2", "export-torchscript", "torch-dynamic-int8", "bf16"):
        with pytest.raises(LeanifyError, match="hf or torch-module"):
            apply(load(tiny_onnx), make_config(name), ctx)


def test_torch_dynamic_int8(tiny_hf, ctx, batches):
    import torch

    source = load(tiny_hf)
    out = apply(source, make_config("torch-dynamic-int8"), ctx)
    assert out.format == "torchscript" and sniff_torch_archive(out.path) == "torchscript"
    assert out.meta["quantization"]["layers"] == 2 * 6 + 1  # 6 Linear per layer + pooler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = str(torch.jit.load(str(out.path)).inlined_graph)
    assert "quantized::linear_dynamic" in graph
    small, big = batches
    a, b = hidden(run(out, big)), hidden(run(source, big))
    keep = big["attention_mask"].astype(bool)
    cos = (a[keep] * b[keep]).sum(1) / (np.linalg.norm(a[keep], axis=1) *
                                        np.linalg.norm(b[keep], axis=1))
    assert cos.mean() > 0.98
    assert hidden(run(out, small)).shape == (1, 9, 32)


def test_torch_dynamic_int8_module(tiny_encoder, example_batch, ctx):
    ids, mask, types = example_batch(2, 12)
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    out = apply(load(tiny_encoder, example_inputs=example), make_config("torch-dynamic-int8"),
                ctx)
    batch = {k: v.numpy() for k, v in zip(TEXT, example_batch(3, 7), strict=True)}
    assert hidden(run(out, batch)).shape == (3, 7, 32)


def test_bf16_pt2(tiny_hf, ctx, batches):
    source = load(tiny_hf)
    out = apply(source, make_config("bf16"), ctx)
    assert out.format == "pt2"
    _small, big = batches
    got = hidden(run(out, big))
    assert got.dtype == np.float32
    ref = hidden(run(source, big))
    assert np.abs(got - ref).max() < 0.1
    assert out.meta["precision_check"]["mean_cosine"] > 0.99


def test_bf16_refuses_without_native_support(tiny_hf, tmp_path):
    ctx = PassContext(work_dir=tmp_path, threads=2, isa_flags=frozenset({"avx2"}))
    with pytest.raises(LeanifyError, match="no bf16 arithmetic"):
        apply(load(tiny_hf), make_config("bf16"), ctx)


def test_fp16_onnx(tiny_hf, ctx, batches):
    import onnx

    exported = apply(load(tiny_hf), make_config("export-onnx"), ctx)
    out = apply(exported, make_config("fp16"), ctx)
    model = onnx.load(str(out.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert out.size_bytes() < 0.6 * exported.size_bytes()
    _small, big = batches
    got, ref = hidden(run(out, big)), hidden(run(exported, big))
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.05
    with pytest.raises(LeanifyError, match="float32 weights"):
        apply(out, make_config("fp16"), ctx)
