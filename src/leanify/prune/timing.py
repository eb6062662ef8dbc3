"""A per-layer microbenchmark: warm-up excluded, median of repeated calls.

Used to decide, layer by layer, whether a sparse or factorized form is really faster than the
dense layer on this CPU. Whole models are measured with leanify.measure (own processes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

# (callable, what it is: "dense", "csr", "factorized") -> median ms. Tests inject their own.
Timer = Callable[[Callable[[], Any], str], float]


def median_ms(fn: Callable[[], Any], kind: str = "", warmup: int = 3, min_iters: int = 15,
              min_time_s: float = 0.05) -> float:
    """Median wall time of `fn()` in ms, after `warmup` untimed calls (`kind` is a label)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - started < min_time_s:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 10 * min_iters:
            break
    return statistics.median(samples)


def compare_ms(timer: Timer, dense: Callable[[], Any], other: Callable[[], Any], kind: str,
               rounds: int = 2) -> tuple[float, float]:
    """Time `dense` and `other` in interleaved rounds (A B A B); the fastest round of each.

    Interleaving makes drift on a shared machine hit both alike; the fastest round is the
    least disturbed by other processes.
    """
    a, b = [], []
    for _ in range(rounds):
        a.append(timer(dense, "dense"))
        b.append(timer(other, kind))
    return min(a), min(b)


def layer_inputs(module: Any, example_inputs: Any, types: tuple[type, ...]) -> dict[str, Any]:
    """The real input tensor each layer of `types` sees when `module` runs `example_inputs`."""
    import torch

    seen: dict[str, Any] = {}
    hooks = []
    for name, layer in module.named_modules():
        if isinstance(layer, types):
            def hook(_m: Any, inputs: tuple, _out: Any, name: str = name) -> None:
                seen.setdefault(name, inputs[0].detach())
            hooks.append(layer.register_forward_hook(hook))
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                module(**example_inputs)
            else:
                module(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen
