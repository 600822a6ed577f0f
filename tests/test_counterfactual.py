"""Counterfactual prompts and anchors (gsmile.counterfactual, gsmile.anchors, their commands)."""

import json
import math
from itertools import combinations

import pytest

from gsmile.anchors import AnchorResult, anchor, kl_bounds, round_beta
from gsmile.backends import ScalarModel
from gsmile.cli import main
from gsmile.counterfactual import CounterfactualResult, counterfactuals, edit_text, enumeration_calls, ranked_sets
from gsmile.errors import InvalidInputError, SchemaError
from gsmile.units import Segmentation

SHAPES = "Please draw a big red circle and a blue square"
#: Weights are binary fractions, so every sum is exact. Total 0.9375; threshold 0.5: the value
#: falls below it only when more than 0.4375 is removed: no single word, and of the pairs only
#: {red, blue} (red + a small word leaves exactly 0.5, not below).
WEIGHTS = {"red": 0.375, "blue": 0.375, "big": 0.0625, "circle": 0.0625, "square": 0.0625}


class Counting:
    """A scalar black box that counts the texts it is sent."""

    def __init__(self, func):
        self.func, self.sent = func, []

    def __call__(self, texts):
        self.sent += list(texts)
        return [self.func(t) for t in texts]


def shapes(text):
    return sum(w for word, w in WEIGHTS.items() if word in text.split())


def shapes_model(texts):
    return [shapes(t) for t in texts]


def strip(result):
    data = result.to_dict()
    data.pop("timings")
    return data


def test_finds_the_unique_minimal_counterfactual_with_fewer_calls_than_enumeration():
    model = Counting(shapes)
    result = counterfactuals(SHAPES, model, threshold=0.5, k=1, max_size=3)
    [cf] = result.counterfactuals
    assert sorted(e["text"] for e in cf["edits"]) == ["blue", "red"] and cf["size"] == 2
    assert cf["prompt"] == "Please draw a big circle and a square" and cf["value"] == 0.1875
    assert result.minimal_size == 2 and result.proven_minimal and result.exhausted_size == 1 and result.stopped == "k_found"
    # Every call counted, each distinct text once: 1 original + 10 leave-one-out (the attribution
    # run, reused as size 1) + the first size-2 candidate.
    assert result.n_calls == len(model.sent) == len(set(model.sent)) == 12
    assert result.calls_attribution == 11 and result.calls_search == 1
    n = len(result.units)
    enumeration = 1 + n + math.comb(n, 2)
    assert result.enumeration_calls == enumeration == 56 and result.n_calls < enumeration
    # The unique minimal set, checked by brute force.
    seg = Segmentation.from_text(SHAPES, "word")
    flips = [c for s in (1, 2) for c in combinations(range(n), s) if shapes(edit_text(seg, [(i, None) for i in c])) < 0.5]
    assert [[seg.units[i].text for i in c] for c in flips] == [["red", "blue"]]


def test_more_counterfactuals_are_subset_minimal_and_supersets_are_skipped():
    result = counterfactuals(SHAPES, shapes_model, threshold=0.5, k=4, max_size=3)
    sets = [frozenset(e["unit"] for e in cf["edits"]) for cf in result.counterfactuals]
    assert [len(s) for s in sets] == [2, 3, 3, 3] and result.exhausted_size == 2 and result.proven_minimal
    assert all(not a < b for a in sets for b in sets)  # none contains another
    assert result.n_skipped_supersets > 0
    for cf in result.counterfactuals:
        assert cf["value"] < 0.5 and shapes(cf["prompt"]) == cf["value"]


def test_misleading_attributions_cost_calls_not_minimality():
    # An OR: removing either word alone changes nothing, so occlusion gives every unit 0.
    def either(texts):
        return [1.0 if {"red", "blue"} & set(t.split()) else 0.0 for t in texts]

    result = counterfactuals(SHAPES, either, threshold=0.5, k=1, max_size=2)
    assert all(a == 0 for a in result.attributions)
    [cf] = result.counterfactuals
    assert sorted(e["text"] for e in cf["edits"]) == ["blue", "red"] and result.proven_minimal
    # Given attributions that point elsewhere, it is still found (size 1 exhausted first).
    wrong = counterfactuals(SHAPES, either, threshold=0.5, k=1, max_size=2, attributions=[1.0] * 4 + [0.0] * 6)
    assert wrong.counterfactuals[0]["edits"] == cf["edits"] and wrong.calls_attribution == 0


