"""`leanify serve` on a real ONNX model in its own process: answers, refusals, batching,
overload, auth and graceful shutdown."""

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest


def post(server, path, body, **kw):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=data, timeout=30, **kw)


def test_embeddings_match_leanify_own_and_carry_the_server_split(server, text_onnx):
    from leanify.models.load import load
    from leanify.runtimes import open_runner
    from leanify.tasks.text import embed

    texts = ["A girl is styling her hair.", "Men play soccer on the beach at dusk."]
    r = post(server, "/v1/embeddings", {"input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    artifact = load(text_onnx)
    want = embed(open_runner(artifact, 1), artifact, texts)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] > len(texts)
    timing = r.headers["server-timing"]
    assert "queue;dur=" in timing and "model;dur=" in timing
    b64 = post(server, "/v1/embeddings", {"input": texts[0], "encoding_format": "base64"})
    row = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(row, want[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    ({"input": 3}, 422, "string or a non-empty list"),
    ({"input": []}, 422, "non-empty list"),
    ({"input": ["ok", ""]}, 422, "input 1 is empty"),
    ({"input": ["a"] * 5}, 413, "at most 4"),
    ({"input": "word " * 900}, 413, "over 4096 bytes"),
    ({"input": "word " * 600}, 400, "602 tokens; this model takes at most 512"),
    ({"input": "x", "encoding_format": "hex"}, 422, "encoding_format"),
    ([1, 2], 422, "JSON object"),
])
def test_bad_requests_get_a_4xx_that_says_why(server, body, status, words):
    r = post(server, "/v1/embeddings", body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_a_streamed_body_over_the_limit_is_refused_while_it_streams(server):
    def chunks():
        for _ in range(10):
            yield b"x" * 1024

    r = httpx.post(f"{server.url}/v1/embeddings", content=chunks(), timeout=30)
    assert r.status_code == 413


def test_the_endpoint_of_another_model_kind_says_which_to_use(server):
    r = post(server, "/v1/classify", {"input": "x"})
    assert r.status_code == 404 and "/v1/embeddings" in r.json()["error"]["message"]


def test_concurrent_requests_are_batched_and_counted(server):
    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(
                f"{server.url}/v1/embeddings", json={"input": f"sentence number {i}"})
                for i in range(40)))

    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers)
    batches = [int(a.headers["server-timing"].split("batch;dur=")[1]) for a in answers]
    assert max(batches) > 1  # requests that arrived together ran together
    metrics = httpx.get(f"{server.url}/metrics").text
    count = float(metrics.split("leanify_batch_size_count ")[1].split()[0])
    total = float(metrics.split("leanify_batch_size_sum ")[1].split()[0])
    assert total / count > 1
    assert 'leanify_requests_total{endpoint="/v1/embeddings",status="200"}' in metrics
    assert "leanify_queue_depth" in metrics and "leanify_inference_seconds_bucket" in metrics


def test_overload_gets_fast_429s_with_retry_after_and_the_server_survives(text_onnx,
                                                                          start_server):
    s = start_server(text_onnx, "--max-batch", "1", "--max-wait-ms", "0", "--max-queue", "2")
    try:
        async def flood():
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                    max_connections=None)) as client:
                return await asyncio.gather(*(client.post(
                    f"{s.url}/v1/embeddings", json={"input": "a flood of sentences " * 5})
                    for _ in range(200)))

        answers = asyncio.run(flood())
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) > 0
        rejected = next(a for a in answers if a.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1
        assert "at capacity" in rejected.json()["error"]["message"]
        assert post(s, "/v1/embeddings", {"input": "still alive"}).status_code == 200
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'leanify_rejections_total{reason="queue_full"}' in metrics
    finally:
        assert s.stop() == 0


def test_an_api_key_guards_everything_but_the_probes(text_onnx, start_server):
    s = start_server(text_onnx, "--api-key", "sekrit")
    try:
        assert post(s, "/v1/embeddings", {"input": "x"}).status_code == 401
        wrong = post(s, "/v1/embeddings", {"input": "x"}, headers={"authorization": "Bearer no"})
        assert wrong.status_code == 401
        ok = post(s, "/v1/embeddings", {"input": "x"}, headers={"authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200
        assert httpx.get(f"{s.url}/metrics").status_code == 401
    finally:
        s.stop()


def test_a_network_address_without_a_key_is_refused_before_binding(text_onnx):
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "serve", str(text_onnx),
                           "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no API key" in proc.stderr and "--api-key" in proc.stderr


def test_a_model_leanify_cannot_serve_is_exit_2(silero_onnx):
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "serve", str(silero_onnx)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "text encoders" in proc.stderr


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(text_onnx,
                                                                        start_server):
    s = start_server(text_onnx, "--max-batch", "1", "--max-wait-ms", "0")
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n")
    body = json.dumps({"input": "a sentence to embed before shutting down " * 4}).encode()
    socks = []
    try:
        for _ in range(30):  # 30 requests in flight, each on its own connection
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
            sock.sendall(request % len(body) + body)
            socks.append(sock)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the server has read all 30
            metrics = httpx.get(f"{s.url}/metrics").text
            read = (_metric(metrics, "leanify_in_flight")
                    + _metric(metrics, 'leanify_requests_total{endpoint="/v1/embeddings",'
                                       'status="200"}'))
            if read >= 30:
                break
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        statuses = []
        for sock in socks:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            statuses.append(data.split(b" ", 2)[1] if data else b"lost")
        assert statuses == [b"200"] * 30
        assert s.proc.wait(60) == 0
        assert "every accepted request was answered" in s.proc.stderr.read()
    finally:
        for sock in socks:
            sock.close()
        s.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
