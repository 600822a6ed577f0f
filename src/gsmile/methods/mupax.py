"""MuPAX: Monte Carlo subsets of units, accepted when they keep the output close.

Composition: :class:`~gsmile.samplers.SubsetSizeSampler` (1..N-1 units dropped, every
sample keeps part of the input), :class:`~gsmile.kernels.UniformKernel` and weighted least
squares on all the samples. On top of the surrogate, :func:`mupax_statistics` describes the
accepted samples:

* distance of a sample: ``d = |y(sample) - y(original)|`` (for a language model, the
  output shift Δ of the target);
* ``threshold_W``: the ``threshold_percentile`` quantile of the distances of the samples
  (linear interpolation); a sample is *accepted* when ``d <= threshold_W``;
* goodness of a sample: ``1 - d / max d`` (1: output unchanged; 0: the sample that moved
  it most; all 1 when no sample moved it);
* per unit: ``importance`` χ = |coef| / Σ|coef| (the surrogate's share), ``effect``
  (``positive`` when keeping the unit raises the value, ``negative`` when it lowers it,
  ``neutral`` when |coef| is at most ``neutral_tolerance`` × the largest |coef|),
  ``retention_frequency`` (share of the accepted samples that kept the unit) and
  ``conditional_goodness`` (mean goodness of the accepted samples that kept it; None if
  none did).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..kernels import UniformKernel
from ..samplers import SubsetSizeSampler
from ..surrogates import WeightedLinearRegression
from .base import SurrogateMethod

DEFAULT_THRESHOLD_PERCENTILE = 0.2
DEFAULT_NEUTRAL_TOLERANCE = 0.05


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (0.0 <= value <= 1.0):
        raise InvalidInputError(f"{name} must be a number from 0 to 1, got {value!r}", field=f"method_options.{name}")
    return float(value)


def mupax_statistics(
    masks: np.ndarray,
    y: np.ndarray,
    coefficients: np.ndarray,
    y_original: float,
    threshold_percentile: float = DEFAULT_THRESHOLD_PERCENTILE,
    neutral_tolerance: float = DEFAULT_NEUTRAL_TOLERANCE,
) -> dict[str, Any]:
    """MuPAX's report for sampled ``masks`` (without the original row), their values ``y``,
    the surrogate's ``coefficients`` and the original input's value (see the module doc)."""
    threshold_percentile = _check_fraction("threshold_percentile", threshold_percentile)
    neutral_tolerance = _check_fraction("neutral_tolerance", neutral_tolerance)
    masks = np.asarray(masks, dtype=bool)
    y = np.asarray(y, dtype=float)
    coefficients = np.asarray(coefficients, dtype=float)
    if masks.ndim != 2 or len(masks) == 0 or y.shape != (len(masks),) or coefficients.shape != (masks.shape[1],):
        raise InvalidInputError("mupax_statistics needs (samples, units) masks, one value per sample and one coefficient per unit")
    distance = np.abs(y - float(y_original))
    threshold = float(np.quantile(distance, threshold_percentile))
    accepted = distance <= threshold
    d_max = float(distance.max())
    goodness = 1.0 - distance / d_max if d_max > 0 else np.ones_like(distance)
    kept = masks[accepted]
    importance, effects = unit_effects(coefficients, neutral_tolerance)
    units = []
    for i in range(masks.shape[1]):
        keeps = kept[:, i]
        units.append(
            {
                "position": i,
                "importance": float(importance[i]),
                "effect": effects[i],
                "retention_frequency": float(keeps.mean()),
                "conditional_goodness": float(goodness[accepted][keeps].mean()) if keeps.any() else None,
            }
        )
    return {
        "threshold_percentile": threshold_percentile,
        "threshold_W": threshold,
        "n_accepted": int(accepted.sum()),
        "n_total": int(len(masks)),
        "units": units,
    }


def unit_effects(coefficients, neutral_tolerance: float = DEFAULT_NEUTRAL_TOLERANCE) -> tuple[np.ndarray, list[str]]:
    """Each unit's importance (its share of the total |coefficient|, MuPAX's χ) and effect:
    "positive" when keeping it raises the output, "negative" when it lowers it, "neutral"
    when |coefficient| is at most ``neutral_tolerance`` of the largest."""
    coefficients = np.asarray(coefficients, dtype=float)
    magnitude = np.abs(coefficients)
    total, top = magnitude.sum(), magnitude.max(initial=0.0)
    importance = magnitude / total if total > 0 else np.zeros_like(magnitude)
    effects = [
        ("positive" if c > 0 else "negative") if top > 0 and m > neutral_tolerance * top else "neutral"
        for c, m in zip(coefficients, magnitude)
    ]
    return importance, effects


class _MupaxMethod(SurrogateMethod):
    def validate(self) -> None:
        _check_fraction("threshold_percentile", self.params["threshold_percentile"])
        _check_fraction("neutral_tolerance", self.params["neutral_tolerance"])
        super().validate()

    def extras(self, masks, y, result, surrogate):
        original = masks.all(axis=1)
        return {
            "mupax": mupax_statistics(
                masks[~original],
                y[~original],
                result.coefficients,
                y_original=float(y[original].mean()),
                threshold_percentile=self.params["threshold_percentile"],
                neutral_tolerance=self.params["neutral_tolerance"],
            )
        }


def mupax(
    threshold_percentile: float = DEFAULT_THRESHOLD_PERCENTILE,
    neutral_tolerance: float = DEFAULT_NEUTRAL_TOLERANCE,
    random_state=None,
) -> SurrogateMethod:
    """MuPAX: Monte Carlo subsets of units, accepted when they keep the output close.

    Options:
        threshold_percentile: share of the samples, closest to the original output first, accepted, from 0 to 1
        neutral_tolerance: a unit whose |coefficient| is at most this share of the largest is neutral, from 0 to 1
    """
    return _MupaxMethod(
        "mupax",
        sampler=SubsetSizeSampler(min_drop=1, min_keep=1, random_state=random_state),
        kernel=UniformKernel(),
        surrogate_factory=WeightedLinearRegression,
        params={"threshold_percentile": threshold_percentile, "neutral_tolerance": neutral_tolerance},
    )
