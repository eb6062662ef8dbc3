"""Serving at the user's rate (`doctor --rate R`): is it the model, or the server around it?

The model is served twice by `leanify serve` on loopback, each in its own process: one
request at a time (batch 1, no wait: what a plain service does) and with dynamic batching
(the defaults; for a chat model, one chat at a time against continuous batching). Each gets
the same open-loop Poisson load at R requests/s of the user's own texts (`leanify loadtest`;
a chat model gets each as a user message, 64 new tokens). The server's Server-Timing splits
each encoder request into its time in the queue, in the model (tokenizing included) and the
rest (HTTP, JSON and the client).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from leanify.errors import LeanifyError

MODES = {"per_request": ["--max-batch", "1", "--max-wait-ms", "0"], "dynamic_batching": []}
CHAT_MODES = {"per_request": ["--max-sequences", "1"], "dynamic_batching": []}
PATHS = {"embedding": "/v1/embeddings", "classification": "/v1/classify",
         "chat": "/v1/chat/completions"}
CHAT_TIMEOUT_S = 120.0  # a chat answers in seconds: give it the time to, not 10 s
SAMPLE_TEXTS = ["A girl is styling her hair.", "A group of men play soccer on the beach.",
                "One woman is measuring another woman's ankle.", "A man is cutting up a cucumber.",
                "A man is playing a harp.", "A woman is slicing an onion."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, port: int, threads: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "leanify.cli", "serve", model, "--port", str(port), "--threads",
         str(threads), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LeanifyError(f"leanify serve could not serve the model: "
                               f"{proc.stderr.read().strip()[-600:]}",
                               fix="Run `leanify serve MODEL` to see why.")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise LeanifyError("leanify serve did not become ready in 300 s.",
                       fix="Run `leanify serve MODEL` to see why.")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serving(model: str, rate: float, texts: list[str], threads: int, *,
            duration_s: float = 8.0, extra: tuple[str, ...] = (),
            chat: bool = False) -> dict[str, Any]:
    """Both modes at `rate` requests/s: p50/p95, refusals and the server's split."""
    from leanify.serve.loadtest import LoadSettings, run_loadtest

    texts = [t for t in texts if t.strip()][:2000] or SAMPLE_TEXTS
    out: dict[str, Any] = {"rate_rps": rate, "duration_s": duration_s, "threads": threads,
                           "texts": len(texts), "kind": "chat" if chat else "encoder"}
    for mode, args in (CHAT_MODES if chat else MODES).items():
        port = _free_port()
        proc = _start(model, port, threads, [*args, *extra])
        try:
            url = f"http://127.0.0.1:{port}{PATHS[_kind(port)]}"
            record = run_loadtest(LoadSettings(
                url=url, rates=(rate,), duration_s=duration_s,
                timeout_s=CHAT_TIMEOUT_S if chat else 10.0), texts)
        finally:
            _stop(proc)
        point = record["points"][0]
        keep = ("sent", "answered", "throughput_rps", "p50_ms", "p95_ms", "p99_ms",
                "rejected_rate", "error_rate")
        out[mode] = {k: point[k] for k in keep} | point["server"]
    per, batched = out["per_request"], out["dynamic_batching"]
    out["p95_gain"] = (round(per["p95_ms"] / batched["p95_ms"], 3)
                       if per["p95_ms"] and batched["p95_ms"] else None)
    p50, http = batched["p50_ms"], batched["http_and_client_p50_ms"]
    out["server_overhead_share"] = round(http / p50, 3) if p50 and http is not None else None
    return out


def _kind(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json().get("kind",
                                                                            "embedding")
