"""Occlusion: leave one unit (or a window of consecutive units) out at a time.

Composed of :class:`~gsmile.samplers.OcclusionSampler` (N - K + 1 deterministic masks),
:class:`~gsmile.kernels.UniformKernel` and :class:`~gsmile.surrogates.LeaveOutDifferences`
(a unit's value is the fall of the output when it is left out, shared equally among the
units occluded together). The per-response-token values are computed the same way, one
column per token.
"""

from __future__ import annotations

from ..kernels import UniformKernel
from ..samplers import OcclusionSampler
from ..surrogates import LeaveOutDifferences
from .base import SurrogateMethod


def occlusion(window: int = 1, random_state=None) -> SurrogateMethod:
    """Occlusion: leave one unit (or a window of consecutive units) out at a time.

    Options:
        window: how many consecutive units each mask leaves out (1: leave-one-out)
    """
    return SurrogateMethod(
        "occlusion",
        sampler=OcclusionSampler(window=window),
        kernel=UniformKernel(),
        surrogate_factory=LeaveOutDifferences,
        params={"window": window},
    )
