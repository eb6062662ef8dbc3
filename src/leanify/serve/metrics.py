"""Prometheus metrics of one server (its own registry: two apps in a process never mix).

Request time is split where it goes: waiting in the queue, the batch in the model (tokenizing
included: a batch is tokenized in one call on the model's thread), and the rest (HTTP, JSON)
is the request's total minus those. The same split rides on every response in a
`Server-Timing` header, so a load test can tell the server's overhead from the model's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Metrics:
    registry: Any = field(init=False)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("leanify_requests", "Requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.rejections = Counter("leanify_rejections", "Requests refused, by reason",
                                  ["reason"], registry=r)
        self.latency = Histogram("leanify_request_seconds", "Request time in the server",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("leanify_queue_wait_seconds",
                                    "From queued to its batch going to the model",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("leanify_inference_seconds",
                                   "One batch: tokenizing and the model",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("leanify_batch_size",
                                    "Inputs per model call (chats: sequences per decode step)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.first_token = Histogram("leanify_time_to_first_token_seconds",
                                     "A chat completion's first token, from queued",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("leanify_generated_tokens", "Tokens chat completions generated",
                              registry=r)
        self.queue_depth = Gauge("leanify_queue_depth",
                                 "Inputs (chats: requests) waiting for the model", registry=r)
        self.in_flight = Gauge("leanify_in_flight", "Requests read and not yet answered",
                               registry=r)
        self.ready = Gauge("leanify_ready", "1 once the model is loaded and warm", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
