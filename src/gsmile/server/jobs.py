"""Bounded execution of explanations, and jobs kept in SQLite.

:class:`JobManager` runs at most ``max_concurrent`` explanations at once in worker threads;
up to ``max_queue`` more wait; beyond that :class:`QueueFull` is raised (the API answers 503
with Retry-After). Every request, synchronous or not, goes through it, so the bound holds
for the whole service.

:class:`JobStore` keeps asynchronous jobs (request, status, result or error) in a SQLite
file. A finished job's result is written there before its status says so, so a restart
loses none (the newest ``keep`` finished jobs are kept); jobs still queued or running when the service stopped are marked failed
("interrupted") when it starts again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import error_body

log = logging.getLogger("gsmile.server")

STATUSES = ("queued", "running", "succeeded", "failed")


class QueueFull(Exception):
    """Every slot and every queue place is taken."""


@dataclass
class Job:
    job_id: str
    kind: str
    request: dict[str, Any]
    persist: bool
    status: str = "queued"
    progress: float = 0.0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    request_id: str | None = None
    future: Future | None = None

    def set_progress(self, value: float) -> None:
        self.progress = float(min(max(value, 0.0), 0.99))

    def public(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.status,
            "progress": round(self.progress, 4),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
        }


class JobStore:
    """Jobs in one SQLite file (created with its directory when missing)."""

    def __init__(self, path: str | Path, keep: int = 1000):
        self.path = Path(path)
        self.keep = keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, "
                "progress REAL NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, "
                "request TEXT NOT NULL, result TEXT, error TEXT)"
            )
            self._conn.execute(
                "UPDATE jobs SET status='failed', finished_at=?, error=? WHERE status IN ('queued', 'running')",
                (time.time(), json.dumps({"status": 503, "error": "interrupted: the service stopped before this job finished; submit it again"})),
            )

    def save(self, job: Job) -> None:
        row = (
            job.job_id, job.kind, job.status, job.progress, job.created_at, job.started_at, job.finished_at,
            json.dumps(job.request), None if job.result is None else json.dumps(job.result, allow_nan=False),
            None if job.error is None else json.dumps(job.error),
        )
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            if job.status in ("succeeded", "failed"):
                # keep the newest `keep` finished jobs
                self._conn.execute(
                    "DELETE FROM jobs WHERE status IN ('succeeded', 'failed') AND job_id NOT IN "
                    "(SELECT job_id FROM jobs WHERE status IN ('succeeded', 'failed') ORDER BY finished_at DESC LIMIT ?)",
                    (self.keep,),
                )

    def load(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT job_id, kind, status, progress, created_at, started_at, finished_at, result, error FROM jobs WHERE job_id=?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        keys = ("job_id", "kind", "status", "progress", "created_at", "started_at", "finished_at")
        out = dict(zip(keys, row[:7]))
        out["result"] = None if row[7] is None else json.loads(row[7])
        out["error"] = None if row[8] is None else json.loads(row[8])
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class JobManager:
    """Run ``fn(job)`` for submitted jobs, ``max_concurrent`` at once, ``max_queue`` waiting."""

    def __init__(self, store: JobStore, max_concurrent: int, max_queue: int):
        self.store = store
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="gsmile-job")
        self._lock = threading.Lock()
        self._running = 0
        self._queued = 0
        self._jobs: dict[str, Job] = {}

    @property
    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._running, self._queued

    def submit(self, kind: str, request: dict[str, Any], fn: Callable[[Job], dict[str, Any]], persist: bool,
               request_id: str | None = None) -> Job:
        with self._lock:
            if self._running + self._queued >= self.max_concurrent + self.max_queue:
                raise QueueFull()
            self._queued += 1
        job = Job(job_id=uuid.uuid4().hex, kind=kind, request=request, persist=persist, request_id=request_id)
        try:
            if persist:
                self.store.save(job)
                self._jobs[job.job_id] = job
            job.future = self._executor.submit(self._run, job, fn)
        except BaseException:
            with self._lock:
                self._queued -= 1
            self._jobs.pop(job.job_id, None)
            raise
        return job

    def _run(self, job: Job, fn: Callable[[Job], dict[str, Any]]) -> Job:
        with self._lock:
            self._queued -= 1
            self._running += 1
        job.status, job.started_at = "running", time.time()
        try:
            if job.persist:
                self.store.save(job)
            job.result = fn(job)
            job.progress, job.status = 1.0, "succeeded"
        except Exception as exc:  # every failure becomes the job's error, never a dead thread
            job.error = error_body(exc, job.request_id)
            job.status = "failed"
        finally:
            job.finished_at = time.time()
            with self._lock:
                self._running -= 1
            if job.persist:
                try:
                    self.store.save(job)
                except Exception:
                    log.exception("could not store job %s", job.job_id)
                    job.status, job.result = "failed", None
                    job.error = {"status": 500, "error": "internal error: the result could not be stored"}
                self._jobs.pop(job.job_id, None)
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is not None:
            return job.public()
        return self.store.load(job_id)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
