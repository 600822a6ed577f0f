"""The shape every method shares: masks from a sampler, weights from a kernel, a surrogate fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..kernels import effective_sample_size


@dataclass
class MethodResult:
    """What a method learned from (masks, values)."""

    coefficients: np.ndarray  # (n_units,)
    intercept: float
    fidelity_r2: float
    weights: np.ndarray  # (n_rows,)
    effective_sample_size: float
    sigma: float | None = None
    token_coefficients: np.ndarray | None = None  # (n_units, n_outputs)
    extras: dict[str, Any] = field(default_factory=dict)


class SurrogateMethod:
    """sampler + kernel + surrogate.

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
        name: str,
        sampler,
        kernel: Callable[[np.ndarray], np.ndarray],
        surrogate_factory: Callable[[], Any],
        params: dict | None = None,
        ess_hint: str | None = None,
    ):
        self.name = name
        self.sampler = sampler
        self.kernel = kernel
        self.surrogate_factory = surrogate_factory
        self.params = dict(params or {})
        if ess_hint is not None:
            self.ess_hint = ess_hint

    def validate(self) -> None:
        """Check every part's parameters; raises InvalidInputError."""
        if hasattr(self.sampler, "validate"):
            self.sampler.validate()
        if hasattr(self.kernel, "validate"):
            self.kernel.validate()
        elif hasattr(self.kernel, "width"):
            self.kernel.width(2)
        surrogate = self.surrogate_factory()
        if hasattr(surrogate, "validate"):
            surrogate.validate()

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        return self.sampler.sample(n_units, n_samples)

    @property
    def draw(self):
        """The sampler's ``draw`` (random masks, never an enumeration) when it has one, else
        None (see :func:`~gsmile.samplers.draw_within`)."""
        return getattr(self.sampler, "draw", None)

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
        sigma = self.kernel.width(masks.shape[1]) if hasattr(self.kernel, "width") else None
        result = MethodResult(
            coefficients=np.asarray(coef, dtype=float),
            intercept=float(intercept),
            fidelity_r2=float(r2),
            weights=weights,
            effective_sample_size=effective_sample_size(weights),
            sigma=sigma,
            token_coefficients=token_coefficients,
        )
        result.extras.update(self.extras(masks, y, result, surrogate))
        return result

    def extras(self, masks: np.ndarray, y: np.ndarray, result: MethodResult, surrogate) -> dict[str, Any]:
        """Method-specific results stored in ``Explanation.extras`` (plain data)."""
        return {}
