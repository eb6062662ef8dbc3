"""The measuring process: loads one model and times it on request.

Run as `python -m leanify.measure.worker`. Requests and replies are JSON lines on stdin and on
a private copy of stdout; anything a library prints goes to stderr. One model per process:
runtimes' thread pools in one process fight over the cores (see measure/bench.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from leanify.errors import LeanifyError
from leanify.measure import memory


class Worker:
    def __init__(self) -> None:
        self.runner = None
        self.builder = None
        self.batches: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.first_run_ms: dict[tuple[int, int], float] = {}
        self.prompts = None  # generation workload: the prompt windows (measure/generation.py)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "load":
            return self.load(req)
        if cmd == "prepare" and self.prompts is not None:
            return self.prepare_generation(req)
        if cmd == "prepare":
            return self.prepare(int(req["batch_size"]), int(req["seq_len"]))
        if cmd == "measure":
            return self.measure(req)
        if cmd == "generate":
            return self.generate(req)
        raise ValueError(f"unknown request {cmd!r}")

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        threads = req.get("threads")
        trust = bool(req.get("trust_pickle"))
        from leanify.models.inputs import InputBuilder
        from leanify.models.load import load
        from leanify.runtimes import open_runner

        # Import the runtime first, so that load time excludes library import time.
        t0 = time.perf_counter()
        _import_runtime(_guess_format(str(req["source"])))
        t1 = time.perf_counter()
        artifact = load(req["source"], tokenizer=req.get("tokenizer"), trust_pickle=trust,
                        name=req.get("name"))
        t2 = time.perf_counter()
        from leanify.runtimes import for_artifact
        from leanify.sandbox import limit_memory, model_budget_gb

        # now that the model's size is known, the budget shrinks to what such a model needs
        limit_memory(model_budget_gb(artifact.size_bytes()))

        for_artifact(artifact).load_module()  # a no-op unless the guess was wrong
        t3 = time.perf_counter()
        rss_runtime = memory.current_rss_mb()
        if req.get("generation"):  # a causal LM: prefill + decode loop, prompts of text
            from leanify.measure.generation import Prompts
            from leanify.runtimes import open_generator

            self.runner = open_generator(artifact, threads)
            self.prompts = Prompts(artifact)
            source = self.prompts.source
        else:
            self.runner = open_runner(artifact, threads, trust_pickle=trust)
            self.builder = InputBuilder(artifact, req.get("sample"))
            source = self.builder.source
        t4 = time.perf_counter()
        import_s, load_s = (t1 - t0) + (t3 - t2), (t2 - t1) + (t4 - t3)
        return {
            "ok": True,
            "import_s": import_s,
            "load_s": load_s,
            "runtime": self.runner.runtime,
            "runtime_settings": self.runner.details,
            "rss_runtime_mb": rss_runtime,
            "rss_loaded_mb": memory.current_rss_mb(),
            "input_source": source,
            "pid": os.getpid(),
        }

    def prepare(self, batch_size: int, seq_len: int) -> dict[str, Any]:
        batch = dict(self.runner.drop_folded(self.builder.batch(batch_size, seq_len)))
        self.runner.check(batch)
        self.batches[(batch_size, seq_len)] = batch
        return {"ok": True, "shapes": {k: list(v.shape) for k, v in batch.items()}}

    def prepare_generation(self, req: dict[str, Any]) -> dict[str, Any]:
        """Warm up at the point's shape (allocator, lazy init): one short call, not timed."""
        from leanify.measure.generation import timed_call

        rows, tokens = int(req["batch_size"]), int(req["seq_len"])
        timed_call(self.runner, self.prompts, rows, tokens, min(2, int(req["new_tokens"])))
        return {"ok": True, "shapes": {"input_ids": [rows, tokens]}}

    def generate(self, req: dict[str, Any]) -> dict[str, Any]:
        from leanify.measure.generation import timed_call

        rows, tokens = int(req["batch_size"]), int(req["seq_len"])
        calls = [timed_call(self.runner, self.prompts, rows, tokens, int(req["new_tokens"]))
                 for _ in range(max(1, int(req.get("calls", 1))))]
        return {"ok": True, "calls": calls}

    def measure(self, req: dict[str, Any]) -> dict[str, Any]:
        key = (int(req["batch_size"]), int(req["seq_len"]))
        batch = self.batches[key]
        run = self.runner.run
        can_reset = memory.reset_peak()
        # Warm-up, excluded from the samples: caches, allocator, lazy init, pool spin-up.
        start = time.perf_counter()
        warm = 0
        while warm < max(1, int(req.get("warmup_iters", 1))) or (
            time.perf_counter() - start < float(req.get("warmup_s", 0.5))
        ):
            t = time.perf_counter()
            run(batch)
            if key not in self.first_run_ms:
                self.first_run_ms[key] = (time.perf_counter() - t) * 1e3
            warm += 1
        samples: list[float] = []
        min_iters, min_time = int(req.get("min_iters", 10)), float(req.get("min_time_s", 1.0))
        max_time = float(req.get("max_time_s", 20.0))
        start = time.perf_counter()
        while True:
            t = time.perf_counter_ns()
            run(batch)
            samples.append((time.perf_counter_ns() - t) / 1e6)
            elapsed = time.perf_counter() - start
            if len(samples) >= min_iters and elapsed >= min_time:
                break
            if elapsed >= max_time and len(samples) >= 3:
                break
        return {
            "ok": True,
            "samples_ms": samples,
            "warmup_iters": warm,
            "first_run_ms": self.first_run_ms[key],
            "peak_rss_mb": memory.peak_rss_mb(),
            "peak_is_per_point": can_reset,
        }


def _guess_format(source: str) -> str:
    path = Path(source)
    if source.lower().endswith(".onnx"):
        return "onnx"
    if source.lower().endswith(".xml"):
        return "openvino"
    if path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.onnx")):
        return "onnx"
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.xml")):
        return "openvino"
    return "hf" if path.is_dir() or "/" not in source else "torch"


def _import_runtime(fmt: str) -> None:
    """Import the engine that runs `fmt` (its own cost, kept out of the load time)."""
    from leanify.runtimes import default_for

    default_for("pt2" if fmt == "torch" else fmt).load_module()
    if fmt == "hf":
        import transformers  # noqa: F401


def main() -> None:
    from leanify.measure.lifeline import die_with_parent
    from leanify.sandbox import limit_worker

    die_with_parent()  # a kill -9 of leanify must not leave this process measuring
    limit_worker()  # the memory budget, before any model is touched
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries that print must not corrupt the protocol
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        try:
            reply = worker.handle(req)
        except LeanifyError as exc:
            reply = {"ok": False, "kind": "input", "message": exc.render()}
        except Exception as exc:
            from leanify.sandbox import current_limit_gb

            reply = {
                "ok": False,
                "kind": "internal",
                "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "memory_limit_gb": current_limit_gb(),
            }
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
