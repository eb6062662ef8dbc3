"""Cheap redundancy signals: what could be removed without retraining much.

- Effective rank of every linear layer (weights only): the number of singular values that hold
  90% of the matrix's energy. Far below full rank: a low-rank factorization candidate.
- Near-dead FFN neurons (on the user's data): neurons feeding an FFN down-projection whose mean
  absolute activation over real tokens is under 1% of the layer's mean. Structured-pruning
  candidates.
- Near-dead attention heads: a head whose share of the attention output (its context vectors
  through its slice of the output projection) is under a quarter of an even share.
- Near-identity blocks: blocks whose output hidden states barely differ from their input
  (mean cosine over real tokens at or above 0.98). Depth-pruning candidates.
The activation signals need a torch module with hooks (Hugging Face folders, in-memory
modules); other formats get the weight signal only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from leanify.diagnose.common import layer_sort_key

ENERGY = 0.90
LOW_RANK = 0.5  # rank holding 90% of the energy at most half of full: low-rank candidate
DEAD_NEURON = 0.01
DEAD_HEAD = 0.25
NEAR_IDENTITY = 0.98
FFN_DOWN = re.compile(r"(output\.dense|fc2|c_proj|down_proj|dense_4h_to_h|lin2|wo|w2)$")
ATTN_OUT = re.compile(r"(attention\.output\.dense|out_proj|o_proj|attention\.dense|out_lin)$")


def effective_rank(matrices: Mapping[str, np.ndarray]) -> dict[str, Any]:
    rows = []
    for name, w in matrices.items():
        s = np.linalg.svd(np.asarray(w, dtype=np.float32), compute_uv=False).astype(np.float64)
        full = int(min(w.shape))
        energy = np.cumsum(s**2) / max(float((s**2).sum()), 1e-30)
        rank90 = int(np.searchsorted(energy, ENERGY) + 1)
        p = s / max(float(s.sum()), 1e-30)
        entropy_rank = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
        rank90 = min(rank90, full)
        rows.append({"name": name, "shape": list(w.shape), "full_rank": full,
                     "rank90": rank90, "rank90_share": round(rank90 / full, 3),
                     "entropy_rank": round(entropy_rank, 1),
                     "low_rank_candidate": bool(rank90 <= LOW_RANK * full)})
    candidates = [r["name"] for r in rows if r["low_rank_candidate"]]
    return {"energy": ENERGY, "layers": rows, "low_rank_candidates": candidates}


def _first_tensor(out: Any):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return None


def activations(model: Any, run_batches: Iterable[tuple[Any, np.ndarray | None]],
                num_heads: int | None, blocks: list[tuple[str, Any]]) -> dict[str, Any]:
    """Hook the model while `run_batches` yields (a function that runs one batch, its mask).

    `blocks` are the repeated blocks (see profile.block_modules) for the near-identity test.
    """
    import torch

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    ffn = {n: m for n, m in linears.items()
           if FFN_DOWN.search(n) and m.in_features > m.out_features}
    attn = {n: m for n, m in linears.items()
            if ATTN_OUT.search(n) and num_heads and m.in_features % num_heads == 0}
    repeated = [(n, m) for n, m in blocks if re.search(r"\.\d+$", n)]
    state: dict[str, Any] = {"mask": None}
    neuron_sum: dict[str, torch.Tensor] = {}
    head_sum: dict[str, torch.Tensor] = {}
    block_cos: dict[str, list[float]] = {}
    block_change: dict[str, list[float]] = {}
    tokens = [0]

    def keep(x: torch.Tensor) -> torch.Tensor:
        """(tokens, features) over the real tokens of a (batch, seq, features) tensor."""
        mask = state["mask"]
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            return x[torch.from_numpy(mask.astype(bool))]
        return x.reshape(-1, x.shape[-1])

    def ffn_hook(name):
        def hook(_m, args):
            x = keep(args[0]).abs().float()
            neuron_sum[name] = neuron_sum.get(name, 0) + x.sum(0)
        return hook

    def attn_hook(name, module):
        def hook(_m, args):
            x = keep(args[0]).float()
            h = num_heads
            d = x.shape[-1] // h
            w = module.weight.detach().float()  # (out, in)
            shares = []
            for i in range(h):
                part = x[:, i * d:(i + 1) * d] @ w[:, i * d:(i + 1) * d].T
                shares.append(part.norm(dim=-1).sum())
            head_sum[name] = head_sum.get(name, 0) + torch.stack(shares)
        return hook

    def block_hook(name):
        def hook(_m, args, out):
            x_in = args[0] if args and isinstance(args[0], torch.Tensor) else None
            x_out = _first_tensor(out)
            if x_in is None or x_out is None or x_in.shape != x_out.shape:
                return
            a, b = keep(x_in).float(), keep(x_out).float()
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
            block_cos.setdefault(name, []).append(float(cos.mean()))
            change = (b - a).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)
            block_change.setdefault(name, []).append(float(change.mean()))
        return hook

    handles = [m.register_forward_pre_hook(ffn_hook(n)) for n, m in ffn.items()]
    handles += [m.register_forward_pre_hook(attn_hook(n, m)) for n, m in attn.items()]
    handles += [m.register_forward_hook(block_hook(n)) for n, m in repeated]
    try:
        for run, mask in run_batches:
            state["mask"] = mask
            tokens[0] += int(mask.sum()) if mask is not None else 0
            run()
    finally:
        for h in handles:
            h.remove()

    neurons = []
    for name in sorted(neuron_sum, key=layer_sort_key):
        level = float(neuron_sum[name].mean())
        dead = int((neuron_sum[name] < DEAD_NEURON * level).sum()) if level > 0 else 0
        neurons.append({"layer": name, "neurons": int(neuron_sum[name].numel()),
                        "near_dead": dead,
                        "near_dead_share": round(dead / max(neuron_sum[name].numel(), 1), 4)})
    heads = []
    for name in sorted(head_sum, key=layer_sort_key):
        share = (head_sum[name] / head_sum[name].sum().clamp_min(1e-12)).tolist()
        even = 1.0 / len(share)
        heads.append({"layer": name, "heads": len(share),
                      "shares": [round(s, 4) for s in share],
                      "near_dead": [i for i, s in enumerate(share) if s < DEAD_HEAD * even]})
    layers = [{"name": n, "cosine_in_out": round(float(np.mean(block_cos[n])), 4),
               "relative_change": round(float(np.mean(block_change[n])), 4),
               "near_identity": bool(np.mean(block_cos[n]) >= NEAR_IDENTITY)}
              for n in sorted(block_cos, key=layer_sort_key)]
    return {
        "tokens": tokens[0],
        "ffn_neurons": neurons,
        "attention_heads": heads,
        "blocks": layers,
        "near_identity_blocks": [r["name"] for r in layers if r["near_identity"]],
        "near_dead_neurons": sum(r["near_dead"] for r in neurons),
        "near_dead_heads": sum(len(r["near_dead"]) for r in heads),
        "thresholds": {"near_dead_neuron_of_mean": DEAD_NEURON,
                       "near_dead_head_of_even_share": DEAD_HEAD,
                       "near_identity_cosine": NEAR_IDENTITY},
    }
