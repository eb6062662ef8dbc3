"""FLOP and MAC counts against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from leanify.errors import LeanifyError
from leanify.prune.flops import count_flops, count_macs, flops_by_module


def test_linear_and_conv_counts_match_the_formulas():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 5))
    x = torch.randn(2, 3, 8, 8)
    conv = 2 * 8 * 6 * 6 * (3 * 3 * 3)  # batch x out x H' x W' x (in x k x k)
    linear = 2 * 5 * 288
    assert count_macs(model, x) == conv + linear
    assert count_flops(model, (x,)) == 2 * (conv + linear)
    assert flops_by_module(model, x) == {"0": 2 * conv, "3": 2 * linear}


def test_breakdown_names_match_named_modules_and_sum_to_total():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sequential(torch.nn.Linear(8, 3)))
    x = {"input": torch.randn(5, 4)}
    leaves = flops_by_module(model, x)
    assert set(leaves) == {"0", "1.0"}
    assert sum(leaves.values()) == count_flops(model, x)
    every = flops_by_module(model, x, leaves_only=False)
    assert every["1"] == leaves["1.0"] and every[""] == count_flops(model, x)


def test_cpu_attention_kernel_is_counted():
    class Attn(torch.nn.Module):
        def forward(self, q):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    q = torch.randn(2, 4, 16, 8)  # batch, heads, seq, head dim
    assert count_flops(Attn(), q) == 2 * (2 * 2 * 4 * 16 * 16 * 8)  # QK^T and (attn)V


def test_training_mode_is_restored():
    model = torch.nn.Linear(3, 3).train()
    count_flops(model, torch.randn(1, 3))
    assert model.training


def test_bad_inputs_are_a_clear_error():
    with pytest.raises(LeanifyError, match="did not run on the example inputs"):
        count_flops(torch.nn.Linear(3, 3), torch.randn(1, 4))
