"""Ctrl-C and kill -9 during `optimize`: no process of leanify's is left behind, Ctrl-C says
how to resume, and the resumed run reuses what finished. The run is the loop's fakes, busy
in real child processes (tests/search/busy_run.py)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_loop
from test_loop import SCRIPT, deps_for

from leanify.search import optimize as search

source, data = test_loop.source, test_loop.data  # the loop's fixtures
BUSY = Path(__file__).with_name("busy_run.py")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its reaping is pending


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def model(tmp_path, source) -> Path:
    """The loop's one-node model in a folder named like the scripted baseline, and a sample
    for the measuring workers (the fake candidates have no tokenizer beside them)."""
    import numpy as np

    folder = tmp_path / "source"
    shutil.copytree(source.path.parent, folder)
    np.savez(tmp_path / "sample.npz", input_ids=np.full((1, 16), 1000, dtype=np.int64))
    return folder


def start_busy_run(model, data, out: Path) -> tuple[subprocess.Popen, list[str], set[int]]:
    """Start the run; return it once its measuring workers are busy, with their pids."""
    args = [str(model), "--task", "embedding-similarity", "--data", str(data),
            "--out", str(out), "--batch-size", "1", "--seq-len", "16", "--threads", "1",
            "--calibration-size", "4", "--rounds", "1", "--quiet",
            "--sample", str(model.parent / "sample.npz")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(search.__file__).parents[2]), str(BUSY.parent)])}
    # run with -c, not as a script: spawned children then do not import the script again
    proc = subprocess.Popen([sys.executable, "-c", "import busy_run; busy_run.main()", *args],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 90
    lines = []
    while time.time() < deadline and proc.poll() is None:
        if not select.select([proc.stderr], [], [], 0.5)[0]:
            continue
        lines.append(proc.stderr.readline())
        if lines[-1].strip() == "measuring":
            time.sleep(1.0)  # the baseline's worker is now in its endless warm-up
            kids = descendants(proc.pid)
            assert sum("leanify.measure.worker" in cmdline(p) for p in kids) == 2
            return proc, args, kids
    proc.kill()
    pytest.fail(f"the run never reached its measurement: {''.join(lines)[-2000:]}")


def gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if alive(p)}


def test_ctrl_c_kills_the_workers_and_says_how_to_resume(tmp_path, model, data):
    proc, _args, kids = start_busy_run(model, data, tmp_path / "run")
    assert any("resource_tracker" in cmdline(p) for p in kids)  # the tracker is watched too
    proc.send_signal(signal.SIGINT)
    started = time.time()
    _out, err = proc.communicate(timeout=30)
    assert time.time() - started < 8  # the workers were killed, not waited for
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "--resume" in err and "optimize" in err
    assert "Traceback" not in err
    assert not gone_within(kids, 5.0), [cmdline(p) for p in kids if alive(p)]


def test_kill_9_takes_the_workers_down_and_resume_reuses_the_finished_trial(
        tmp_path, model, data, monkeypatch):
    from leanify import cli

    SCRIPT.__init__()
    out = tmp_path / "run"
    proc, args, kids = start_busy_run(model, data, out)
    assert len(kids) >= 3  # two measuring workers and the resource tracker at least
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its children must follow
    proc.wait()
    proc.stderr.close()
    assert not gone_within(kids, 5.0), [cmdline(p) for p in kids if alive(p)]
    with sqlite3.connect(out / "trials.db") as con:
        assert [r[0] for r in con.execute("SELECT name FROM trials")] == ["baseline"]

    real = search.optimize
    monkeypatch.setattr(search, "optimize", lambda m, s, progress=None, deps=None:
                        real(m, s, progress, deps=deps_for(["slow"])))
    SCRIPT.metric["slow"] = 81.9
    SCRIPT.trial_speedup["slow"] = 2.0
    with pytest.raises(SystemExit) as info:  # the dead run's lock is taken over
        cli.main(["optimize", *args, "--resume"])
    assert info.value.code == 0
    assert SCRIPT.evaluations == ["slow"]  # the baseline was reused, not scored again
    assert SCRIPT.builds == ["slow"]