def test_ranked_sets_yield_every_set_once_in_order_of_summed_score():
    scores = [0.5, 3.0, -1.0, 2.0, 0.0, 2.0]
    for size in range(0, 7):
        sets = list(ranked_sets(scores, size))
        assert sorted(sets) == sorted(combinations(range(6), size))
        sums = [sum(scores[i] for i in s) for s in sets]
        assert sums == sorted(sums, reverse=True)
    assert enumeration_calls([3, 3, 1], 2) == 1 + 7 + (9 + 3 + 3)


def test_max_calls_stops_and_says_how_far_minimality_holds():
    result = counterfactuals(SHAPES, shapes_model, threshold=0.5, k=1, max_size=3, attributions=[0.0] * 10, max_calls=20)
    assert result.stopped == "max_calls" and result.n_calls == 20
    assert result.counterfactuals == [] and result.exhausted_size == 1 and not result.proven_minimal


def test_replacement_is_found():
    def italy(texts):
        return [1.0 if "capital of Italy" in t else 0.0 for t in texts]

    result = counterfactuals("What is the capital of France?", italy, threshold=0.5, replacements=["Italy", "Spain"], k=1)
    [cf] = result.counterfactuals
    assert cf["edits"] == [{"unit": 5, "text": "France", "op": "replace", "replacement": "Italy"}]
    assert cf["prompt"] == "What is the capital of Italy?" and cf["value"] == 1.0 and result.proven_minimal
    assert result.original["value"] == 0.0 and result.criterion == {"kind": "cross", "threshold": 0.5}


def test_change_criterion():
    result = counterfactuals(SHAPES, shapes_model, threshold=0.3, criterion="change", k=1)
    [cf] = result.counterfactuals
    assert [e["text"] for e in cf["edits"]] == ["red"] and abs(cf["value"] - 0.9375) >= 0.3


def test_counterfactual_json_round_trip():
    result = counterfactuals("What is the capital of France?", lambda ts: [float("Italy" in t) for t in ts], threshold=0.5,
                             replacements=["Italy"], k=2, max_size=2)
    text = result.to_json()
    data = json.loads(text)
    assert data["schema"] == "gsmile.counterfactual" and data["version"] == 1
    again = CounterfactualResult.from_json(text)
    assert again == result and again.to_json() == text
    with pytest.raises(SchemaError):
        CounterfactualResult.from_dict({**data, "version": 2})
    with pytest.raises(SchemaError):
        AnchorResult.from_dict(data)


def test_same_seed_same_result_and_batch_size_changes_nothing():
    a = counterfactuals(SHAPES, shapes_model, threshold=0.5, k=3, random_state=1, batch_size=1)
    b = counterfactuals(SHAPES, shapes_model, threshold=0.5, k=3, random_state=1, batch_size=64)
    assert strip(a) == strip(b)
    x = anchor(NOT_GOOD, both, threshold=0.5, random_state=4, batch_size=1)
    y = anchor(NOT_GOOD, both, threshold=0.5, random_state=4, batch_size=50)
    assert strip(x) == strip(y)
    z = anchor(NOT_GOOD, both, threshold=0.5, random_state=5)
    assert z.anchor["units"] == x.anchor["units"] and strip(z) != strip(x)  # other draws, the same anchor


NOT_GOOD = "The movie was not good at all honestly"


def both(texts):
    return [1.0 if {"not", "good"} <= set(t.split()) else 0.0 for t in texts]


def test_anchor_is_exactly_not_good_with_a_precision_bound():
    model = Counting(lambda t: both([t])[0])
    result = anchor(NOT_GOOD, model, threshold=0.5, precision=0.95, delta=0.05, random_state=0)
    a = result.anchor
    assert a["texts"] == ["not", "good"] and a["units"] == [3, 4]
    assert a["precision"] == 1.0 and a["precision_lb"] >= 0.95 and a["coverage"] == 0.25
    # All successes: lb = exp(-β_r / n); the first round whose bound passes 0.95 is the 4th (128 draws).
    assert a["samples"] == 128 and math.isclose(a["precision_lb"], math.exp(-round_beta(4, 0.05) / 128), rel_tol=1e-9)
    # Nothing smaller was accepted: the empty anchor and every single unit were rejected.
    smaller = [c for c in result.candidates if c["size"] < 2]
    assert len(smaller) == 1 + 8 and all(c["decision"] == "rejected" and c["precision_ub"] < 0.95 for c in smaller)
    assert result.n_samples == sum(c["samples"] for c in result.candidates)
    assert result.n_calls == len(set(model.sent)) == result.calls_attribution + result.calls_search
    assert result.calls_attribution == 9 and result.n_calls < result.n_samples  # repeated draws are scored once
    text = result.to_json()
    assert json.loads(text)["schema"] == "gsmile.anchor"
    assert AnchorResult.from_json(text) == result


