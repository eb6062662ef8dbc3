"""The trial record: a SQLite file in the run folder, written as each trial finishes.

A run stopped by Ctrl-C or `kill -9` resumes from it: finished trials are read back, never
re-run (only those that failed for a reason that can go away are tried again: marked
`retryable`, e.g. a full disk, a killed measuring process, an internal error), and re-judged
from their stored measurements. SQLite commits are atomic, so a kill mid-write leaves the
previous state intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from leanify.errors import LeanifyError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL
);
"""


FILES = ("trials.db", "trials.db-wal", "trials.db-shm", "trials.db-journal")


class TrialStore:
    """Every failure of the record is told as the user's to fix: a corrupt file or row, a
    folder that cannot be written, a full disk (exit 2 naming the file, never a crash)."""

    def __init__(self, path: Path):
        self.path = path
        with self._errors():
            self.db = sqlite3.connect(path)
            self.db.executescript(_SCHEMA)
            self.db.execute("PRAGMA journal_mode=WAL")

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._explain(exc) from exc
        except (ValueError, TypeError) as exc:  # a row whose JSON does not parse
            where = f"its row '{key}'" if key else "a row"
            raise LeanifyError(f"is not a readable trial record ({where} is damaged: {exc}).",
                               path=self.path, fix=_START_OVER) from exc

    def _explain(self, exc: sqlite3.DatabaseError) -> LeanifyError:
        text = str(exc).lower()
        folder = self.path.parent
        if "full" in text or getattr(exc, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
            return LeanifyError("the disk is full.", path=folder,
                                fix="Free some space, then continue with --resume.")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return LeanifyError(f"cannot write to {folder} (the trial record {self.path.name} "
                                "cannot be written).", path=folder,
                                fix="Make the folder and its files writable (chmod u+w), or "
                                    "choose another --out.")
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            return LeanifyError("is being written by another process.", path=self.path,
                                fix="Wait for the other leanify run to finish.")
        return LeanifyError(f"is not a readable trial record ({exc}).", path=self.path,
                            fix=_START_OVER)

    def get_run(self) -> dict[str, Any]:
        with self._errors("run"):
            return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM run")}

    def set_run(self, values: dict[str, Any]) -> None:
        with self._errors(), self.db:
            self.db.executemany("INSERT OR REPLACE INTO run VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def get(self, key: str) -> dict[str, Any] | None:
        with self._errors(key):
            row = self.db.execute("SELECT result FROM trials WHERE key = ?", (key,)).fetchone()
            value = json.loads(row[0]) if row else None
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"expected an object, got {type(value).__name__}")
            return value

    def put(self, key: str, name: str, position: int, status: str, result: dict[str, Any],
            started: float) -> None:
        with self._errors(key), self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, name, position, status, json.dumps(result), started, time.time()),
            )

    def count(self) -> int:
        """How many trials are recorded (0: the run stopped before its first)."""
        with self._errors():
            return int(self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0])

    def all(self) -> list[dict[str, Any]]:
        with self._errors():
            rows = self.db.execute("SELECT result FROM trials ORDER BY position")
            return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        self.db.close()


def remove(folder: Path) -> None:
    """Delete a run folder's trial record (with SQLite's side files)."""
    for name in FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


_START_OVER = ("Remove it to start over (its finished trials are lost), or choose another "
               "--out.")
