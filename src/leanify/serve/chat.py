"""Chat models behind `leanify serve`: OpenAI's /v1/chat/completions, whole or streamed.

One engine per server runs the model in a process of its own (`EngineProcess`), never beside
the event loop: OpenVINO GenAI's `step()` holds the GIL for a whole decode step, which in the
server's process would stall health checks, refusals and streamed tokens at every step. The
engine is
- on OpenVINO GenAI, its continuous batching pipeline: a request joins the running batch at
  the next decode step and leaves it when it is done, so concurrent chats share each step (the
  LLM form of dynamic batching) instead of queueing behind each other;
- on torch, one request at a time (the decode loop of `torch-generate`).
Requests beyond the running batch wait in a bounded queue: 429 with Retry-After when it is
full or its wait, at the pace requests have been finishing, is over the queue budget; 504 for
one that waits past its timeout for its first token; a client that hangs up stops its
generation at the next step.

Text: the model's own chat template (a prompt without one is the messages' contents, a line
each), detokenized incrementally (a token that ends inside a UTF-8 character waits for the
next), `stop` strings cut on the text, and never streamed while they might still be forming.
"""

from __future__ import annotations

import collections
import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanify.serve.batcher import QueueFull
from leanify.serve.errors import HTTPError

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
MAX_STOP = 4  # stop strings per request, as OpenAI allows


class Finished:
    """The last item of a job's stream: why it stopped ("stop" or "length")."""

    def __init__(self, reason: str):
        self.reason = reason


@dataclass
class ChatJob:
    """One request in the engine: its prompt ids, how to sample, and where tokens go. `sink`
    is called on the engine's thread with lists of new token ids, then a Finished (or an
    exception)."""

    ids: list[int]
    sampling: Any  # runtimes.torch_generate.Sampling
    sink: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    rid: int = -1  # its number in the engine process


class Engine:
    """The bounded queue and the model thread; subclasses run what is admitted."""

    def __init__(self, max_running: int, max_waiting: int, max_delay_s: float = math.inf,
                 metrics: Any = None):
        self.max_running, self.max_waiting = max_running, max_waiting
        self.max_delay_s, self.metrics = max_delay_s, metrics
        self.waiting: collections.deque[ChatJob] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.seconds_per_job = 0.0  # EWMA of a request's time in the engine
        self.thread = threading.Thread(target=self._main, name="leanify-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: ChatJob) -> None:
        with self.cond:
            if self.closing:
                raise QueueFull(1)
            wait_s = self.expected_wait_s(len(self.waiting) + 1)
            if len(self.waiting) >= self.max_waiting or wait_s > self.max_delay_s:
                raise QueueFull(max(1, math.ceil(wait_s)))
            self.waiting.append(job)
            self._depth()
            self.cond.notify()

    def expected_wait_s(self, waiting: int) -> float:
        """Seconds until the last of `waiting` queued requests starts, at the pace so far."""
        return waiting * self.seconds_per_job / self.max_running

    def close(self) -> None:
        """Stop taking requests, finish every accepted one, stop the thread."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join()

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # the engine died: every request still held hears why
            with self.cond:
                self.closing = True
                held = list(self.waiting) + self.running_jobs()
                self.waiting.clear()
            for job in held:
                job.sink(exc)
            raise

    def _take(self, block: bool) -> ChatJob | None:
        """The next waiting request that is still wanted; None when there is none (at once
        unless `block`, and for good once closing with nothing left)."""
        with self.cond:
            while True:
                while self.waiting:
                    job = self.waiting.popleft()
                    self._depth()
                    if not job.cancelled.is_set():
                        return job
                if not block or self.closing:
                    return None
                self.cond.wait()

    def _done(self, job: ChatJob, outcome: Any) -> None:
        job.sink(outcome)
        took = time.monotonic() - (job.started or job.enqueued)
        self.seconds_per_job = took if self.seconds_per_job <= 0 else \
            0.8 * self.seconds_per_job + 0.2 * took

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self.waiting))

    def running_jobs(self) -> list[ChatJob]:
        return []

    def run(self) -> None:
        raise NotImplementedError


class SequentialEngine(Engine):
    """One request at a time through a runner's `stream` (torch)."""

    def __init__(self, runner: Any, **kw: Any):
        super().__init__(max_running=1, **kw)
        self.runner = runner
        self.current: ChatJob | None = None

    def running_jobs(self) -> list[ChatJob]:
        return [self.current] if self.current is not None else []

    def run(self) -> None:
        while (job := self._take(block=True)) is not None:
            self.current, job.started = job, time.monotonic()

            def emit(tokens: list[int], job: ChatJob = job) -> bool:
                job.sink(tokens)
                return not job.cancelled.is_set()

            try:
                outcome: Any = Finished(self.runner.stream(job.ids, job.sampling, emit))
            except Exception as exc:  # this request failed; the next may not
                outcome = exc
            self.current = None
            self._done(job, outcome)


class ContinuousEngine(Engine):
    """OpenVINO GenAI's continuous batching: admit waiting requests up to `max_running`
    sequences, run one step for all of them, hand out what each got, repeat."""

    def __init__(self, runner: Any, max_running: int, cache_bytes: int, **kw: Any):
        super().__init__(max_running=max_running, **kw)
        self.runner = runner
        self.pipe = runner.batching_pipeline(max_running, cache_bytes)
        self.running: dict[int, tuple[ChatJob, Any]] = {}
        self.next_id = 0

    def running_jobs(self) -> list[ChatJob]:
        return [job for job, _ in self.running.values()]

    def run(self) -> None:
        import openvino as ov
        import openvino_genai as genai

        finished = {genai.GenerationStatus.FINISHED, genai.GenerationStatus.STOP,
                    genai.GenerationStatus.CANCEL}
        while True:
            while len(self.running) < self.max_running:
                job = self._take(block=not self.running)
                if job is None:
                    break
                job.started = time.monotonic()
                try:
                    handle = self.pipe.add_request(
                        self.next_id, ov.Tensor(np.asarray([job.ids], np.int64)),
                        self.runner.sampling_config(job.sampling))
                except Exception as exc:
                    self._done(job, exc)
                    continue
                self.running[self.next_id] = (job, handle)
                self.next_id += 1
            if not self.running:
                return  # closing, and nothing left
            for rid, (job, handle) in list(self.running.items()):
                if job.cancelled.is_set():  # the client hung up: free its sequence
                    handle.cancel()
                    del self.running[rid]
                    self._done(job, Finished("stop"))
            if not self.running:
                continue
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(self.running))
            try:
                self.pipe.step()
            except Exception as exc:  # a failed step fails the requests in it
                for job, _ in self.running.values():
                    self._done(job, exc)
                self.running.clear()
                continue
            for rid, (job, handle) in list(self.running.items()):
                reason = None
                if handle.can_read():
                    for out in handle.read().values():
                        if len(out.generated_ids):
                            job.sink([int(t) for t in out.generated_ids])
                        reason = out.finish_reason
                if handle.get_status() in finished:
                    del self.running[rid]
                    length = reason == genai.GenerationFinishReason.LENGTH
                    self._done(job, Finished("length" if length else "stop"))


