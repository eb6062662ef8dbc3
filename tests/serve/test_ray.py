"""`leanify serve --ray`: the same endpoints from a local Ray cluster with 2 replicas."""

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np


@contextlib.contextmanager
def ray_server(model, port: int, *args: str):
    """`leanify serve MODEL --ray --replicas 2` on `port`, ready: yields (process, url); kills
    it and removes Ray's folder however the test ends."""
    url = f"http://127.0.0.1:{port}"
    # Ray's socket paths must stay under 108 bytes: a short folder of its own
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "leanify.cli", "serve", str(model),
                             "--ray", "--replicas", "2", "--port", str(port), "--threads", "1",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("Ray Serve did not become ready in 300 s")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_two_ray_replicas_serve_the_same_endpoints_and_stop_cleanly(text_onnx, port):

    from leanify.models.load import load
    from leanify.runtimes import open_runner
    from leanify.tasks.text import embed

    with ray_server(text_onnx, port()) as (proc, url):
        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(
                    f"{url}/v1/embeddings", json={"input": f"sentence number {i} " * 30})
                    for i in range(100)))

        replicas: set[str] = set()
        for _ in range(5):  # Ray's router spreads by in-flight requests: bursts reach both
            answers = asyncio.run(burst())
            assert collections.Counter(a.status_code for a in answers)[200] >= 30
            assert set(a.status_code for a in answers) <= {200, 429}
            replicas |= {a.headers["x-leanify-replica"] for a in answers
                         if a.status_code == 200}
            if len(replicas) == 2:
                break
        assert len(replicas) == 2  # both replicas answered
        texts = ["A girl is styling her hair."]
        got = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60).json()
        artifact = load(text_onnx)
        want = embed(open_runner(artifact, 1), artifact, texts)
        np.testing.assert_allclose(np.array([got["data"][0]["embedding"]]), want, rtol=1e-4,
                                   atol=1e-5)
        bad = httpx.post(f"{url}/v1/embeddings", content=b"{nope", timeout=60)
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        assert "stopped" in proc.stderr.read()


def test_ray_replicas_serve_chat_completions_whole_and_streamed(peaked_llama, port):
    body = {"messages": [{"role": "user", "content": "Now is the winter of our discontent"}],
            "temperature": 0, "max_tokens": 24}
    with ray_server(peaked_llama, port(), "--max-new-tokens", "24") as (proc, url):
        whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert whole.status_code == 200, whole.text
        content = whole.json()["choices"][0]["message"]["content"]
        text = ""
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=120) as r:
            assert r.status_code == 200
            lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        for line in lines[:-1]:
            text += json.loads(line)["choices"][0]["delta"].get("content", "")
        assert text == content  # greedy: both replicas give the same answer
        bad = httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=60)
        assert bad.status_code == 422
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
