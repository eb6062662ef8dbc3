"""Structured channel pruning of torch modules with Torch-Pruning's dependency graph.

Whole filters of convolutions and neurons of linear layers are removed, together with every
layer that depends on them (batch norms, the next layer's inputs, both sides of a residual add
or a concat), so the result is a smaller dense model that runs faster in any runtime.

Field notes this is built on (NOTES.md): a Torch-Pruning pruner configured with ratio 0 or the
wrong scope prunes nothing and raises nothing, so the parameter count and MACs are checked
after pruning; its own save path pickles the model, so leanify saves `.pt2` (torch.export) or
safetensors plus a JSON of the layer shapes instead.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError, first_line, require
from leanify.prune.flops import count_macs

IMPORTANCE = ("l1", "l2", "taylor", "activation")
WIDTHS_FILE = "pruned_shapes.json"
WEIGHTS_FILE = "model.safetensors"
PT2_FILE = "model.pt2"
_RESIZABLE_NAMES = ("CONV", "DEPTHWISE_CONV", "LINEAR", "BN", "LN", "GN")


@dataclass
class PruneSummary:
    """What pruning did, measured on the module: parameters, MACs and every layer's width."""

    importance: str
    ratio: float | None  # None: pruned in steps to target_macs
    round_to: int | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    ignored_layers: list[str] = field(default_factory=list)
    calibration_batches: int = 0
    steps: int = 1

    @property
    def params_kept(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def macs_kept(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def changed_layers(self) -> dict[str, tuple[int, int]]:
        return {k: (v, self.widths_after.get(k, v)) for k, v in self.widths_before.items()
                if self.widths_after.get(k, v) != v}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params_kept"] = round(self.params_kept, 4)
        out["macs_kept"] = round(self.macs_kept, 4)
        return out

    def text(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_kept:.1%} kept); MACs {self.macs_before:,} -> "
                 f"{self.macs_after:,} ({self.macs_kept:.1%} kept); importance "
                 f"{self.importance}"]
        lines += [f"  {name}: {a} -> {b}" for name, (a, b) in self.changed_layers().items()]
        return "\n".join(lines)


def layer_widths(module: Any) -> dict[str, int]:
    """Output width of every conv, linear and norm layer (what channel pruning changes)."""
    import torch

    nn = torch.nn
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = int(m.num_features)
    return out


