"""The result of an explanation: a plain dataclass with versioned JSON (de)serialization.

The JSON form is plain data (strings, numbers, lists, dicts): no class paths, no pickles.
``SCHEMA`` and ``VERSION`` identify it; :meth:`Explanation.from_dict` refuses anything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._io import check_record, parse_json
from .errors import SchemaError
from .units import Unit

SCHEMA = "gsmile.explanation"
VERSION = 1

#: Below this weighted R² the surrogate does not describe the model well enough to trust.
FIDELITY_THRESHOLD = 0.7
#: Below this held-out R² the surrogate does not predict samples it was not fitted on.
HELD_OUT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Attribution:
    """One unit with its attribution, as returned by :meth:`Explanation.top`."""

    index: int
    text: str
    start: int
    end: int
    coefficient: float
    score: float


def normalized_scores(coefficients: np.ndarray) -> np.ndarray:
    """|coef| / max |coef|, in [0, 1]; all zeros when every coefficient is zero."""
    magnitude = np.abs(np.asarray(coefficients, dtype=float))
    top = magnitude.max(initial=0.0)
    return magnitude / top if top > 0 else np.zeros_like(magnitude)


@dataclass
class Explanation:
    """Per-unit importances of an input for a model's output.

    ``coefficients`` are signed: positive means the unit's presence keeps the output
    where it is (removing it moves the output away), negative the opposite.
    ``scores`` are ``|coefficients|`` scaled to [0, 1].
    ``n_samples``: masks drawn, repeats included; ``n_unique``: distinct inputs the model was
    run on, the original included (the model evaluations ``max_evals`` bounds).
    ``fidelity_r2``: the surrogate's weighted R² on the samples it was fitted on;
    ``held_out_r2``: its weighted R² on samples it was not fitted on (cross-validated, see
    :meth:`gsmile.methods.SurrogateMethod.held_out_r2`; None where it cannot be computed).
    :attr:`reliable` needs both, and more effective samples than the surrogate has parameters
    (:attr:`reliability_issues` says what failed).
    """

    prompt: str
    response: str | None
    units: list[Unit]
    coefficients: np.ndarray
    intercept: float
    fidelity_r2: float
    method: str = "gsmile"
    target: str = "wasserstein"
    unit_type: str = "word"
    n_samples: int = 0
    n_unique: int = 0
    sigma: float | None = None
    effective_sample_size: float | None = None
    model_id: str = ""
    random_state: int | None = None
    explained: str = "prompt"
    context: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    response_tokens: list[str] | None = None
    token_coefficients: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    held_out_r2: float | None = None
    n_parameters: int | None = None  # the surrogate's parameters: units it may use + intercept (None: units + 1)
    #: coarse-to-fine explanations (``Explainer(refine=...)``): every level, coarse first, as
    #: plain dicts (see :func:`level_record`); the last level is this explanation's own units
    #: and coefficients. None for a one-level explanation.
    levels: list[dict[str, Any]] | None = None
    #: text-to-image explanations: the images, as plain data (see :func:`image_record`);
    #: None for text models.
    images: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.coefficients = np.asarray(self.coefficients, dtype=float)
        if self.coefficients.shape != (len(self.units),):
            raise SchemaError(
                f"{len(self.units)} units but {self.coefficients.shape} coefficients"
            )
        if self.token_coefficients is not None:
            self.token_coefficients = np.asarray(self.token_coefficients, dtype=float)

    # ------------------------------------------------------------------ views
    @property
    def scores(self) -> np.ndarray:
        """Normalized importance in [0, 1] per unit, in prompt order."""
        return normalized_scores(self.coefficients)

    @property
    def reliability_issues(self) -> list[str]:
        """Why the scores should not be trusted (empty when nothing says so): a fidelity R²
        below :data:`FIDELITY_THRESHOLD` (or undefined), a held-out R² below
        :data:`HELD_OUT_THRESHOLD`, or fewer effective samples than the surrogate's
        parameters (``n_parameters``: one per unit it may use and the intercept; the fit can
        then pass through every sample whatever the model does, so its R² says nothing)."""
        if self.params.get("white_box"):  # no surrogate: the method's own check (see gsmile.methods.whitebox)
            return list(self.extras.get("white_box_issues") or [])
        issues = []
        r2 = float(self.fidelity_r2)
        if not math.isfinite(r2):
            issues.append("the model's output did not change when units were removed, so fidelity R² is undefined")
        elif r2 < FIDELITY_THRESHOLD:
            issues.append(f"surrogate fidelity R² {r2:.2f} is below {FIDELITY_THRESHOLD}")
        if self.held_out_r2 is not None and self.held_out_r2 < HELD_OUT_THRESHOLD:
            issues.append(f"held-out R² {self.held_out_r2:.2f} is below {HELD_OUT_THRESHOLD}: the surrogate does not "
                          f"predict samples it was not fitted on")
        ess = self.effective_sample_size
        n_params = self.n_parameters if self.n_parameters is not None else len(self.units) + 1
        if ess is not None and math.isfinite(ess) and ess < n_params:
            issues.append(f"effective sample size {ess:.1f} is below the {n_params} parameters of the surrogate "
                          f"({n_params - 1} units and the intercept): the fit can match any output")
        return issues

    @property
    def insights(self) -> str:
        """A short plain-language reading of the numbers: the units that dominate, the ones the
        model largely ignores, and a recommendation where one follows (none when the
        explanation is unreliable; see :mod:`gsmile.insights`)."""
        from .insights import insights

        return insights(self)

    @property
    def reliable(self) -> bool:
        """Whether nothing in :attr:`reliability_issues` speaks against the scores."""
        return not self.reliability_issues

    @property
    def text(self) -> str:
        """The text the units index into (the context when the context is explained)."""
        return self.context if self.explained == "context" and self.context is not None else self.prompt

    def attributions(self) -> list[Attribution]:
        """Every unit with its coefficient and score, in input order."""
        scores = self.scores
        return [
            Attribution(i, u.text, u.start, u.end, float(c), float(s))
            for i, (u, c, s) in enumerate(zip(self.units, self.coefficients, scores))
        ]

    def top(self, k: int = 3) -> list[Attribution]:
        """The ``k`` units with the highest score (ties keep input order)."""
        ranked = sorted(self.attributions(), key=lambda a: (-a.score, a.index))
        return ranked[: max(int(k), 0)]

    def hierarchy(self) -> list[tuple[Attribution, list[Attribution]]]:
        """A coarse-to-fine explanation's levels as a tree: each coarse unit (first level, its
        score scaled within that level) with the finer units it was refined into (last
        level; empty when it was kept whole). Empty for a one-level explanation."""
        if not self.levels or len(self.levels) < 2:
            return []
        coarse, fine = self.levels[0], self.levels[-1]
        refined = set(coarse.get("refined") or [])
        tops = _level_attributions(coarse)
        children: dict[int, list[Attribution]] = {i: [] for i in refined}
        for unit, attribution in zip(fine["units"], _level_attributions(fine)):
            if unit.get("parent") in children:
                children[unit["parent"]].append(attribution)
        return [(a, children.get(a.index, [])) for a in tops]

    def _repr_html_(self) -> str:
        """Jupyter's display: the HTML report's bars, insight and images (the same renderer)."""
        from .render.html import render_html_fragment

        return render_html_fragment(self)

    # ---------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data, tagged with ``schema`` and ``version``."""
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "prompt": self.prompt,
            "context": self.context,
            "explained": self.explained,
            "response": self.response,
            "units": [{"text": u.text, "start": u.start, "end": u.end} for u in self.units],
            "coefficients": _floats(self.coefficients),
            "scores": _floats(self.scores),
            "intercept": _float(self.intercept),
            "fidelity_r2": _float(self.fidelity_r2),
            "held_out_r2": _float(self.held_out_r2),
            "n_parameters": self.n_parameters,
            "reliable": self.reliable,
            "reliability_issues": self.reliability_issues,
            "method": self.method,
            "target": self.target,
            "unit_type": self.unit_type,
            "n_samples": int(self.n_samples),
            "n_unique": int(self.n_unique),
            "sigma": _float(self.sigma),
            "effective_sample_size": _float(self.effective_sample_size),
            "model_id": self.model_id,
            "random_state": self.random_state,
            "params": _plain(self.params),
            "timings": {k: float(v) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
            "response_tokens": self.response_tokens,
            "token_coefficients": None
            if self.token_coefficients is None
            else [_floats(row) for row in self.token_coefficients],
            "extras": _plain(self.extras),
            "levels": None if self.levels is None else [_plain(level) for level in self.levels],
            "images": None if self.images is None else _plain(self.images),
            "insights": self.insights,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Explanation":
        """Rebuild an explanation from :meth:`to_dict` output; raises :class:`SchemaError`."""
        check_record(data, SCHEMA, VERSION, "explanation")
        try:
            units = [Unit(str(u["text"]), int(u["start"]), int(u["end"])) for u in data["units"]]
            token_coefficients = data.get("token_coefficients")
            return cls(
                prompt=data["prompt"],
                response=data.get("response"),
                units=units,
                coefficients=np.array(_unfloats(data["coefficients"]), dtype=float),
                intercept=_unfloat(data["intercept"]),
                fidelity_r2=_unfloat(data["fidelity_r2"]),
                held_out_r2=_optfloat(data.get("held_out_r2")),
                n_parameters=None if data.get("n_parameters") is None else int(data["n_parameters"]),
                method=data["method"],
                target=data["target"],
                unit_type=data["unit_type"],
                n_samples=int(data["n_samples"]),
                n_unique=int(data["n_unique"]),
                sigma=_optfloat(data.get("sigma")),
                effective_sample_size=_optfloat(data.get("effective_sample_size")),
                model_id=data.get("model_id", ""),
                random_state=data.get("random_state"),
                explained=data.get("explained", "prompt"),
                context=data.get("context"),
                params=dict(data.get("params") or {}),
                timings=dict(data.get("timings") or {}),
                warnings=list(data.get("warnings") or []),
                response_tokens=data.get("response_tokens"),
                token_coefficients=None
                if token_coefficients is None
                else np.array([_unfloats(r) for r in token_coefficients], dtype=float),
                extras=dict(data.get("extras") or {}),
                levels=_read_levels(data.get("levels")),  # absent in files written before levels existed
                images=_read_images(data.get("images")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed explanation: {exc!s}") from None

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        return cls.from_dict(parse_json(text))


def level_record(unit_type: str, units: list[Unit], parents: list[int | None], coefficients, *, intercept: float,
                 fidelity_r2: float, held_out_r2: float | None, n_samples: int, n_evals: int,
                 refined: list[int] | None = None) -> dict[str, Any]:
    """One level of a coarse-to-fine explanation as plain data: its units with the index of
    their parent (the coarse unit they lie in; None on the first level), coefficients and
    scores, fit quality, masks drawn (``n_samples``) and model evaluations made for this
    level (``n_evals``; inputs already scored by an earlier level are not counted again), and
    on a coarse level the indices of the units ``refined`` on the next one."""
    record = {
        "unit_type": unit_type,
        "units": [{"text": u.text, "start": u.start, "end": u.end, "parent": p} for u, p in zip(units, parents)],
        "coefficients": _floats(coefficients),
        "scores": _floats(normalized_scores(coefficients)),
        "intercept": _float(intercept),
        "fidelity_r2": _float(fidelity_r2),
        "held_out_r2": _float(held_out_r2),
        "n_samples": int(n_samples),
        "n_evals": int(n_evals),
    }
    if refined is not None:
        record["refined"] = [int(i) for i in refined]
    return record


def _level_attributions(level: dict[str, Any]) -> list[Attribution]:
    coefficients = np.array(_unfloats(level["coefficients"]), dtype=float)
    scores = normalized_scores(coefficients)
    return [Attribution(i, u["text"], int(u["start"]), int(u["end"]), float(c), float(s))
            for i, (u, c, s) in enumerate(zip(level["units"], coefficients, scores))]


def _read_levels(levels: Any) -> list[dict[str, Any]] | None:
    """The ``levels`` of a JSON explanation, checked enough that :meth:`Explanation.hierarchy`
    and the renderers can rely on them."""
    if levels is None:
        return None
    if not isinstance(levels, list):
        raise TypeError("levels must be a list")
    out = []
    for level in levels:
        units = [{"text": str(u["text"]), "start": int(u["start"]), "end": int(u["end"]),
                  "parent": None if u.get("parent") is None else int(u["parent"])} for u in level["units"]]
        if len(level["coefficients"]) != len(units):
            raise ValueError(f"a level has {len(units)} units but {len(level['coefficients'])} coefficients")
        out.append({**level, "units": units, "coefficients": [None if c is None else float(c) for c in level["coefficients"]]})
    return out


def image_record(*, seeds: list[int], distance: str, original: list[str], without: list[dict[str, Any]],
                 generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``images`` field of an image explanation: the seeds, the distance's name, the
    original prompt's images (base64 PNG, one per seed), and for the top units the prompt
    without that unit, its images and its distance from the original
    (``{"unit": index, "text": unit text, "prompt": ..., "images": [...], "distance": d}``)."""
    return {"seeds": [int(s) for s in seeds], "distance": distance, "original": list(original),
            "without": [dict(w) for w in without], "generation": generation}


def _read_images(images: Any) -> dict[str, Any] | None:
    if images is None:
        return None
    if not isinstance(images, dict) or not isinstance(images.get("original"), list) or not isinstance(images.get("without", []), list):
        raise SchemaError("malformed explanation: images must hold a list of original images and a list of images without units")
    return dict(images)


# JSON has no NaN/inf: they are written as null and read back as NaN.
def _float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(xs: Any) -> list[float | None]:
    return [_float(x) for x in np.asarray(xs, dtype=float).ravel()]


def _unfloat(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _optfloat(x: Any) -> float | None:
    return None if x is None else float(x)


def _unfloats(xs: list) -> list[float]:
    return [_unfloat(x) for x in xs]


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays nested in dicts/lists into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
