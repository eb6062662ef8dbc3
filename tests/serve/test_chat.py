"""`leanify serve` on causal LMs: OpenAI's /v1/chat/completions, whole and streamed, on
OpenVINO GenAI's continuous batching and on torch; the text layer and the engine's queue with
a scripted runner."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from leanify.runtimes.torch_generate import Sampling
from leanify.serve.batcher import QueueFull
from leanify.serve.chat import (
    ChatJob,
    Finished,
    SequentialEngine,
    TextStream,
    parse_request,
)
from leanify.serve.errors import HTTPError

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def peaked_openvino(peaked_llama, tmp_path_factory):
    from leanify.models.load import load
    from leanify.passes.registry import PassContext, apply, make_config

    ctx = PassContext(work_dir=tmp_path_factory.mktemp("work"), threads=1)
    return apply(load(peaked_llama), make_config("export-openvino-llm"), ctx)


def prompt_ids(folder, messages) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


def greedy_text(folder, generator, messages, max_tokens: int) -> tuple[str, int]:
    """What the model's own greedy decode says (cut at the end-of-text token), and its length."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = np.asarray([prompt_ids(folder, messages)], np.int64)
    tokens = list(generator.generate(ids, max_tokens).tokens[0])
    if tok.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tok.eos_token_id)]
    return tok.decode(tokens, skip_special_tokens=True), len(tokens)


def ask(url: str, content: str, **extra):
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0, **extra}
    return httpx.post(f"{url}{CHAT}", json=body, timeout=120)


def sse(url: str, content: str, **extra) -> list[dict | str]:
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0,
            "stream": True, **extra}
    events = []
    with httpx.stream("POST", f"{url}{CHAT}", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# --- end to end: OpenVINO GenAI (continuous batching) -----------------------------------------

@pytest.fixture(scope="module")
def ov_server(peaked_openvino, start_server):
    s = start_server(peaked_openvino.path, "--max-sequences", "4", "--max-new-tokens", "400")
    yield s
    s.stop()


def test_a_chat_completion_is_the_models_own_greedy_answer(ov_server, peaked_openvino):
    from leanify.runtimes import open_generator

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Shall I compare thee to a summer's day?"}]
    r = httpx.post(f"{ov_server.url}{CHAT}", json={"messages": messages, "temperature": 0,
                                                   "max_tokens": 24}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    want, n = greedy_text(peaked_openvino.path.parent, open_generator(peaked_openvino, 1),
                          messages, 24)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want}
    assert choice["finish_reason"] == ("length" if n == 24 else "stop")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["usage"]["prompt_tokens"] == len(prompt_ids(peaked_openvino.path.parent,
                                                            messages))
    assert body["usage"]["completion_tokens"] == n


def test_sampling_on_openvino_follows_the_seed(ov_server):
    a, b = (ask(ov_server.url, "Sample me", temperature=1.5, top_p=0.95, seed=11,
                max_tokens=16).json() for _ in range(2))
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["usage"]["completion_tokens"] > 0


def test_concurrent_chats_share_decode_steps_and_keep_their_own_answers(ov_server):
    prompts = [f"Tell me about the {w}." for w in ("sea", "king", "night", "rose")]
    alone = [ask(ov_server.url, p, max_tokens=32).json()["choices"][0]["message"]["content"]
             for p in prompts]
    before = httpx.get(f"{ov_server.url}/metrics").text

    async def together():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(
                f"{ov_server.url}{CHAT}", json={"messages": [{"role": "user", "content": p}],
                                                "temperature": 0, "max_tokens": 32})
                for p in prompts))

    answers = asyncio.run(together())
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == alone
    after = httpx.get(f"{ov_server.url}/metrics").text
    steps = _metric(after, "leanify_batch_size_count") - _metric(before, "leanify_batch_size_count")
    seqs = _metric(after, "leanify_batch_size_sum") - _metric(before, "leanify_batch_size_sum")
    assert seqs / steps > 1.5  # the four decoded together, not one after another
    assert _metric(after, "leanify_time_to_first_token_seconds_count") >= 8