def count_params(module: Any) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def prune_channels(
    module: Any,
    example_inputs: Any,
    *,
    ratio: float = 0.5,
    per_layer: Mapping[str, float] | None = None,
    global_pruning: bool = False,
    importance: str = "l2",
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    round_to: int | None = 8,
    ignored_layers: Sequence[str] | None = None,
    target_macs: float | None = None,
    max_ratio: float = 0.9,
    inplace: bool = False,
) -> tuple[Any, PruneSummary]:
    """Remove a share of the channels of every prunable layer; return (pruned module, summary).

    - `ratio`: share of channels removed per layer (or over the whole model with
      `global_pruning`); `per_layer` maps layer names to their own ratio.
    - `importance`: "l1"/"l2" (weight magnitude), "taylor" (|weight x gradient| of a loss over
      the `calibration` batches: `loss_fn(module, batch)`, or by default the cross-entropy
      against the module's own predictions), "activation" (mean |activation| over the
      `calibration` batches). Batches are what the module takes: a tensor, tuple or dict.
    - `round_to`: keep widths multiples of 8 or 16 (fast kernels); None: exact ratios. A layer
      is only pruned down to a non-zero multiple of round_to (an 8-wide layer stays whole);
      branches joined by a concat are rounded as their sum.
    - `ignored_layers`: names never pruned on their output side; default: the last conv or
      linear layer that runs (the classifier head), so the outputs keep their shape.
    - `target_macs`: prune in small steps until MACs fall to this fraction of the original
      (then `ratio` is not used; `max_ratio` caps any layer).
    The input module is left untouched unless `inplace`.
    """
    torch = require("torch", "torch", "Channel pruning")
    tp = require("torch_pruning", "prune", "Channel pruning")
    _check_args(ratio, per_layer, importance, round_to, target_macs, max_ratio)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    model = module if inplace else copy.deepcopy(module)
    model.eval()
    names = dict(model.named_modules())
    ignored_names = list(ignored_layers) if ignored_layers is not None else \
        [_last_layer(model, example_inputs)]
    for name in [*ignored_names, *(per_layer or {})]:
        if name not in names:
            raise LeanifyError(
                f"the module has no layer named '{name}'.",
                fix="Use names from module.named_modules(), e.g. "
                f"{', '.join(list(layer_widths(model))[:4])}.",
            )
    batches = list(calibration) if calibration is not None else [example_inputs]
    if not batches:
        raise LeanifyError("the calibration data is empty.",
                           fix="Give a few batches of real inputs (or none: the example batch).")
    params_before, macs_before = count_params(model), count_macs(model, example_inputs)
    widths_before = layer_widths(model)
    steps = 1 if target_macs is None else 20
    pruner = tp.pruner.MetaPruner(
        model, example_inputs,
        importance=_importance(tp, importance),
        global_pruning=global_pruning,
        pruning_ratio=max_ratio if target_macs is not None else ratio,
        pruning_ratio_dict={names[k]: v for k, v in (per_layer or {}).items()} or None,
        max_pruning_ratio=max_ratio,
        iterative_steps=steps,
        ignored_layers=[names[n] for n in ignored_names],
        round_to=round_to,
    )
    done = 0
    try:
        for _ in range(steps):
            _score(model, importance, batches, loss_fn, pruner)
            pruner.step()
            done += 1
            if target_macs is not None and \
                    count_macs(model, example_inputs) <= target_macs * macs_before:
                break
    except LeanifyError:
        raise
    except Exception as exc:
        raise LeanifyError(
            f"Torch-Pruning could not prune this module ({first_line(exc)}).",
            fix="Ignore the layers it trips on (ignored_layers=[...]) or prune a smaller ratio.",
        ) from exc
    finally:
        for m in model.modules():  # activation statistics must not stay on the module
            if hasattr(m, "_importance"):
                del m._importance
        model.zero_grad(set_to_none=True)
    model.eval()
    summary = PruneSummary(
        importance=importance, ratio=ratio if target_macs is None else None, round_to=round_to,
        params_before=params_before, params_after=count_params(model),
        macs_before=macs_before, macs_after=count_macs(model, example_inputs),
        widths_before=widths_before, widths_after=layer_widths(model),
        ignored_layers=ignored_names, calibration_batches=len(batches), steps=done,
    )
    _assert_pruned(summary)
    if target_macs is not None and summary.macs_kept > target_macs + 0.01:
        raise LeanifyError(
            f"pruning reached {summary.macs_kept:.1%} of the MACs, not the {target_macs:.0%} "
            f"asked for (every layer at max_ratio {max_ratio}).",
            fix="Raise max_ratio, ignore fewer layers, or ask for a larger target_macs.",
        )
    return model, summary


def _check_args(ratio: float, per_layer: Mapping[str, float] | None, importance: str,
                round_to: int | None, target_macs: float | None, max_ratio: float) -> None:
    if importance not in IMPORTANCE:
        raise LeanifyError(f"unknown importance criterion '{importance}'.",
                           fix=f"Use one of {', '.join(IMPORTANCE)}.")
    for what, value in [("ratio", ratio), ("max_ratio", max_ratio),
                        *((f"per_layer[{k}]", v) for k, v in (per_layer or {}).items())]:
        if not 0.0 <= value < 1.0:
            raise LeanifyError(f"pruning {what} must be in [0, 1); got {value}.",
                               fix="Use e.g. ratio=0.3 to remove 30% of the channels.")
    if target_macs is not None and not 0.0 < target_macs < 1.0:
        raise LeanifyError(f"target_macs must be a fraction in (0, 1); got {target_macs}.",
                           fix="Use e.g. target_macs=0.5 to keep half of the MACs.")
    if round_to is not None and round_to < 1:
        raise LeanifyError(f"round_to must be a positive integer; got {round_to}.",
                           fix="Use round_to=8 or 16, or leave it unset.")


