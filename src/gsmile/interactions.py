"""Pairwise interactions among an explanation's top units, computed with shapiq.

The main explanation gives each unit one number. Two units can matter only together (two
sentences that answer the question jointly): each alone changes little, both together a
lot. :func:`pairwise_interactions` measures this on the ``k`` units with the largest
|coefficient|.

The game. Its players are the ``k`` top units; the value of a coalition S is the explained
value y (the scalar model's output, or −Δ for a language model) of the input in which the
top units outside S are removed and every other unit is kept as in the original. It is
scored through the explanation's own :class:`~gsmile.scoring.Scorer`, so an input scored
already (the original, a perturbation of the main fit) is not sent to the model again.

The index is k-SII of order 2 (k-Shapley interaction index; the "n-Shapley values" of
Bordt & von Luxburg, AISTATS 2023), computed by :class:`shapiq.ExactComputer` from all
2^k coalitions when that is affordable, else estimated by
:class:`shapiq.approximator.KernelSHAPIQ` (Fumagalli et al., ICML 2024) within a budget.
The pair value is the Shapley interaction index of the pair (Grabisch & Roubens 1999): the
average, over the other top units present or not with Shapley weights, of

    v(T ∪ {a, b}) − v(T ∪ {a}) − v(T ∪ {b}) + v(T),

so it is positive when the pair does more together than the sum of what each does alone,
negative when either one alone already does most of what both do (redundant units), and 0
for a model that is additive in the two. The main effects are the units' order-1 k-SII
values (the Shapley value minus half of each of its pair values); main effects and pairs
sum to v(all top units kept) − v(none kept).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import InvalidInputError

#: The index computed (shapiq's name).
INDEX = "k-SII"
#: Most top units ``interactions`` may ask for.
MAX_INTERACTIONS = 20
#: Up to this many top units the game is computed exactly (2^k coalitions, 256 at 8).
EXACT_MAX_UNITS = 8
#: The approximator's default budget (at least twice the number of values it fits).
DEFAULT_BUDGET = 2**EXACT_MAX_UNITS

__all__ = ["DEFAULT_BUDGET", "EXACT_MAX_UNITS", "INDEX", "MAX_INTERACTIONS", "n_terms", "pairwise_interactions",
           "require_shapiq"]


def require_shapiq():
    """The shapiq module, or InvalidInputError saying how to install it."""
    try:
        import shapiq
    except ImportError:
        raise InvalidInputError("interactions needs the interactions extra: pip install 'gsmile[interactions]'",
                                field="interactions") from None
    return shapiq


def n_terms(k: int) -> int:
    """Values an order-2 fit over ``k`` players estimates: the empty set, k units, k(k-1)/2 pairs."""
    return 1 + k + k * (k - 1) // 2


def plan(k: int, budget: int | None) -> tuple[bool, int]:
    """``(exact, evaluations)`` for ``k`` top units and the budget asked for (None: default)."""
    full = 2**k
    if budget is None:
        return (True, full) if k <= EXACT_MAX_UNITS else (False, min(full, max(DEFAULT_BUDGET, 2 * n_terms(k))))
    if budget >= full:
        return True, full
    if budget <= n_terms(k):
        raise InvalidInputError(f"interaction_budget {budget} is too small for {k} units: the estimate fits {n_terms(k)} "
                                f"values, so give more than that (or {full} for the exact values)",
                                field="interaction_budget")
    return False, int(budget)


def pairwise_interactions(value: Callable[[np.ndarray], np.ndarray], units: list[int], *, budget: int | None = None,
                          random_state: int | None = None) -> dict:
    """k-SII of order 2 over ``units`` (the explanation's unit indices, most important first).

    value: coalitions (a boolean matrix, one column per entry of ``units``, True = kept) ->
        the game's values.
    budget: game evaluations; None: exact up to :data:`EXACT_MAX_UNITS` units, else
        :data:`DEFAULT_BUDGET` (at least twice the values fitted). A budget of 2^k or more
        is exact.
    random_state: the approximator's seed (unused when exact).

    Returns the plain record of ``extras["interactions"]``: ``index``, ``order`` (2),
    ``units``, ``main`` (one value per entry of ``units``), ``pairs`` (``{"a", "b",
    "value"}`` with unit indices, by |value| descending, ties in unit order), ``baseline``
    (the value with no top unit kept), ``exact`` and ``n_evals`` (coalitions evaluated).
    """
    shapiq = require_shapiq()
    k = len(units)
    exact, evaluations = plan(k, budget)
    counted = [0]

    def game(coalitions) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool).reshape(-1, k)
        counted[0] += len(coalitions)
        return np.asarray(value(coalitions), dtype=float)

    if exact:
        values = shapiq.ExactComputer(game, n_players=k)(index=INDEX, order=2)
    else:
        approximator = shapiq.KernelSHAPIQ(n=k, max_order=2, index=INDEX, random_state=random_state)
        values = approximator.approximate(int(evaluations), game)
    keys = [(i,) for i in range(k)] + [(i, j) for i in range(k) for j in range(i + 1, k)]
    scale = max(abs(float(values[key])) for key in keys)

    def clean(x) -> float:
        """Floating-point residue (below 1e-12 of the largest value) as the 0 it is."""
        x = float(x)
        return 0.0 if abs(x) <= 1e-12 * scale else x

    main = [clean(values[(i,)]) for i in range(k)]
    pairs = [{"a": int(units[i]), "b": int(units[j]), "value": clean(values[(i, j)])}
             for i in range(k) for j in range(i + 1, k)]
    pairs.sort(key=lambda p: -abs(p["value"]))  # stable: ties keep the top units' order
    return {"index": INDEX, "order": 2, "units": [int(u) for u in units], "main": main, "pairs": pairs,
            "baseline": float(values[()]), "exact": bool(exact), "n_evals": int(counted[0])}