class EngineGone(Exception):
    """The engine process exited; the server cannot generate any more."""


class EngineProcess:
    """An engine (continuous or sequential) in a child process. Requests, cancellations and
    tokens cross a pipe; the queue bound is kept here, on the requests the child holds: it
    runs up to `max_running` at once and queues the rest in order."""

    def __init__(self, source: Any, *, max_running: int, max_waiting: int, max_delay_s: float,
                 metrics: Any = None):
        self.max_running, self.max_waiting = max_running, max_waiting
        self.max_delay_s, self.metrics = max_delay_s, metrics
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        self.conn, self._child_end = ctx.Pipe()
        self.proc = ctx.Process(target=_engine_main, args=(self._child_end, source, max_running),
                                name="leanify-model", daemon=True)
        self.jobs: dict[int, ChatJob] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        self.closing = False
        self.gone: str | None = None
        self.seconds_per_job = 0.0  # EWMA of a request's time running (not waiting)
        self.reader = threading.Thread(target=self._read, name="leanify-engine-reader",
                                       daemon=True)

    def start(self) -> None:
        """Start the child and wait until its model is open (its error, if it fails)."""
        self.proc.start()
        self._child_end.close()
        message = self.conn.recv() if self.conn.poll(600) else ("error", -1, "no answer")
        if message[0] != "ready":
            self.proc.join(5)
            raise RuntimeError(f"the model process could not open the model: {message[2]}")
        self.max_running = message[1]  # 1 where the engine runs one chat at a time
        self.reader.start()

    @property
    def waiting(self) -> int:
        return max(len(self.jobs) - self.max_running, 0)

    def submit(self, job: ChatJob) -> None:
        with self.lock:
            if self.gone:
                raise EngineGone(self.gone)
            if self.closing:
                raise QueueFull(1)
            waiting = max(len(self.jobs) + 1 - self.max_running, 0)
            wait_s = waiting * self.seconds_per_job / self.max_running
            if waiting > self.max_waiting or wait_s > self.max_delay_s:
                raise QueueFull(max(1, math.ceil(wait_s)))
            job.rid, self.next_id = self.next_id, self.next_id + 1
            self.jobs[job.rid] = job
            self.conn.send(("submit", job.rid, job.ids, job.sampling))
            self._depth()

    def cancel(self, job: ChatJob) -> None:
        """Stop a job: dropped if it waits, its sequence freed at the next step if it runs."""
        job.cancelled.set()
        with self.lock:
            if job.rid in self.jobs and not self.gone:
                self.conn.send(("cancel", job.rid))

    def close(self) -> None:
        """Stop taking requests; the child finishes every one it holds, then exits."""
        with self.lock:
            self.closing = True
            if not self.gone and self.proc.is_alive():
                self.conn.send(("close",))
        if self.reader.is_alive():
            self.reader.join()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()

    def _read(self) -> None:
        while True:
            try:
                kind, rid, *rest = self.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "step":
                if self.metrics is not None:
                    self.metrics.batch_size.observe(rid)  # sequences in that step
                continue
            job = self.jobs.get(rid)
            if job is None:
                continue
            if kind == "tokens":
                job.started = job.started or time.monotonic()
                job.sink(rest[0])
                continue
            with self.lock:
                self.jobs.pop(rid, None)
                self._depth()
            if kind == "done":
                reason, seconds = rest
                self.seconds_per_job = seconds if self.seconds_per_job <= 0 else \
                    0.8 * self.seconds_per_job + 0.2 * seconds
                job.sink(Finished(reason))
            else:
                job.sink(RuntimeError(rest[0]))
        with self.lock:  # the child exited: what it held will not come
            self.gone = "closed" if self.closing else "the model process exited"
            held, self.jobs = list(self.jobs.values()), {}
        for job in held:
            job.sink(EngineGone("the model process exited while generating"))

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.waiting)


