"""sandbox.py's limits, each in a fresh interpreter (limits cannot be lifted once set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leanify import sandbox

SRC = str(Path(sandbox.__file__).resolve().parents[1])


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": SRC, **env})


def test_the_worker_budget_refuses_an_allocation_past_it():
    code = ("from leanify.sandbox import limit_worker; limit_worker(); import numpy\n"
            "small = numpy.ones(2**24)\n"  # 128 MB: under the budget
            "try:\n    numpy.empty(2**28)\nexcept MemoryError:\n    print('refused')\n")
    proc = python(code, LEANIFY_MEMORY_LIMIT_GB="1")
    assert proc.stdout.strip() == "refused", proc.stderr
    assert python(code, LEANIFY_MEMORY_LIMIT_GB="4").stdout.strip() == ""  # 2 GB fits


def test_writes_are_confined_to_the_scratch_folder(tmp_path):
    scratch, outside = tmp_path / "scratch", tmp_path / "outside.txt"
    scratch.mkdir()
    outside.write_text("original")
    code = (f"from leanify.sandbox import confine_writes\n"
            f"assert confine_writes({str(scratch)!r})\n"
            f"open({str(scratch / 'inside.txt')!r}, 'w').write('ok')\n"
            f"open({str(outside)!r}, 'r+').write('changed')\n")
    proc = python(code)
    if "AssertionError" in proc.stderr:
        pytest.skip("this kernel has no Landlock")
    assert "PermissionError" in proc.stderr
    assert (scratch / "inside.txt").read_text() == "ok" and outside.read_text() == "original"


def test_allocation_messages_are_recognised():
    assert sandbox.out_of_memory("RuntimeError: DefaultCPUAllocator: can't allocate memory")
    assert sandbox.out_of_memory("Fail: ... bfc_arena.cc:360 Failed to allocate memory")
    assert not sandbox.out_of_memory("ValueError: shapes (2,3) and (4,5) not aligned")
    err = sandbox.memory_error("m.onnx")
    assert "m.onnx" in err.render() and "--memory-limit-gb" in err.render()


def test_a_bad_limit_value_is_a_clear_error(monkeypatch):
    from leanify.errors import LeanifyError

    monkeypatch.setenv(sandbox.MEMORY_ENV, "lots")
    with pytest.raises(LeanifyError, match="positive number of GB"):
        sandbox.memory_limit_gb()
