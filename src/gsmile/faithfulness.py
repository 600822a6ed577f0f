"""Faithfulness of explanations, measured on the model: deletion and insertion curves,
their AOPC, and ERASER's comprehensiveness and sufficiency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError
from .inputs import ModelInput
from .scoring import Scorer, explanation_scorer

# ---------------------------------------------------------------------------------------
# Faithfulness: does removing the units the explanation ranks highest move the output most?
#
# Every measure below scores masks over the explanation's units with the explanation's own
# model, target and response (the Explainer's evaluation path: same texts, same Δ). The
# quantity recorded is the output shift from the original input,
#     shift(mask) = y(original) − y(mask),
# with y the explained value (−Δ for a language model, so shift = Δ; f(x) for a scalar
# model). Units are ranked by signed coefficient, largest first: a positive coefficient
# means the unit's presence keeps the output where it is.

#: ERASER's comprehensiveness/sufficiency bins: shares of the units.
DEFAULT_FRACTIONS = (0.1, 0.2, 0.5)


class ExplanationScorer:
    """Scores masks over an explanation's units with its model, target and response: a
    :class:`~gsmile.scoring.Scorer` for the explanation's inputs (made on first use) and
    the :class:`~gsmile.inputs.ModelInput` that turns masks into those inputs.

    ``model`` is what :class:`~gsmile.Explainer` accepts (None: the explanation's own
    ``model_id`` when it names a built-in model, else the embedded SmolLM2). Texts are sent
    to the model once; :attr:`n_calls` counts the texts scored so far (the original input of
    a language model is never re-scored: its shift is 0).
    """

    def __init__(self, explanation, model=None, *, batch_size: int | None = None, progress: bool = False):
        self.explanation = explanation
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self.scorer_: Scorer | None = None

    def _scorer(self) -> Scorer:
        if self.scorer_ is None:
            self.inputs_ = ModelInput.of(self.explanation)
            self.scorer_ = explanation_scorer(self.explanation, self.model, batch_size=self.batch_size, progress=self.progress)
        return self.scorer_

    @property
    def n_calls(self) -> int:
        return self.scorer_.n_calls if self.scorer_ is not None else 0

    def values(self, masks) -> np.ndarray:
        """Explained value y for each mask (rows of booleans over the units)."""
        scorer = self._scorer()
        return scorer.values(self.inputs_.render_all(masks))

    def shifts(self, masks) -> np.ndarray:
        """Output shift from the original, y(original) − y(mask), for each mask."""
        self._scorer()
        full = self.inputs_.segmentation.full_mask[None]
        y = self.values(np.vstack([full, np.atleast_2d(np.asarray(masks, dtype=bool))]))
        return y[0] - y[1:]


def importance_order(coefficients) -> np.ndarray:
    """Unit indices from most to least important (signed coefficient, largest first; ties
    keep input order)."""
    return np.argsort(-np.asarray(coefficients, dtype=float), kind="stable")


def _removal_masks(order: np.ndarray, n_units: int) -> np.ndarray:
    """Row k (0..n) drops the first k units of ``order``."""
    masks = np.ones((n_units + 1, n_units), dtype=bool)
    for k in range(1, n_units + 1):
        masks[k:, order[k - 1]] = False
    return masks


def deletion_curve(scorer: ExplanationScorer, order) -> np.ndarray:
    """Shift from the original after removing the first k units of ``order``, k = 0..n
    (one model call per step; a faithful ranking makes it rise fast)."""
    order = np.asarray(order, dtype=int)
    return scorer.shifts(_removal_masks(order, len(order)))


def insertion_curve(scorer: ExplanationScorer, order) -> np.ndarray:
    """Shift from the original with only the first k units of ``order`` kept, k = 0..n
    (starts at the empty input, ends at 0; a faithful ranking makes it fall fast)."""
    order = np.asarray(order, dtype=int)
    return scorer.shifts(~_removal_masks(order, len(order)))


def aopc(curve) -> float:
    """Area over the perturbation curve: the mean of the curve's n+1 points (k = 0..n)."""
    curve = np.asarray(curve, dtype=float)
    if curve.ndim != 1 or curve.size < 2:
        raise InvalidInputError("a perturbation curve needs at least 2 points (k = 0..n)")
    return float(curve.mean())


def insertion_aopc(curve) -> float:
    """How much of the output the top units recover, averaged over k = 0..n:
    mean(curve[0] − curve[k]) (higher is better, like deletion AOPC)."""
    curve = np.asarray(curve, dtype=float)
    return aopc(curve[0] - curve)


