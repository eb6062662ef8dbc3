"""The run folder: one run at a time, retries of failures whose cause can go away, no record
left by a run that never got to its first trial, clear errors for a damaged or unwritable one.

Uses the loop's fakes (tests/search/test_loop.py): a fake pass, scripted metrics and timings.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_loop
from test_loop import SCRIPT, FakeWorker, Spawner, candidate, deps_for, settings_for

from leanify.errors import LeanifyError
from leanify.measure.bench import WorkerDied
from leanify.runlock import LOCK_NAME, RunLock
from leanify.search import optimize as search
from leanify.search.optimize import optimize

source, data = test_loop.source, test_loop.data  # the loop's fixtures


class DiskFull(OSError):
    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, f"No space left on device ({message})")


@pytest.fixture(autouse=True)
def _fresh():
    SCRIPT.__init__()
    SCRIPT.metric.update(a=81.9, b=81.9)
    SCRIPT.trial_speedup.update(a=2.0, b=1.5)
    yield


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock until it is killed."""
    code = ("import sys, time; from leanify.runlock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(Path(search.__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_or_a_resume_during_a_live_run_is_refused_with_its_pid(
        tmp_path, source, data, monkeypatch, capsys):
    from leanify import cli

    out = tmp_path / "run"
    out.mkdir()
    holder = hold_lock(out)
    try:
        for resume in (False, True):
            with pytest.raises(LeanifyError) as info:
                optimize(source, settings_for(data, out, resume=resume), deps=deps_for(["a"]))
            assert f"in use by another leanify run (pid {holder.pid})" in info.value.render()
        real = search.optimize
        monkeypatch.setattr(search, "optimize", lambda m, s, progress=None, deps=None:
                            real(m, s, progress, deps=deps_for(["a"])))
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["optimize", str(source.path), "--task", "embedding-similarity",
                      "--data", str(data), "--out", str(out), "--quiet"])
        assert exit_info.value.code == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert SCRIPT.builds == [] and not (out / "trials.db").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock went with it, and the run goes ahead
    record = optimize(source, settings_for(data, out), deps=deps_for(["a"]))
    assert record["selected"]["name"] == "a"
    assert not (out / LOCK_NAME).exists()  # released on exit


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path, source, data):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{dead.pid}\n")  # left by a run killed with kill -9
    lock = RunLock(out).acquire()
    assert lock.stale_pid == dead.pid
    assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    (out / LOCK_NAME).write_text(f"{dead.pid}\n")
    record = optimize(source, settings_for(data, out), deps=deps_for(["a"]))
    assert record["selected"]["name"] == "a"


def test_a_full_disk_or_a_killed_worker_is_retried_and_a_bad_input_is_not(
        tmp_path, source, data):
    SCRIPT.metric.update(full=81.9, killed=81.9, refused=81.9)
    SCRIPT.trial_speedup.update(full=3.0, killed=2.5, refused=2.0)
    SCRIPT.fail.update(full=DiskFull, refused=LeanifyError)
    deaths = {"killed": 1}

    class Dying(FakeWorker):
        def ask(self, request):
            if request["cmd"] == "measure" and deaths.get(self.label):
                deaths[self.label] -= 1
                raise WorkerDied(f"the measuring process for {self.label} died (exit code -9)")
            return super().ask(request)

    class DyingSpawner(Spawner):
        def __call__(self, env, label):
            worker = super().__call__(env, label)
            return Dying(worker.session, label)

    out = tmp_path / "run"
    deps = deps_for(["full", "killed", "refused", "a"])
    deps.spawn = DyingSpawner()
    first = optimize(source, settings_for(data, out), deps=deps)
    full, killed, refused = (candidate(first, n) for n in ("full", "killed", "refused"))
    assert (full["error_kind"], full["retryable"]) == ("disk-full", True)
    assert "disk was full" in full["reason"] and "No space left" in full["reason"]
    assert (killed["error_kind"], killed["retryable"]) == ("worker-died", True)
    assert (refused["error_kind"], refused["retryable"]) == ("input", False)
    assert first["selected"]["name"] == "a"

    del SCRIPT.fail["full"]  # space was freed; the killed worker is not killed again
    SCRIPT.builds.clear()
    again = optimize(source, settings_for(data, out, resume=True), deps=deps)
    assert sorted(SCRIPT.builds) == ["full", "killed"]  # not the refused one, not "a"
    assert candidate(again, "full")["status"] == "done"
    assert candidate(again, "killed")["attempts"] == 2
    assert candidate(again, "refused")["status"] == "failed"
    assert again["selected"]["name"] == "full"


