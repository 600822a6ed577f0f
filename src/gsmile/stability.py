"""Stability of explanations: pure statistics, no model.

Stability across repeated runs (:func:`topk_jaccard`, :func:`stability`): the same input
explained with seeds ``seed .. seed+R-1``; each function takes the coefficients of every
run as an ``(R, n_units)`` array and returns plain data.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import numpy as np

from .errors import InvalidInputError

DEFAULT_TOP_K = 3


def _runs(coefficient_runs) -> np.ndarray:
    runs = np.asarray(coefficient_runs, dtype=float)
    if runs.ndim != 2 or runs.shape[0] < 1 or runs.shape[1] < 1:
        raise InvalidInputError(f"coefficients of the runs must be a (runs, units) array, got shape {runs.shape}")
    if not np.all(np.isfinite(runs)):
        raise InvalidInputError("coefficients of the runs must be finite numbers")
    return runs


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"top-k must be a positive integer, got {k!r}")
    return int(k)


def top_k_units(coefficients: Sequence[float], k: int = DEFAULT_TOP_K) -> set[int]:
    """Indices of the ``k`` units with the largest |coefficient| (ties: the earlier unit)."""
    coefficients = np.asarray(coefficients, dtype=float)
    k = min(_check_k(k), len(coefficients))
    return set(np.argsort(-np.abs(coefficients), kind="stable")[:k].tolist())


def topk_jaccard(coefficient_runs, k: int = DEFAULT_TOP_K) -> float | None:
    """Mean Jaccard index |A ∩ B| / |A ∪ B| of the top-``k`` unit sets over every pair of
    runs; 1 when every run picks the same units. None for a single run (no pair)."""
    runs = _runs(coefficient_runs)
    k = _check_k(k)
    tops = [top_k_units(row, k) for row in runs]
    pairs = [len(a & b) / len(a | b) for a, b in combinations(tops, 2)]
    return float(np.mean(pairs)) if pairs else None


def stability(coefficient_runs, k: int = DEFAULT_TOP_K, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """How stable the explanation is across runs (plain JSON data):

    * ``mean``, ``std``: per unit, over the runs (std with ``ddof=1``; 0 for one run);
    * ``topk_jaccard``: :func:`topk_jaccard` with ``k``;
    * ``sign_flips``: units with a positive coefficient in one run and a negative in another;
    * ``high_variance``: units whose std exceeds |mean|;
    * ``unstable``: the union of both, in input order;
    * ``coefficients``: every run's coefficients; ``seeds`` when given.
    """
    runs = _runs(coefficient_runs)
    k = _check_k(k)
    n_runs = runs.shape[0]
    mean = runs.mean(axis=0)
    std = runs.std(axis=0, ddof=1) if n_runs > 1 else np.zeros(runs.shape[1])
    flips = np.flatnonzero((runs > 0).any(axis=0) & (runs < 0).any(axis=0))
    high = np.flatnonzero(std > np.abs(mean))
    out: dict[str, Any] = {
        "runs": int(n_runs),
        "top_k": k,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "topk_jaccard": topk_jaccard(runs, k),
        "sign_flips": flips.tolist(),
        "high_variance": high.tolist(),
        "unstable": sorted(set(flips.tolist()) | set(high.tolist())),
        "coefficients": runs.tolist(),
    }
    if seeds is not None:
        out["seeds"] = [int(s) for s in seeds]
    return out


def mean_of_runs(fits) -> dict[str, Any]:
    """The runs' fits (:class:`~gsmile.methods.MethodResult`) averaged: coefficients,
    intercept, fidelity (NaN-aware), held-out fidelity (over the runs that have one),
    effective sample size and token matrix."""
    r2s = np.array([fit.fidelity_r2 for fit in fits], dtype=float)
    held_out = [fit.held_out_r2 for fit in fits if fit.held_out_r2 is not None]
    token = fits[0].token_coefficients
    return {
        "coefficients": np.mean([fit.coefficients for fit in fits], axis=0),
        "intercept": float(np.mean([fit.intercept for fit in fits])),
        "fidelity_r2": float(np.nanmean(r2s)) if np.isfinite(r2s).any() else float("nan"),
        "held_out_r2": float(np.mean(held_out)) if held_out else None,
        "effective_sample_size": float(np.mean([fit.effective_sample_size for fit in fits])),
        "token_coefficients": None if token is None else np.mean([fit.token_coefficients for fit in fits], axis=0),
    }


def runs_report(fits, unit_texts: Sequence[str], k: int, seeds: Sequence[int]) -> tuple[dict[str, Any], str | None]:
    """:func:`stability` of the runs' fits with each run's fidelity, and a note naming the
    unstable units (None when every unit is stable)."""
    report = stability([fit.coefficients for fit in fits], k=k, seeds=seeds)
    report["fidelity_r2"] = [None if not np.isfinite(fit.fidelity_r2) else float(fit.fidelity_r2) for fit in fits]
    report["held_out_r2"] = [fit.held_out_r2 for fit in fits]
    if not report["unstable"]:
        return report, None
    listed = ", ".join(repr(unit_texts[i]) for i in report["unstable"][:5])
    more = "..." if len(report["unstable"]) > 5 else ""
    return report, (f"{len(report['unstable'])} unit(s) are unstable across the {len(fits)} runs (sign flips or std above "
                    f"|mean|): {listed}{more}; use more samples or larger units")
