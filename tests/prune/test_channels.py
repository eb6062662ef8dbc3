"""Structured channel pruning: the model really shrinks, keeps its interface, saves safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prune_models import dead_neuron_mlp, resnetish

from leanify.errors import LeanifyError
from leanify.models.load import load
from leanify.prune import load_pruned, prune_channels, save_pruned
from leanify.prune.flops import count_macs
from leanify.runtimes import open_runner

X = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def net():
    return resnetish()


@pytest.fixture(scope="module")
def pruned(net):
    return prune_channels(net, X, ratio=0.5, importance="l2", round_to=8)


def test_params_and_macs_really_drop(net, pruned):
    model, summary = pruned
    params = sum(p.numel() for p in model.parameters())
    assert summary.params_after == params < summary.params_before
    assert summary.macs_after == count_macs(model, X) < summary.macs_before
    assert summary.macs_kept < 0.4  # half the channels on both sides of most convolutions
    assert model(X).shape == net(X).shape == (4, 10)


def test_residual_concat_and_batchnorm_stay_consistent(pruned):
    model, summary = pruned
    after = summary.widths_after
    # Residual: both convs of a block and the tensor added to them keep one width.
    assert after["block1.conv2"] == after["stem.0"] == after["block1.bn2"]
    # Concat: the block after it sees the sum of both branches.
    assert after["block2.conv2"] == after["down"] + after["side"]
    assert model.block2.conv1.in_channels == after["down"] + after["side"]


def test_widths_are_multiples_of_round_to_and_head_is_kept(pruned):
    _model, summary = pruned
    changed = summary.changed_layers()
    concat = {"down", "side"}  # Torch-Pruning rounds a concat's branches as their sum
    assert changed and all(new % 8 == 0 for k, (_old, new) in changed.items() if k not in concat)
    assert (changed["down"][1] + changed["side"][1]) % 8 == 0
    assert summary.ignored_layers == ["head"]
    assert summary.widths_after["head"] == 10


def test_input_module_is_untouched(net, pruned):
    assert net.block1.conv1.out_channels == 32
    assert sum(p.numel() for p in net.parameters()) == pruned[1].params_before


def test_target_macs_prunes_in_steps_until_reached(net):
    _model, summary = prune_channels(net, X, target_macs=0.5, round_to=None)
    assert summary.macs_kept <= 0.5 and summary.steps > 1
    assert summary.ratio is None
    with pytest.raises(LeanifyError, match="not the 10% asked for"):
        prune_channels(net, X, target_macs=0.1, max_ratio=0.2, round_to=None)


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_data_aware_importance_prunes_dead_neurons_first(importance):
    """Dead neurons have the largest weights: magnitude keeps them, data-aware criteria don't."""
    mlp = dead_neuron_mlp()
    batches = [torch.randn(32, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    x = batches[0]
    aware, _ = prune_channels(mlp, x, ratio=0.5, importance=importance, calibration=batches,
                              round_to=None)
    magnitude, _ = prune_channels(mlp, x, ratio=0.5, importance="l2", round_to=None)
    assert aware[0].out_features == magnitude[0].out_features == 16
    with torch.no_grad():
        torch.testing.assert_close(aware(x), mlp(x))  # only dead neurons were removed
        assert (magnitude(x) - mlp(x)).abs().max() > 0.1
    assert not any(hasattr(m, "_importance") for m in aware.modules())


def test_nothing_pruned_is_an_error(net):
    with pytest.raises(LeanifyError, match="pruning removed nothing"):
        prune_channels(net, X, ratio=0.0)
    tiny = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(LeanifyError, match="pruning removed nothing"):
        prune_channels(tiny, torch.randn(2, 4), ratio=0.5, round_to=8)  # 8 wide: stays whole


@pytest.mark.parametrize("kwargs, match", [
    ({"importance": "entropy"}, "unknown importance"),
    ({"ratio": 1.0}, r"must be in \[0, 1\)"),
    ({"ignored_layers": ["nope"]}, "no layer named 'nope'"),
    ({"per_layer": {"stem.0": 2.0}}, "per_layer"),
    ({"round_to": 0}, "round_to"),
])
def test_bad_settings_are_clear_errors(net, kwargs, match):
    with pytest.raises(LeanifyError, match=match):
        prune_channels(net, X, **kwargs)


def test_taylor_without_loss_needs_a_classifier():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 4, 3))
    with pytest.raises(LeanifyError, match="loss_fn"):
        prune_channels(conv, torch.randn(2, 1, 8, 8), importance="taylor", round_to=None)


def test_saved_pt2_and_safetensors_round_trip(pruned, tmp_path):
    model, _summary = pruned
    files = save_pruned(model, X, tmp_path / "pruned")
    assert not list((tmp_path / "pruned").glob("*.pkl"))
    artifact = load(files["pt2"])  # leanify's loader: weights-only
    assert artifact.format == "pt2" and artifact.meta["params"] >= _summary.params_after
    batch = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
    runner = open_runner(artifact, threads=1)
    try:
        got = next(iter(runner.run({runner.input_names[0]: batch}).values()))
    finally:
        runner.close()
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)
        rebuilt = load_pruned(resnetish(), tmp_path / "pruned")  # fresh, unpruned instance
        np.testing.assert_allclose(rebuilt(torch.from_numpy(batch)).numpy(), ref, atol=1e-6)


def test_load_pruned_needs_its_files(tmp_path):
    with pytest.raises(LeanifyError, match="save_pruned"):
        load_pruned(resnetish(), tmp_path)
