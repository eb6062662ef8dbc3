"""Unstructured sparsity: measured, reported as a size gain, never as a dense speed-up."""

from __future__ import annotations

import pytest
import torch

from leanify.errors import LeanifyError
from leanify.prune import prune_unstructured, sparsify_linears
from leanify.prune.unstructured import DENSE_NOTE, gzip_size, weight_sparsity


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 8)).eval()


def test_sparsity_is_measured_and_shrinks_compressed_size_only():
    model = mlp()
    pruned, summary = prune_unstructured(model, 0.8)
    overall, _per = weight_sparsity(pruned)
    assert summary.sparsity == pytest.approx(0.8, abs=0.005) == pytest.approx(overall, abs=1e-3)
    assert set(summary.layer_sparsity) == {"0", "2", "4"}
    raw, gz = gzip_size(pruned)
    assert summary.gzip_bytes_after == gz < summary.gzip_bytes_before
    assert summary.raw_bytes == raw == gzip_size(model)[0]  # dense bytes: unchanged
    assert "dense latency does not improve" in summary.note == DENSE_NOTE
    assert not any("speed" in k or "latency" in k for k in summary.to_dict())
    # A plain module: the pruning masks are folded in, no reparametrization left behind.
    assert not any(hasattr(m, "weight_orig") or hasattr(m, "weight_mask")
                   for m in pruned.modules())
    assert weight_sparsity(model)[0] == 0.0  # the input is untouched


def test_emptied_layers_are_warned_about():
    model = mlp()
    with torch.no_grad():
        model[4].weight.mul_(1e-4)  # tiny weights lose every entry in a global ranking
    _pruned, summary = prune_unstructured(model, 0.5)
    assert any("'4'" in w for w in summary.warnings)


def test_bad_amount_is_a_clear_error():
    with pytest.raises(LeanifyError, match="amount"):
        prune_unstructured(mlp(), 1.0)


def test_csr_only_where_the_timer_says_faster():
    pruned, _ = prune_unstructured(mlp(), 0.9)
    with torch.no_grad():
        pruned[0].weight.mul_(torch.rand_like(pruned[0].weight) > 0.9)  # >= 90% zeros
        pruned[2].weight.copy_(torch.randn(128, 128))  # dense again: below min_sparsity
    calls = []

    def timer(fn, kind):
        calls.append(kind)
        fn()
        return {"dense": 1.0, "csr": 0.5}[kind] if len(calls) <= 4 else \
            {"dense": 1.0, "csr": 2.0}[kind]

    x = torch.randn(16, 64)
    model, decisions = sparsify_linears(pruned, x, timer=timer)
    by = {d.layer: d for d in decisions}
    assert by["0"].sparse and type(model[0]).__name__ == "CsrLinear"
    assert not by["2"].sparse and "not timed" in by["2"].reason
    assert not by["4"].sparse and "not 1.1x faster" in by["4"].reason
    assert isinstance(model[2], torch.nn.Linear) and isinstance(model[4], torch.nn.Linear)
    assert calls == ["dense", "csr"] * 4  # two layers timed, interleaved rounds
    with torch.no_grad():
        torch.testing.assert_close(model(x), pruned(x), rtol=1e-4, atol=1e-4)


def test_csr_real_timing_decision_is_consistent():
    layer = torch.nn.Sequential(torch.nn.Linear(512, 512))
    with torch.no_grad():
        layer[0].weight.mul_(torch.rand(512, 512) > 0.95)
    x = torch.randn(32, 512)
    model, [decision] = sparsify_linears(layer, x)
    assert decision.sparse == (decision.csr_ms * 1.1 <= decision.dense_ms)
    assert decision.dense_ms > 0 and decision.csr_ms > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), layer(x), rtol=1e-4, atol=1e-4)
