"""Low-rank factorization: rank choice, error, and keeping a layer only where it is faster."""

from __future__ import annotations

import pytest
import torch

from leanify.errors import LeanifyError
from leanify.prune import factorize_linears
from leanify.prune.low_rank import choose_rank, factorize


def low_rank_linear(out_f: int = 256, in_f: int = 256, rank: int = 16, noise: float = 1e-3):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, rank, generator=g) @
                           torch.randn(rank, in_f, generator=g) / rank
                           + noise * torch.randn(out_f, in_f, generator=g))
    return layer


def test_choose_rank_energy_flops_target_and_rounding():
    s = [10.0] * 5 + [0.01] * 195  # 5 strong directions out of 200
    assert choose_rank(s, 200, 200, energy=0.9) == 8  # 5 rounded up to a multiple of 8
    assert choose_rank(s, 200, 200, energy=0.9, round_to=16) == 16
    assert choose_rank(s, 200, 200, flops_target=0.25) == 32  # 0.25*200*200/400 = 25 -> 32
    flat = [1.0] * 64
    assert choose_rank(flat, 64, 64, energy=0.9) == 0  # rank 64*0.9 saves no FLOPs
    assert choose_rank([1.0] * 10, 10, 16, energy=0.5) == 0  # thin layer: nothing to save


def test_factorize_reproduces_a_low_rank_weight():
    layer = low_rank_linear(noise=0.0)
    pair = factorize(layer, 16)
    x = torch.randn(8, 256)
    with torch.no_grad():
        torch.testing.assert_close(pair(x), layer(x), rtol=1e-4, atol=1e-4)
    assert [m.weight.shape for m in pair] == [(16, 256), (256, 16)]


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(low_rank_linear(), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 4)).eval()


@pytest.mark.parametrize("factored_ms, kept", [(0.5, True), (0.95, False)])
def test_kept_only_when_the_timer_says_faster(factored_ms, kept):
    net = model()
    seen = []

    def timer(fn, kind):
        seen.append(kind)
        fn()
        return 1.0 if kind == "dense" else factored_ms

    x = torch.randn(32, 256)
    out, decisions = factorize_linears(net, x, energy=0.95, timer=timer)
    by = {d.layer: d for d in decisions}
    assert by["0"].rank == 16 and by["0"].error < 0.05 and by["0"].kept is kept
    assert isinstance(out[0], torch.nn.Sequential) is kept
    # Random (full-rank) and thin layers save nothing at 95% energy: never timed.
    assert not by["2"].kept and not by["4"].kept
    assert seen == ["dense", "factorized"] * 2  # interleaved rounds
    assert isinstance(net[0], torch.nn.Linear)  # the input is untouched


def test_large_error_is_rejected_before_timing():
    def timer(fn, kind):
        raise AssertionError("a layer with too large an error must not be timed")

    net = model()
    _out, decisions = factorize_linears(net, torch.randn(8, 256), flops_target=0.1,
                                        layers=["2"], timer=timer)
    assert not decisions[0].kept and "output error" in decisions[0].reason


def test_real_timing_decision_is_consistent():
    big = torch.nn.Sequential(low_rank_linear(1024, 1024, 16), torch.nn.ReLU())
    x = torch.randn(64, 1024)
    out, [d] = factorize_linears(big, x, energy=0.95)
    assert d.dense_ms > 0 and d.factored_ms > 0
    assert d.kept == (d.factored_ms * 1.1 <= d.dense_ms)
    with torch.no_grad():
        err = (out(x) - big(x)).norm() / big(x).norm()
    assert err < 0.05


def test_bad_settings_are_clear_errors():
    with pytest.raises(LeanifyError, match="flops_target"):
        factorize_linears(model(), torch.randn(2, 256), flops_target=1.5)
    with pytest.raises(LeanifyError, match="no Linear layer named"):
        factorize_linears(model(), torch.randn(2, 256), layers=["9"])
