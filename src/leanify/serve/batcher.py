"""Dynamic batching behind a bounded queue.

Requests wait in a queue of at most `max_queue` inputs, and are admitted only while the work
ahead of them (the rest of the batch in the model, the queue, their own inputs) takes at most
`max_delay_s` at the speed the model has shown (`BatchCost`: a batch's fixed cost plus a
cost per input, so a queue that will run in big batches is credited with their throughput).
An admitted request is answered in about that time; beyond either bound the batcher refuses
at once (`QueueFull`, a 429 with Retry-After) instead of piling up requests that would miss
their budget or time out.

The batch loop takes what is queued when the model is free: up to `max_batch` inputs (fewer
where a batch would take over half the delay budget), waiting at most `max_wait_ms` after the
oldest one for more to arrive (0 by default: what queued while the model was busy is the
batch), so a lone request runs at once and a burst runs in full batches. Inference runs on
one thread of its own, never on the event loop: the server keeps accepting, refusing and
answering health checks meanwhile.
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


class BatchCost:
    """Seconds a batch of n inputs takes, t(n) = fixed + per_input * n, fitted to the batches
    seen by exponentially weighted least squares (recent batches count most)."""

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self.w = self.n = self.nn = self.t = self.nt = 0.0

    def observe(self, n: int, seconds: float) -> None:
        d = self.decay
        self.w, self.n, self.nn = d * self.w + 1, d * self.n + n, d * self.nn + n * n
        self.t, self.nt = d * self.t + seconds, d * self.nt + n * seconds

    def seconds(self, n: int) -> float:
        """The fitted time of a batch of n (0 before any batch was seen)."""
        if self.w <= 0 or n <= 0:
            return 0.0
        mean_n, mean_t = self.n / self.w, self.t / self.w
        spread = self.nn / self.w - mean_n * mean_n
        per = (self.nt / self.w - mean_n * mean_t) / spread if spread > 1e-9 else 0.0
        if per <= 0:  # one batch size seen so far (or noise): its cost, in proportion
            per = mean_t / mean_n
        fixed = max(mean_t - per * mean_n, 0.0)
        return fixed + per * n

    def drain(self, items: int, max_batch: int) -> float:
        """Seconds to run `items` queued inputs in batches of at most max_batch."""
        full, rest = divmod(items, max_batch)
        return full * self.seconds(max_batch) + self.seconds(rest)


class Batcher:
    def __init__(self, run: Callable[[list[Any]], tuple[np.ndarray, list[int]]], *, max_batch: int,
                 max_wait_ms: float, max_queue: int, max_delay_s: float = math.inf,
                 metrics: Any = None, cost: BatchCost | None = None):
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_items = 0
        self.running_items = 0  # inputs of the batch in the model
        self.running_since = 0.0
        self.cost = cost or BatchCost()  # seeded from the warm-up runs, refitted as it serves
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
        if queued > self.max_queue or self.ahead_s(queued) > self.max_delay_s:
            raise QueueFull(self.retry_after())
        job = Job(items, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.queued_items += len(items)
        self._depth()
        self._wakeup.set()
        return job

    def batch_cap(self) -> int:
        """Inputs per batch: max_batch, or fewer where a batch would take over half the delay
        budget, so that a request waits at most for the batch in the model, then runs in its
        own, within the budget."""
        cap = self.max_batch
        while cap > 1 and self.cost.seconds(cap) > self.max_delay_s / 2:
            cap -= 1
        return cap

    def ahead_s(self, queued: int) -> float:
        """Seconds until `queued` inputs are answered: the rest of the running batch, then the
        queue in batches of batch_cap()."""
        running = 0.0
        if self.running_items:
            running = max(self.cost.seconds(self.running_items)
                          - (time.monotonic() - self.running_since), 0.0)
        return running + self.cost.drain(queued, self.batch_cap())

    def retry_after(self) -> int:
        """Whole seconds until the queue has drained at the speed seen so far (at least 1)."""
        return max(1, math.ceil(self.ahead_s(self.queued_items)))

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
        jobs, count, cap = [], 0, self.batch_cap()
        while self.queue:
            job = self.queue[0]
            if jobs and count + len(job.items) > cap:
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
            self.running_items, self.running_since = len(items), start
            try:
                rows, tokens = await loop.run_in_executor(self.executor, self.run, items)
            except Exception as exc:  # the model failed: every request of the batch gets it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self.running_items = 0
            took = time.monotonic() - start
            self.cost.observe(len(items), took)
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
