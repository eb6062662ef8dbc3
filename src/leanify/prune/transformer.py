"""Structured pruning of BERT-style encoders: FFN neurons and whole layers.

Pruning is index surgery on the transformers model itself, so the result stays a normal model of
its family: uniform widths that `config.json` can express (`intermediate_size`,
`num_hidden_layers`), saved with safetensors, loadable by plain `AutoModel.from_pretrained`.
Attention heads are not pruned here: BERT's config derives the head size from
`hidden_size / num_attention_heads`, so a model with fewer heads would not load back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from leanify.errors import LeanifyError

IMPORTANCE = ("activation", "magnitude", "taylor")


@dataclass(frozen=True)
class EncoderParts:
    """Where a BERT-family model keeps the pieces pruning touches."""

    config: Any
    layers: Any  # nn.ModuleList of encoder layers
    ffn_in: Callable[[Any], Any]  # layer -> Linear(hidden, intermediate)
    ffn_out: Callable[[Any], Any]  # layer -> Linear(intermediate, hidden)


def encoder_parts(model: Any) -> EncoderParts:
    """Find the encoder layers of a BERT / RoBERTa / ELECTRA / XLM-R style model."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not len(layers) or not hasattr(layers[0], "intermediate"):
        raise LeanifyError(
            f"structured transformer pruning supports BERT-style encoders; "
            f"{type(model).__name__} has no encoder.layer[i].intermediate.",
            fix="Use a BERT, RoBERTa, ELECTRA or XLM-R style model, or prune a torch module "
                "with leanify.prune.prune_channels.",
        )
    return EncoderParts(
        config=model.config, layers=layers,
        ffn_in=lambda layer: layer.intermediate.dense,
        ffn_out=lambda layer: layer.output.dense,
    )


def round_width(width: float, round_to: int, maximum: int) -> int:
    """Round a kept width to a multiple of `round_to` (kernels like multiples of 8/16)."""
    if round_to <= 1:
        return max(1, min(maximum, round(width)))
    return max(round_to, min(maximum, round(width / round_to) * round_to))


