"""Count the FLOPs (and MACs) a torch module spends on given inputs.

Counted with `torch.utils.flop_counter.FlopCounterMode`, which records matrix products and
convolutions (mm, addmm, bmm, convolution, scaled-dot-product attention ...) as they run:
the ops that dominate CNNs and transformer encoders. Element-wise ops (activations, norms,
adds) are not counted, as in most papers' FLOP figures. One multiply-accumulate is 2 FLOPs.
torch 2.13's counter has no formula for the CPU kernel of scaled-dot-product attention (SDPA
attention then counted 0 on this CPU), so one is added here: Q@K^T plus attention@V.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leanify.errors import LeanifyError, first_line, require


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *_args: Any,
                    out_shape: Any = None, **_kwargs: Any) -> int:
    *batch, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    b = 1
    for d in batch:
        b *= d
    return 2 * b * s_q * s_k * d_q + 2 * b * s_q * s_k * d_v


def _run_counted(module: Any, example_inputs: Any) -> Any:
    """Run `module` once under FlopCounterMode; returns the counter."""
    torch = require("torch", "torch", "Counting FLOPs")
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    extra = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        extra[cpu_sdpa] = _cpu_sdpa_flops
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=extra)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), counter:
            if isinstance(example_inputs, Mapping):
                module(**example_inputs)
            else:
                module(*example_inputs)
    except Exception as exc:
        raise LeanifyError(
            f"counting FLOPs failed: the module did not run on the example inputs "
            f"({first_line(exc)}).",
            fix="Give example inputs the module's forward accepts (a tuple or a dict of tensors).",
        ) from exc
    finally:
        module.train(was_training)
    return counter


def count_flops(module: Any, example_inputs: Any) -> int:
    """FLOPs of one forward pass of `module` on `example_inputs` (a tensor, tuple or dict).

    The count scales with the inputs' batch size and sequence length: compare models on the
    same inputs.
    """
    return int(_run_counted(module, example_inputs).get_total_flops())


def count_macs(module: Any, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2)."""
    return count_flops(module, example_inputs) // 2


def flops_by_module(module: Any, example_inputs: Any, leaves_only: bool = True
                    ) -> dict[str, int]:
    """FLOPs per submodule, keyed by the names `module.named_modules()` uses ("" = root).

    With `leaves_only`, only modules without children are listed (their sum is the total
    unless the root's own forward does matrix products); otherwise every level is, and a
    parent's count includes its children's.
    """
    counts = _run_counted(module, example_inputs).get_flop_counts()
    root = type(module).__name__
    names = dict(module.named_modules())
    out: dict[str, int] = {}
    for key, per_op in counts.items():
        if key == "Global":
            continue
        # FlopCounterMode names modules "<RootClass>.<path>"; map back to named_modules().
        name = "" if key == root else key.removeprefix(root + ".")
        if name not in names:
            continue
        if leaves_only and any(True for _ in names[name].children()):
            continue
        out[name] = out.get(name, 0) + int(sum(per_op.values()))
    return out
