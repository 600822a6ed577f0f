"""Anchors for prompts: the fewest units that, kept, preserve the model's answer.

After Ribeiro, Singh and Guestrin, "Anchors: High-Precision Model-Agnostic Explanations"
(AAAI 2018), over the units of a prompt.

* Preserved: the negation of :mod:`gsmile.counterfactual`'s "changed": a language model's
  greedy answer compares equal to the original's (``compare``), or, with ``threshold``,
  the explained value stays on the original's side of the level (``criterion="cross"``,
  the default for scalar models: the same class) or within ``threshold`` of the original
  value (``criterion="change"``: |y − y0| < threshold).
* Perturbation distribution D(A): the units of the anchor A are kept; every other unit is
  removed independently with probability ``p_remove`` (default 0.5).
* Precision(A) = P(preserved) under D(A); coverage(A) = (1 − p_remove)^|A|, the share of
  the perturbations of the whole prompt (every unit removed with probability p_remove)
  that keep A, computed exactly.
* Bound: each candidate is sampled in rounds of ``round_size`` perturbations; after its
  r-th round, with n samples and estimate p̂, the Bernoulli KL (Chernoff) bounds
  lb = min{q <= p̂ : n·KL(p̂‖q) <= β_r} and ub = max{q >= p̂ : n·KL(p̂‖q) <= β_r} with
  β_r = log(π² r² / (6 δ)) — the KL confidence bounds of KL-LUCB, with δ spent over the
  rounds (Σ_r 6δ/(π² r²) = δ), so the candidate's interval holds at every round at once
  with probability >= 1 − δ. The candidate is accepted when lb >= τ (``precision``),
  rejected when ub < τ, and left undecided after ``max_samples`` samples. δ is per
  candidate: the search tests several, as Anchors does, without dividing δ among them.
* Search: beam search by size. Size 0 (the empty anchor) first, then every single unit,
  then the extensions by one unit of the ``beam_size`` best candidates of the size before
  (highest precision estimate; ties by the attribution order). Within a size, candidates
  are tried in decreasing order of summed attribution score (occlusion, as for
  counterfactuals) and the first accepted one is the anchor. So the anchor is minimal in
  this sense: no candidate examined at a smaller size was accepted (every unit alone was
  examined; larger sizes only within the beam).

Each distinct perturbed input is evaluated once (cached by text); ``n_samples`` counts
draws (repeats included), ``n_calls`` model calls (the attribution run's included).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .counterfactual import DEFAULT_MAX_CALLS, DEFAULT_MAX_NEW_TOKENS, Oracle, _SearchResult, check_common, check_threshold
from .errors import InvalidInputError, check_int

SCHEMA = "gsmile.anchor"
VERSION = 1
DEFAULT_ROUND_SIZE = 32
DEFAULT_MAX_SAMPLES = 1024

__all__ = ["AnchorResult", "anchor", "kl_bounds"]


def _kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) ‖ Bernoulli(q))."""
    eps = 1e-15
    q = min(max(q, eps), 1 - eps)
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def kl_bounds(p_hat: float, n: int, beta: float) -> tuple[float, float]:
    """(lb, ub): the q below and above ``p_hat`` where n·KL(p_hat‖q) reaches ``beta`` (bisection)."""
    level = beta / n

    def solve(lo, hi, below):
        for _ in range(60):
            mid = (lo + hi) / 2
            inside = _kl(p_hat, mid) <= level
            if below:
                lo, hi = (lo, mid) if inside else (mid, hi)
            else:
                lo, hi = (mid, hi) if inside else (lo, mid)
        return hi if below else lo

    lb = 0.0 if p_hat <= 0 or _kl(p_hat, 0.0) <= level else solve(0.0, p_hat, True)
    ub = 1.0 if p_hat >= 1 or _kl(p_hat, 1.0) <= level else solve(p_hat, 1.0, False)
    return lb, ub


def round_beta(r: int, delta: float) -> float:
    """β of round r (1, 2, ...): log(π² r² / (6 δ))."""
    return math.log(math.pi ** 2 * r * r / (6 * delta))


@dataclass
class AnchorResult(_SearchResult):
    """What :func:`anchor` found.

    anchor: ``{"units": [i...], "texts": [...], "precision", "precision_lb", "precision_ub",
        "samples", "coverage"}`` or None when no candidate was accepted.
    candidates: every candidate examined, in order: ``{"units", "size", "samples",
        "precision", "precision_lb", "precision_ub", "decision": "accepted" | "rejected" |
        "undecided"}``.
    stopped: "found", "max_size" or "max_calls". n_samples: draws over every candidate;
    n_calls: model calls (``calls_attribution`` + ``calls_search``).
    """

    SCHEMA = SCHEMA
    VERSION = VERSION

    anchor: dict | None
    candidates: list[dict]
    stopped: str
    n_samples: int

    def lines(self) -> list[str]:
        out = [self.original_line()]
        a = self.anchor
        if a is None:
            out.append(f"No anchor reached precision {self.params['precision']:g} (stopped: {self.stopped}).")
        else:
            kept = ", ".join(repr(t) for t in a["texts"]) or "(nothing: the answer holds without any unit)"
            out.append(f"Anchor: {kept}")
            out.append(f"  precision {a['precision']:.3f} (lower bound {a['precision_lb']:.3f} >= {self.params['precision']:g}, "
                       f"δ {self.params['delta']:g}) over {a['samples']} samples; coverage {a['coverage']:.3g}")
        out.append(f"Candidates examined: {len(self.candidates)}; samples: {self.n_samples}; model calls: {self.n_calls} "
                   f"({self.calls_attribution} attribution, {self.calls_search} search)")
        return out