@dataclass
class PruneReport:
    """What pruning did, with numbers: filled in by `prune_encoder`."""

    params_before: int
    params_after: int = 0
    kept_layers: list[int] = field(default_factory=list)
    intermediate_before: int = 0
    intermediate_after: int = 0
    layer_scores: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before, "params_after": self.params_after,
            "kept_layers": self.kept_layers,
            "intermediate_size": [self.intermediate_before, self.intermediate_after],
            "layer_fidelity_without": {str(k): round(v, 5) for k, v in self.layer_scores.items()},
        }


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_pooled(model: Any, batches: Sequence[dict[str, Any]]) -> Any:
    """Mean-pooled last hidden states: what depth choices are judged by."""
    import torch

    outs = []
    with torch.inference_mode():
        for batch in batches:
            hidden = getattr(model, "base_model", model)(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            outs.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(outs)


def choose_layers(model: Any, batches: Sequence[dict[str, Any]], keep: int,
                  log: Callable[[str], None] | None = None) -> tuple[list[int], dict[int, float]]:
    """Greedy depth pruning: drop, one at a time, the layer whose removal changes the pooled
    output least (cosine to the full model on calibration batches)."""
    import torch

    parts = encoder_parts(model)
    all_layers = list(parts.layers)
    reference = _forward_pooled(model, batches)
    kept = list(range(len(all_layers)))
    first_scores: dict[int, float] = {}
    try:
        while len(kept) > keep:
            scores = {}
            for idx in kept:
                trial = [i for i in kept if i != idx]
                parts.layers._modules.clear()
                for pos, i in enumerate(trial):
                    parts.layers._modules[str(pos)] = all_layers[i]
                pooled = _forward_pooled(model, batches)
                scores[idx] = float(torch.nn.functional.cosine_similarity(pooled, reference).mean())
            if not first_scores:
                first_scores = scores
            drop = max(scores, key=scores.get)
            if log:
                log(f"drop layer {drop}: pooled-output cosine without it {scores[drop]:.4f}")
            kept.remove(drop)
    finally:
        parts.layers._modules.clear()
        for pos, layer in enumerate(all_layers):
            parts.layers._modules[str(pos)] = layer
    return kept, first_scores


def ffn_importance(model: Any, batches: Sequence[dict[str, Any]], criterion: str,
                   loss_fn: Callable[[Any, dict[str, Any]], Any] | None = None) -> list[Any]:
    """One score per FFN neuron per layer (higher = keep).

    activation: mean |GELU output| over real tokens times the norm of the neuron's output weights;
    magnitude: input-row norm times output-column norm; taylor: |activation x gradient| of
    `loss_fn` (needs a loss, e.g. labels), summed over tokens.
    """
    import torch

    parts = encoder_parts(model)
    if criterion not in IMPORTANCE:
        raise LeanifyError(f"unknown importance criterion {criterion!r}.",
                           fix=f"Use one of: {', '.join(IMPORTANCE)}.")
    out_norm = [parts.ffn_out(layer).weight.detach().norm(dim=0) for layer in parts.layers]
    if criterion == "magnitude":
        return [parts.ffn_in(layer).weight.detach().norm(dim=1) * out_norm[i]
                for i, layer in enumerate(parts.layers)]
    if criterion == "taylor" and loss_fn is None:
        raise LeanifyError("Taylor importance needs a loss (labelled data).",
                           fix="Use --importance activation, or give labelled data.")

    sums = [torch.zeros_like(n) for n in out_norm]
    state: dict[str, Any] = {}
    handles = []
    for i, layer in enumerate(parts.layers):
        def hook(_module, _inputs, output, i=i):
            mask = state["mask"]
            if criterion == "activation":
                sums[i] += (output.detach().abs() * mask).sum(dim=(0, 1))
            else:
                output.retain_grad()
                state.setdefault("acts", {})[i] = output
        # the activation output (after GELU) is the intermediate module's output
        handles.append(layer.intermediate.register_forward_hook(hook))
    try:
        for batch in batches:
            state["mask"] = batch["attention_mask"].unsqueeze(-1).float()
            if criterion == "activation":
                with torch.inference_mode():
                    model(**batch)
            else:
                model.zero_grad(set_to_none=True)
                state["acts"] = {}
                loss_fn(model, batch).backward()
                for i, act in state["acts"].items():
                    sums[i] += (act * act.grad * state["mask"]).detach().abs().sum(dim=(0, 1))
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    if criterion == "activation":
        return [s * out_norm[i] for i, s in enumerate(sums)]
    return sums


def _select_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new Linear keeping only `index` along `dim` (0: outputs, 1: inputs)."""
    import torch

    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, index).clone()
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_encoder(
    model: Any,
    batches: Sequence[dict[str, Any]],
    *,
    ffn_keep: float = 1.0,
    layers_keep: int | None = None,
    importance: str = "activation",
    round_to: int = 16,
    loss_fn: Callable[[Any, dict[str, Any]], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> PruneReport:
    """Prune `model` in place: keep `layers_keep` encoder layers (chosen on `batches`) and the
    `ffn_keep` fraction of FFN neurons in every kept layer (same width everywhere, rounded)."""
    import torch

    parts = encoder_parts(model)
    n_layers, inter = len(parts.layers), parts.ffn_in(parts.layers[0]).out_features
    report = PruneReport(params_before=_params(model), intermediate_before=inter)
    if not 0 < ffn_keep <= 1:
        raise LeanifyError(f"ffn_keep must be in (0, 1], got {ffn_keep}.",
                           fix="Pass the fraction of FFN neurons to keep, e.g. 0.5.")
    if layers_keep is not None and not 1 <= layers_keep <= n_layers:
        raise LeanifyError(f"layers_keep must be between 1 and {n_layers}, got {layers_keep}.",
                           fix=f"The model has {n_layers} layers; keep fewer, not more.")

    if layers_keep is not None and layers_keep < n_layers:
        kept, scores = choose_layers(model, batches, layers_keep, log)
        report.layer_scores = scores
        new_layers = torch.nn.ModuleList([parts.layers[i] for i in kept])
        model.base_model.encoder.layer = new_layers
        model.config.num_hidden_layers = len(kept)
        parts = encoder_parts(model)
    else:
        kept = list(range(n_layers))
    report.kept_layers = kept

    width = round_width(inter * ffn_keep, round_to, inter)
    if width < inter:
        scores = ffn_importance(model, batches, importance, loss_fn)
        for layer, score in zip(parts.layers, scores, strict=True):
            index = torch.topk(score, width).indices.sort().values
            layer.intermediate.dense = _select_linear(parts.ffn_in(layer), index, 0)
            layer.output.dense = _select_linear(parts.ffn_out(layer), index, 1)
        model.config.intermediate_size = width
    report.intermediate_after = width
    report.params_after = _params(model)
    if report.params_after >= report.params_before:
        # a mis-configured pruner silently prunes nothing: say so instead
        raise LeanifyError(
            f"pruning removed no parameters ({report.params_before:,} before and after).",
            fix="Keep fewer FFN neurons (--ffn-keep below 1) or fewer layers (--layers).",
        )
    return report
