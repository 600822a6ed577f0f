"""Mask samplers. A mask is a boolean row over units: True = the unit is kept.

Samplers store their parameters; :meth:`sample` builds its own generator from
``random_state`` each call, so the same seed always gives the same masks.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

#: The dropout rates gSMILE accepts, and the rate above which it warns.
DROPOUT_RANGE = (0.05, 0.5)
DROPOUT_WARN = 0.3


def make_rng(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """A fresh generator for ``random_state`` (an int, a Generator, or None for entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0):
        raise InvalidInputError(f"random_state must be a non-negative integer or None, got {random_state!r}")
    return np.random.default_rng(random_state)


class DropoutSampler:
    """Drop each unit independently with probability ``dropout``; every mask drops at least one.

    A row that would drop nothing instead drops one unit chosen uniformly at random.
    """

    name = "dropout"

    def __init__(self, dropout: float = 0.2, random_state: int | np.random.Generator | None = None):
        self.dropout = dropout
        self.random_state = random_state

    def validate(self) -> None:
        lo, hi = DROPOUT_RANGE
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not (lo <= self.dropout <= hi):
            raise InvalidInputError(f"dropout must be between {lo} and {hi}, got {self.dropout!r}")

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        self.validate()
        rng = make_rng(self.random_state)
        masks = rng.random((n_samples, n_units)) >= self.dropout
        full = masks.all(axis=1)
        if full.any():
            rows = np.flatnonzero(full)
            masks[rows, rng.integers(0, n_units, size=rows.size)] = False
        return masks
