"""Executors: run cases through :class:`~gsmile.audit.work.Worker` here, in local worker
processes, or on Ray (:mod:`gsmile.audit.ray_runner`), and hand each record to the driver.

Every executor has the same shape, ``execute(cases, spec, on_record)``: records come back
in any order, each case's exactly once. A worker that dies (killed, out of memory) takes
no case with it: its case is given to another worker, up to :data:`MAX_ATTEMPTS` times, and
recorded as failed after that.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from typing import Any, Callable

from ..errors import InvalidInputError, ModelError
from .cases import Case
from .work import RECORD_SCHEMA, RECORD_VERSION, WorkSpec, Worker

#: Tries of one case whose worker died under it before it is recorded as failed.
MAX_ATTEMPTS = 3

OnRecord = Callable[[dict[str, Any]], None]


def run_serial(cases: list[Case], spec: WorkSpec, on_record: OnRecord) -> None:
    """Every case in this process, one after the other."""
    worker = Worker(spec).setup()
    for case in cases:
        on_record(worker.run(case))


def died_record(case: Case, attempts: int) -> dict[str, Any]:
    """The record of a case whose worker died under it ``attempts`` times."""
    return {"schema": RECORD_SCHEMA, "version": RECORD_VERSION, "id": case.id, "line": case.line, "status": "failed",
            "group": case.group, "metadata": case.metadata, "seconds": 0.0, "variants": [], "shifts": None,
            "error": {"type": "WorkerDied",
                      "message": f"the worker died while explaining this case ({attempts} times); it may need more memory"}}


def _worker_main(spec: WorkSpec, tasks, results, wid: int) -> None:  # pragma: no cover - runs in a child process
    """A worker process: load the model once, then explain the cases sent to it."""
    try:
        worker = Worker(spec).setup()
    except Exception as exc:
        results.put(("setup-failed", wid, f"{type(exc).__name__}: {exc}" if not isinstance(exc, ModelError) else str(exc)))
        return
    results.put(("ready", wid, None))
    while True:
        item = tasks.get()
        if item is None:
            return
        results.put(("done", wid, worker.run(item)))


class LocalWorkers:
    """``n`` worker processes on this machine, each with its own model. The driver sends a
    worker one case at a time, so it always knows which case a dead worker held."""

    def __init__(self, n: int, *, poll_seconds: float = 0.5):
        if n < 1:
            raise InvalidInputError(f"--workers must be at least 1, got {n}", field="workers")
        self.n = n
        self.poll_seconds = poll_seconds

    def execute(self, cases: list[Case], spec: WorkSpec, on_record: OnRecord) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no model, threads or locks inherited
        results = ctx.Queue()
        pending = list(reversed(cases))  # popped from the end: input order
        attempts: dict[str, int] = {}
        recorded: set[str] = set()
        workers: dict[int, dict] = {}
        next_id = 0

        def start() -> None:
            nonlocal next_id
            tasks = ctx.Queue()
            proc = ctx.Process(target=_worker_main, args=(spec, tasks, results, next_id), daemon=True)
            proc.start()
            workers[next_id] = {"proc": proc, "tasks": tasks, "case": None, "ready": False}
            next_id += 1

        def give(wid: int) -> None:
            w = workers[wid]
            while pending:
                case = pending.pop()
                if case.id in recorded:
                    continue
                w["case"] = case
                w["tasks"].put(case.to_dict())
                return
            w["case"] = None

        def record(rec: dict) -> None:
            if rec["id"] not in recorded:  # a case is written once, whatever happens to workers
                recorded.add(rec["id"])
                on_record(rec)

        for _ in range(min(self.n, len(cases))):
            start()
        try:
            while len(recorded) < len(cases):
                try:
                    kind, wid, payload = results.get(timeout=self.poll_seconds)
                except queue.Empty:
                    self._replace_dead(workers, pending, attempts, record, start)
                    if not workers:
                        raise ModelError("every worker process died before its first case")
                    continue
                if kind == "setup-failed":
                    raise ModelError(f"a worker could not load the model: {payload}")
                if kind == "done":
                    record(payload)
                workers[wid]["ready"] = True
                give(wid)
        finally:
            for w in workers.values():
                if w["proc"].is_alive():
                    w["tasks"].put(None)
            deadline = time.monotonic() + 5
            for w in workers.values():
                w["proc"].join(timeout=max(0.0, deadline - time.monotonic()))
                if w["proc"].is_alive():
                    w["proc"].kill()

    def _replace_dead(self, workers, pending, attempts, record, start) -> None:
        """Hand the case of each dead worker back (or record it as failed after
        MAX_ATTEMPTS) and start a worker in its place while cases remain."""
        for wid in [wid for wid, w in workers.items() if not w["proc"].is_alive()]:
            w = workers.pop(wid)
            case = w["case"]
            if case is not None:
                attempts[case.id] = attempts.get(case.id, 0) + 1
                if attempts[case.id] >= MAX_ATTEMPTS:
                    record(died_record(case, attempts[case.id]))
                else:
                    pending.append(case)
            elif not w["ready"]:
                continue  # died while loading the model: not replaced (the next poll says if none is left)
            if pending:
                start()
