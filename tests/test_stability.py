"""Repeated-run stability: metrics by hand, and runs=R in the explainer."""

import json
import warnings

import numpy as np
import pytest

from gsmile import explain
from gsmile.errors import InvalidInputError
from gsmile.stability import stability, top_k_units, topk_jaccard

PROMPT = "alpha bravo charlie delta echo foxtrot golf"


def wobbly(texts):
    """Additive in words plus a length term, so sampled methods vary with the seed."""
    weights = {"alpha": 3.0, "bravo": -1.5, "delta": 2.25, "echo": 0.5, "golf": 1.0}
    return [sum(weights.get(w, 0.0) for w in t.split()) + 0.3 * np.sin(len(t)) for t in texts]


def quiet_explain(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return explain(*args, **kwargs)


def test_top_k_units_breaks_ties_by_position():
    assert top_k_units([1.0, -3.0, 3.0, 0.5], 2) == {1, 2}
    assert top_k_units([1.0, 1.0, 1.0], 2) == {0, 1}
    assert top_k_units([1.0, 2.0], 5) == {0, 1}


def test_topk_jaccard_by_hand():
    runs = [[3, 2, 1, 0], [3, 0, 2, 1], [0, 1, 2, 3]]
    # top-2 sets {0,1}, {0,2}, {2,3}: Jaccard 1/3, 0, 1/3 -> mean 2/9
    assert topk_jaccard(runs, 2) == pytest.approx(2 / 9)
    assert topk_jaccard([[1, 2, 3], [1, 2, 3]], 2) == 1.0
    assert topk_jaccard([[1, 2, 3]], 2) is None


def test_stability_by_hand():
    runs = np.array([[1.0, 2.0, 0.1, -1.0], [3.0, 2.0, -0.1, -1.0]])
    report = stability(runs, k=1, seeds=[5, 6])
    assert report["mean"] == [2.0, 2.0, 0.0, -1.0]
    assert report["std"] == pytest.approx([np.sqrt(2.0), 0.0, np.sqrt(0.02), 0.0])
    assert report["sign_flips"] == [2]
    assert report["high_variance"] == [2]  # std > |mean|: only unit 2 (√2 < 2 for unit 0)
    assert report["unstable"] == [2]
    assert report["topk_jaccard"] == pytest.approx(0.0)  # top-1: {1} vs {0}
    assert report["seeds"] == [5, 6] and report["runs"] == 2 and report["top_k"] == 1
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("bad, message", [([[np.nan, 1.0]], "finite"), ([1.0, 2.0], "runs, units"), ([[1.0]], None)])
def test_stability_input_checks(bad, message):
    if message is None:
        assert stability(bad)["runs"] == 1
    else:
        with pytest.raises(InvalidInputError, match=message):
            stability(bad)


def test_runs_average_the_seeded_runs_and_report_stability():
    runs = quiet_explain(PROMPT, model=wobbly, method="lime", n_samples=40, runs=3, random_state=10)
    singles = [quiet_explain(PROMPT, model=wobbly, method="lime", n_samples=40, random_state=s) for s in (10, 11, 12)]
    per_run = np.array([e.coefficients for e in singles])
    np.testing.assert_allclose(runs.coefficients, per_run.mean(axis=0), atol=1e-12)
    report = runs.extras["stability"]
    assert report["seeds"] == [10, 11, 12] and report["runs"] == 3 and report["top_k"] == 3
    np.testing.assert_allclose(report["coefficients"], per_run, atol=1e-12)
    np.testing.assert_allclose(report["std"], per_run.std(axis=0, ddof=1), atol=1e-12)
    assert report["topk_jaccard"] == pytest.approx(topk_jaccard(per_run, 3))
    assert runs.params["runs"] == 3 and runs.random_state == 10
    assert runs.n_samples == 40
    json.dumps(runs.to_dict(), allow_nan=False)


def test_deterministic_method_is_perfectly_stable_and_scored_once():
    calls = []

    def counting(texts):
        calls.extend(texts)
        return wobbly(texts)

    exp = quiet_explain(PROMPT, model=counting, method="occlusion", runs=4, top_k=2, random_state=0)
    report = exp.extras["stability"]
    assert report["topk_jaccard"] == 1.0 and report["unstable"] == [] and max(report["std"]) == 0.0
    assert len(calls) == 8  # N + 1 texts, evaluated once across the 4 runs
    assert exp.n_unique == 8


def test_unstable_units_are_flagged_in_the_warnings():
    def noisy(texts):  # deterministic, but unrelated to which words are present
        return [float(sum(ord(c) for c in t) % 7) for t in texts]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = explain(PROMPT, model=noisy, method="lime", n_samples=20, runs=3, random_state=0)
    report = exp.extras["stability"]
    assert report["unstable"], "a model of character-code noise should give unstable units"
    assert any("unstable across the 3 runs" in str(w.message) for w in caught)


def test_runs_without_a_seed_pick_one_and_record_it():
    exp = quiet_explain(PROMPT, model=wobbly, method="mupax", n_samples=30, runs=2)
    seeds = exp.extras["stability"]["seeds"]
    assert exp.random_state == seeds[0] and seeds[1] == seeds[0] + 1
    again = quiet_explain(PROMPT, model=wobbly, method="mupax", n_samples=30, runs=2, random_state=seeds[0])
    np.testing.assert_array_equal(exp.coefficients, again.coefficients)


@pytest.mark.parametrize("options, message", [({"runs": 0}, "runs must be an integer"), ({"runs": 2.5}, "runs must be"), ({"top_k": 0}, "top_k must be")])
def test_bad_runs_or_top_k(options, message):
    with pytest.raises(InvalidInputError, match=message):
        explain(PROMPT, model=wobbly, **options)
