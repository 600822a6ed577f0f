"""Mask samplers. A mask is a boolean row over units: True = the unit is kept.

Samplers store their parameters; :meth:`sample` builds its own generator from
``random_state`` each call, so the same seed always gives the same masks.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

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
        raise InvalidInputError(f"random_state must be a non-negative integer or None, got {random_state!r}", field="random_state")
    return np.random.default_rng(random_state)


@runtime_checkable
class Sampler(Protocol):
    """What a method's sampler provides.

    ``random_state``: the seed :meth:`sample` builds its generator from (None on a
    deterministic sampler, whose masks do not depend on it). ``validate()`` checks the
    parameters (raises InvalidInputError naming the option in ``field``). ``draw``: None, or
    a function like :meth:`sample` that always draws at random, never enumerates (see
    :func:`draw_within`).
    """

    random_state: int | np.random.Generator | None
    draw: Callable[[int, int], np.ndarray] | None

    def validate(self) -> None: ...

    def sample(self, n_units: int, n_samples: int) -> np.ndarray: ...


class DropoutSampler:
    """Drop each unit independently with probability ``dropout``; every mask drops at least one.

    A row that would drop nothing instead drops one unit chosen uniformly at random.
    """

    draw = None

    def __init__(self, dropout: float = 0.2, random_state: int | np.random.Generator | None = None):
        self.dropout = dropout
        self.random_state = random_state

    def validate(self) -> None:
        lo, hi = DROPOUT_RANGE
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not (lo <= self.dropout <= hi):
            raise InvalidInputError(f"dropout must be between {lo} and {hi}, got {self.dropout!r}", field="dropout")

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        self.validate()
        rng = make_rng(self.random_state)
        masks = rng.random((n_samples, n_units)) >= self.dropout
        full = masks.all(axis=1)
        if full.any():
            rows = np.flatnonzero(full)
            masks[rows, rng.integers(0, n_units, size=rows.size)] = False
        return masks


class BernoulliSampler:
    """Keep each unit independently with probability ``keep`` (the full and the empty mask
    included: a full one repeats the original and costs no model call)."""

    draw = None

    def __init__(self, keep: float = 0.5, random_state: int | np.random.Generator | None = None):
        self.keep = keep
        self.random_state = random_state

    def validate(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not (0.0 < self.keep < 1.0):
            raise InvalidInputError(f"keep must be a probability strictly between 0 and 1, got {self.keep!r}", field="method_options.keep")

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        self.validate()
        n_units = _check_units(n_units)
        return make_rng(self.random_state).random((n_samples, n_units)) < self.keep


def _parity(x: np.ndarray) -> np.ndarray:
    """1 where a non-negative int64 has an odd number of set bits, else 0."""
    x = x.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        x ^= x >> shift
    return x & 1


class OrthogonalSampler:
    """Masks that keep each unit with probability ½, drawn in orthogonal blocks.

    A block is a randomized two-level orthogonal array: the Sylvester–Hadamard matrix of order
    L (the smallest power of two above the number of units N) has L rows and L − 1 columns
    besides the constant one, any two of them agreeing in exactly half the rows. A block takes
    N of those columns at random (one per unit; entry: kept when the row and the column index
    share an even number of set bits), flips each column with probability ½ and shuffles the
    rows. Blocks are drawn until ``n_samples`` rows are made; the last one may be cut.

    The flips alone make every row uniform over all 2^N masks, exactly a Bernoulli(½) draw, so
    least squares on these masks estimates the same Banzhaf values as on independent draws.
    Within a full block, though, every unit is kept in exactly half the rows and every two
    units agree in exactly half: the design's columns are orthogonal, so one unit's estimate
    takes no error from another's sampling and each slope is the plain difference of the means
    with and without the unit. At budgets of a few evaluations per unit this is markedly more
    accurate than independent draws (``bench/simulate.py``); with many blocks the two agree.
    """

    draw = None

    def __init__(self, random_state: int | np.random.Generator | None = None):
        self.random_state = random_state

    def validate(self) -> None:
        """Nothing to check here: ``random_state`` is checked when sampling."""

    @staticmethod
    def block_size(n_units: int) -> int:
        """Rows per block: the smallest power of two above ``n_units``."""
        return 1 << int(n_units).bit_length()

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        n_units = _check_units(n_units)
        rng = make_rng(self.random_state)
        size = self.block_size(n_units)
        n_blocks = -(-int(n_samples) // size)
        if n_blocks <= 0:
            return np.zeros((0, n_units), dtype=bool)
        # Per block: N distinct non-constant columns, one flip per column, a row order; only
        # the rows asked for are built (a cut last block costs no more than its rows).
        columns = np.argsort(rng.random((n_blocks, size - 1)), axis=1)[:, :n_units] + 1
        flips = rng.random((n_blocks, n_units)) < 0.5
        rows = np.argsort(rng.random((n_blocks, size)), axis=1).reshape(-1)[: int(n_samples)]
        block = np.arange(len(rows)) // size
        kept = _parity(rows[:, None] & columns[block]) == 0
        return kept ^ flips[block]


def _check_units(n_units: int) -> int:
    if isinstance(n_units, bool) or not isinstance(n_units, (int, np.integer)) or n_units < 1:
        raise InvalidInputError(f"the number of units must be a positive integer, got {n_units!r}")
    return int(n_units)


def _random_subsets(rng: np.random.Generator, sizes: np.ndarray, n_units: int) -> np.ndarray:
    """One row per size: a uniformly random subset of ``sizes[r]`` of the ``n_units`` units
    (True = in the subset). Each row ranks the units by a random permutation."""
    rank = np.argsort(np.argsort(rng.random((len(sizes), n_units)), axis=1), axis=1)
    return rank < np.asarray(sizes)[:, None]


def all_coalitions(n_units: int) -> np.ndarray:
    """Every mask over ``n_units`` units, ``2**n_units`` rows; row ``r`` keeps unit ``i``
    when bit ``i`` of ``r`` is set (so row 0 drops everything and the last row keeps all)."""
    n_units = _check_units(n_units)
    rows = np.arange(2**n_units, dtype=np.int64)[:, None]
    return ((rows >> np.arange(n_units, dtype=np.int64)[None, :]) & 1).astype(bool)


class OcclusionSampler:
    """Leave-out masks: mask ``i`` drops units ``i .. i+window-1`` (a window sliding one unit
    at a time, ``n_units - window + 1`` masks). ``window=1`` is leave-one-out. Deterministic:
    ``n_samples`` is ignored."""

    draw = None
    random_state = None  # deterministic: the masks do not depend on a seed

    def __init__(self, window: int = 1):
        self.window = window

    def validate(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, (int, np.integer)) or self.window < 1:
            raise InvalidInputError(f"window must be a positive integer (units occluded together), got {self.window!r}", field="method_options.window")

    def sample(self, n_units: int, n_samples: int | None = None) -> np.ndarray:
        self.validate()
        n_units = _check_units(n_units)
        if self.window > n_units:
            raise InvalidInputError(
                f"window {self.window} is larger than the {n_units} units; use a window of at most {n_units}",
                field="method_options.window",
            )
        n_masks = n_units - self.window + 1
        masks = np.ones((n_masks, n_units), dtype=bool)
        for i in range(n_masks):
            masks[i, i : i + self.window] = False
        return masks


class SubsetSizeSampler:
    """Draw how many units to drop uniformly from ``min_drop .. n_units - min_keep``, then
    which ones uniformly among the subsets of that size.

    LIME's sampler is ``min_drop=1, min_keep=0`` (1..N removed, the empty text included);
    MuPAX uses ``min_keep=1`` so every sample keeps some of the input.
    """

    draw = None

    def __init__(self, min_drop: int = 1, min_keep: int = 0, random_state: int | np.random.Generator | None = None):
        self.min_drop = min_drop
        self.min_keep = min_keep
        self.random_state = random_state

    def validate(self) -> None:
        """Nothing to check: the method that builds it sets its sizes (too few units fail in :meth:`sample`)."""

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        n_units = _check_units(n_units)
        hi = n_units - self.min_keep
        if hi < self.min_drop:
            raise InvalidInputError(f"{n_units} unit(s) are too few for this sampler; at least {self.min_drop + self.min_keep} are needed")
        rng = make_rng(self.random_state)
        n_drop = rng.integers(self.min_drop, hi + 1, size=n_samples)
        return ~_random_subsets(rng, n_drop, n_units)


def shapley_size_weights(n_units: int) -> np.ndarray:
    """Total Shapley-kernel weight of the coalitions of each size s = 1..N-1,
    proportional to ``(N-1) / (s (N-s))`` (index 0 is size 1)."""
    s = np.arange(1, n_units, dtype=float)
    w = (n_units - 1) / (s * (n_units - s))
    return w / w.sum()


class ExhaustiveSampler:
    """Every coalition (``2**n_units`` masks, the empty and the full one included);
    ``n_samples`` is ignored. Refuses more than ``max_units`` units."""

    draw = None
    random_state = None  # deterministic: the masks do not depend on a seed

    def __init__(self, max_units: int = 14, instead: str = "kernelshap"):
        self.max_units = max_units
        self.instead = instead

    def validate(self) -> None:
        """Nothing to check: the method that builds it sets ``max_units`` (too many units fail in :meth:`sample`)."""

    def sample(self, n_units: int, n_samples: int | None = None) -> np.ndarray:
        n_units = _check_units(n_units)
        if n_units > self.max_units:
            raise InvalidInputError(
                f"exact Shapley values need all 2^{n_units} = {2**n_units} coalitions; {n_units} units is above "
                f"the limit of {self.max_units}: use method '{self.instead}' (sampled Shapley values) or larger units"
            )
        return all_coalitions(n_units)


class ShapleySampler:
    """KernelSHAP's masks. When the budget covers every coalition (``n_samples + 1 >= 2**N``,
    the explainer's original row counted) it enumerates them all; otherwise it returns the empty
    mask followed by ``n_samples - 1`` draws: a coalition size from the Shapley kernel's size
    distribution (:func:`shapley_size_weights`), members uniform given the size, each draw
    followed by its complement (paired sampling)."""

    def __init__(self, random_state: int | np.random.Generator | None = None):
        self.random_state = random_state

    def validate(self) -> None:
        """Nothing to check here: ``random_state`` is checked when sampling."""

    def exhaustive(self, n_units: int, n_samples: int) -> bool:
        return n_units < 62 and n_samples + 1 >= 2**n_units

    def sample(self, n_units: int, n_samples: int) -> np.ndarray:
        n_units = _check_units(n_units)
        if n_units < 2 or self.exhaustive(n_units, n_samples):
            return all_coalitions(n_units)
        return self.draw(n_units, n_samples)

    def draw(self, n_units: int, n_samples: int) -> np.ndarray:
        """``n_samples`` random masks as in :meth:`sample`, never the enumeration: what
        :func:`draw_within` grows when a budget of distinct coalitions is below their number."""
        n_units = _check_units(n_units)
        if n_units < 2:
            return all_coalitions(n_units)
        rng = make_rng(self.random_state)
        n_draws = n_samples - 1
        n_pairs = (n_draws + 1) // 2
        sizes = rng.choice(np.arange(1, n_units), size=n_pairs, p=shapley_size_weights(n_units))
        kept = _random_subsets(rng, sizes, n_units)
        paired = np.empty((2 * n_pairs, n_units), dtype=bool)
        paired[0::2] = kept
        paired[1::2] = ~kept
        return np.vstack([np.zeros((1, n_units), dtype=bool), paired[:n_draws]])


#: The most masks :func:`draw_within` draws at once (bounds its memory and time).
MAX_DRAWS = 1_000_000


def draw_within(sample, n_units: int, max_distinct: int, growth_cap: int = 64, draw=None) -> np.ndarray:
    """The longest run of draws from ``sample(n_units, n)`` holding at most ``max_distinct``
    distinct masks besides the full one: the most draws a budget of model evaluations allows
    (identical masks are evaluated once, so repeats cost nothing beyond their distinct masks).

    ``n`` doubles from ``max_distinct`` (up to ``growth_cap`` times it, at most ``MAX_DRAWS``)
    until a draw holds too many distinct masks; that draw is cut just before the first mask
    one too many, so the budget is filled exactly. (Redrawing for every ``n`` tried, as a
    bisection would, does not fill it: draws of different sizes share nothing and their
    distinct counts jump around.) A sampler that returns a fixed set for this ``n`` (it
    enumerates every coalition, say) is never cut: a prefix of an enumeration is not a sample;
    the last random draw is kept instead. Raises when even ``max_distinct`` draws hold too
    many (a sampler with a fixed set of masks, e.g. occlusion or exhaustive enumeration).

    ``draw(n_units, n)``, when given, makes the larger draws instead of ``sample``: for a
    sampler that enumerates every coalition once ``n`` could cover them (KernelSHAP's), so a
    budget just below their number is filled with random coalitions rather than left at what
    ``max_distinct`` draws happened to hold."""
    masks = sample(n_units, max_distinct)
    count = _distinct_besides_full(masks)
    if count > max_distinct:
        raise InvalidInputError(
            f"this method needs {count + 1} model evaluations for {n_units} units, more than max_evals = "
            f"{max_distinct + 1}; raise max_evals or use a sampling method such as kernelshap"
        )
    if draw is not None:
        if np.array_equal(masks, sample(n_units, max_distinct + 1)):  # an enumeration within the budget
            return masks
        sample = draw
    n, limit = max_distinct, int(min(growth_cap * max_distinct, MAX_DRAWS))
    while n < limit:
        n = min(2 * n, limit)
        pool = sample(n_units, n)
        if np.array_equal(pool, sample(n_units, n + 1)):  # a fixed set, not draws
            return pool if _distinct_besides_full(pool) <= max_distinct else masks
        unique, first_seen = np.unique(pool, axis=0, return_index=True)
        first_seen = np.sort(first_seen[~unique.all(axis=1)])
        if len(first_seen) > max_distinct:
            return pool[: first_seen[max_distinct]]
        if len(first_seen) == count:  # no new masks from twice the draws: the mask space is used up
            return pool
        masks, count = pool, len(first_seen)
    return masks


def _distinct_besides_full(masks: np.ndarray) -> int:
    unique = np.unique(masks, axis=0)
    return len(unique) - int(unique.all(axis=1).any())
