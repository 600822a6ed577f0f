"""Executors: run cases through :class:`~gsmile.audit.work.Worker` here, in local worker
processes, or on Ray (:mod:`gsmile.audit.ray_runner`), and hand each record to the driver.

Every executor has the same shape, ``execute(cases, spec, on_record)``: records come back
in any order, each case's exactly once. A worker that dies (killed, out of memory) takes
no case with it: its case is given to another worker, up to :data:`MAX_ATTEMPTS` times, and
recorded as failed after that.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import pickle
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


def _worker_main(spec: WorkSpec, tasks, results) -> None:  # pragma: no cover - runs in a child process
    """A worker process: load the model once, then explain the cases sent to it. It talks
    to the driver through its own two pipes, sending synchronously: a worker that dies can
    leave at most its own pipe cut, never a lock or a message another worker needs."""
    try:
        worker = Worker(spec).setup()
    except Exception as exc:
        results.send(("setup-failed", str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"))
        return
    results.send(("ready", None))
    while True:
        try:
            item = tasks.recv()
        except EOFError:  # the driver is gone
            return
        if item is None:
            return
        results.send(("done", worker.run(item)))


class LocalWorkers:
    """``n`` worker processes on this machine, each with its own model. The driver sends a
    worker one case at a time, so it always knows which case a dead worker held."""

    def __init__(self, n: int, *, poll_seconds: float = 1.0):
        if n < 1:
            raise InvalidInputError(f"--workers must be at least 1, got {n}", field="workers")
        self.n = n
        self.poll_seconds = poll_seconds

    def execute(self, cases: list[Case], spec: WorkSpec, on_record: OnRecord) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no model, threads or locks inherited
        pending = list(reversed(cases))  # popped from the end: input order
        attempts: dict[str, int] = {}
        recorded: set[str] = set()
        workers: list[_Proc] = []

        def start() -> None:
            task_recv, task_send = ctx.Pipe(duplex=False)
            result_recv, result_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(spec, task_recv, result_send), daemon=True)
            proc.start()
            task_recv.close()
            result_send.close()
            workers.append(_Proc(proc, task_send, result_recv))

        def give(w: "_Proc") -> None:
            w.case = None
            while pending:
                case = pending.pop()
                if case.id not in recorded:
                    try:
                        w.tasks.send(case.to_dict())
                    except OSError:  # the worker is gone before it got the case: not a try of it
                        pending.append(case)
                        raise EOFError from None
                    w.case = case
                    return

        def record(rec: dict) -> None:
            if rec["id"] not in recorded:  # a case is written once, whatever happens to workers
                recorded.add(rec["id"])
                on_record(rec)

        def lost(w: "_Proc") -> None:
            """``w`` died: hand its case back (or record it as failed after MAX_ATTEMPTS)
            and start a worker in its place while cases remain. A worker that died while
            loading the model is not replaced (the next would likely die the same way); the
            audit stops only when no worker is left."""
            workers.remove(w)
            w.close()
            if not w.ready:
                if not workers:
                    raise ModelError("the worker processes died while loading the model (out of memory?); "
                                     "try fewer --workers")
                return
            case = w.case
            if case is not None and case.id not in recorded:
                attempts[case.id] = attempts.get(case.id, 0) + 1
                if attempts[case.id] >= MAX_ATTEMPTS:
                    record(died_record(case, attempts[case.id]))
                else:
                    pending.append(case)
            for idle in [x for x in workers if x.ready and x.case is None]:
                if pending:
                    try:
                        give(idle)
                    except EOFError:  # that one is gone too; its sentinel says so next
                        pass
            if pending:
                start()

        for _ in range(min(self.n, len(cases))):
            start()
        try:
            while len(recorded) < len(cases):
                ready = mp_connection.wait([w.results for w in workers] + [w.proc.sentinel for w in workers],
                                           timeout=self.poll_seconds)
                for w in list(workers):
                    if w.results in ready or w.proc.sentinel in ready:
                        self._serve(w, record, give, lost)
                if not workers:
                    raise ModelError("every worker process died")
        finally:
            for w in workers:
                w.stop()

    @staticmethod
    def _serve(w: "_Proc", record, give, lost) -> None:
        """Read what worker ``w`` sent; a closed or cut pipe means it died."""
        try:
            while w.results.poll():
                kind, payload = w.results.recv()
                if kind == "setup-failed":
                    raise ModelError(f"a worker could not load the model: {payload}")
                if kind == "done":
                    record(payload)
                w.ready = True
                give(w)
        except (EOFError, OSError, pickle.UnpicklingError):
            lost(w)
            return
        if not w.proc.is_alive():
            lost(w)


class _Proc:
    """A worker process, its two pipes and the case it holds."""

    def __init__(self, proc, tasks, results):
        self.proc, self.tasks, self.results = proc, tasks, results
        self.case: Case | None = None
        self.ready = False

    def close(self) -> None:
        for conn in (self.tasks, self.results):
            conn.close()

    def stop(self) -> None:
        try:
            self.tasks.send(None)
        except OSError:
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.close()
