"""The HTTP service: OpenAI-shaped endpoints over the dynamic batcher (chat completions over
a chat engine, serve/chat.py), with limits on what a request may ask, API-key auth,
health/readiness and Prometheus metrics.

Errors use OpenAI's shape, `{"error": {"message", "type", "code"}}`: 400 malformed JSON or an
input over the model's length, 401 no or wrong key, 404 an endpoint of another model kind,
413 a body or request too large, 422 a body of the wrong shape, 429 a full queue (with
Retry-After), 503 not ready yet (or shutting down), 504 a request that waited past its timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the route annotations
from fastapi.responses import JSONResponse, Response, StreamingResponse

from leanify.serve.batcher import BatchCost, Batcher, QueueFull
from leanify.serve.chat import (
    ChatJob,
    ChatModel,
    ChatRequest,
    EngineGone,
    Finished,
    TextStream,
    parse_request,
)
from leanify.serve.errors import HTTPError, error_body
from leanify.serve.metrics import Metrics
from leanify.serve.model import ServedModel, Source, is_chat_model

log = logging.getLogger("leanify.serve")
OPEN_PATHS = frozenset({"/health", "/ready"})  # probes answer without a key
WARMUP_TEXT = "A warm-up sentence for the model."


@dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # inputs per model call
    max_wait_ms: float = 0.0  # how long the oldest queued input waits for company
    max_queue: int = 256  # inputs waiting; beyond it, 429
    max_queue_ms: float = 1000.0  # work ahead, own included, at the measured rate; 429 beyond
    timeout_s: float = 10.0  # per request, queue included
    max_body_bytes: int = 1 << 20
    max_inputs: int = 64  # inputs per request
    max_chars: int = 32_768  # per input (per message for chats), checked before tokenizing
    max_new_tokens: int = 512  # per chat completion
    max_sequences: int = 8  # chats decoded together; more share each step, all slower


class BodyLimit:
    """Refuse bodies over the limit (413) from the Content-Length header, or while they stream
    in, before they are buffered whole."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_json(send, 413, error_body(
                f"the request body is over {self.max_bytes} bytes.", "invalid_request_error",
                413))
        seen, refused = 0, False

        async def limited():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # a streamed body: answer now, the app sees a hang-up
                    refused = True
                    await _send_json(send, 413, error_body(
                        f"the request body is over {self.max_bytes} bytes.",
                        "invalid_request_error", 413))
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded)


