"""PyTorch eager generation for causal LMs: prefill, then a greedy decode loop on the KV cache.

The baseline every other generation runtime is compared with. `run(batch)` is one forward
pass (full logits, no cache: what perplexity scores); `generate(ids, new_tokens)` is what a
chat request costs: one prefill over the prompt, then one forward per new token that feeds
the cache (`past_key_values`) back in. The loop never stops early at an end-of-text token, so
every call makes exactly `new_tokens` tokens and calls compare like for like.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.models.artifact import Artifact
from leanify.runtimes.base import Runtime
from leanify.runtimes.torch_eager import WEIGHTS, HFRunner


@dataclass
class Generation:
    """One generate call: the new token ids (rows x new tokens) and when each was ready,
    in ms from the call's start (token_ms[0] is the time to first token)."""

    tokens: np.ndarray
    token_ms: list[float]

    @property
    def ttft_ms(self) -> float:
        return self.token_ms[0]

    @property
    def e2e_ms(self) -> float:
        return self.token_ms[-1]

    def inter_token_ms(self) -> list[float]:
        return [b - a for a, b in zip(self.token_ms, self.token_ms[1:], strict=False)]


@dataclass(frozen=True)
class Sampling:
    """How a served request picks its tokens: greedy at temperature 0, else softmax sampling
    at that temperature within the top_p nucleus; it stops at `max_new_tokens` or an eos id."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    eos_ids: tuple[int, ...] = ()


class GenerationRunner(HFRunner):
    runtime = "torch-generate"

    def __init__(self, artifact: Artifact, threads: int | None, trust_pickle: bool = False):
        if artifact.meta.get("task") != "text-generation":
            raise LeanifyError(
                f"is a {artifact.meta.get('task') or 'non-generative'} model, not a causal "
                "language model; only those generate text.", path=artifact.path,
                fix="Benchmark it without --new-tokens, or give a *ForCausalLM model.")
        super().__init__(artifact, threads, trust_pickle)
        # prefill needs the last position's logits only (a server skips the rest too)
        params = inspect.signature(self.model.forward).parameters
        self.keep_last = "logits_to_keep" in params
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def generate(self, ids: np.ndarray, new_tokens: int) -> Generation:
        """Greedy decode: rows of `ids` (equal lengths, no padding) each get new_tokens."""
        torch = self.torch
        if ids.ndim != 2 or ids.shape[1] < 1 or new_tokens < 1:
            raise ValueError("generate needs (rows, tokens) ids and at least one new token")
        prompt = torch.from_numpy(np.require(ids, dtype=np.int64, requirements="C"))
        extra = {"logits_to_keep": 1} if self.keep_last else {}
        out_tokens, stamps = [], []
        with torch.inference_mode():
            start = time.perf_counter_ns()
            out = self.model(input_ids=prompt, use_cache=True, **extra)
            for step in range(new_tokens):
                nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                out_tokens.append(nxt)
                stamps.append((time.perf_counter_ns() - start) / 1e6)
                if step + 1 == new_tokens:
                    break
                cache = out.get("cache", out.get("past_key_values"))
                out = self.model(input_ids=nxt, use_cache=True, **{self.cache_arg: cache})
        return Generation(torch.cat(out_tokens, dim=1).numpy(), stamps)

    def stream(self, ids: list[int], sampling: Sampling,
               emit: Callable[[list[int]], bool]) -> str:
        """One request's tokens, each handed to `emit` as it is ready (`emit` returns False to
        stop early). Returns why it stopped: "stop" (an eos id, or `emit`), or "length"."""
        torch = self.torch
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(sampling.seed if sampling.seed is not None else
                                  time.perf_counter_ns())
        extra = {"logits_to_keep": 1} if self.keep_last else {}
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.int64), use_cache=True,
                             **extra)
            for step in range(sampling.max_new_tokens):
                token = _pick(torch, out.logits[0, -1, :], sampling, generator)
                if token in sampling.eos_ids:
                    return "stop"
                if not emit([token]):
                    return "stop"
                if step + 1 == sampling.max_new_tokens:
                    break
                cache = out.get("cache", out.get("past_key_values"))
                out = self.model(input_ids=torch.tensor([[token]], dtype=torch.int64),
                                 use_cache=True, **{self.cache_arg: cache})
        return "length"


def _pick(torch: Any, logits: Any, sampling: Sampling, generator: Any) -> int:
    if sampling.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < sampling.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _open(artifact: Artifact, threads: int | None, trust_pickle: bool = False) -> Any:
    return GenerationRunner(artifact, threads, trust_pickle)


RUNTIME = Runtime(name="torch-generate", formats=("hf",), module="torch", package="torch",
                  open=_open, settings={"weights": WEIGHTS}, extra="torch", generates=True)
