"""Shapley values: the Shapley-kernel regression under the efficiency constraint.

``shapley`` enumerates every coalition (exact values; refused above 14 units).
``kernelshap`` samples coalitions in complementary pairs and enumerates them all when the
budget allows. Both use :class:`~gsmile.kernels.ShapleyKernel` and
:class:`~gsmile.surrogates.EfficientLinearRegression`, so the values always sum to
``y(full) - y(empty)``; the explainer evaluates the empty input because the sampler asks
for it.
"""

from __future__ import annotations

import numpy as np

from ..kernels import ShapleyKernel
from ..samplers import ExhaustiveSampler, ShapleySampler
from ..surrogates import EfficientLinearRegression
from .base import SurrogateMethod

#: The most units exact Shapley values are computed for (2^14 = 16384 evaluations).
MAX_EXACT_UNITS = 14


class _ShapleyMethod(SurrogateMethod):
    def extras(self, masks, y, result, surrogate):
        n_units = masks.shape[1]
        n_distinct = len(np.unique(masks, axis=0))
        return {
            "exhaustive": bool(n_distinct == 2**n_units),
            "n_coalitions": int(n_distinct),
            "value_full": _plain(surrogate.intercept_ + surrogate.coef_.sum(axis=0)),
            "value_empty": _plain(surrogate.intercept_),
        }


def _plain(x):
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else float(x[0])


def kernelshap(random_state=None) -> SurrogateMethod:
    """KernelSHAP: Shapley values estimated from coalitions sampled in complementary pairs."""
    return _ShapleyMethod(
        "kernelshap",
        sampler=ShapleySampler(random_state=random_state),
        kernel=ShapleyKernel(),
        surrogate_factory=EfficientLinearRegression,
        params={},
    )


def shapley(random_state=None) -> SurrogateMethod:
    """Exact Shapley values from every coalition (2^N model evaluations: for short inputs)."""
    return _ShapleyMethod(
        "shapley",
        sampler=ExhaustiveSampler(max_units=MAX_EXACT_UNITS, instead="kernelshap"),
        kernel=ShapleyKernel(),
        surrogate_factory=EfficientLinearRegression,
        params={},
    )