def test_a_streamed_chat_is_the_same_text_in_openai_chunks(ov_server):
    whole = ask(ov_server.url, "Once more unto the breach", max_tokens=40).json()
    events = sse(ov_server.url, "Once more unto the breach", max_tokens=40,
                 stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"] and set(finish[:-1]) == {None}
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["choices"] == []
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"


def test_a_stop_string_ends_the_answer_before_it(ov_server):
    full = ask(ov_server.url, "Speak, speak", max_tokens=40).json()
    content = full["choices"][0]["message"]["content"]
    assert len(content) >= 6  # the peaked model answers this at length
    stop = content[3:6]
    cut = ask(ov_server.url, "Speak, speak", max_tokens=40, stop=stop).json()
    assert cut["choices"][0]["message"]["content"] == content[:content.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = sse(ov_server.url, "Speak, speak", max_tokens=40, stop=[stop])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1]
                   if c["choices"])
    assert text == content[:content.index(stop)]


def test_a_client_that_hangs_up_stops_its_generation(ov_server):
    # long enough that the tiny model is still generating when the client goes
    whole = ask(ov_server.url, "Go on and on.", max_tokens=400).json()
    assert whole["usage"]["completion_tokens"] == 400  # left alone, it goes the whole way
    before = _metric(httpx.get(f"{ov_server.url}/metrics").text,
                     "leanify_generated_tokens_total")
    body = {"messages": [{"role": "user", "content": "Go on and on."}], "max_tokens": 400,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{ov_server.url}{CHAT}", json=body, timeout=120) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i >= 4:
                break
    time.sleep(2.0)
    after = _metric(httpx.get(f"{ov_server.url}/metrics").text, "leanify_generated_tokens_total")
    assert after - before < 200  # it would have been 400
    assert ask(ov_server.url, "still there?", max_tokens=4).status_code == 200


def test_loadtest_sends_chats_to_a_chat_endpoint(ov_server):
    from leanify.serve.loadtest import LoadSettings, run_loadtest

    settings = LoadSettings(url=f"{ov_server.url}{CHAT}", rates=(4.0,), duration_s=3.0,
                            timeout_s=60, p95_budget_ms=60_000)
    point = run_loadtest(settings, ["To be or not to be.", "All the world's a stage."])[
        "points"][0]
    assert point["answered"] == point["sent"] > 0, point["error_kinds"]
    assert point["p95_ms"] > 0 and point["holds_budget"]


def test_sigterm_finishes_the_streams_in_flight_and_exits_0(peaked_openvino, start_server):
    s = start_server(peaked_openvino.path, "--max-sequences", "2")
    results: list[list] = [[], []]

    def stream(i: int) -> None:
        results[i] = sse(s.url, "Go on and on.", max_tokens=160)  # an answer that goes on

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both streams have their first token
            metrics = httpx.get(f"{s.url}/metrics").text
            if _metric(metrics, "leanify_time_to_first_token_seconds_count") >= 2:
                break
            time.sleep(0.05)
        made = _metric(metrics, "leanify_generated_tokens_total")
        s.proc.send_signal(signal.SIGTERM)
        assert made < 2 * 160, made  # the premise: both are mid-answer at the signal
        for t in threads:
            t.join(120)
        assert all(r and r[-1] == "[DONE]" for r in results)
        assert all(r[-2]["choices"][0]["finish_reason"] == "length" for r in results)
        assert s.proc.wait(60) == 0
    finally:
        s.stop()


# ~40 s of serving: `make test-acceptance`; doctor --rate runs on a text encoder in
# tests/diagnose/test_serving.py, and its chat verdict is tested there on scripted numbers
@pytest.mark.acceptance
def test_doctor_rate_serves_a_chat_model_both_ways_and_weighs_it(peaked_openvino, tmp_path):
    import subprocess
    import sys

    out, html = tmp_path / "doctor.json", tmp_path / "doctor.html"
    proc = subprocess.run([sys.executable, "-m", "leanify.cli", "doctor",
                           str(peaked_openvino.path), "--rate", "3", "--quick", "--json",
                           str(out), "--html", str(html), "-q"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    served = record["serving"]
    assert served["kind"] == "chat" and served["rate_rps"] == 3
    for mode in ("per_request", "dynamic_batching"):
        m = served[mode]
        assert m["sent"] >= 15 and m["answered"] > 0 and m["p95_ms"] >= m["p50_ms"] > 0
    assert not any("--rate" in w for w in record["warnings"])
    if (served["p95_gain"] or 0) >= 1.2:  # the verdict follows the measurement either way
        assert "serve" in [r["action"] for r in record["verdict"]["recommendations"]]
    else:
        assert "serve" not in [r["action"] for r in record["verdict"]["recommendations"]]
    assert "continuous batching" in html.read_text()


# --- end to end: torch (one request at a time) ---------------------------------------------

@pytest.fixture(scope="module")
def torch_server(peaked_llama, start_server):
    s = start_server(peaked_llama, "--max-new-tokens", "32", "--max-body-kb", "8",
                     "--max-queue", "1", "--max-inputs", "1")
    yield s
    s.stop()


def test_torch_chat_is_the_models_greedy_answer(torch_server, peaked_llama):
    from leanify.models.load import load
    from leanify.runtimes import open_generator

    messages = [{"role": "user", "content": "What light through yonder window breaks?"}]
    r = httpx.post(f"{torch_server.url}{CHAT}", json={"messages": messages, "temperature": 0,
                                                      "max_tokens": 20}, timeout=120)
    assert r.status_code == 200, r.text
    want, _ = greedy_text(peaked_llama, open_generator(load(peaked_llama), 1), messages, 20)
    assert r.json()["choices"][0]["message"]["content"] == want
    # sampling at a temperature is seeded: the same seed, the same answer
    a, b = (ask(torch_server.url, "Sample me", temperature=1.0, seed=7, max_tokens=12).json()
            for _ in range(2))
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    ({"messages": []}, 422, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 422, "'role'"),
    ({"messages": [{"role": "user", "content": 3}]}, 422, "string 'content'"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 422, "'n' must be 1"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 422, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 33}, 400, "at most 32 new"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [""]}, 422, "'stop'"),
    ({"messages": [{"role": "user", "content": "word " * 700}]}, 400, "context is 512"),
    ({"messages": [{"role": "user", "content": "word " * 2000}]}, 413, "over 8192 bytes"),
])
def test_bad_chat_requests_get_a_4xx_that_says_why(torch_server, body, status, words):
    data = body if isinstance(body, bytes) else json.dumps(body)
    r = httpx.post(f"{torch_server.url}{CHAT}", content=data, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_the_embedding_endpoint_of_a_chat_server_points_at_chat(torch_server):
    r = httpx.post(f"{torch_server.url}/v1/embeddings", json={"input": "x"}, timeout=30)
    assert r.status_code == 404 and CHAT in r.json()["error"]["message"]
    assert httpx.get(f"{torch_server.url}/ready").json()["kind"] == "chat"


def test_chats_beyond_the_queue_get_429_with_retry_after(torch_server):
    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(
                f"{torch_server.url}{CHAT}", json={
                    "messages": [{"role": "user", "content": f"Tale {i}"}], "max_tokens": 32,
                    "temperature": 0}) for i in range(6)))

    codes = [a.status_code for a in asyncio.run(burst())]
    # one runs, one waits (--max-queue 1), the rest are refused at once
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}


