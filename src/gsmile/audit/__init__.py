"""Audit many prompts: explain every case of a JSONL or CSV file (templates expanded into
demographic or other variants), stream the results to a directory, resume where a run
stopped, and aggregate them into a report.

>>> import gsmile
>>> result = gsmile.audit("cases.jsonl", "out/", n_samples=64, workers=2)
>>> result.summary["headline"]

(``gsmile.audit(...)`` calls :func:`audit`; ``from gsmile.audit import audit`` is the same.)

The input format is in :mod:`gsmile.audit.cases`, the records in :mod:`gsmile.audit.work`,
the report in :mod:`gsmile.audit.report`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError
from .cases import BadLine, Case, read_cases
from .store import AuditStore
from .work import WorkSpec, case_record

__all__ = ["AuditResult", "audit", "write_report"]


@dataclass
class AuditResult:
    """What :func:`audit` did: cases in the input, explained now, skipped (finished by an
    earlier run), failed (now or before), and the report's summary."""

    directory: Path
    cases: int
    explained: int
    skipped: int
    failed: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def audit(input: str | os.PathLike, out: str | os.PathLike, *, model=None, model_options: dict[str, Any] | None = None,
          slots: dict[str, Any] | None = None, workers: int = 1, ray: str | bool | None = None, fresh: bool = False,
          retry_failed: bool = False, progress: bool | Callable[[dict[str, int]], None] = False,
          **options) -> AuditResult:
    """Explain every case of ``input`` and write ``out/explanations.jsonl``,
    ``out/summary.json`` and ``out/report.html``.

    model, model_options: the model, as for :class:`~gsmile.Explainer` (``model_options``
        are :func:`~gsmile.backends.resolve_model`'s: an ``openai:NAME`` model's base_url,
        concurrency..., or a local model's device and dtype). With several
        workers each loads its own; a callable must be a module-level function.
    slots: slot values for every template line without its own ``slots``.
    workers: local worker processes (1: this process).
    ray: run on Ray instead: True (or "local") starts a local Ray instance, an address
        ("auto", "ray://host:10001") joins a cluster; one model per actor, ``workers``
        actors (needs the ray extra).
    fresh: discard the results already in ``out``; without it, a directory made with other
        options is refused and one made with the same options is resumed (finished cases
        are skipped).
    retry_failed: explain again the cases that failed in an earlier run.
    progress: True prints progress on stderr; a callable gets
        ``{"done", "failed", "total"}`` after each case.
    options: every option of :class:`~gsmile.Explainer` (method, unit, n_samples, ...).
    """
    from ..explainer import Explainer

    tic = time.perf_counter()
    if "progress" in options or "model" in options:
        raise InvalidInputError("give model and progress as audit's own arguments", field="options")
    workers = _check_workers(workers)
    Explainer(None, **options).validate()  # every option checked before any file is touched
    model_options = dict(model_options or {})
    cases, bad = read_cases(input, slots=slots)
    spec = _work_spec(model, model_options, options, workers, ray)
    store = AuditStore(out)
    store.open(_settings(model, model_options, options, slots), fresh=fresh)
    finished = store.finished()
    wanted = {"failed"} if retry_failed else set()
    todo = [c for c in cases if c.id not in finished or finished[c.id] in wanted]
    bad_todo = [b for b in bad if b.id not in finished or finished[b.id] in wanted]
    counter = _Progress(len(todo) + len(bad_todo), progress)

    def on_record(record: dict[str, Any]) -> None:
        store.append(record)
        counter.update(record["status"] != "ok")

    for line in bad_todo:
        on_record(_bad_line_record(line))
    if todo and (workers > 1 or ray):
        _executor(workers, ray).execute(todo, spec, on_record)
    elif todo:
        _serial(todo, spec, on_record)
    counter.close()
    summary = write_report(store.directory)
    failed = sum(1 for status in store.finished().values() if status != "ok")
    return AuditResult(store.directory, len(cases) + len(bad), counter.done, len(cases) + len(bad) - counter.total,
                       failed, time.perf_counter() - tic, summary)


def write_report(directory: str | os.PathLike) -> dict[str, Any]:
    """Rebuild ``directory``'s summary.json and report.html from its explanations.jsonl
    (see :mod:`gsmile.audit.report`); returns the summary."""
    from . import report

    return report.write_report(Path(directory).expanduser())


def _serial(cases: list[Case], spec: WorkSpec, on_record) -> None:
    from .run import run_serial

    run_serial(cases, spec, on_record)


def _executor(workers: int, ray):
    if ray:
        from .ray_runner import RayWorkers

        return RayWorkers(workers, address=None if ray is True or ray == "local" else str(ray))
    from .run import LocalWorkers

    return LocalWorkers(workers)


def _check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers must be a whole number of at least 1, got {workers!r}", field="workers")
    return workers


def _work_spec(model, model_options: dict[str, Any], options: dict[str, Any], workers: int, ray) -> WorkSpec:
    """The workers' spec. An API model's concurrency is one limit for the whole audit: split
    evenly between the workers, so together they never have more requests in flight."""
    model_options = dict(model_options)
    if workers > 1 or ray:
        if callable(model) and not isinstance(model, str):
            import pickle

            try:
                pickle.dumps(model)
            except Exception:
                raise InvalidInputError("with several workers the model must be a name or a module-level function "
                                        "(it is sent to each worker by reference)", field="model") from None
        if isinstance(model, str) and model.startswith("openai:"):
            limit = int(model_options.get("concurrency", 4))
            if limit < workers:
                raise InvalidInputError(f"concurrency {limit} is below the {workers} workers: the limit on requests in flight "
                                        f"is shared by all workers, each needs at least one; raise --concurrency or lower "
                                        f"--workers", field="concurrency")
            model_options["concurrency"] = limit // workers
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 and not ray else None
    return WorkSpec(model=model, model_options=model_options, options=dict(options), threads=threads)


def _settings(model, model_options: dict[str, Any], options: dict[str, Any], slots) -> dict[str, Any]:
    """What must match for a directory to be resumed: the model and every option that
    changes an explanation (not workers, progress or where the cache lives)."""
    if model is None or isinstance(model, str):
        name = model or "local"
    else:
        name = getattr(model, "model_id", None) or (f"{getattr(model, '__module__', type(model).__module__)}."
                                                    f"{getattr(model, '__qualname__', type(model).__name__)}")
    # The device changes results by float rounding only, max_batch_tokens not at all: a directory
    # may be resumed with others.
    kept = {k: v for k, v in model_options.items()
            if k not in ("concurrency", "cache_dir", "use_cache", "max_retries", "timeout", "device", "max_batch_tokens")}
    shaping = {k: v for k, v in options.items() if k != "batch_size"}  # batch_size never changes results
    settings = {"model": name, "model_options": kept, "options": shaping, "slots": slots}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _bad_line_record(line: BadLine) -> dict[str, Any]:
    return case_record(line.id, line.line, error=("InvalidInputError", line.reason))


class _Progress:
    """Cases done and failed, with the rate, on stderr (or to a callable)."""

    def __init__(self, total: int, progress):
        self.total, self.done, self.failed = total, 0, 0
        self.callback = progress if callable(progress) and not isinstance(progress, bool) else None
        self.bar = None
        if progress is True and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="audit", unit="case", file=sys.stderr, dynamic_ncols=True)

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        if self.callback is not None:
            self.callback({"done": self.done, "failed": self.failed, "total": self.total})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _CallableModule(types.ModuleType):
    """This package, callable: ``gsmile.audit(...)`` is :func:`audit`."""

    def __call__(self, *args, **kwargs) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
