"""OpenVINO GenAI: causal LMs exported to OpenVINO IR (a stateful KV cache), generating with
`LLMPipeline`, the runtime OpenVINO documents for chatbots on CPU.

Two faces of one model folder (openvino_model.xml + .bin, config.json, openvino_tokenizer.xml):
- `generate(ids, new_tokens)`: the decode loop a chat request costs, through LLMPipeline on the
  token ids themselves (no tokenizer in the timing). Greedy, exactly `new_tokens` tokens (end of
  text ignored), so every call compares like for like. One row: a streamer stamps each token as
  it is ready; several rows (decoded together): the pipeline's own per-step durations.
- `run(batch)`: one forward pass with the full logits (what perplexity scores), through the IR
  compiled on its own, the state reset before every call.
Each is opened on first use, so a timed generate never pays for the other's memory.

Settings (`runtime` in leanify_model.json):
- `prompt_lookup` (int): prompt-lookup speculative decoding, proposing that many tokens per step
  from n-grams already in the prompt and the output (`max_ngram_size`, default 3); the model
  verifies every proposal, so greedy output is unchanged and only the time moves. It pays when
  the output repeats the context (summaries, code edits, chat history); on fresh text it costs a
  little.
- `kv_cache_precision` ("u8", "f16", "bf16", "f32"): the CPU plugin's default is u8.
- `inference_precision` ("bf16", "f32", "f16"): OpenVINO's default is bf16 on CPUs with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError, require
from leanify.models.artifact import Artifact
from leanify.models.openvino_ir import ov_reason
from leanify.runtimes.base import Runner, Runtime
from leanify.runtimes.torch_generate import Generation, Sampling

SETTINGS = {
    "prompt_lookup": (int,),
    "max_ngram_size": (int,),
    "kv_cache_precision": ("u8", "f16", "bf16", "f32"),
    "inference_precision": ("bf16", "f32", "f16"),
}
NGRAM_DEFAULT = 3
STATE_INPUT = "beam_idx"  # the stateful export's marker (optimum-intel / OpenVINO GenAI)


def is_genai_model(model: Any) -> bool:
    """A stateful causal-LM IR: input_ids plus the beam index that reorders the KV state."""
    names = {port.get_any_name() for port in model.inputs}
    return {"input_ids", STATE_INPUT} <= names


def properties(settings: Mapping[str, Any], threads: int | None) -> dict[str, Any]:
    """CPU plugin properties for `settings` and a thread budget (prompt lookup is not one)."""
    props: dict[str, Any] = {}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    if settings.get("kv_cache_precision"):
        props["KV_CACHE_PRECISION"] = settings["kv_cache_precision"]
    if settings.get("inference_precision"):
        props["INFERENCE_PRECISION_HINT"] = settings["inference_precision"]
    return props


class GenAIRunner(Runner):
    runtime = "openvino-genai"

    def __init__(self, artifact: Artifact, threads: int | None):
        super().__init__(artifact, threads)
        if artifact.meta.get("task") != "text-generation" or \
                STATE_INPUT not in artifact.input_names:
            raise LeanifyError(
                "is not a causal LM exported for OpenVINO GenAI (a stateful IR with a "
                f"'{STATE_INPUT}' input).", path=artifact.path,
                fix="Export it with leanify's export-openvino-llm pass (or optimum-cli export "
                "openvino --task text-generation-with-past), or run it on 'openvino'.")
        self.folder = Path(artifact.path).parent
        self.settings = dict(artifact.meta.get("runtime") or {})
        self._pipe: Any = None
        self._request: Any = None

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]  # positions and beam index are built here

    @property
    def details(self) -> dict[str, Any]:
        ran = {k: v for k, v in self.settings.items() if k in SETTINGS}
        if ran.get("prompt_lookup"):
            ran.setdefault("max_ngram_size", NGRAM_DEFAULT)
        return ran

    # -- full logits (perplexity, fidelity) ------------------------------------------------

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = sorted(set(batch) - set(self.input_names))
        if unknown or "input_ids" not in batch:
            raise LeanifyError(
                f"a causal LM on OpenVINO GenAI takes input_ids (and attention_mask), not "
                f"{', '.join(unknown) or 'this batch'}.", path=self.artifact.path,
                fix="Give input_ids and attention_mask only.")
        ids = np.require(batch["input_ids"], np.int64, "C")
        mask = np.require(batch.get("attention_mask", np.ones_like(ids)), np.int64, "C")
        request = self._logits_request()
        request.reset_state()  # every call starts from an empty KV cache
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        request.infer({"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                       STATE_INPUT: np.arange(ids.shape[0], dtype=np.int32)})
        return {"logits": request.get_tensor("logits").data.copy()}

    def _logits_request(self) -> Any:
        if self._request is None:
            ov = require("openvino", "openvino", "Running LLMs on OpenVINO")
            try:
                compiled = ov.Core().compile_model(str(self.artifact.path), "CPU",
                                                   properties(self.settings, self.threads))
            except Exception as exc:
                raise LeanifyError(f"OpenVINO could not compile this LLM ({ov_reason(exc)}).",
                                   path=self.artifact.path, fix=REEXPORT) from exc
            self._request = compiled.create_infer_request()
        return self._request

    # -- generation -------------------------------------------------------------------------

    def pipeline(self) -> Any:
        if self._pipe is None:
            genai = require("openvino_genai", "llm", "Generating text on OpenVINO GenAI")
            props = properties(self.settings, self.threads)
            if self.settings.get("prompt_lookup"):
                props["prompt_lookup"] = True
            try:
                self._pipe = genai.LLMPipeline(str(self.folder), "CPU", **props)
            except Exception as exc:
                raise LeanifyError(
                    f"OpenVINO GenAI could not open this model ({ov_reason(exc)}).",
                    path=self.folder, fix=REEXPORT) from exc
        return self._pipe

    def config(self, new_tokens: int) -> Any:
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = int(new_tokens)
        config.ignore_eos = True
        config.do_sample = False
        if self.settings.get("prompt_lookup"):
            config.num_assistant_tokens = int(self.settings["prompt_lookup"])
            config.max_ngram_size = int(self.settings.get("max_ngram_size") or NGRAM_DEFAULT)
        return config

    def generate(self, ids: np.ndarray, new_tokens: int) -> Generation:
        """Greedy decode: rows of `ids` (equal lengths, no padding) each get new_tokens."""
        if ids.ndim != 2 or ids.shape[1] < 1 or new_tokens < 1:
            raise ValueError("generate needs (rows, tokens) ids and at least one new token")
        import openvino as ov
        import openvino_genai as genai

        pipe, config = self.pipeline(), self.config(new_tokens)
        ids = np.require(ids, np.int64, "C")
        inputs = genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        if ids.shape[0] == 1:
            stamps = _Stamps(genai)
            start = time.perf_counter_ns()
            stamps.start = start
            result = pipe.generate(inputs, config, stamps)
            token_ms = stamps.ms[:new_tokens]
        else:  # the pipeline streams one row only: its own step durations
            result = pipe.generate(inputs, config)
            token_ms = _step_ms(result.perf_metrics, new_tokens)
        tokens = np.asarray([list(t)[:new_tokens] for t in result.tokens], np.int64)
        if tokens.shape != (ids.shape[0], new_tokens) or len(token_ms) != new_tokens:
            raise LeanifyError(
                f"OpenVINO GenAI returned {tokens.shape[-1]} tokens, not {new_tokens}.",
                path=self.folder, fix=REEXPORT)
        return Generation(tokens, token_ms)

    # -- serving ------------------------------------------------------------------------------

    def batching_pipeline(self, max_seqs: int, cache_bytes: int) -> Any:
        """OpenVINO GenAI's continuous batching engine on this folder, what a server runs:
        requests join and leave the running batch between steps, over a paged KV cache of
        `cache_bytes` (rounded up to whole GB, as the scheduler takes it)."""
        genai = require("openvino_genai", "llm", "Serving LLMs on OpenVINO GenAI")
        scheduler = genai.SchedulerConfig()
        scheduler.max_num_seqs = int(max_seqs)
        scheduler.cache_size = max(1, -(-int(cache_bytes) // 10**9))
        props = properties(self.settings, self.threads)
        if self.settings.get("prompt_lookup"):
            props["prompt_lookup"] = True
        try:
            return genai.ContinuousBatchingPipeline(str(self.folder), scheduler, "CPU", props)
        except Exception as exc:
            raise LeanifyError(
                f"OpenVINO GenAI could not open this model for serving ({ov_reason(exc)}).",
                path=self.folder, fix=REEXPORT) from exc

    def sampling_config(self, sampling: Sampling) -> Any:
        """A served request's GenerationConfig: the measured settings plus its sampling."""
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = int(sampling.max_new_tokens)
        config.stop_token_ids = set(sampling.eos_ids)
        if sampling.temperature > 0:
            config.do_sample = True
            config.temperature = float(sampling.temperature)
            config.top_p = float(sampling.top_p)
            # unseeded requests differ from each other (the pipeline's default seed is 0)
            config.rng_seed = int(sampling.seed if sampling.seed is not None else
                                  time.perf_counter_ns() % (1 << 31))
        else:
            config.do_sample = False
        if self.settings.get("prompt_lookup"):
            config.num_assistant_tokens = int(self.settings["prompt_lookup"])
            config.max_ngram_size = int(self.settings.get("max_ngram_size") or NGRAM_DEFAULT)
        return config

    def close(self) -> None:
        self._pipe = None
        self._request = None