def test_kl_bounds_bracket_the_estimate():
    lb, ub = kl_bounds(0.5, 100, math.log(20))
    assert 0.35 < lb < 0.5 < ub < 0.65 and math.isclose(0.5 - lb, ub - 0.5, rel_tol=1e-6)
    assert kl_bounds(1.0, 10, 1.0)[1] == 1.0 and kl_bounds(0.0, 10, 1.0)[0] == 0.0


@pytest.mark.parametrize("call, field", [
    (lambda: counterfactuals(SHAPES, shapes_model, threshold=0.5, max_size=0), "max_size"),
    (lambda: counterfactuals(SHAPES, shapes_model, threshold=0.5, replacements=["Italy", ""]), "replacements"),
    (lambda: counterfactuals(SHAPES, shapes), "threshold"),
    (lambda: counterfactuals(SHAPES, shapes_model, threshold=0.0, criterion="change"), "threshold"),
    (lambda: counterfactuals(SHAPES, shapes_model, threshold=0.5, attributions=[1.0, 2.0]), "attributions"),
    (lambda: anchor(NOT_GOOD, both, threshold=0.5, precision=1.0), "precision"),
    (lambda: anchor(NOT_GOOD, both, threshold=0.5, precision=0), "precision"),
    (lambda: anchor(NOT_GOOD, both, threshold=0.5, delta=1.5), "delta"),
])
def test_bad_input_is_one_line(call, field):
    with pytest.raises(InvalidInputError) as info:
        call()
    assert info.value.field == field and "\n" not in str(info.value)


@pytest.mark.parametrize("argv", [
    ["counterfactual", "What is the capital of France?", "--max-size", "0"],
    ["counterfactual", "What is the capital of France?", "--replace", "Italy", ""],
    ["anchor", "What is the capital of France?", "--precision", "1.5"],
    ["counterfactual", "  "],
])
def test_cli_mistakes_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsmile: error:") and err.count("\n") == 1


def test_cli_prints_counterfactuals_and_writes_json(monkeypatch, tmp_path, capsys):
    import gsmile.counterfactual as module

    monkeypatch.setattr(module, "resolve_model", lambda model: ScalarModel(lambda ts: [shapes(t) for t in ts]))
    path = tmp_path / "cf.json"
    assert main(["counterfactual", SHAPES, "--threshold", "0.5", "--criterion", "cross", "--k", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "remove 'red', remove 'blue'" in out and "Model calls: 12" in out
    assert CounterfactualResult.from_json(path.read_text()).counterfactuals[0]["size"] == 2
    monkeypatch.setattr(module, "resolve_model", lambda model: ScalarModel(both))
    assert main(["anchor", NOT_GOOD, "--threshold", "0.5", "--criterion", "cross"]) == 0
    assert "Anchor: 'not', 'good'" in capsys.readouterr().out


@pytest.mark.model
def test_real_model_counterfactual_counts_calls(lm):
    result = counterfactuals("What is the capital of France?", lm, max_size=1, max_new_tokens=8, k=1)
    assert result.mode == "answer" and result.original["answer"].strip()
    assert result.calls_attribution == 7 + 1  # the original and 6 leave-one-out scorings, one greedy generation
    assert 1 <= result.calls_search <= 6 and result.n_calls == result.calls_attribution + result.calls_search
    for cf in result.counterfactuals:
        assert cf["answer"].strip() != result.original["answer"].strip() and cf["size"] == 1
    assert CounterfactualResult.from_json(result.to_json()) == result


@pytest.mark.model
def test_an_anchor_of_the_embedded_model_keeps_what_its_answer_needs(lm):
    """The real model, answer mode: the anchor keeps "capital" and "France", its precision
    bound clears the bar, and the prompt cut down to the anchor alone gets the same answer."""
    prompt = "What is the capital of France?"
    result = anchor(prompt, lm, max_new_tokens=8, max_calls=300)
    assert result.stopped == "found" and result.mode == "answer"
    a = result.anchor
    assert {"capital", "France"} <= set(a["texts"]) and a["precision_lb"] >= 0.95 and a["size"] < len(result.units)
    kept = Segmentation.from_text(prompt, "word").render([i in a["units"] for i in range(len(result.units))])
    assert lm.decode(lm.generate(kept, 8)).strip() == result.original["answer"].strip()
    assert AnchorResult.from_json(result.to_json()).anchor == a