def _k_of(fraction: float, n_units: int) -> int:
    if not (0 < fraction <= 1):
        raise InvalidInputError(f"fractions of units must be in (0, 1], got {fraction!r}")
    return max(1, int(np.ceil(fraction * n_units - 1e-9)))


def comprehensiveness(scorer: ExplanationScorer, order, fractions=DEFAULT_FRACTIONS) -> dict[str, float]:
    """ERASER comprehensiveness: y(x) − y(x without its top k% units), per fraction."""
    order = np.asarray(order, dtype=int)
    n = len(order)
    ks = [_k_of(f, n) for f in fractions]
    shifts = scorer.shifts(_removal_masks(order, n)[ks])
    return {f"{f:g}": float(s) for f, s in zip(fractions, shifts)}


def sufficiency(scorer: ExplanationScorer, order, fractions=DEFAULT_FRACTIONS) -> dict[str, float]:
    """ERASER sufficiency: y(x) − y(only the top k% units kept), per fraction (lower is better)."""
    order = np.asarray(order, dtype=int)
    n = len(order)
    ks = [_k_of(f, n) for f in fractions]
    shifts = scorer.shifts(~_removal_masks(order, n)[ks])
    return {f"{f:g}": float(s) for f, s in zip(fractions, shifts)}


def evaluate(
    explanation,
    model=None,
    *,
    fractions=DEFAULT_FRACTIONS,
    random_state: int | None = 0,
    n_random: int = 1,
    batch_size: int | None = None,
    scorer: ExplanationScorer | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Faithfulness of ``explanation`` on ``model`` (plain JSON data):

    * ``deletion`` / ``insertion``: the curves (shift from the original, k = 0..n units
      removed / kept in order of importance) and ``deletion_aopc`` / ``insertion_aopc``;
    * ``random_deletion_aopc`` / ``random_insertion_aopc``: the same for ``n_random`` random
      orders (seeded with ``random_state``), the reference a ranking should beat;
    * ``comprehensiveness`` / ``sufficiency`` at each fraction of units, and their means;
    * ``fidelity_r2`` (the surrogate's weighted R²) and ``topk_jaccard`` when the explanation
      has a stability report (``runs`` > 1);
    * ``model_calls``: texts the model scored for these measures.
    """
    from .samplers import make_rng

    if isinstance(n_random, bool) or not isinstance(n_random, (int, np.integer)) or n_random < 0:
        raise InvalidInputError(f"n_random must be a non-negative integer, got {n_random!r}")
    fractions = tuple(float(f) for f in fractions)
    for f in fractions:
        _k_of(f, 1)
    scorer = scorer or ExplanationScorer(explanation, model, batch_size=batch_size, progress=progress)
    calls_before = scorer.n_calls
    n = len(explanation.units)
    order = importance_order(explanation.coefficients)
    deletion = deletion_curve(scorer, order)
    insertion = insertion_curve(scorer, order)
    ks = [_k_of(f, n) for f in fractions]
    comp = {f"{f:g}": float(deletion[k]) for f, k in zip(fractions, ks)}
    suff = {f"{f:g}": float(insertion[k]) for f, k in zip(fractions, ks)}
    rng = make_rng(random_state)
    rand_del, rand_ins = [], []
    for _ in range(int(n_random)):
        perm = rng.permutation(n)
        rand_del.append(aopc(deletion_curve(scorer, perm)))
        rand_ins.append(insertion_aopc(insertion_curve(scorer, perm)))
    stability_report = explanation.extras.get("stability") if isinstance(explanation.extras, dict) else None
    fidelity = explanation.fidelity_r2
    return {
        "n_units": n,
        "order": order.tolist(),
        "deletion": deletion.tolist(),
        "insertion": insertion.tolist(),
        "deletion_aopc": aopc(deletion),
        "insertion_aopc": insertion_aopc(insertion),
        "random_deletion_aopc": float(np.mean(rand_del)) if rand_del else None,
        "random_insertion_aopc": float(np.mean(rand_ins)) if rand_ins else None,
        "comprehensiveness": comp,
        "sufficiency": suff,
        "comprehensiveness_mean": float(np.mean(list(comp.values()))),
        "sufficiency_mean": float(np.mean(list(suff.values()))),
        "fidelity_r2": float(fidelity) if fidelity is not None and np.isfinite(fidelity) else None,
        "topk_jaccard": stability_report.get("topk_jaccard") if stability_report else None,
        "target": "logprob (the explanation's logits scored on log p)" if explanation.target == "logit" else explanation.target,
        "model_calls": int(scorer.n_calls - calls_before),
    }
