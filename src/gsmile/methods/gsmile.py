"""gSMILE: random dropout masks, Gaussian proximity kernel, weighted least squares."""

from __future__ import annotations

from ..kernels import DEFAULT_SIGMA_RULE, GaussianKernel
from ..samplers import DropoutSampler
from ..surrogates import WeightedLinearRegression
from .base import SurrogateMethod


def gsmile(dropout: float = 0.2, sigma: float | None = None, random_state=None) -> SurrogateMethod:
    """gSMILE: random dropout masks, a Gaussian proximity kernel, weighted least squares.

    Options:
        dropout: share of units each perturbation drops, from 0.05 to 0.5
        sigma: width of the Gaussian kernel on the number of units dropped (none: max(0.5·sqrt(N), 0.7·dropout·N) for N units, which keeps the effective sample size near half the samples at any N)
    """
    return SurrogateMethod(
        "gsmile",
        sampler=DropoutSampler(dropout=dropout, random_state=random_state),
        kernel=GaussianKernel(sigma=sigma, dropout=dropout),
        surrogate_factory=WeightedLinearRegression,
        params={"dropout": dropout, "sigma": sigma, **({"sigma_rule": DEFAULT_SIGMA_RULE} if sigma is None else {})},
        ess_hint="raise --sigma or lower --dropout",
    )
