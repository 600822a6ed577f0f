"""Banzhaf values: least squares on coalitions that keep each unit with probability ``keep``.

Composition: :class:`~gsmile.samplers.BernoulliSampler`, :class:`~gsmile.kernels.UniformKernel`
and ordinary least squares (:class:`~gsmile.surrogates.WeightedLinearRegression` with equal
weights). When units are kept independently with probability q, the least-squares slope of a
unit is ``E[y | unit kept] − E[y | unit dropped]``: its q-weighted Banzhaf value, the average
gain from adding it to a coalition in which every other unit is present with probability q
(q = 0.5: the Banzhaf value, every coalition alike). So the coefficients estimate a
well-defined game value, exactly for an additive model and with error shrinking as samples
grow otherwise; enumerating every coalition with q = 0.5 gives the exact Banzhaf values.

Unlike Shapley values they are not forced to sum to y(full) − y(empty), and they need no
evaluation of the empty input. A smaller ``keep`` weights small coalitions more (what
removing many units does); a larger one, coalitions close to the prompt. Each sample informs
every unit's estimate, which makes it strong at small budgets (see bench/results)."""

from __future__ import annotations

from ..kernels import UniformKernel
from ..samplers import BernoulliSampler
from ..surrogates import WeightedLinearRegression
from .base import SurrogateMethod


def banzhaf(keep: float = 0.5, random_state=None) -> SurrogateMethod:
    """``keep``: probability that a sample keeps each unit (0 < keep < 1; 0.5: Banzhaf values)."""
    return SurrogateMethod(
        "banzhaf",
        sampler=BernoulliSampler(keep=keep, random_state=random_state),
        kernel=UniformKernel(),
        surrogate_factory=WeightedLinearRegression,
        params={"keep": keep},
    )
