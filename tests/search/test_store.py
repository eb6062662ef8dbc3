import sqlite3

import pytest

from leanify.errors import LeanifyError
from leanify.search.store import TrialStore


def test_trials_survive_reopening(tmp_path):
    path = tmp_path / "trials.db"
    store = TrialStore(path)
    store.set_run({"identity": {"model": "x"}})
    store.put("k1", "first", 1, "done", {"name": "first", "value": 1.5}, 0.0)
    store.put("k2", "second", 2, "failed", {"name": "second"}, 0.0)
    store.close()
    again = TrialStore(path)
    assert again.get_run()["identity"] == {"model": "x"}
    assert again.get("k1")["value"] == 1.5
    assert [t["name"] for t in again.all()] == ["first", "second"]
    assert again.get("missing") is None


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "trials.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LeanifyError, match="trial record"):
        TrialStore(path)


def test_uncommitted_writes_are_not_seen(tmp_path):
    path = tmp_path / "trials.db"
    store = TrialStore(path)
    store.put("k1", "first", 1, "done", {"name": "first"}, 0.0)
    raw = sqlite3.connect(path)
    raw.execute("BEGIN")
    raw.execute("INSERT INTO trials VALUES ('k2','x',2,'done','{}',0,0)")
    # the writer dies here without committing
    raw.close()
    assert TrialStore(path).get("k2") is None


def test_a_damaged_row_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "trials.db"
    store = TrialStore(path)
    store.set_run({"identity": {"model": "x"}})
    store.put("k1", "first", 1, "done", {"name": "first"}, 0.0)
    store.db.execute("UPDATE run SET value = '{broken'")
    store.db.execute("UPDATE trials SET result = '[1, 2]'")
    store.db.commit()
    for read in (store.get_run, lambda: store.get("k1")):
        with pytest.raises(LeanifyError) as info:
            read()
        assert str(path) in info.value.render() and "Remove it" in info.value.render()


def test_a_record_that_cannot_be_written_is_a_clear_error(tmp_path):
    import os
    import subprocess

    path = tmp_path / "trials.db"
    TrialStore(path).close()
    (tmp_path / "trials.db-wal").unlink(missing_ok=True)
    if os.geteuid() == 0:  # root writes through file modes: make the file immutable
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("no way to make a file read-only for root here")
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o444)
        undo = ["chmod", "644", str(path)]
    try:
        with pytest.raises(LeanifyError) as info:
            store = TrialStore(path)
            store.put("k1", "first", 1, "done", {"name": "first"}, 0.0)
        assert f"cannot write to {tmp_path}" in info.value.render()
    finally:
        subprocess.run(undo, check=True)
