"""The Ray executor: audit cases on Ray actors, one model per actor.

``RayWorkers(n, address=...)`` has the shape of every executor (:mod:`gsmile.audit.run`):
``execute(cases, spec, on_record)`` runs each case through a
:class:`~gsmile.audit.work.Worker` on one of ``n`` actors and hands its record to
``on_record`` here, in the driver, exactly once, in any order.

- Ray: if this process is already connected (``ray.init`` was called), that instance is
  used and left running (an actor it has no CPU for waits; the others do the cases);
  otherwise ``address=None`` starts a local instance (as many CPUs as this machine has
  cores, or ``n`` if more; no dashboard; workers' output kept out of the terminal) and an address
  (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``) joins a cluster; either is shut
  down (disconnected) at the end.
- Actors: ``@ray.remote(num_cpus=1)``, each loads the model once and gets one CPU thread
  for it (a WorkSpec without ``threads`` is given ``threads=1``). The spec travels pickled
  (cloudpickle: a module-level function goes by reference, so it must be importable on the
  workers; a local instance started here gives its workers this process's import path in
  PYTHONPATH). A model that cannot be loaded (or a spec that cannot be unpickled there) is a
  :class:`~gsmile.errors.ModelError` with the reason.
- Faults: the driver sends an actor one case at a time, so it always knows which case a
  dead actor held. That case goes back to the queue and a new actor is started while
  cases remain; after :data:`~gsmile.audit.run.MAX_ATTEMPTS` deaths under the same case it
  is recorded as failed (``WorkerDied``). Ray's own actor restarts and task retries are
  off, so the attempt limit is this module's alone. An actor that dies while loading the
  model is not replaced (as with local workers); when none is left the audit stops with a
  ModelError.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from typing import Any

from ..errors import GsmileError, InvalidInputError, ModelError
from .cases import Case
from .run import Dispatch, OnRecord
from .work import Worker, WorkSpec, failed_record

RAY_MISSING = "gsmile audit --ray needs the ray extra: pip install 'gsmile[ray]'"
#: Seconds to wait for a cluster's port to answer before ray.init is tried (ray.init
#: itself retries an unreachable GCS address for many minutes).
CONNECT_TIMEOUT = 5.0


class _Actor:
    """What runs in each Ray actor: a Worker, its model loaded once by :meth:`setup`."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.worker = None

    def setup(self) -> str | None:
        """Unpickle the spec and load the model: None when ready, else the reason."""
        import pickle

        try:
            self.worker = Worker(pickle.loads(self.payload)).setup()
        except Exception as exc:
            return str(exc) if isinstance(exc, GsmileError) else f"{type(exc).__name__}: {exc}"
        return None

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        return self.worker.run(case)


