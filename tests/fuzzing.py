"""Shared pieces of the fuzz tests: hypothesis settings, byte mutations, and the rule every
reader must keep (a LeanifyError or a result; never another exception, never past a memory
budget, never past a time limit, never a changed input file).
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from leanify.errors import LeanifyError

MEMORY_BUDGET = 2 << 30  # bytes of address space one reader call may add
DEADLINE_MS = 5000  # per example; the readers answer in milliseconds (the limit: 60 s)


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible (derandomized, no example database) and small enough for CI."""
    return settings(max_examples=max_examples, deadline=DEADLINE_MS, derandomize=True,
                    database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def _address_space() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def memory_cap(budget: int = MEMORY_BUDGET) -> Iterator[None]:
    """Cap the process's address space at its current size plus `budget`: a reader that
    tries to grow past it gets a MemoryError (which `outcome` counts as a failure)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + budget
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome(call: Callable[[], Any], *inputs: Path) -> Any:
    """Run one reader call under the memory cap: its result, or the LeanifyError it raised.
    Any other exception fails the test; so does a change to any of `inputs`."""
    before = {p: digest(p) for p in inputs}
    try:
        with memory_cap():
            result = call()
    except LeanifyError as exc:
        assert exc.exit_code == 2
        assert exc.path, f"the message names no file: {exc.render()}"
        result = exc
    # what --hypothesis-show-statistics reports: how often the inputs were accepted
    if currently_in_test_context():
        event("refused" if isinstance(result, LeanifyError) else "accepted")
    assert {p: digest(p) for p in inputs} == before, "an input file was changed"
    return result


# --- byte mutations ------------------------------------------------------------------------

_EDIT = st.tuples(st.sampled_from(("flip", "set", "insert", "delete", "cut", "repeat")),
                  st.integers(0, 1 << 20), st.integers(0, 255), st.integers(1, 64))
EDITS = st.lists(_EDIT, min_size=1, max_size=6)


def mutate(data: bytes, edits: list[tuple[str, int, int, int]]) -> bytes:
    """`data` with each edit applied: flip a bit, set a byte, insert bytes, delete a run,
    cut the end, or repeat a run (lengths and counts grow that way in binary formats)."""
    out = bytearray(data)
    for kind, pos, value, span in edits:
        if not out:
            out.append(value)
            continue
        i = pos % len(out)
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "set":
            out[i] = value
        elif kind == "insert":
            out[i:i] = bytes([value]) * span
        elif kind == "delete":
            del out[i:i + span]
        elif kind == "cut":
            del out[i:]
        else:
            out[i:i] = out[i:i + span] * (value % 8 + 1)
    return bytes(out)
