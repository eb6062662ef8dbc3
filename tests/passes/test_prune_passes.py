"""prune-channels, prune-unstructured and low-rank as registered passes on torch modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from leanify.errors import LeanifyError
from leanify.models.load import SIDECAR, load
from leanify.passes.registry import PassContext, apply, available, make_config
from leanify.runtimes import open_runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prune"))
from prune_models import resnetish


@pytest.fixture
def ctx(tmp_path) -> PassContext:
    return PassContext(work_dir=tmp_path / "work", threads=2)


def run(artifact, x: np.ndarray) -> np.ndarray:
    runner = open_runner(artifact, threads=2)
    try:
        return next(iter(runner.run({runner.input_names[0]: x}).values()))
    finally:
        runner.close()


def sidecar(artifact) -> dict:
    return json.loads((artifact.path.parent / SIDECAR).read_text())


X = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)


def test_passes_are_registered():
    assert {"prune-channels", "prune-unstructured", "low-rank"} <= set(available())


def test_prune_channels_pass_writes_a_smaller_checked_pt2(ctx):
    net = resnetish()
    source = load(net, example_inputs=(torch.randn(2, 1, 16, 16),))
    out = apply(source, make_config("prune-channels", ratio=0.5), ctx)
    assert out.format == "pt2" and out.path.name == "model.pt2"
    record = sidecar(out)["pruning"]
    assert record["params_after"] < record["params_before"] == source.meta["params"]
    assert record["macs_kept"] < 0.5 and record["ignored_layers"] == ["head"]
    assert out.meta["passes"] == ["prune-channels(ratio=0.5)"]
    assert run(out, X).shape == (5, 10)  # another batch size than the example's
    assert net.block1.conv1.out_channels == 32  # the user's module is untouched
    assert not list(out.path.parent.glob("*.partial"))


def test_prune_channels_pass_uses_calibration_batches(ctx):
    calls = []

    def calibration():
        calls.append(1)
        return iter([{"x": X[:2]}, {"x": X[2:]}])  # named like Net.forward's argument

    ctx.calibration = calibration
    source = load(resnetish(), example_inputs=(torch.randn(2, 1, 16, 16),))
    out = apply(source, make_config("prune-channels", importance="activation"), ctx)
    assert calls and sidecar(out)["pruning"]["calibration_batches"] == 2
    ctx.calibration = lambda: iter([{"pixels": X}])
    with pytest.raises(LeanifyError, match="lack the module's input"):
        apply(source, make_config("prune-channels", importance="taylor"), ctx)


def test_prune_unstructured_pass_reports_size_not_speed(ctx):
    source = load(resnetish(), example_inputs=(torch.randn(2, 1, 16, 16),))
    out = apply(source, make_config("prune-unstructured", amount=0.7), ctx)
    record = sidecar(out)["sparsity"]
    assert record["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert record["gzip_bytes_after"] < record["gzip_bytes_before"]
    assert "dense latency does not improve" in record["note"]
    with torch.no_grad():
        ref = source.module[0](torch.from_numpy(X)).numpy()
    assert np.abs(run(out, X) - ref).max() > 0  # zeros change the outputs: nothing hidden


def test_low_rank_pass_factorizes_where_faster(ctx):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                              torch.nn.Linear(1024, 4)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(1024, 16) @ torch.randn(16, 1024) / 16)
    source = load(net, example_inputs=(torch.randn(64, 1024),))
    out = apply(source, make_config("low-rank", energy=0.95, min_speedup=1.0), ctx)
    decisions = {d["layer"]: d for d in sidecar(out)["low_rank"]}
    assert decisions["0"]["kept"] and decisions["0"]["rank"] == 16
    assert not decisions["2"]["kept"]
    x = np.random.default_rng(1).standard_normal((3, 1024)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(out, x), ref, rtol=1e-3, atol=1e-3)
    assert out.meta["params"] < source.meta["params"]


def test_low_rank_pass_refuses_to_write_a_copy(ctx):
    source = load(torch.nn.Sequential(torch.nn.Linear(8, 4)), example_inputs=(torch.randn(2, 8),))
    with pytest.raises(LeanifyError, match="kept no layer"):
        apply(source, make_config("low-rank"), ctx)


@pytest.mark.parametrize("name", ["prune-channels", "prune-unstructured", "low-rank"])
def test_file_models_are_refused_clearly(name, ctx, tiny_cnn_onnx):
    with pytest.raises(LeanifyError, match="torch-module"):
        apply(load(tiny_cnn_onnx), make_config(name), ctx)
