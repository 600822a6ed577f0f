"""One audit case explained: what every executor (this process, local worker processes,
Ray actors) runs. A :class:`Worker` loads the model once and holds nothing from one case
to the next, so cases may run in any order, anywhere, and give the same records."""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GsmileError, InvalidInputError
from .cases import Case, Variant

#: Version of the records written to explanations.jsonl.
RECORD_SCHEMA = "gsmile.audit.case"
RECORD_VERSION = 1


@dataclass(frozen=True)
class WorkSpec:
    """What a worker needs to build its model and explainer: plain, picklable data.

    model: what ``Explainer(model=...)`` accepts; a callable must be importable by name
        (a module-level function) to reach worker processes or Ray actors.
    model_options: options of an ``openai:NAME`` model (base_url, concurrency...) or a local
        model's device and dtype (:func:`~gsmile.backends.resolve_model`'s keywords).
    options: the Explainer's options, the same for every case.
    threads: CPU threads per worker for the model (None: leave as is).
    """

    model: Any = None
    model_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None


def case_record(case_id: str, line: int, *, group: str | None = None, metadata: dict[str, Any] | None = None,
                error: tuple[str, str] | None = None) -> dict[str, Any]:
    """A case's record with no explanation yet: ``ok``, or ``failed`` with ``error`` as
    (type, message). Every record in explanations.jsonl starts from this one."""
    return {"schema": RECORD_SCHEMA, "version": RECORD_VERSION, "id": case_id, "line": line,
            "status": "ok" if error is None else "failed", "group": group, "metadata": metadata or {}, "seconds": 0.0,
            "variants": [], "shifts": None, "error": None if error is None else {"type": error[0], "message": error[1]}}


def failed_record(case: Case, error_type: str, message: str) -> dict[str, Any]:
    """The record of ``case`` that failed with ``error_type`` and ``message``."""
    return case_record(case.id, case.line, group=case.group, metadata=case.metadata, error=(error_type, message))


class Worker:
    """Explains cases with one model, loaded on first use."""

    def __init__(self, spec: WorkSpec):
        self.spec = spec
        self._explainer = None

    def setup(self) -> "Worker":
        """Load the model and check the options (raises what a wrong model or option raises)."""
        if self._explainer is None:
            from ..backends import Loadable, resolve_model
            from ..explainer import Explainer

            limit_threads(self.spec.threads)
            backend = resolve_model(self.spec.model, **self.spec.model_options)
            if isinstance(backend, Loadable):
                backend.load()
            explainer = Explainer(backend, **{**self.spec.options, "progress": False})
            explainer.validate()
            limit_threads(self.spec.threads)  # torch is imported by now
            self._explainer = explainer
        return self

    def run(self, case: Case | dict) -> dict[str, Any]:
        """The record of ``case``: its explanations and shifts, or its error. A mistake in the
        case or a model failure is recorded, not raised."""
        if isinstance(case, dict):
            case = Case.from_dict(case)
        tic = time.perf_counter()
        record = case_record(case.id, case.line, group=case.group, metadata=case.metadata)
        try:
            self.setup()
            from ..explainer import GsmileWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GsmileWarning)  # each explanation keeps its own warnings
                explanations = [self._explainer.explain(v.prompt, case.response, context=case.context) for v in case.variants]
            record["variants"] = [variant_record(v, e) for v, e in zip(case.variants, explanations)]
            if len(explanations) > 1:
                record["shifts"] = self._shifts(case.variants, explanations)
        except Exception as exc:  # recorded; the audit goes on with the next case
            message = str(exc) if isinstance(exc, GsmileError) else f"{type(exc).__name__}: {exc}"
            record = failed_record(case, type(exc).__name__, message)
        record["seconds"] = time.perf_counter() - tic
        return record

    def _shifts(self, variants: tuple[Variant, ...], explanations) -> dict[str, Any]:
        """How far the output moves between every two variants: each variant's input scored
        with the other's scorer (its target and response), both directions averaged."""
        from ..inputs import ModelInput
        from ..scoring import explanation_scorer

        model = self._explainer.model
        inputs = [ModelInput.of(e).original for e in explanations]
        k = len(inputs)
        moved = np.zeros((k, k))
        for i, exp in enumerate(explanations):
            values = explanation_scorer(exp, model).values(inputs)
            moved[i] = np.abs(values - values[i])
        pairs, between, within = [], [], []
        for a in range(k):
            for b in range(a + 1, k):
                shift = float((moved[a, b] + moved[b, a]) / 2)
                crosses = variants[a].group != variants[b].group
                pairs.append({"a": a, "b": b, "shift": shift, "between": crosses})
                (between if crosses else within).append(shift)
        return {"pairs": pairs, "between": float(np.mean(between)) if between else None,
                "within": float(np.mean(within)) if within else None}


def variant_record(variant: Variant, exp) -> dict[str, Any]:
    """A variant's explanation and its term: the units that overlap its group-dependent slot
    values, their summed coefficient, their share of all |coefficients| and best rank (None
    when none of them has a nonzero coefficient)."""
    term = None
    if variant.spans and exp.explained == "prompt":  # a context explained: the slots are in the fixed prompt
        units = [i for i, u in enumerate(exp.units) if any(u.start < e and u.end > s for s, e in variant.spans)]
        coefficients = np.asarray(exp.coefficients, dtype=float)
        total = float(np.abs(coefficients).sum())
        rank_of = {a.index: r for r, a in enumerate(exp.top(len(exp.units)), start=1)}
        # a unit whose coefficient is zero (to rounding) drives nothing and has no rank
        drivers = [i for i in units if abs(coefficients[i]) > 1e-9 * np.abs(coefficients).max(initial=0.0)]
        term = {
            "slots": list(variant.term_slots),
            "spans": [list(s) for s in variant.spans],
            "units": units,
            "coefficient": float(coefficients[units].sum()) if units else 0.0,
            "share": float(np.abs(coefficients[units]).sum() / total) if units and total > 0 else 0.0,
            "rank": min(rank_of[i] for i in drivers) if drivers else None,
        }
    return {"group": variant.group, "values": dict(variant.values), "prompt": variant.prompt, "term": term,
            "explanation": exp.to_dict()}


def limit_threads(threads: int | None) -> None:
    """Give the model ``threads`` CPU threads (workers sharing a machine must not each take
    every core)."""
    if threads is None:
        return
    if threads < 1:
        raise InvalidInputError(f"threads must be at least 1, got {threads}", field="threads")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