class _StepCount:
    """Engine metrics inside the child: each step's sequence count goes to the parent."""

    def __init__(self, send: Callable[[tuple], None]):
        self.batch_size = self.queue_depth = self
        self._send = send

    def observe(self, n: int) -> None:
        self._send(("step", int(n)))

    def set(self, _value: float) -> None:  # the parent keeps the queue depth
        pass


def _engine_main(conn: Any, source: Any, max_running: int) -> None:
    """The child: open the model, run its engine, relay requests and tokens."""
    from leanify.runtimes import open_generator

    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    try:
        runner = open_generator(source.artifact, source.threads)
        steps = _StepCount(send)
        if hasattr(runner, "batching_pipeline"):
            context = int(source.artifact.meta.get("max_length") or 2048)
            kv = int(source.artifact.meta.get("kv_bytes_per_token") or 0) or 64 * 1024
            engine: Engine = ContinuousEngine(runner, max_running,
                                              cache_bytes=max_running * context * kv,
                                              max_waiting=1 << 30, metrics=steps)
        else:
            engine = SequentialEngine(runner, max_waiting=1 << 30, metrics=steps)
        engine.start()
    except Exception as exc:
        send(("error", -1, f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", engine.max_running))
    jobs: dict[int, ChatJob] = {}

    def sink(rid: int, item: Any) -> None:
        job = jobs[rid]
        if isinstance(item, Finished):
            jobs.pop(rid, None)
            send(("done", rid, item.reason, time.monotonic() - (job.started or job.enqueued)))
        elif isinstance(item, BaseException):
            jobs.pop(rid, None)
            send(("error", rid, f"{type(item).__name__}: {item}"))
        else:
            send(("tokens", rid, item))

    while True:
        try:
            kind, *rest = conn.recv()
        except (EOFError, OSError):  # the server went away: finish up and stop
            kind = "close"
        if kind == "submit":
            rid, ids, sampling = rest
            jobs[rid] = ChatJob(ids, sampling, lambda item, rid=rid: sink(rid, item))
            engine.submit(jobs[rid])
        elif kind == "cancel" and rest[0] in jobs:
            jobs[rest[0]].cancelled.set()
        elif kind == "close":
            engine.close()  # every accepted job runs to its end
            runner.close()
            conn.close()
            return


class TextStream:
    """Token ids in, text out: what is safe to show so far, with stop strings cut."""

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters handed out
        self.stopped = False

    def add(self, tokens: list[int]) -> str:
        """The new text these tokens complete (maybe ""); sets `stopped` at a stop string."""
        self.ids += tokens
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # the last token ends inside a character
            return ""
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s)))
            if at != -1:
                text, self.stopped = text[:at], True
        self.text = text
        safe = len(text) if self.stopped else len(text) - self._held(text)
        delta, self.sent = text[self.sent:max(safe, self.sent)], max(safe, self.sent)
        return delta

    def flush(self) -> str:
        """What is left at the end (text held back in case a stop string was forming)."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta

    def _held(self, text: str) -> int:
        """Characters at the end that could begin a stop string."""
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:n]):
                    held = n
                    break
        return held


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool


def parse_request(body: dict[str, Any], max_chars: int) -> ChatRequest:
    """The request's fields, checked (422 on a wrong shape or range, 400 on a too-long text)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(422, "'messages' must be a non-empty list of {role, content} objects.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise HTTPError(422, f"message {i} needs a 'role' among {', '.join(sorted(ROLES))}.")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only here
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise HTTPError(422, f"message {i}: only text content parts are served.")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise HTTPError(422, f"message {i} needs a string 'content'.")
        if len(content) > max_chars:
            raise HTTPError(400, f"message {i} has {len(content)} characters; at most "
                                 f"{max_chars}. Shorten it.", reason="too_long")
        out.append({"role": m["role"], "content": content})
    if body.get("n", 1) != 1:
        raise HTTPError(422, "'n' must be 1: one choice per request is served.")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise HTTPError(422, "'max_tokens' must be a positive integer.")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise HTTPError(422, "'top_p' must be above 0.")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise HTTPError(422, "'seed' must be an integer.")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or \
            not all(isinstance(s, str) and s for s in stop):
        raise HTTPError(422, f"'stop' must be a string or a list of at most {MAX_STOP} "
                             "non-empty strings.")
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise HTTPError(422, "'stream' must be true or false, 'stream_options' an object.")
    return ChatRequest(out, max_tokens, temperature, top_p, seed, stop, stream,
                       bool(options.get("include_usage")))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not low <= value <= high:
        raise HTTPError(422, f"'{key}' must be a number from {low:g} to {high:g}.")
    return float(value)