# --- the text layer and the engine, without a model ------------------------------------------

def test_text_streams_in_whole_characters_and_holds_back_a_forming_stop(lm_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lm_tokenizer))
    text = "To be, or not to be — that is the question: café ☕ end."
    ids = tok.encode(text, add_special_tokens=False)
    stream = TextStream(tok, [])
    deltas = [stream.add([t]) for t in ids] + [stream.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)  # never half a character

    stream = TextStream(tok, ["the question"])
    out = ""
    for t in ids:
        out += stream.add([t])
        assert "the quest" not in out or stream.stopped  # the stop is never shown forming
        if stream.stopped:
            break
    assert stream.stopped and out + stream.flush() == "To be, or not to be — that is "


def test_parse_request_takes_openai_fields_and_content_parts():
    r = parse_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "max_tokens": 5,
        "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "x", "stream": True,
        "stream_options": {"include_usage": True}}, max_chars=100)
    assert r.messages == [{"role": "user", "content": "ab"}]
    assert (r.max_tokens, r.temperature, r.top_p, r.seed, r.stop, r.stream, r.include_usage) \
        == (5, 0.5, 0.9, 3, ["x"], True, True)
    assert parse_request({"messages": [{"role": "user", "content": "a"}]}, 10).temperature == 1.0
    with pytest.raises(HTTPError, match="at most 10"):
        parse_request({"messages": [{"role": "user", "content": "a" * 11}]}, 10)
    with pytest.raises(HTTPError, match="max_tokens"):
        parse_request({"messages": [{"role": "user", "content": "a"}], "max_tokens": True}, 10)


