"""`leanify optimize` with the loop's fake candidates (tests/search/test_loop.py), busy in
real child processes for minutes: the baseline is scored in a spawned child, and each
candidate is timed by real measuring workers whose warm-up never ends. It prints "measuring"
to stderr when the workers start timing; the signal tests interrupt or kill it then.

Run as `python -c "import busy_run; busy_run.main()" OPTIMIZE-ARGS...`.
"""

from __future__ import annotations

import sys
import time

import test_loop

from leanify import cli
from leanify.measure.bench import BenchSession
from leanify.search import optimize as search


def evaluate(artifact, dataset, settings, threads, reference=None):
    search._in_child(time.sleep, 0.1)  # a real spawned child (and multiprocessing's tracker)
    return test_loop.fake_evaluate(artifact, dataset, settings, threads, reference)


def main() -> None:
    test_loop.SCRIPT.metric["slow"] = 81.9
    search.TRIAL_TIMING = {"warmup_s": 600.0, "min_iters": 3, "min_time_s": 0.3}
    real = search.optimize

    def busy(model, settings, progress=None, deps=None):
        fakes = test_loop.deps_for(["slow"])
        fakes.evaluate, fakes.spawn = evaluate, None  # real measuring workers
        return real(model, settings, progress, deps=fakes)

    search.optimize = busy
    run_round = BenchSession.run_round

    def announced(self, *args, **kwargs):
        print("measuring", file=sys.stderr, flush=True)
        return run_round(self, *args, **kwargs)

    BenchSession.run_round = announced
    cli.main(["optimize", *sys.argv[1:]])


if __name__ == "__main__":
    main()