class ChatModel:
    """A causal LM served for chat: its tokenizer and chat template here, its engine in a
    process of its own."""

    kind = "chat"

    def __init__(self, source: Any, *, max_running: int, max_waiting: int,
                 max_delay_s: float, max_new_tokens: int, metrics: Any = None):
        from transformers import AutoTokenizer

        from leanify.runtimes import generator_for
        from leanify.tasks.text import tokenizer_folder

        artifact = source.artifact
        generator_for(artifact)  # a model no runtime generates with fails here, not in a child
        self.artifact, self.name = artifact, source.name
        self.context = int(artifact.meta.get("max_length") or 2048)
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder(artifact)),
                                                       local_files_only=True)
        self.eos_ids = _eos_ids(artifact, self.tokenizer)
        self.engine = EngineProcess(source, max_running=max_running, max_waiting=max_waiting,
                                    max_delay_s=max_delay_s, metrics=metrics)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        else:  # a base model: the conversation as plain text
            text = "\n".join(m["content"] for m in messages) + "\n"
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def sampling(self, request: ChatRequest, prompt_tokens: int) -> Any:
        """How many tokens this request may have, checked against the context (400)."""
        from leanify.runtimes.torch_generate import Sampling

        room = self.context - prompt_tokens
        if room < 1:
            raise HTTPError(400, f"the prompt is {prompt_tokens} tokens; this model's context "
                                 f"is {self.context}. Shorten the conversation.",
                            reason="too_long")
        wanted = request.max_tokens
        if wanted is not None and (wanted > room or wanted > self.max_new_tokens):
            raise HTTPError(400, f"max_tokens {wanted} is over what this server gives "
                                 f"({min(room, self.max_new_tokens)}: a context of "
                                 f"{self.context}, {prompt_tokens} taken by the prompt, at "
                                 f"most {self.max_new_tokens} new).", reason="too_long")
        return Sampling(max_new_tokens=wanted or min(room, self.max_new_tokens),
                        temperature=request.temperature, top_p=request.top_p,
                        seed=request.seed, eos_ids=self.eos_ids)

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int = 4) -> str:
        """Generate synchronously through the engine (warm-up, checks)."""
        import queue

        from leanify.runtimes.torch_generate import Sampling

        items: queue.Queue = queue.Queue()
        job = ChatJob(self.prompt_ids(messages), Sampling(max_new_tokens, eos_ids=self.eos_ids),
                      items.put)
        self.engine.submit(job)
        text = TextStream(self.tokenizer, [])
        while not isinstance(item := items.get(timeout=600), Finished):
            if isinstance(item, BaseException):
                raise item
            text.add(item)
        return text.text

    def close(self) -> None:
        self.engine.close()


def _eos_ids(artifact: Any, tokenizer: Any) -> tuple[int, ...]:
    """End-of-turn tokens: generation_config.json's eos_token_id(s), else the tokenizer's."""
    import json
    from pathlib import Path

    ids: set[int] = set()
    root = Path(artifact.path)
    folder = root if root.is_dir() else root.parent
    config = folder / "generation_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        except (ValueError, UnicodeDecodeError, AttributeError):
            value = None
        ids.update(v for v in (value if isinstance(value, list) else [value]) if _is_int(v))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))