def test_a_run_that_fails_before_its_first_trial_leaves_no_record(tmp_path, source, data):
    def unscorable(*_args):
        raise LeanifyError("the data cannot be scored.")

    def buggy(*_args):
        raise KeyError("a bug in scoring")

    deps = deps_for(["a"])
    deps.evaluate = unscorable
    with pytest.raises(LeanifyError, match="cannot be scored"):
        optimize(source, settings_for(data, tmp_path / "run"), deps=deps)
    assert not (tmp_path / "run").exists()  # the folder it made for nothing is gone

    deps.evaluate = buggy
    for resume in (False, True):  # the next run starts without complaint, resumed or not
        out = tmp_path / f"run-{resume}"
        with pytest.raises(KeyError) as info:
            optimize(source, settings_for(data, out), deps=deps)
        assert Path(info.value.traceback_file).is_file()  # the traceback is kept...
        assert not (out / "trials.db").exists()  # ...but no record that blocks a new run
        record = optimize(source, settings_for(data, out, resume=resume),
                          deps=deps_for(["a"]))
        assert record["selected"]["name"] == "a"


def test_a_damaged_record_is_a_clear_error_naming_the_file(tmp_path, source, data):
    out = tmp_path / "run"
    optimize(source, settings_for(data, out), deps=deps_for(["a"]))
    with sqlite3.connect(out / "trials.db") as con:
        con.execute("UPDATE trials SET result = '{\"name\": broken' WHERE name = 'baseline'")
    with pytest.raises(LeanifyError) as info:
        optimize(source, settings_for(data, out, resume=True), deps=deps_for(["a"]))
    text = info.value.render()
    assert str(out / "trials.db") in text and "damaged" in text and "Remove it" in text
    (out / "trials.db").write_bytes(b"not a database at all" * 200)
    for name in ("trials.db-wal", "trials.db-shm"):
        (out / name).unlink(missing_ok=True)
    with pytest.raises(LeanifyError, match="not a readable trial record"):
        optimize(source, settings_for(data, out, resume=True), deps=deps_for(["a"]))


def test_a_read_only_run_folder_is_a_clear_error(tmp_path, source, data):
    out = tmp_path / "run"
    optimize(source, settings_for(data, out), deps=deps_for(["a"]))
    if os.geteuid() == 0:  # root writes through file modes: make the folder immutable
        if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
            pytest.skip("no way to make a folder read-only for root here")
        undo = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        undo = ["chmod", "755", str(out)]
    try:
        started = time.time()
        with pytest.raises(LeanifyError) as info:
            optimize(source, settings_for(data, out, resume=True), deps=deps_for(["a"]))
        assert f"cannot write to {out}" in info.value.render()
        assert "writable" in info.value.render()
        assert time.time() - started < 10
    finally:
        subprocess.run(undo, check=True)


def test_an_interrupted_run_without_trials_resumes(tmp_path, source, data):
    def interrupted(*_args):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    deps = deps_for(["a"])
    deps.evaluate = interrupted
    with pytest.raises(KeyboardInterrupt):
        optimize(source, settings_for(data, out), deps=deps)
    assert (out / "trials.db").exists() and not (out / LOCK_NAME).exists()
    record = optimize(source, settings_for(data, out, resume=True), deps=deps_for(["a"]))
    assert record["selected"]["name"] == "a"