class ScriptedRunner:
    """Emits token i at step i, `steps` of them, `delay_s` apart; fails on a prompt of [-1]."""

    def __init__(self, steps: int = 5, delay_s: float = 0.01):
        self.steps, self.delay_s = steps, delay_s
        self.gate = threading.Event()
        self.gate.set()

    def stream(self, ids, sampling, emit):
        if ids == [-1]:
            raise RuntimeError("scripted failure")
        for i in range(min(self.steps, sampling.max_new_tokens)):
            self.gate.wait()
            time.sleep(self.delay_s)
            if not emit([i]):
                return "stop"
        return "length"


def run_job(engine, ids, tokens=5) -> tuple[ChatJob, queue.Queue]:
    items: queue.Queue = queue.Queue()
    job = ChatJob(ids, Sampling(tokens), items.put)
    engine.submit(job)
    return job, items


def drain(items: queue.Queue) -> list:
    out = []
    while True:
        item = items.get(timeout=10)
        out.append(item)
        if isinstance(item, Finished | BaseException):
            return out


def test_the_engine_queues_refuses_beyond_its_bound_and_survives_a_failure():
    runner = ScriptedRunner()
    runner.gate.clear()  # hold the first request inside the model
    engine = SequentialEngine(runner, max_waiting=1)
    engine.start()
    _, first = run_job(engine, [1])
    time.sleep(0.1)
    _, second = run_job(engine, [-1])  # waits, then fails in the model
    with pytest.raises(QueueFull):
        run_job(engine, [3])
    runner.gate.set()
    got = drain(first)
    assert got[:-1] == [[0], [1], [2], [3], [4]] and got[-1].reason == "length"
    assert isinstance(drain(second)[-1], RuntimeError)
    _, third = run_job(engine, [4], tokens=2)  # the engine lives on
    assert drain(third)[-1].reason == "length"
    engine.close()
    with pytest.raises(QueueFull):
        run_job(engine, [5])


def test_a_cancelled_job_stops_and_close_finishes_what_was_accepted():
    runner = ScriptedRunner(steps=50, delay_s=0.02)
    engine = SequentialEngine(runner, max_waiting=4)
    engine.start()
    job, items = run_job(engine, [1], tokens=50)
    _, waiting = run_job(engine, [2], tokens=3)
    time.sleep(0.1)
    job.cancelled.set()
    got = drain(items)
    assert got[-1].reason == "stop" and len(got) < 20
    engine.close()  # the waiting one still runs to its end
    assert drain(waiting)[-1].reason == "length"
    assert not engine.thread.is_alive()


def test_the_queue_budget_refuses_what_would_wait_too_long():
    runner = ScriptedRunner(steps=3, delay_s=0.1)
    engine = SequentialEngine(runner, max_waiting=100, max_delay_s=0.5)
    engine.start()
    for _ in range(2):  # learn the pace: about 0.3 s a request
        drain(run_job(engine, [1])[1])
    queued = []
    with pytest.raises(QueueFull) as refused:
        for _ in range(10):
            queued.append(run_job(engine, [1]))
    assert 1 <= len(queued) <= 4 and refused.value.retry_after_s >= 1
    engine.close()
