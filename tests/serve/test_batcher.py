"""The dynamic batcher with a scripted model: batch formation, waiting, admission, draining."""

import asyncio
import time

import numpy as np
import pytest

from leanify.serve.batcher import Batcher, QueueFull


def scripted(batches: list[int], delay_s: float = 0.0, fail: bool = False):
    def run(items):
        batches.append(len(items))
        if delay_s:
            time.sleep(delay_s)
        if fail:
            raise RuntimeError("model failed")
        rows = np.asarray(items, dtype=np.float32)[:, None] * 2
        return rows, [1] * len(items)

    return run


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    async def main():
        seen: list[int] = []
        b = Batcher(scripted(seen), max_batch=4, max_wait_ms=50, max_queue=100)
        b.start()
        jobs = [await b.submit([i]) for i in range(10)]
        rows = await asyncio.gather(*(j.future for j in jobs))
        await b.close()
        return seen, rows, jobs

    seen, rows, jobs = asyncio.run(main())
    assert seen == [4, 4, 2]
    assert [float(r[0, 0]) for r in rows] == [2.0 * i for i in range(10)]
    assert [j.batch for j in jobs] == [4] * 8 + [2] * 2


def test_a_lone_request_waits_at_most_max_wait():
    async def main():
        b = Batcher(scripted([]), max_batch=32, max_wait_ms=30, max_queue=100)
        b.start()
        t0 = time.perf_counter()
        job = await b.submit([1])
        await job.future
        took = time.perf_counter() - t0
        await b.close()
        return took

    took = asyncio.run(main())
    assert 0.025 <= took < 0.5  # waited for company, then went alone


def test_a_full_queue_refuses_with_retry_after():
    async def main():
        b = Batcher(scripted([]), max_batch=1, max_wait_ms=0, max_queue=3)
        await b.submit([1, 2])  # not started: nothing drains
        await b.submit([3])
        with pytest.raises(QueueFull) as info:
            await b.submit([4])
        return info.value.retry_after_s

    assert asyncio.run(main()) >= 1


def test_queued_work_beyond_the_delay_bound_is_refused():
    async def main():
        seen: list[int] = []
        b = Batcher(scripted(seen, delay_s=0.1), max_batch=1, max_wait_ms=0, max_queue=100,
                    max_delay_s=0.25)
        b.start()
        first = await b.submit([0])
        await first.future  # the model's rate is now known: about 10 inputs/s
        accepted, refused = 0, 0
        for i in range(10):
            try:
                await b.submit([i])
                accepted += 1
            except QueueFull:
                refused += 1
        await b.close()
        return accepted, refused

    accepted, refused = asyncio.run(main())
    assert 1 <= accepted <= 4 and refused >= 6


def test_a_request_that_gave_up_is_not_run():
    async def main():
        seen: list[int] = []
        b = Batcher(scripted(seen), max_batch=8, max_wait_ms=20, max_queue=100)
        gone = await b.submit([1])
        kept = await b.submit([2])
        gone.future.cancel()  # its client timed out while it was queued
        b.start()
        rows = await kept.future
        await b.close()
        return seen, rows

    seen, rows = asyncio.run(main())
    assert seen == [1] and float(rows[0, 0]) == 4.0


def test_close_answers_everything_queued_and_a_model_error_reaches_each_request():
    async def main():
        b = Batcher(scripted([], delay_s=0.01), max_batch=2, max_wait_ms=1, max_queue=100)
        b.start()
        jobs = [await b.submit([i]) for i in range(7)]
        await b.close()
        drained = all(j.future.done() and not j.future.exception() for j in jobs)
        bad = Batcher(scripted([], fail=True), max_batch=4, max_wait_ms=1, max_queue=100)
        bad.start()
        failing = [await bad.submit([i]) for i in range(3)]
        errors = await asyncio.gather(*(j.future for j in failing), return_exceptions=True)
        await bad.close()
        return drained, errors

    drained, errors = asyncio.run(main())
    assert drained
    assert all(isinstance(e, RuntimeError) for e in errors)


def test_the_batch_cost_credits_big_batches_with_their_throughput():
    from leanify.serve.batcher import BatchCost

    cost = BatchCost()
    assert cost.seconds(4) == 0.0  # nothing seen: no basis to refuse on
    for n in (1, 32, 2, 8, 1, 16):  # 5 ms fixed + 1 ms an input
        cost.observe(n, 0.005 + 0.001 * n)
    assert cost.seconds(1) == pytest.approx(0.006)
    assert cost.seconds(32) == pytest.approx(0.037)
    # 40 queued inputs run as 32 + 8: 37 + 13 ms, not 40 x 6 ms one at a time
    assert cost.drain(40, 32) == pytest.approx(0.050)
    alone = BatchCost()
    alone.observe(4, 0.02)  # one size seen: in proportion
    assert alone.seconds(2) == pytest.approx(0.01)