def _assert_pruned(summary: PruneSummary) -> None:
    """A mis-configured pruner silently prunes nothing: make that an error."""
    if summary.params_after >= summary.params_before or \
            summary.macs_after >= summary.macs_before:
        raise LeanifyError(
            f"pruning removed nothing (params {summary.params_before:,} -> "
            f"{summary.params_after:,}, MACs {summary.macs_before:,} -> {summary.macs_after:,}).",
            fix="Raise the ratio, check that round_to is smaller than the layers' widths, and "
            "that ignored_layers does not cover every prunable layer.",
        )


def _last_layer(model: Any, example_inputs: Any) -> str:
    """The last conv or linear layer to run: the head whose outputs the caller reads."""
    import torch

    order: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n))
             for n, m in model.named_modules()
             if isinstance(m, torch.nn.modules.conv._ConvNd | torch.nn.Linear)]
    try:
        _call(model, example_inputs, grad=False)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise LeanifyError(
            f"{type(model).__name__} has no convolution or linear layer to prune.",
            fix="Channel pruning works on CNNs and MLPs (nn.Conv*/nn.Linear layers).",
        )
    return order[-1]


def _call(model: Any, batch: Any, grad: bool) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    with torch.set_grad_enabled(grad):
        return model(**batch) if isinstance(batch, Mapping) else model(*batch)


def _importance(tp: Any, kind: str) -> Any:
    imp = tp.importance
    if kind in ("l1", "l2"):
        return imp.GroupMagnitudeImportance(p=1 if kind == "l1" else 2)
    if kind == "taylor":
        return imp.GroupTaylorImportance()
    return imp.ActivationImportance()


def _score(model: Any, kind: str, batches: list[Any], loss_fn: Callable | None,
           pruner: Any) -> None:
    """Give the importance what it reads: gradients (Taylor) or activation statistics."""
    import torch

    if kind == "taylor":
        model.zero_grad(set_to_none=True)
        for batch in batches:
            with torch.enable_grad():
                loss = loss_fn(model, batch) if loss_fn else _self_loss(model, batch)
                loss.backward()
    elif kind == "activation":
        _activation_stats(model, batches)


def _self_loss(model: Any, batch: Any) -> Any:
    """Cross-entropy against the model's own predictions: a label-free Taylor signal."""
    import torch

    out = _call(model, batch, grad=True)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
        raise LeanifyError(
            "Taylor importance without a loss needs a classifier (outputs: batch x classes).",
            fix="Pass loss_fn=lambda module, batch: <scalar loss>, or use importance='l2' or "
            "'activation'.",
        )
    return torch.nn.functional.cross_entropy(out, out.detach().argmax(1))


def _activation_stats(model: Any, batches: list[Any]) -> None:
    """Mean |input| per channel of every conv/linear over all batches, as `layer._importance`.

    Torch-Pruning's ActivationImportance reads `_importance` from the layer that consumes the
    channels; its own hook keeps only the last batch, so the mean over batches is built here.
    """
    import torch

    sums: dict[Any, Any] = {}
    counts: dict[Any, int] = {}

    def hook(module: Any, inputs: tuple, _out: Any) -> None:
        x = inputs[0].detach()
        if isinstance(module, torch.nn.Linear):
            per = x.abs().reshape(-1, x.shape[-1]).mean(0)
        else:
            per = x.abs().transpose(0, 1).reshape(x.shape[1], -1).mean(1)
        sums[module] = sums.get(module, 0) + per
        counts[module] = counts.get(module, 0) + 1

    layers = [m for m in model.modules()
              if isinstance(m, torch.nn.modules.conv._ConvNd | torch.nn.Linear)]
    hooks = [m.register_forward_hook(hook) for m in layers]
    try:
        for batch in batches:
            _call(model, batch, grad=False)
    finally:
        for h in hooks:
            h.remove()
    for m in layers:
        if m in sums:
            m._importance = sums[m] / counts[m]


# --- Saving without pickle ---------------------------------------------------------------