def anchor(prompt: str, model=None, *, unit: str = "word", precision: float = 0.95, delta: float = 0.05,
           p_remove: float = 0.5, threshold: float | None = None, criterion: str | None = None, beam_size: int = 2,
           max_size: int | None = None, round_size: int = DEFAULT_ROUND_SIZE, max_samples: int = DEFAULT_MAX_SAMPLES,
           max_calls: int = DEFAULT_MAX_CALLS, attributions=None, compare: str = "exact", target: str = "wasserstein",
           max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int | None = None,
           random_state: int | None = 0) -> AnchorResult:
    """The smallest set of units that, kept, preserves the answer with precision >= ``precision``
    (lower confidence bound at ``delta``) when each other unit is removed with probability
    ``p_remove`` (see the module doc). Options shared with :func:`~gsmile.counterfactual.counterfactuals`
    mean the same. ``max_size``: largest anchor tried (default: every unit).
    ``round_size``: draws per sampling round; ``max_samples``: draws per candidate at most;
    ``max_calls``: model calls at most (attribution run included; checked between rounds).
    ``random_state``: seed of the draws (the same seed gives the same result; ``batch_size``
    never changes it)."""
    tic = time.perf_counter()
    check_common(prompt, unit, compare, max_new_tokens, batch_size, max_calls, random_state)
    for name, value in (("precision", precision), ("delta", delta), ("p_remove", p_remove)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value < 1:
            raise InvalidInputError(f"{name} must be a number strictly between 0 and 1, got {value!r}", field=name)
    check_int("beam_size", beam_size, 1, 1000)
    check_int("round_size", round_size, 1, 100_000)
    check_int("max_samples", max_samples, 1, 10_000_000)
    if max_size is not None:
        check_int("max_size", max_size, 0, 100_000)
    check_threshold(threshold, criterion)
    oracle = Oracle(prompt, model, unit=unit, threshold=threshold, criterion=criterion, compare=compare,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, attributions=attributions,
                    random_state=random_state, target=target)
    t_search = time.perf_counter()
    seg = oracle.segmentation
    n = len(seg)
    scores = oracle.unit_scores
    rng = np.random.default_rng(random_state)
    top = n if max_size is None else min(int(max_size), n)
    candidates: list[dict] = []
    found, stopped = None, "max_size"
    beam: list[tuple[int, ...]] = [()]
    n_samples = 0

    def priority(units):
        return (-math.fsum(float(scores[i]) for i in units), units)

    for size in range(0, top + 1):
        if size == 0:
            level = [()]
        else:
            level = sorted({tuple(sorted(b + (i,))) for b in beam for i in range(n) if i not in b}, key=priority)
        tried = []
        for units in level:
            record, out_of_calls = _test(oracle, seg, units, rng, precision, delta, p_remove, round_size, max_samples, max_calls)
            n_samples += record["samples"]
            if record["samples"]:
                candidates.append(record)
                tried.append((record, units))
            if record["decision"] == "accepted":
                found = record
                break
            if out_of_calls:
                stopped = "max_calls"
                break
        if found is not None:
            stopped = "found"
            break
        if stopped == "max_calls":
            break
        tried.sort(key=lambda t: (-t[0]["precision"],) + priority(t[1]))
        beam = [units for _, units in tried[: int(beam_size)]]
    result_anchor = None
    if found is not None:
        result_anchor = {**found, "texts": [seg.units[i].text for i in found["units"]],
                         "coverage": (1 - float(p_remove)) ** len(found["units"])}
    return AnchorResult(
        **oracle.result_fields(prompt, unit),
        anchor=result_anchor, candidates=candidates, stopped=stopped, n_samples=n_samples,
        params={"precision": float(precision), "delta": float(delta), "p_remove": float(p_remove), "beam_size": int(beam_size),
                "max_size": max_size, "round_size": int(round_size), "max_samples": int(max_samples), "max_calls": int(max_calls),
                "bound": "kl-anytime", "compare": compare, "target": target if oracle.is_lm else None,
                "max_new_tokens": int(max_new_tokens) if oracle.is_lm else None, "random_state": random_state},
        timings={"attribution_and_setup": t_search - tic, "search": time.perf_counter() - t_search},
    )


def _test(oracle: Oracle, seg, units: tuple[int, ...], rng, tau, delta, p_remove, round_size, max_samples, max_calls):
    """Sample the candidate ``units`` in rounds until its bound decides; (record, out_of_calls)."""
    n = len(seg)
    kept = np.zeros(n, dtype=bool)
    kept[list(units)] = True
    hits = samples = rounds = 0
    lb, ub, decision = 0.0, 1.0, "undecided"
    out_of_calls = False
    while samples < max_samples:
        if oracle.n_calls >= max_calls:
            out_of_calls = True
            break
        m = min(round_size, max_samples - samples)
        masks = (rng.random((m, n)) >= p_remove) | kept
        outcomes = oracle.outcomes([seg.render(mask) for mask in masks])
        hits += sum(not changed for changed, _ in outcomes)
        samples += m
        rounds += 1
        lb, ub = kl_bounds(hits / samples, samples, round_beta(rounds, delta))
        if lb >= tau:
            decision = "accepted"
            break
        if ub < tau:
            decision = "rejected"
            break
    return {"units": [int(i) for i in units], "size": len(units), "samples": samples,
            "precision": hits / samples if samples else 0.0, "precision_lb": lb, "precision_ub": ub,
            "decision": decision}, out_of_calls