async def _send_json(send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


ENDPOINTS = {"embedding": ("/v1/embeddings", "an embedding"),
             "classification": ("/v1/classify", "a classification"),
             "chat": ("/v1/chat/completions", "a chat")}


def warmed(source: Source, limits: Limits) -> ServedModel | ChatModel:
    """The model loaded and run a few times at both ends of what the batcher sends (a chat
    model: its engine started and two short completions through it; it admits chats while
    their expected wait is under half the timeout, the estimate's margin)."""
    if is_chat_model(source.artifact):
        chat = ChatModel(source, max_running=limits.max_sequences,
                         max_waiting=limits.max_queue, max_delay_s=limits.timeout_s / 2,
                         max_new_tokens=limits.max_new_tokens)
        chat.engine.start()
        for _ in range(2):
            chat.complete([{"role": "user", "content": WARMUP_TEXT}])
        return chat
    model = ServedModel(source)
    for size in (1, limits.max_batch):
        for _ in range(3):
            start = time.perf_counter()
            model.run([WARMUP_TEXT] * size)
        model.warm_timings.append((size, time.perf_counter() - start))  # the warm run
    return model


class Service:
    """The state behind the routes: the model, the batcher, metrics. Given no model, it loads
    and warms one up in the background (`/ready` says when)."""

    def __init__(self, source: Source, limits: Limits,
                 on_fatal: Callable[[BaseException], None],
                 model: ServedModel | ChatModel | None = None):
        self.source, self.limits, self.on_fatal = source, limits, on_fatal
        self.metrics = Metrics()
        self.model = model
        self.batcher: Batcher | None = None
        self.ready = False
        self.closing = False
        self._warm_task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.model is not None:
            self._begin()
        else:
            self._warm_task = asyncio.get_running_loop().create_task(self._warm())

    def _begin(self) -> None:
        if self.model.kind == "chat":
            self.model.engine.metrics = self.metrics
        else:
            self.batcher = self._batcher()
        self.ready = True
        self.metrics.ready.set(1)
        log.warning("ready: %s (%s)", self.source.name, self.model.kind)

    def _batcher(self) -> Batcher:
        cost = BatchCost()
        for size, seconds in self.model.warm_timings:  # the batch cost before any request
            cost.observe(size, seconds)
        batcher = Batcher(self.model.run, max_batch=self.limits.max_batch, cost=cost,
                          max_wait_ms=self.limits.max_wait_ms, max_queue=self.limits.max_queue,
                          max_delay_s=min(self.limits.max_queue_ms / 1000,
                                          self.limits.timeout_s),
                          metrics=self.metrics)
        batcher.start()
        return batcher

    async def _warm(self) -> None:
        try:
            self.model = await asyncio.to_thread(warmed, self.source, self.limits)
            self._begin()
        except BaseException as exc:  # a failure here stops the server, with the reason
            self.on_fatal(exc)
            raise

    async def stop(self) -> None:
        self.closing = True
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
            with contextlib.suppress(BaseException):
                await self._warm_task
        if self.batcher is not None:
            await self.batcher.close()  # finishes every accepted request first
        if self.model is not None:  # a chat engine finishes its accepted requests here
            await asyncio.to_thread(self.model.close)

    def _serving(self, kind: str) -> Any:
        """The model, if it is ready and of this kind; HTTPError (503, 404) if not."""
        if not self.ready or self.closing:
            raise HTTPError(503, "the model is still loading; retry shortly." if not
                            self.closing else "the server is shutting down.",
                            "unavailable", {"Retry-After": "1"}, reason="not_ready")
        if self.model.kind != kind:
            other, what = ENDPOINTS[self.model.kind]
            raise HTTPError(404, f"this server serves {what} model: use POST {other}.",
                            reason="wrong_endpoint")
        return self.model

    async def answer(self, endpoint: str, kind: str, raw: bytes) -> tuple[dict, dict[str, str]]:
        """Parse, check, queue and shape one request; HTTPError on refusal."""
        t0 = time.perf_counter()
        model = self._serving(kind)
        batcher = self.batcher
        body = _parse(raw)
        texts = self._texts(body)
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            raise HTTPError(422, "'encoding_format' must be 'float' or 'base64'.")
        over = model.too_long(texts)  # tokenizes only long texts: cheap on the loop
        if over:
            i, n = over[0]
            raise HTTPError(400, f"input {i} is {n} tokens; this model takes at most "
                                 f"{model.max_length}. Shorten or split it.", reason="too_long")
        try:
            job = await batcher.submit(texts)
        except QueueFull as exc:
            raise HTTPError(429, f"the server is at capacity ({self.limits.max_queue} inputs "
                                 f"queued); retry after {exc.retry_after_s} s.",
                            "rate_limit_exceeded", {"Retry-After": str(exc.retry_after_s)},
                            reason="queue_full") from None
        left = self.limits.timeout_s - (time.perf_counter() - t0)
        try:
            rows = await asyncio.wait_for(job.future, max(left, 0.001))
        except TimeoutError:
            raise HTTPError(504, f"the request waited over {self.limits.timeout_s:g} s for "
                                 "the model.", "timeout", reason="timeout") from None
        queue_s = (job.started or time.monotonic()) - job.enqueued
        self.metrics.queue_wait.observe(queue_s)
        timing = {"Server-Timing": f"queue;dur={queue_s * 1e3:.3f}, "
                                   f"model;dur={job.model_s * 1e3:.3f}, batch;dur={job.batch}"}
        return self._shape(model, rows, sum(job.tokens), encoding_format), timing

    async def chat(self, raw: bytes) -> Chat:
        """Parse, check and queue one chat completion, and wait for its first token."""
        t0 = time.perf_counter()
        model: ChatModel = self._serving("chat")
        request = parse_request(_parse(raw), self.limits.max_chars)
        ids = await asyncio.to_thread(model.prompt_ids, request.messages)  # long chats take ms
        sampling = model.sampling(request, len(ids))
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        job = ChatJob(ids, sampling, lambda item: loop.call_soon_threadsafe(items.put_nowait,
                                                                              item))
        try:
            model.engine.submit(job)
        except EngineGone as exc:
            raise HTTPError(503, f"the model is not running ({exc}); see the server log.",
                            "unavailable", reason="not_ready") from None
        except QueueFull as exc:
            raise HTTPError(429, f"the server is at capacity ({model.engine.waiting} "
                                 f"chats waiting); retry after {exc.retry_after_s} s.",
                            "rate_limit_exceeded", {"Retry-After": str(exc.retry_after_s)},
                            reason="queue_full") from None
        chat = Chat(self, request, job, items, len(ids))
        await chat.first_item(self.limits.timeout_s - (time.perf_counter() - t0))
        return chat

    def _texts(self, body: dict[str, Any]) -> list[str]:
        value = body.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str)
                                                               for t in texts):
            raise HTTPError(422, "'input' must be a string or a non-empty list of strings.")
        if len(texts) > self.limits.max_inputs:
            raise HTTPError(413, f"{len(texts)} inputs in one request; at most "
                                 f"{self.limits.max_inputs}. Split the request.",
                            reason="too_large")
        for i, text in enumerate(texts):
            if not text.strip():
                raise HTTPError(422, f"input {i} is empty.")
            if len(text) > self.limits.max_chars:
                raise HTTPError(400, f"input {i} has {len(text)} characters; at most "
                                     f"{self.limits.max_chars}. Shorten or split it.",
                                reason="too_long")
        return texts

    @staticmethod
    def _shape(model: ServedModel, rows: np.ndarray, tokens: int, fmt: str) -> dict[str, Any]:
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        if model.kind == "embedding":
            data = [{"object": "embedding", "index": i,
                     "embedding": (base64.b64encode(row.astype("<f4").tobytes()).decode()
                                   if fmt == "base64" else row.tolist())}
                    for i, row in enumerate(rows)]
        else:
            data = []
            for i, row in enumerate(rows):
                best = int(np.argmax(row))
                data.append({"object": "classification", "index": i,
                             "label": model.label(best), "score": float(row[best]),
                             "scores": {model.label(j): float(p) for j, p in enumerate(row)}})
        return {"object": "list", "data": data, "model": model.name, "usage": usage}


