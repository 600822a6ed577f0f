"""The shape every method shares: masks from a sampler, weights from a kernel, a surrogate fit."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import GsmileError
from ..kernels import Kernel, effective_sample_size
from ..samplers import Sampler
from ..surrogates import SparseSurrogate, Surrogate, weighted_r2

#: Folds of the held-out fidelity (:meth:`SurrogateMethod.held_out_r2`).
HELD_OUT_FOLDS = 5


@dataclass
class MethodResult:
    """What a method learned from (masks, values)."""

    coefficients: np.ndarray  # (n_units,)
    intercept: float
    fidelity_r2: float
    weights: np.ndarray  # (n_rows,)
    effective_sample_size: float
    sigma: float | None = None
    held_out_r2: float | None = None  # see SurrogateMethod.held_out_r2
    #: the surrogate's parameters: one per unit it may use (all units, or a sparse
    #: surrogate's ``selected_``) and the intercept
    n_parameters: int | None = None
    token_coefficients: np.ndarray | None = None  # (n_units, n_outputs)
    extras: dict[str, Any] = field(default_factory=dict)


class SurrogateMethod:
    """sampler + kernel + surrogate.

    The parts follow :class:`~gsmile.samplers.Sampler`, :class:`~gsmile.kernels.Kernel` and
    (what ``surrogate_factory()`` returns) :class:`~gsmile.surrogates.Surrogate`. A method of
    your own: ``SurrogateMethod(sampler=..., kernel=..., surrogate_factory=...)`` (``name``
    defaults to ``"custom"``); :meth:`with_random_state` reseeds it.

    ``sample(n_units, n_samples)`` returns perturbation masks (the original, all-kept mask is
    added by the explainer as row 0); ``fit(masks, y, Y)`` weights every row with the kernel
    and fits the surrogate on ``y`` (one value per row) and, when given, on ``Y`` (one column
    per response token) with the same design and weights.
    """

    #: Advice appended to the low effective-sample-size warning; None: the method's weights
    #: are not a proximity kernel, so no such warning.
    ess_hint: str | None = None

    def __init__(
        self,
        name: str = "custom",
        sampler: Sampler | None = None,
        kernel: Kernel | None = None,
        surrogate_factory: Callable[[], Surrogate] | None = None,
        params: dict | None = None,
        ess_hint: str | None = None,
    ):
        if sampler is None or kernel is None or surrogate_factory is None:
            raise TypeError("SurrogateMethod needs sampler=, kernel= and surrogate_factory=")
        self.name = name
        self.sampler = sampler
        self.kernel = kernel
        self.surrogate_factory = surrogate_factory
        self.params = dict(params or {})
        if ess_hint is not None:
            self.ess_hint = ess_hint

    def validate(self) -> None:
        """Check every part's parameters; raises InvalidInputError (``field``: the option)."""
        self.sampler.validate()
        self.kernel.validate()
        self.surrogate_factory().validate()

    def with_random_state(self, seed: int | np.random.Generator | None) -> "SurrogateMethod":
        """A copy of this method whose sampler draws with ``seed``; this one is left unchanged.
        The same masks as the method built afresh with ``random_state=seed``."""
        method = copy.copy(self)
        method.sampler = copy.copy(self.sampler)
        method.sampler.random_state = seed
        method.params = dict(self.params)
        return method

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        return self.sampler.sample(n_units, n_samples)

    @property
    def draw(self) -> Callable[[int, int], np.ndarray] | None:
        """The sampler's ``draw`` (random masks, never an enumeration), None when it has none
        (see :func:`~gsmile.samplers.draw_within`)."""
        return self.sampler.draw

    def fit(self, masks: np.ndarray, y: np.ndarray, Y: np.ndarray | None = None) -> MethodResult:
        masks = np.asarray(masks, dtype=bool)
        weights = self.kernel(masks)
        Z = masks.astype(float)
        y = np.asarray(y, dtype=float)
        # One solve for the explained value and every per-token column.
        targets = y if Y is None else np.column_stack([y, Y])
        surrogate = self.surrogate_factory().fit(Z, targets, sample_weight=weights)
        coef, intercept, r2 = surrogate.coef_, surrogate.intercept_, surrogate.r2_
        token_coefficients = None
        if Y is not None:
            token_coefficients = np.asarray(coef[:, 1:])
            coef, intercept, r2 = coef[:, 0], intercept[0], r2[0]
        sigma = self.kernel.width(masks.shape[1])
        n_units = masks.shape[1]
        n_parameters = (len(surrogate.selected_) if isinstance(surrogate, SparseSurrogate) else n_units) + 1
        result = MethodResult(
            coefficients=np.asarray(coef, dtype=float),
            intercept=float(intercept),
            fidelity_r2=float(r2),
            held_out_r2=self.held_out_r2(Z, y, weights, n_parameters),
            n_parameters=n_parameters,
            weights=weights,
            effective_sample_size=effective_sample_size(weights),
            sigma=sigma,
            token_coefficients=token_coefficients,
        )
        result.extras.update(self.extras(masks, y, result, surrogate))
        if isinstance(surrogate, SparseSurrogate):  # whatever the method: the units the fit kept
            result.extras["selected_units"] = [int(i) for i in surrogate.selected_]
        return result

    def held_out_r2(self, Z: np.ndarray, y: np.ndarray, weights: np.ndarray, n_parameters: int | None = None) -> float | None:
        """Weighted R² of the surrogate on samples it was not fitted on: :data:`HELD_OUT_FOLDS`
        folds of the distinct masks (identical masks share a fold; the full and the empty
        mask stay in every training fold), each predicted by a surrogate fitted on the others.
        Unlike the in-sample R², it cannot be perfect by construction. None when a training
        fold would hold no more distinct masks than the surrogate has parameters
        (``n_parameters``, default: one per unit and the intercept; so never for occlusion's
        N + 1 masks), or the surrogate cannot be refitted on part of the samples."""
        n_rows, n_units = Z.shape
        _, group = np.unique(Z, axis=0, return_inverse=True)
        group = group.ravel()
        n_groups = int(group.max()) + 1 if n_rows else 0
        anchors = Z.all(axis=1) | ~Z.any(axis=1)
        free = np.unique(group[~anchors])
        held = len(free) - len(free) // HELD_OUT_FOLDS
        n_parameters = n_units + 1 if n_parameters is None else n_parameters
        if held + int(anchors.any()) <= n_parameters or len(free) < HELD_OUT_FOLDS:
            return None
        fold_of = np.full(n_groups, -1)
        fold_of[np.random.default_rng(0).permutation(free)] = np.arange(len(free)) % HELD_OUT_FOLDS
        fold = fold_of[group]
        predicted = np.empty(n_rows)
        for k in range(HELD_OUT_FOLDS):
            test, train = fold == k, fold != k
            try:
                part = self.surrogate_factory().fit(Z[train], y[train], sample_weight=weights[train])
            except (GsmileError, np.linalg.LinAlgError, ValueError):
                return None
            predicted[test] = Z[test] @ np.asarray(part.coef_, dtype=float) + float(part.intercept_)
        scored = fold >= 0
        r2 = weighted_r2(y[scored], predicted[scored], weights[scored])
        return float(r2) if np.isfinite(r2) else None

    def extras(self, masks: np.ndarray, y: np.ndarray, result: MethodResult, surrogate) -> dict[str, Any]:
        """Method-specific results stored in ``Explanation.extras`` (plain data)."""
        return {}
