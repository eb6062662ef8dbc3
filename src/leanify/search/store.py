"""The trial record: a SQLite file in the run folder, written as each trial finishes.

A run stopped by Ctrl-C or `kill -9` resumes from it: finished trials are read back, never
re-run (only those that failed on an internal error are tried again), and re-judged from their
stored measurements. SQLite commits are atomic, so a kill mid-write leaves the previous state
intact.
"""

from __future__ import annotations

import json
import sqlite3
import time
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


class TrialStore:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.db = sqlite3.connect(path)
            self.db.executescript(_SCHEMA)
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise LeanifyError(f"is not a readable trial record ({exc}).", path=path,
                               fix="Remove it to start over, or choose another --out.") from exc

    def get_run(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM run")}

    def set_run(self, values: dict[str, Any]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO run VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT result FROM trials WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, name: str, position: int, status: str, result: dict[str, Any],
            started: float) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, name, position, status, json.dumps(result), started, time.time()),
            )

    def all(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT result FROM trials ORDER BY position")
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        self.db.close()