REEXPORT = "Re-export the model (leanify optimize, or optimum-cli export openvino) with the " \
           "same openvino and openvino-genai versions."


class _Stamps:
    """A streamer that writes down when each token came out (several at once with speculative
    decoding: they share the stamp)."""

    def __new__(cls, genai: Any) -> Any:
        class Streamer(genai.StreamerBase):
            def __init__(self) -> None:
                super().__init__()
                self.start = 0
                self.ms: list[float] = []

            def write(self, token: Any) -> Any:
                now = (time.perf_counter_ns() - self.start) / 1e6
                self.ms.extend([now] * (len(token) if isinstance(token, list) else 1))
                return genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        return Streamer()


def _step_ms(metrics: Any, new_tokens: int) -> list[float]:
    """Token stamps of a batched call from the pipeline's metrics: the first token's time,
    then one duration per decode step (listed once per row of the step)."""
    raw = metrics.raw_metrics
    out = [float(metrics.get_ttft().mean)]
    durations, sizes = list(raw.m_durations), list(raw.m_batch_sizes)
    at = 0
    for rows in sizes[1:new_tokens]:
        out.append(out[-1] + durations[at] / 1000.0)  # microseconds
        at += max(int(rows), 1)
    return out


def snippet(path: str, ran: dict[str, Any], threads: int) -> list[str]:
    """Plain openvino-genai code that generates with the measured settings."""
    folder = str(Path(path).parent)
    props = [f'"INFERENCE_NUM_THREADS": {int(threads)}']
    for key, prop in (("kv_cache_precision", "KV_CACHE_PRECISION"),
                      ("inference_precision", "INFERENCE_PRECISION_HINT")):
        if ran.get(key):
            props.append(f'"{prop}": "{ran[key]}"')
    lookup = int(ran.get("prompt_lookup") or 0)
    if lookup:
        props.append('"prompt_lookup": True  # speculative: same greedy tokens, fewer steps')
    lines = ["import openvino_genai as ov_genai", "",
             f'pipe = ov_genai.LLMPipeline("{folder}", "CPU", **{{',
             *[f"    {p}," for p in props], "})",
             "config = ov_genai.GenerationConfig()",
             "config.max_new_tokens = 128", "config.do_sample = False  # greedy, as measured"]
    if lookup:
        lines += [f"config.num_assistant_tokens = {lookup}",
                  f"config.max_ngram_size = {int(ran.get('max_ngram_size') or NGRAM_DEFAULT)}"]
    lines += ["", "", "def generate(prompt: str, chat: bool = True) -> str:",
              "    config.apply_chat_template = chat  # the model's chat template, if it has one",
              "    return pipe.generate(prompt, config)", ""]
    return lines


RUNTIME = Runtime(
    name="openvino-genai", formats=("openvino",), module="openvino_genai",
    package="openvino-genai", open=lambda artifact, threads, trust_pickle=False:
    GenAIRunner(artifact, threads), settings=SETTINGS, snippet=snippet, extra="llm",
    generates=True)
