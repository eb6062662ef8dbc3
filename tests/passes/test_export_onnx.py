"""export-onnx and ort-optimize: new folders, untouched inputs, carried metadata, checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import leanify.passes.export_onnx as export_onnx_module
from leanify.errors import LeanifyError
from leanify.models.inputs import InputBuilder
from leanify.models.load import SIDECAR, load
from leanify.passes.registry import PassContext, apply, make_config
from leanify.runtimes import open_runner

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


@pytest.fixture
def ctx(tmp_path) -> PassContext:
    from leanify.measure.machine import cpu_info

    return PassContext(work_dir=tmp_path / "work", threads=2,
                       isa_flags=frozenset(cpu_info()["isa_flags"]))


def tree_hash(path: Path) -> str:
    return load(path).sha256()


def run(artifact, batch):
    runner = open_runner(artifact, threads=2)
    try:
        return runner.run({k: v for k, v in batch.items() if k in runner.input_names})
    finally:
        runner.close()


@pytest.fixture(scope="module")
def hf_copy(tiny_hf, tmp_path_factory) -> Path:
    """tiny_hf plus a sentence-transformers pooling config: task metadata to carry over."""
    folder = tmp_path_factory.mktemp("tiny_st") / "model"
    shutil.copytree(tiny_hf, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def test_export_onnx_from_hf(hf_copy, ctx):
    source = load(hf_copy)
    assert source.meta["task"] == "sentence-embedding"
    before = tree_hash(hf_copy)
    out = apply(source, make_config("export-onnx"), ctx)

    assert tree_hash(hf_copy) == before  # the input is untouched
    assert out.format == "onnx" and out.path.name == "model.onnx"
    assert out.path.parent.parent == ctx.work_dir / "artifacts"
    assert not out.path.parent.name.endswith(".partial")
    for name in TOKENIZER_FILES:
        assert (out.path.parent / name).is_file()
    sidecar = json.loads((out.path.parent / SIDECAR).read_text())
    for key in ("task", "pooling", "normalize", "max_length"):
        assert sidecar[key] == source.meta[key]
        assert out.meta[key] == source.meta[key]  # load() keeps them
    assert out.meta["passes"] == ["export-onnx"]
    assert out.meta["num_heads"] == 2 and out.meta["hidden_size"] == 32
    assert out.meta["export_check"]["max_diff"]["last_hidden_state"] <= 1e-4

    reloaded = load(out.path)  # a fresh load sees the same metadata and inputs
    assert reloaded.meta["pooling"] == "mean" and reloaded.tokenizer_path == out.path.parent
    assert reloaded.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    batch = InputBuilder(source).batch(3, 40)  # another shape than the export's
    got = run(reloaded, batch)["last_hidden_state"]
    ref = run(source, batch)["last_hidden_state"]
    assert got.shape == (3, 40, 32)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_export_onnx_from_torch_module_keeps_source(tiny_encoder, example_batch, ctx):
    import torch

    ids, mask, types = example_batch(2, 12)
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    with torch.no_grad():
        ref = tiny_encoder(**example).numpy()
    source = load(tiny_encoder, example_inputs=example, name="tiny")
    out = apply(source, make_config("export-onnx"), ctx)
    assert out.format == "onnx"
    with torch.no_grad():  # the legacy exporter once changed its source: not here
        np.testing.assert_array_equal(tiny_encoder(**example).numpy(), ref)
    got = run(out, {k: v.numpy() for k, v in example.items()})
    np.testing.assert_allclose(next(iter(got.values())), ref, atol=1e-4)


def test_export_onnx_from_a_pt2_file(tmp_path, ctx):
    """A torch.export archive (read weights-only) re-exported to ONNX, any batch size."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8),
                                 torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(2, 1, 12, 12)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    out = apply(load(tmp_path / "cnn.pt2"), make_config("export-onnx"), ctx)
    assert out.format == "onnx" and out.meta["export_check"]["max_diff"]
    x5 = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        ref = module(x5).numpy()
    got = run(out, {out.input_names[0]: x5.numpy()})
    np.testing.assert_allclose(next(iter(got.values())), ref, atol=1e-4)


def test_export_onnx_dynamo(tiny_hf, ctx):
    source = load(tiny_hf)
    out = apply(source, make_config("export-onnx", exporter="dynamo", opset=18), ctx)
    assert out.meta["opset"] >= 18
    batch = InputBuilder(source).batch(2, 20)
    np.testing.assert_allclose(run(out, batch)["last_hidden_state"],
                               run(source, batch)["last_hidden_state"], atol=1e-4)


