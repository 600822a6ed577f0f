"""Banzhaf values: least squares on coalitions that keep each unit with probability ``keep``.

Composition: a sampler that keeps each unit with probability ``keep`` —
:class:`~gsmile.samplers.OrthogonalSampler` for ``keep=0.5`` (randomized orthogonal blocks),
:class:`~gsmile.samplers.BernoulliSampler` (independent draws) otherwise —,
:class:`~gsmile.kernels.UniformKernel` and ordinary least squares
(:class:`~gsmile.surrogates.WeightedLinearRegression` with equal weights). When units are
kept with probability q, the least-squares slope of a unit is ``E[y | unit kept] −
E[y | unit dropped]``: its q-weighted Banzhaf value, the average gain from adding it to a
coalition in which every other unit is present with probability q (q = 0.5: the Banzhaf
value, every coalition alike). So the coefficients estimate a well-defined game value, exactly
for an additive model and with error shrinking as samples grow otherwise; enumerating every
coalition with q = 0.5 gives the exact Banzhaf values.

With ``keep=0.5`` the masks come in orthogonal blocks: each mask is still uniform over all
coalitions, but within a block every unit is kept in exactly half the masks and every two
units agree in exactly half, so the units' estimates do not blur into each other. At a budget
of two evaluations per unit that lifts deletion AOPC, insertion AOPC and the correlation with
exact Shapley values together (``bench/simulate.py``, ``bench/results``); ``params["design"]``
records which sampler ran.

Unlike Shapley values they are not forced to sum to y(full) − y(empty), and they need no
evaluation of the empty input. A smaller ``keep`` weights small coalitions more (what
removing many units does); a larger one, coalitions close to the prompt. Each sample informs
every unit's estimate, which makes it strong at small budgets (see bench/results)."""

from __future__ import annotations

from ..kernels import UniformKernel
from ..samplers import BernoulliSampler, OrthogonalSampler
from ..surrogates import WeightedLinearRegression
from .base import SurrogateMethod


def banzhaf(keep: float = 0.5, random_state=None) -> SurrogateMethod:
    """Banzhaf values: least squares on coalitions that keep each unit with probability ``keep``.

    Options:
        keep: probability that a sample keeps each unit, strictly between 0 and 1 (0.5: Banzhaf values, sampled in orthogonal blocks)
    """
    # Any other keep (an invalid one included: BernoulliSampler.validate refuses it) draws independently.
    orthogonal = not isinstance(keep, bool) and isinstance(keep, (int, float)) and keep == 0.5
    return SurrogateMethod(
        "banzhaf",
        sampler=OrthogonalSampler(random_state) if orthogonal else BernoulliSampler(keep=keep, random_state=random_state),
        kernel=UniformKernel(),
        surrogate_factory=WeightedLinearRegression,
        params={"keep": keep, "design": "orthogonal" if orthogonal else "independent"},
    )

