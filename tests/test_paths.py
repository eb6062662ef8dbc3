"""Outputs never land on inputs: the shared check, and the commands that use it."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import pytest

from leanify import cli
from leanify.errors import LeanifyError
from leanify.paths import check_apart, model_paths

SAMPLE = str(resources.files("leanify.data").joinpath("sample_texts.txt"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph bytes")
    (folder / "model.onnx.data").write_bytes(b"weights")
    return folder


def refused(outputs, inputs) -> str:
    with pytest.raises(LeanifyError) as info:
        check_apart(outputs, inputs)
    return info.value.render()


def test_every_direction_and_spelling_is_caught(model_dir, tmp_path):
    model = model_dir / "model.onnx"
    assert "is the input model" in refused({"--json": model}, {"model": model})
    # output inside an input folder, input inside an output folder
    assert "is inside" in refused({"--out": model_dir / "run"}, {"model": model_dir})
    text = refused({"--out": tmp_path}, {"--data": model})
    assert "holds the input --data" in text and str(tmp_path) in text and str(model) in text
    # a symlink to the model, a hard link to it, a relative spelling of it
    (tmp_path / "link.json").symlink_to(model)
    assert "is the input" in refused({"--json": tmp_path / "link.json"}, {"model": model})
    os.link(model, tmp_path / "hard.json")
    assert "is the input" in refused({"--json": tmp_path / "hard.json"}, {"model": model})
    (tmp_path / "alias").symlink_to(model_dir, target_is_directory=True)
    assert "is inside" in refused({"--html": tmp_path / "alias" / "r.html"},
                                  {"model": model_dir})
    # several inputs under one label; the side files of a file model count as the model
    assert "is the input model" in refused({"--json": model_dir / "model.onnx.data"},
                                           {"model": model_paths(model)})
    assert "--data" in refused({"--out": model_dir}, {"--data": [SAMPLE, model]})


def test_paths_apart_pass(model_dir, tmp_path):
    check_apart({"--json": tmp_path / "bench.json", "--out": tmp_path / "run", "--html": None},
                {"model": model_paths(model_dir / "model.onnx"), "--data": SAMPLE,
                 "--sample": None, "alias": "minilm"})


def test_bench_json_onto_the_model_exits_2_and_leaves_it_intact(model_dir, capsys):
    model = model_dir / "model.onnx"
    before = sha(model)
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", str(model), "--json", str(model), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "never writes there" in err and "Traceback" not in err
    assert sha(model) == before


def test_distill_out_holding_the_model_is_refused(tmp_path, capsys):
    # `distill pruned/model --out pruned --resume` would rewrite its own input
    pruned = tmp_path / "pruned"
    (pruned / "model").mkdir(parents=True)
    weights = pruned / "model" / "model.safetensors"
    weights.write_bytes(b"student weights")
    with pytest.raises(SystemExit) as info:
        cli.main(["distill", str(pruned / "model"), "--data", SAMPLE, "--out", str(pruned),
                  "--resume", "--quiet"])
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {pruned} holds the input model {pruned / 'model'}" in err
    assert weights.read_bytes() == b"student weights"


def test_prune_and_distill_out_holding_their_data_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from leanify.apply import apply_passes
    from leanify.passes.prune_transformer import PruneTransformerConfig

    (tmp_path / "m").mkdir()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = tmp_path / "m" / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    out = tmp_path / "out"
    out.mkdir()
    texts = out / "texts.txt"
    texts.write_text(Path(SAMPLE).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(LeanifyError, match="holds the input --calibration-data"):
        apply_passes(model, [PruneTransformerConfig(layers=1)], out, calibration_data=texts,
                     log=lambda _m: None)
    with pytest.raises(LeanifyError, match="holds the input --data"):
        apply_passes(model, [PruneTransformerConfig(layers=1)], out,
                     inputs={"--data": [texts]}, log=lambda _m: None)
    assert sorted(p.name for p in out.iterdir()) == ["texts.txt"]
