"""The timing loop itself, against a runner whose cost is known."""

import time

import numpy as np

from leanify.measure.worker import Worker


class SleepRunner:
    runtime = "fake"

    def __init__(self, ms: float):
        self.ms = ms
        self.calls = 0

    def run(self, batch):
        self.calls += 1
        time.sleep(self.ms / 1000)
        return {}


def test_measure_times_each_run_and_excludes_warmup():
    worker = Worker()
    worker.runner = SleepRunner(20.0)
    worker.batches[(1, 8)] = {"x": np.zeros((1, 8))}
    reply = worker.measure({"batch_size": 1, "seq_len": 8, "warmup_s": 0.1, "min_iters": 5,
                            "min_time_s": 0.2})
    samples = reply["samples_ms"]
    assert len(samples) >= 5
    assert reply["warmup_iters"] >= 1
    assert worker.runner.calls == len(samples) + reply["warmup_iters"]
    median = float(np.median(samples))
    assert 19.5 < median < 40  # sleep never returns early; a busy machine may add a little
    assert reply["peak_rss_mb"] > 0


def test_measure_stops_at_max_time_for_slow_models():
    worker = Worker()
    worker.runner = SleepRunner(60.0)
    worker.batches[(1, 8)] = {"x": np.zeros((1, 8))}
    start = time.perf_counter()
    reply = worker.measure({"batch_size": 1, "seq_len": 8, "warmup_s": 0, "min_iters": 1000,
                            "min_time_s": 100, "max_time_s": 0.3})
    assert time.perf_counter() - start < 3
    assert 3 <= len(reply["samples_ms"]) < 20
