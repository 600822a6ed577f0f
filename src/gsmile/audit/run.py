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
from .work import Worker, WorkSpec, failed_record

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
    return failed_record(case, "WorkerDied",
                         f"the worker died while explaining this case ({attempts} times); it may need more memory")


class Dispatch:
    """The driver's book of an executor's cases: those left (handed out in input order),
    how often a worker died under each, and those recorded. Every executor keeps one; a
    case reaches ``on_record`` once, whatever happens to the workers."""

    def __init__(self, cases: list[Case], on_record: OnRecord):
        self.total = len(cases)
        self.pending = list(reversed(cases))  # popped from the end: input order
        self.attempts: dict[str, int] = {}
        self.recorded: set[str] = set()
        self.on_record = on_record

    @property
    def done(self) -> bool:
        return len(self.recorded) >= self.total

    def next_case(self) -> Case | None:
        """The next case not recorded yet, None when none is left."""
        while self.pending:
            case = self.pending.pop()
            if case.id not in self.recorded:
                return case
        return None

    def put_back(self, case: Case) -> None:
        """A case that never reached its worker: next in line, not counted as a try."""
        self.pending.append(case)

    def record(self, record: dict[str, Any]) -> None:
        if record["id"] not in self.recorded:
            self.recorded.add(record["id"])
            self.on_record(record)

    def died_under(self, case: Case | None) -> None:
        """A worker died holding ``case``: it goes back in line, or is recorded as failed
        after :data:`MAX_ATTEMPTS` deaths."""
        if case is None or case.id in self.recorded:
            return
        tries = self.attempts[case.id] = self.attempts.get(case.id, 0) + 1
        if tries >= MAX_ATTEMPTS:
            self.record(died_record(case, tries))
        else:
            self.pending.append(case)

    def reassign(self, case: Case | None, idle: list, give: Callable[[Any], None], start: Callable[[], None]) -> None:
        """After a worker died holding ``case`` (see :meth:`died_under`): every ``idle``
        worker is given a case, and a new worker is started while cases remain."""
        self.died_under(case)
        for worker in idle:
            give(worker)
        if self.pending:
            start()


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
        book = Dispatch(cases, on_record)
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
            w.case = book.next_case()
            if w.case is None:
                return
            try:
                w.tasks.send(w.case.to_dict())
            except OSError:  # the worker is gone before it got the case: not a try of it
                book.put_back(w.case)
                w.case = None
                raise EOFError from None

        def lost(w: "_Proc") -> None:
            """``w`` died: its case back in line (or failed after MAX_ATTEMPTS), a worker
            started in its place while cases remain. A worker that died while loading the
            model is not replaced (the next would likely die the same way); the audit stops
            only when no worker is left."""
            workers.remove(w)
            w.close()
            if not w.ready:
                if not workers:
                    raise ModelError("the worker processes died while loading the model (out of memory?); "
                                     "try fewer --workers")
                return
            book.reassign(w.case, [x for x in workers if x.ready and x.case is None], give_if_alive, start)

        def give_if_alive(w: "_Proc") -> None:
            try:
                give(w)
            except EOFError:  # that one is gone too; its sentinel says so next
                pass

        for _ in range(min(self.n, len(cases))):
            start()
        try:
            while not book.done:
                ready = mp_connection.wait([w.results for w in workers] + [w.proc.sentinel for w in workers],
                                           timeout=self.poll_seconds)
                for w in list(workers):
                    if w.results in ready or w.proc.sentinel in ready:
                        self._serve(w, book.record, give, lost)
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