class Chat:
    """One accepted chat completion: its tokens arrive on `items`, its text in `text`."""

    def __init__(self, service: Service, request: ChatRequest, job: ChatJob,
                 items: asyncio.Queue, prompt_tokens: int):
        self.service, self.request, self.job, self.items = service, request, job, items
        self.model: ChatModel = service.model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.text = TextStream(self.model.tokenizer, request.stop)
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.first: Any = None
        self.reason = "stop"

    async def first_item(self, timeout_s: float) -> None:
        """Wait for the first token (504 past the timeout: the request leaves the queue)."""
        try:
            self.first = await asyncio.wait_for(self.items.get(), max(timeout_s, 0.001))
        except TimeoutError:
            self.model.engine.cancel(self.job)
            raise HTTPError(504, f"the request waited over {self.service.limits.timeout_s:g} s "
                                 "for the model.", "timeout", reason="timeout") from None
        self.service.metrics.first_token.observe(time.monotonic() - self.job.enqueued)

    async def deltas(self):
        """New text as it becomes safe to show, until the model or a stop string ends it."""
        item = self.first
        while True:
            if item is None:
                item = await self.items.get()
            if isinstance(item, Finished):
                self.reason = item.reason
                break
            if isinstance(item, BaseException):
                raise item
            self.completion_tokens += len(item)
            self.service.metrics.tokens.inc(len(item))
            delta = self.text.add(item)
            if delta:
                yield delta
            if self.text.stopped:
                self.model.engine.cancel(self.job)  # freed at the engine's next step
                self.reason = "stop"
                return
            item = None
        tail = self.text.flush()
        if tail:
            yield tail

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def chunk(self, delta: dict[str, Any], reason: str | None = None) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def whole(self) -> dict[str, Any]:
        content = "".join([d async for d in self.deltas()])
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model.name,
                "choices": [{"index": 0, "finish_reason": self.reason,
                             "message": {"role": "assistant", "content": content}}],
                "usage": self.usage()}

    async def events(self):
        """Server-sent events, as OpenAI streams them: a role chunk, content chunks, the
        finish chunk, a usage chunk if asked for, then [DONE]. A hang-up stops the model."""
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            async for delta in self.deltas():
                yield self.chunk({"content": delta})
            yield self.chunk({}, self.reason)
            if self.request.include_usage:
                body = {"id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model.name, "choices": [],
                        "usage": self.usage()}
                yield b"data: " + json.dumps(body).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        except Exception as exc:  # headers are sent: the error goes in the stream
            log.exception("chat completion failed")
            yield b"data: " + json.dumps(error_body(
                f"the model failed on this request ({type(exc).__name__}); see the server "
                "log.", "server_error", 500)).encode() + b"\n\n"
        finally:  # done, failed or hung up: the engine lets go of it
            self.model.engine.cancel(self.job)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPError(400, "the request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise HTTPError(422, "the body must be a JSON object with an 'input' field.")
    return body


def create_app(source: Source, limits: Limits, *, api_key: str | None = None,
               on_fatal: Callable[[BaseException], None] = lambda exc: None):
    service = Service(source, limits, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="leanify serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service

    def refuse(exc: HTTPError, endpoint: str) -> JSONResponse:
        service.metrics.rejections.labels(exc.reason).inc()
        service.metrics.requests.labels(endpoint, str(exc.status)).inc()
        return JSONResponse(error_body(exc.message, exc.kind, exc.status), exc.status,
                            headers=exc.headers)

    def failed(endpoint: str) -> JSONResponse:
        log.exception("request failed")
        service.metrics.requests.labels(endpoint, "500").inc()
        return JSONResponse(error_body("the model failed on this request; see the server "
                                       "log.", "server_error", 500), 500)

    def answered(endpoint: str, start: float, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> JSONResponse:
        service.metrics.requests.labels(endpoint, "200").inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return JSONResponse(body, headers=headers)

    async def auth(request: Request, call_next):
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            given = given[7:] if given.lower().startswith("bearer ") else \
                request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return refuse(HTTPError(401, "a valid API key is required (Authorization: "
                                             "Bearer KEY).", "authentication_error",
                                        {"WWW-Authenticate": "Bearer"}, reason="unauthorized"),
                              request.url.path)
        return await call_next(request)

    if api_key:  # a middleware costs every request: only where there is a key to check
        app.middleware("http")(auth)

    async def route(request: Request, endpoint: str, kind: str):
        start = time.perf_counter()
        try:
            with service.metrics.in_flight.track_inprogress():
                body, headers = await service.answer(endpoint, kind, await request.body())
        except HTTPError as exc:
            return refuse(exc, endpoint)
        except Exception:  # leanify's own failure: a 500 with the reason logged
            return failed(endpoint)
        return answered(endpoint, start, body, headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        return await route(request, "/v1/embeddings", "embedding")

    @app.post("/v1/classify")
    async def classify(request: Request):
        return await route(request, "/v1/classify", "classification")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        endpoint, start = "/v1/chat/completions", time.perf_counter()
        try:
            chat = await service.chat(await request.body())
            if chat.request.stream:
                service.metrics.requests.labels(endpoint, "200").inc()
                return StreamingResponse(chat.events(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            body = await chat.whole()
        except HTTPError as exc:
            return refuse(exc, endpoint)
        except Exception:
            return failed(endpoint)
        return answered(endpoint, start, body)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": source.name, "object": "model",
                                            "owned_by": "leanify"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if service.ready and not service.closing:
            return {"status": "ready", "model": source.name, "kind": service.model.kind}
        return JSONResponse({"status": "shutting down" if service.closing else "loading"},
                            503, headers={"Retry-After": "1"})

    @app.get("/metrics")
    async def metrics():
        content, media_type = service.metrics.render()
        return Response(content, media_type=media_type)

    return BodyLimit(app, limits.max_body_bytes)


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(source: Source, limits: Limits, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, say: Callable[[str], None] = print) -> int:
    """Run the server until SIGTERM or Ctrl-C, then drain: stop accepting, answer every
    accepted request, exit 0. Returns 1 if the model could not be loaded or warmed up."""
    import signal

    import uvicorn

    fatal: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(source, limits, api_key=api_key, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on", backlog=2048,
                            timeout_graceful_shutdown=int(limits.timeout_s) + 5)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped on once it has drained: a quiet handler makes
    # that a normal return, so a graceful stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    say(f"leanify serve: {source.name} on http://{host}:{port} "
        f"(batches up to {limits.max_batch}, wait {limits.max_wait_ms:g} ms, queue "
        f"{limits.max_queue}); GET /ready turns 200 after warm-up")
    server.run()
    if fatal:
        raise fatal[0]
    say("leanify serve: stopped; every accepted request was answered")
    return 0
