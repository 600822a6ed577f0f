"""A persistent cache of model calls, so an interrupted explanation resumes without
repeating a single paid call.

One SQLite file (write-ahead log, so several processes can read and write it at once).
A row's key is the SHA-256 of a canonical JSON of everything that determines the answer:
the backend, its base URL, the model name, the endpoint, and the full request body (every
generation parameter and the exact input text). Each answer is written, committed, as
soon as it arrives: a run killed at any point leaves every answer obtained so far.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ModelError

CACHE_FILE = "calls.sqlite3"
#: Bump when the meaning of a stored answer changes; old rows are then ignored.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    from .embedded import cache_dir

    return cache_dir() / "calls"


def call_key(request: dict[str, Any]) -> str:
    """Stable key of a request: SHA-256 of its canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps({"v": CACHE_VERSION, **request}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _setup(conn: sqlite3.Connection, deadline_s: float = 60.0) -> None:
    """Switch the file to write-ahead logging and create the table.

    Switching the journal mode takes an exclusive lock, and SQLite answers "database is
    locked" at once (without waiting out the busy timeout) when several processes open a
    new cache file together. So each step is retried until ``deadline_s``.
    """
    steps = (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
        "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, answer TEXT NOT NULL, created REAL NOT NULL DEFAULT (julianday('now')))",
    )
    stop = time.monotonic() + deadline_s
    for step in steps:
        delay = 0.005
        while True:
            try:
                conn.execute(step)
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > stop:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)


class CallCache:
    """Key -> JSON answer, in ``<directory>/calls.sqlite3``. Thread-safe; process-safe via
    SQLite's own locking (WAL journal, busy timeout)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.path = self.directory / CACHE_FILE
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
                _setup(conn)
            except (OSError, sqlite3.Error) as exc:
                raise ModelError(f"cannot open the call cache {self.path}: {exc} (use --cache-dir elsewhere or --no-cache)") from exc
            self._conn = conn
        return self._conn

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._connect().execute("SELECT answer FROM calls WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, answer: Any) -> None:
        blob = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            # One statement in autocommit mode: atomic, durable once it returns.
            self._connect().execute("INSERT OR REPLACE INTO calls (key, answer) VALUES (?, ?)", (key, blob))

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
