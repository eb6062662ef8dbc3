"""Dynamic batching behind a bounded queue.

Requests wait in a queue of at most `max_queue` inputs, and of at most `max_delay_s` of
work at the rate the model has sustained; beyond either it refuses at once (`QueueFull`, a
429 with Retry-After) instead of piling up requests that would time out anyway. The
batch loop takes what is queued when the model is free: up to `max_batch` inputs, waiting at
most `max_wait_ms` after the oldest one for more to arrive, so a lone request pays at most
that wait and a burst runs in full batches. Inference runs on one thread of its own, never on
the event loop: the server keeps accepting, refusing and answering health checks meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    items: list[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None  # when its batch went to the model
    model_s: float = 0.0  # its batch's time in the model (tokenizing included)
    batch: int = 0  # inputs in its batch
    tokens: list[int] = field(default_factory=list)  # per input


class Batcher:
    def __init__(self, run: Callable[[list[Any]], tuple[np.ndarray, list[int]]], *, max_batch: int,
                 max_wait_ms: float, max_queue: int, max_delay_s: float = math.inf,
                 metrics: Any = None):
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_items = 0
        self.rate = 0.0  # inputs per second the model has sustained (EWMA), for Retry-After
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="leanify-model")
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, items: list[Any]) -> Job:
        """Queue one request's inputs; the returned job's future gets one row per input."""
        if self._closing:
            raise QueueFull(1)
        queued = self.queued_items + len(items)
        if queued > self.max_queue or (self.rate > 0 and queued / self.rate > self.max_delay_s):
            raise QueueFull(self.retry_after())
        job = Job(items, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.queued_items += len(items)
        self._depth()
        self._wakeup.set()
        return job

    def retry_after(self) -> int:
        """Whole seconds until the queue has drained at the rate measured so far (at least 1)."""
        if self.rate <= 0:
            return 1
        return max(1, math.ceil(self.queued_items / self.rate))

    async def close(self) -> None:
        """Finish every queued job, then stop (graceful shutdown)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued_items)

    async def _next_batch(self) -> list[Job]:
        while not self.queue:
            if self._closing:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self.queue[0].enqueued + self.max_wait_s
        while self.queued_items < self.max_batch and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                break
        jobs, count = [], 0
        while self.queue:
            job = self.queue[0]
            if jobs and count + len(job.items) > self.max_batch:
                break
            self.queue.popleft()
            self.queued_items -= len(job.items)
            if job.future.done():  # timed out or cancelled while queued: skip its work
                continue
            jobs.append(job)
            count += len(job.items)
        self._depth()
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            if not jobs:
                if self._closing and not self.queue:
                    return
                continue
            items = [item for job in jobs for item in job.items]
            start = time.monotonic()
            for job in jobs:
                job.started = start
            try:
                rows, tokens = await loop.run_in_executor(self.executor, self.run, items)
            except Exception as exc:  # the model failed: every request of the batch gets it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            took = time.monotonic() - start
            self.rate = len(items) / took if self.rate <= 0 else \
                0.8 * self.rate + 0.2 * len(items) / max(took, 1e-6)
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(items))
                self.metrics.inference.observe(took)
            offset = 0
            for job in jobs:
                n = len(job.items)
                job.model_s, job.batch = took, len(items)
                job.tokens = tokens[offset:offset + n]
                if not job.future.done():
                    job.future.set_result(rows[offset:offset + n])
                offset += n