def test_export_onnx_classification_logits_and_labels(tmp_path, minilm_path, ctx):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=3,
                        id2label={0: "neg", 1: "neu", 2: "pos"},
                        label2id={"neg": 0, "neu": 1, "pos": 2})
    folder = tmp_path / "clf"
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    shutil.copy(minilm_path / "tokenizer.json", folder / "tokenizer.json")
    source = load(folder)
    out = apply(source, make_config("export-onnx"), ctx)
    assert out.meta["outputs"] == ["logits"]
    assert out.meta["task"] == "text-classification"
    assert out.meta["labels"] == {"0": "neg", "1": "neu", "2": "pos"}
    batch = InputBuilder(source).batch(4, 16)
    assert run(out, batch)["logits"].shape == (4, 3)


def test_export_onnx_refuses_onnx_input(tiny_onnx, ctx):
    with pytest.raises(LeanifyError, match=r"export-onnx.*hf or torch-module"):
        apply(load(tiny_onnx), make_config("export-onnx"), ctx)


def test_export_onnx_bad_exporter(tiny_hf, ctx):
    with pytest.raises(LeanifyError, match="unknown exporter"):
        apply(load(tiny_hf), make_config("export-onnx", exporter="magic"), ctx)


def test_export_onnx_tolerance_is_enforced(tiny_hf, ctx, monkeypatch):
    real = export_onnx_module.run_once

    def off_by_a_bit(*args, **kwargs):  # an export whose numbers moved by 1e-3
        return {k: v + 1e-3 for k, v in real(*args, **kwargs).items()}

    monkeypatch.setattr(export_onnx_module, "run_once", off_by_a_bit)
    with pytest.raises(LeanifyError, match="disagrees with its source"):
        apply(load(tiny_hf), make_config("export-onnx"), ctx)
    assert not list((ctx.work_dir / "artifacts").glob("*")), "a failed check left a folder"


def test_interrupted_pass_leaves_no_folder(tiny_hf, ctx, monkeypatch):
    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_onnx_module, "_export", boom)
    with pytest.raises(KeyboardInterrupt):
        apply(load(tiny_hf), make_config("export-onnx"), ctx)
    artifacts = ctx.work_dir / "artifacts"
    assert not artifacts.exists() or not list(artifacts.iterdir())


# --- ort-optimize ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tiny_hf, tmp_path_factory):
    ctx = PassContext(work_dir=tmp_path_factory.mktemp("export_work"), threads=2)
    return apply(load(tiny_hf), make_config("export-onnx"), ctx)


def test_ort_optimize_transformer_fusions(tiny_export, ctx):
    import onnx

    before = tiny_export.sha256()
    out = apply(tiny_export, make_config("ort-optimize"), ctx)
    assert tiny_export.sha256() == before
    assert out.path.parent != tiny_export.path.parent
    fusions = out.meta["fusions"]
    assert fusions["Attention"] == 2 and fusions["EmbedLayerNormalization"] == 1
    assert fusions["Sum (residual)"] >= 4  # residual Adds kept away from SkipLayerNormalization
    ops = {n.op_type for n in onnx.load(str(out.path)).graph.node}
    assert "Attention" in ops and "SkipLayerNormalization" not in ops
    assert out.meta["task"] == tiny_export.meta["task"]
    assert (out.path.parent / "tokenizer.json").is_file()
    batch = InputBuilder(tiny_export).batch(2, 24)
    np.testing.assert_allclose(run(out, batch)["last_hidden_state"],
                               run(tiny_export, batch)["last_hidden_state"], atol=1e-3)


def test_ort_optimize_left_padding_stays_correct(tiny_export, ctx):
    """The default mask format reads the 2-D mask: left padding must give the same numbers."""
    out = apply(tiny_export, make_config("ort-optimize"), ctx)
    batch = InputBuilder(tiny_export).batch(2, 16)
    batch["attention_mask"][1, :5] = 0
    np.testing.assert_allclose(run(out, batch)["last_hidden_state"][1, 5:],
                               run(tiny_export, batch)["last_hidden_state"][1, 5:], atol=1e-3)


def test_ort_optimize_generic_level(tiny_cnn_onnx, ctx):
    out = apply(load(tiny_cnn_onnx), make_config("ort-optimize"), ctx)
    assert out.meta["ort_optimize_level"] == "extended"
    x = {"pixels": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(out, x)["logits"], run(load(tiny_cnn_onnx), x)["logits"],
                               atol=1e-4)


def test_ort_optimize_external_data_input(tiny_onnx_external, ctx):
    source = load(tiny_onnx_external)
    assert source.meta["external_data"]
    out = apply(source, make_config("ort-optimize", level="transformer"), ctx)
    assert out.meta["fusions"].get("Attention") == 2


def test_ort_optimize_refuses_hf(tiny_hf, ctx):
    with pytest.raises(LeanifyError, match="export-onnx"):
        apply(load(tiny_hf), make_config("ort-optimize"), ctx)