def import_ray():
    """The ray module, or an InvalidInputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError(RAY_MISSING, field="ray") from None
    return ray


class RayWorkers:
    """``n`` Ray actors, each with its own model (see the module's docstring)."""

    def __init__(self, n: int, *, address: str | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInputError(f"--workers must be at least 1, got {n!r}", field="workers")
        self.n = n
        self.address = address

    def execute(self, cases: list[Case], spec: WorkSpec, on_record: OnRecord) -> None:
        ray = import_ray()
        if not cases:
            return
        started = False
        if not ray.is_initialized():
            connect(ray, self.address, workers=self.n)
            started = True
        try:
            self._execute(ray, cases, spec, on_record)
        finally:
            if started:
                ray.shutdown()

    def _execute(self, ray, cases: list[Case], spec: WorkSpec, on_record: OnRecord) -> None:
        from ray import cloudpickle

        if spec.threads is None:
            spec = dataclasses.replace(spec, threads=1)  # the actor's one CPU
        payload = cloudpickle.dumps(spec)
        actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_Actor)
        book = Dispatch(cases, on_record)
        actors: dict[int, dict[str, Any]] = {}  # id -> handle, case in flight, ready
        in_flight: dict[Any, tuple[str, int]] = {}  # ObjectRef -> ("setup" | "run", actor id)
        lost_while_loading: list[str] = []
        next_id = 0

        def start() -> None:
            nonlocal next_id
            handle = actor_class.remote(payload)
            actors[next_id] = {"handle": handle, "case": None, "ready": False}
            in_flight[handle.setup.remote()] = ("setup", next_id)
            next_id += 1

        def give(aid: int) -> None:
            actor = actors[aid]
            actor["case"] = book.next_case()  # None: idle until a dead actor's case comes back
            if actor["case"] is not None:
                in_flight[actor["handle"].run.remote(actor["case"].to_dict())] = ("run", aid)

        def lost(aid: int, exc: Exception) -> None:
            """An actor died: its case back in line (or failed after MAX_ATTEMPTS), its
            place taken by a new actor while cases remain."""
            actor = actors.pop(aid)
            _kill(ray, actor["handle"])
            if not actor["ready"]:
                lost_while_loading.append(_first_line(exc))
                return  # died while loading the model: not replaced
            book.reassign(actor["case"], [i for i, a in actors.items() if a["ready"] and a["case"] is None], give, start)

        for _ in range(min(self.n, len(cases))):
            start()
        try:
            while not book.done:
                if not in_flight:
                    reason = f": {lost_while_loading[-1]}" if lost_while_loading else ""
                    raise ModelError(f"every Ray actor died before its first case{reason}")
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    kind, aid = in_flight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # raised by the actor's own code
                        if kind == "setup":
                            raise ModelError(f"a Ray actor could not load the model: {_first_line(exc.cause or exc)}") from None
                        book.record(_error_record(actors[aid]["case"], exc.cause or exc))
                        give(aid)
                        continue
                    except ray.exceptions.RayError as exc:  # the actor died (killed, out of memory, node lost)
                        lost(aid, exc)
                        continue
                    if kind == "setup":
                        if value is not None:
                            raise ModelError(f"a Ray actor could not load the model: {value}")
                        actors[aid]["ready"] = True
                    else:
                        book.record(value)
                    give(aid)
        finally:
            for actor in actors.values():
                _kill(ray, actor["handle"])


def connect(ray, address: str | None, *, workers: int = 1) -> None:
    """``ray.init``: a local instance (``address`` None) or the cluster at ``address``; a
    failure is one line (InvalidInputError for an address, ModelError for a local start)."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "ignore_reinit_error": True}
    if address is None:
        # The instance's processes inherit this environment as ray.init starts them: the
        # workers import what this process imports (a runtime_env would do the same, but
        # it makes Ray start fresh workers instead of its prestarted ones, a second more).
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(_import_path())
        try:
            ray.init(num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False, **quiet)
        except Exception as exc:
            raise ModelError(f"could not start a local Ray instance: {_first_line(exc)}") from None
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        return
    check_address(address)
    try:
        ray.init(address=address, **quiet)
    except Exception as exc:
        raise InvalidInputError(f"cannot join the Ray cluster at {address!r}: {_first_line(exc)}", field="ray") from None


def check_address(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` or ``ray://HOST:PORT`` address where nothing answers
    (``ray.init`` would retry it for many minutes); other forms ("auto") are left to Ray."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            reason = f"no answer in {CONNECT_TIMEOUT:g} s"
        else:
            reason = exc.strerror or type(exc).__name__
        raise InvalidInputError(f"cannot join the Ray cluster at {address!r}: {reason}; check the address and that the "
                                f"cluster is running (ray status)", field="ray") from None


def _import_path() -> list[str]:
    """This process's import path for a local instance's workers (they start with their own
    script's directory only): every directory on sys.path outside the Python installation and
    its site-packages, so a module-level model function imports there as it does here."""
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(path) or os.path.basename(path) in ("site-packages", "dist-packages"):
            continue
        if any(path == root or path.startswith(root + os.sep) for root in installed) or path in paths:
            continue
        paths.append(path)
    return paths


def _error_record(case: Case, exc: BaseException) -> dict[str, Any]:
    """The record of a case whose run raised in the actor (Worker.run records a case's own
    errors; this is anything else, e.g. a record Ray could not send back)."""
    message = str(exc) if isinstance(exc, GsmileError) else f"{type(exc).__name__}: {_first_line(exc)}"
    return failed_record(case, type(exc).__name__, message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kill(ray, handle) -> None:
    try:
        ray.kill(handle)
    except Exception:  # already gone, or Ray is shutting down
        pass
