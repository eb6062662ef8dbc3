"""One LLM runtime in its own process, for benchmarks/llm_vs_peers.py: no leanify import, so
anchors run in their own environments and leanify's selection is timed by the same plain code.

    python llm_child.py KIND MODEL [--threads N]

KIND: torch (a transformers folder, fp32), openvino-genai (a folder; the settings in its
leanify_model.json, if any, are applied as leanify measured them), ort-genai (an ONNX Runtime
GenAI folder), llamacpp (a GGUF file). Commands are JSON lines on stdin, replies JSON lines
on stdout:
- {"cmd": "generate", "ids": [...], "new_tokens": N} -> {"token_ms": [...], "tokens": [...],
  "peak_rss_mb": ...}: greedy, exactly N tokens, a stamp when each token came out;
- {"cmd": "nll", "windows": [[...]], "targets": [[0/1 ...]]} -> {"nll": sum, "count": n}:
  negative log-likelihood of the target positions from the full logits (float64).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def window_nll(logits: np.ndarray, ids: np.ndarray, targets: np.ndarray) -> float:
    pos = np.nonzero(targets)[0]
    rows = logits[pos - 1].astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    norm = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    return float((norm - rows[np.arange(len(pos)), ids[pos]]).sum())


class Torch:
    def __init__(self, model: str, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def generate(self, ids: list[int], new: int) -> tuple[list[int], list[float]]:
        torch = self.torch
        out_tokens, stamps = [], []
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
            for step in range(new):
                nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
                out_tokens.append(int(nxt))
                stamps.append((time.perf_counter() - start) * 1000)
                if step + 1 == new:
                    break
                out = self.model(input_ids=nxt, past_key_values=out.past_key_values,
                                 use_cache=True)
        return out_tokens, stamps

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(input_ids=self.torch.tensor([ids])).logits[0].float().numpy()


class OpenVINOGenAI:
    def __init__(self, model: str, threads: int):
        import openvino_genai as genai

        self.genai = genai
        self.folder = model if os.path.isdir(model) else os.path.dirname(model)
        sidecar = os.path.join(self.folder, "leanify_model.json")
        settings = {}
        if os.path.isfile(sidecar):
            with open(sidecar, encoding="utf-8") as f:
                settings = json.load(f).get("runtime") or {}
        self.settings = settings
        props = {"INFERENCE_NUM_THREADS": threads}
        if settings.get("kv_cache_precision"):
            props["KV_CACHE_PRECISION"] = settings["kv_cache_precision"]
        if settings.get("inference_precision"):
            props["INFERENCE_PRECISION_HINT"] = settings["inference_precision"]
        self.props = props
        if settings.get("prompt_lookup"):
            props = {**props, "prompt_lookup": True}
        self.pipe = genai.LLMPipeline(self.folder, "CPU", **props)
        self.request = None

    def generate(self, ids: list[int], new: int) -> tuple[list[int], list[float]]:
        import openvino as ov

        genai = self.genai
        config = genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = new
        config.ignore_eos, config.do_sample = True, False
        if self.settings.get("prompt_lookup"):
            config.num_assistant_tokens = int(self.settings["prompt_lookup"])
            config.max_ngram_size = int(self.settings.get("max_ngram_size") or 3)
        stamps: list[float] = []
        start = time.perf_counter()

        class Streamer(genai.StreamerBase):
            def write(self, token):
                now = (time.perf_counter() - start) * 1000
                stamps.extend([now] * (len(token) if isinstance(token, list) else 1))
                return genai.StreamingStatus.RUNNING

            def end(self):
                pass

        arr = np.asarray([ids], np.int64)
        result = self.pipe.generate(genai.TokenizedInputs(ov.Tensor(arr),
                                                          ov.Tensor(np.ones_like(arr))),
                                    config, Streamer())
        return list(result.tokens[0])[:new], stamps[:new]

    def logits(self, ids: list[int]) -> np.ndarray:
        if self.request is None:
            import openvino as ov

            xml = os.path.join(self.folder, "openvino_model.xml")
            self.request = ov.Core().compile_model(xml, "CPU", self.props).create_infer_request()
        arr = np.asarray([ids], np.int64)
        self.request.reset_state()
        self.request.infer({"input_ids": arr, "attention_mask": np.ones_like(arr),
                            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
                            "beam_idx": np.zeros(1, np.int32)})
        return self.request.get_tensor("logits").data[0].copy()


class OrtGenAI:
    def __init__(self, model: str, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(model)
        config.clear_providers()
        self.model = og.Model(config)
        self.threads = threads

    def generate(self, ids: list[int], new: int) -> tuple[list[int], list[float]]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + new, min_length=len(ids) + new,
                                  do_sample=False)
        stamps, tokens = [], []
        start = time.perf_counter()
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray(ids, np.int32))
        while not gen.is_done() and len(tokens) < new:
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            stamps.append((time.perf_counter() - start) * 1000)
        return tokens, stamps

    def logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError


class LlamaCpp:
    def __init__(self, model: str, threads: int):
        from llama_cpp import Llama

        # logits of every position cost prefill time: only the scoring instance (opened
        # after the timing, see logits) computes them
        self.open = lambda all_logits: Llama(
            model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
            n_batch=512, logits_all=all_logits, verbose=False)
        self.llm = self.open(False)
        self.scorer = None

    def generate(self, ids: list[int], new: int) -> tuple[list[int], list[float]]:
        self.llm.reset()  # a fresh prompt: no cache reuse from the previous call
        stamps, tokens = [], []
        start = time.perf_counter()
        for token in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            tokens.append(int(token))
            stamps.append((time.perf_counter() - start) * 1000)
            if len(tokens) == new:
                break
        return tokens, stamps

    def logits(self, ids: list[int]) -> np.ndarray:
        if self.scorer is None:
            self.llm, self.scorer = None, self.open(True)
        self.scorer.reset()
        self.scorer.eval(ids)
        return np.asarray(self.scorer.scores[:len(ids)], np.float32)


KINDS = {"torch": Torch, "openvino-genai": OpenVINOGenAI, "ort-genai": OrtGenAI,
         "llamacpp": LlamaCpp}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    runner = KINDS[args.kind](args.model, args.threads)
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - start,
                      "peak_rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "generate":
            tokens, stamps = runner.generate(req["ids"], int(req["new_tokens"]))
            reply = {"tokens": tokens, "token_ms": stamps, "peak_rss_mb": peak_rss_mb()}
        elif req["cmd"] == "nll":
            total, count = 0.0, 0
            for ids, targets in zip(req["windows"], req["targets"], strict=True):
                logits = runner.logits(ids)
                total += window_nll(logits, np.asarray(ids), np.asarray(targets, bool))
                count += int(sum(targets))
            reply = {"nll": total, "count": count}
        else:
            reply = {"error": f"unknown command {req['cmd']}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