def save_pruned(module: Any, example_inputs: Any, folder: str | Path,
                dynamic_batch: bool = True) -> dict[str, Path]:
    """Write `model.pt2` (torch.export), `model.safetensors` and the layer shapes as JSON.

    The `.pt2` loads with `leanify.load`; the safetensors + JSON rebuild the module from a fresh
    instance of its class with `load_pruned`. Nothing is pickled.
    """
    torch = require("torch", "torch", "Saving pruned modules")
    safetensors_torch = require("safetensors.torch", "torch", "Saving pruned modules")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    module = module.eval()
    kwargs = dict(example_inputs) if isinstance(example_inputs, Mapping) else None
    args = () if kwargs is not None else tuple(example_inputs)
    values = list(kwargs.values()) if kwargs is not None else list(args)
    dims = [{0: torch.export.Dim.AUTO} if dynamic_batch and v.ndim else {} for v in values]
    shapes = dict(zip(kwargs, dims, strict=True)) if kwargs is not None else tuple(dims)
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, kwargs=kwargs, dynamic_shapes=shapes)
        torch.export.save(program, str(folder / PT2_FILE))
    except Exception as exc:
        raise LeanifyError(f"torch.export failed on the pruned module ({first_line(exc)}).",
                           fix="Save the safetensors weights only (load_pruned rebuilds them), "
                           "or export to ONNX.") from exc
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    safetensors_torch.save_file(state, str(folder / WEIGHTS_FILE))
    shapes_json = {"class": type(module).__qualname__,
                   "shapes": {k: list(v.shape) for k, v in state.items()}}
    (folder / WIDTHS_FILE).write_text(json.dumps(shapes_json, indent=1) + "\n", encoding="utf-8")
    return {"pt2": folder / PT2_FILE, "safetensors": folder / WEIGHTS_FILE,
            "shapes": folder / WIDTHS_FILE}


def load_pruned(module: Any, folder: str | Path) -> Any:
    """Shrink a fresh (unpruned) instance of the module's class to the saved shapes, load weights.

    Works for the layers Torch-Pruning prunes (conv, linear, batch/layer/group norm, ...): each
    layer keeps its first channels, then the saved weights overwrite them.
    """
    tp = require("torch_pruning", "prune", "Loading pruned modules")
    safetensors_torch = require("safetensors.torch", "torch", "Loading pruned modules")
    folder = Path(folder)
    spec_file = folder / WIDTHS_FILE
    if not spec_file.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise LeanifyError(f"holds no {WIDTHS_FILE} and {WEIGHTS_FILE}.", path=folder,
                           fix="Point at a folder written by leanify's save_pruned.")
    shapes = json.loads(spec_file.read_text(encoding="utf-8"))["shapes"]
    box = tp.pruner.function.PrunerBox
    resizable = {getattr(tp.ops.OPTYPE, n) for n in _RESIZABLE_NAMES}
    for name, layer in module.named_modules():
        saved = shapes.get(f"{name}.weight" if name else "weight")
        cur = getattr(layer, "weight", None)
        if saved is None or cur is None or list(cur.shape) == saved:
            continue
        kind = tp.ops.module2type(layer)
        transposed = getattr(layer, "transposed", False)
        if kind not in resizable or transposed:
            raise LeanifyError(f"cannot resize layer '{name}' ({type(layer).__name__}).",
                               path=folder, fix="Load the .pt2 file instead.")
        fn = box[kind]
        if saved[0] < cur.shape[0]:  # out channels: dim 0 for conv, linear and norms
            fn.prune_out_channels(layer, list(range(saved[0], cur.shape[0])))
        now = layer.weight.shape
        if kind != tp.ops.OPTYPE.DEPTHWISE_CONV and len(saved) > 1 and saved[1] < now[1]:
            fn.prune_in_channels(layer, list(range(saved[1], now[1])))
    state = safetensors_torch.load_file(str(folder / WEIGHTS_FILE))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LeanifyError(f"the saved weights do not fit this module ({first_line(exc)}).",
                           path=folder,
                           fix="Build the module from the same config it was pruned from.") from exc
    return module.eval()


