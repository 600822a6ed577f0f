"""Pairwise interactions among the top units (``interactions=K``; k-SII of order 2 by shapiq)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import gsmile
from gsmile.errors import InvalidInputError
from gsmile.explanation import Explanation
from gsmile.render import render_html
from gsmile.render.terminal import interaction_lines

from conftest import Additive

pytest.importorskip("shapiq")

SENTENCES = ["The vault opens at noon.", "The code is 4721.", "Guards change at six.", "The lobby is blue.",
             "Parking is free.", "Lunch is at one."]
CONTEXT = " ".join(SENTENCES)


class And:
    """1 when both the noon and the code sentence are present, plus small additive terms."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += len(texts)
        out = []
        for t in texts:
            both = "noon" in t and "4721" in t
            out.append(float(both) + 0.1 * ("Guards" in t) + 0.05 * ("lobby" in t) - 0.05 * ("Parking" in t))
        return out


def _explain(model, **options):
    options.setdefault("n_samples", 60)
    options.setdefault("random_state", 0)
    return gsmile.explain("How do I get in?", model=model, context=CONTEXT, context_unit="sentence", **options)


def _pair(record, a, b):
    return next(p["value"] for p in record["pairs"] if {p["a"], p["b"]} == {a, b})


def test_and_model_pair_has_the_largest_positive_interaction():
    model = And()
    exp = _explain(model, interactions=4)
    record = exp.extras["interactions"]
    assert record["index"] == "k-SII" and record["exact"] and record["n_evals"] == 16
    assert set(record["units"]) >= {0, 1}
    top = record["pairs"][0]
    assert {top["a"], top["b"]} == {0, 1}
    assert top["value"] == pytest.approx(1.0)  # k-SII of a pure AND of two players is 1 (see test_hand_computed)
    assert all(abs(p["value"]) < 1e-9 for p in record["pairs"][1:])
    # the main effects: the AND's two players 0 each (1/2 Shapley value − 1/2 of the pair), the others their weights
    main = dict(zip(record["units"], record["main"]))
    assert main[0] == pytest.approx(0.0, abs=1e-9) and main[1] == pytest.approx(0.0, abs=1e-9)
    assert main[2] == pytest.approx(0.1)


def test_additive_model_has_no_interactions():
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    model = Additive(words, [3.0, -1.5, 0.4, 2.25, 0.5, -0.75])
    exp = gsmile.explain(" ".join(words), model=model, n_samples=80, random_state=0, interactions=5)
    record = exp.extras["interactions"]
    assert record["exact"] and record["n_evals"] == 32 and len(record["pairs"]) == 10
    assert max(abs(p["value"]) for p in record["pairs"]) < 1e-6
    # the main effects are the words' own weights, the top units by |weight|
    assert record["units"] == [0, 3, 1, 5, 4]
    assert record["main"] == pytest.approx([3.0, 2.25, -1.5, -0.75, 0.5])


def test_hand_computed():
    """f = x1·x2 over three words. The k-SII pair value at the highest order is the Shapley
    interaction index (Bordt & von Luxburg, AISTATS 2023, n-Shapley values):
    SII_12 = Σ_{T ⊆ {3}} |T|!(n−|T|−2)!/(n−1)! · [f(T∪12) − f(T∪1) − f(T∪2) + f(T)]
           = (0!·1!/2! + 1!·0!/2!) · 1 = 1   (Grabisch & Roubens 1999).
    Order-1 values: k-SII_1 = SV_1 + B_1·SII_12 with the Bernoulli number B_1 = −1/2, so
    1/2 − 1/2 = 0 (likewise unit 2); unit 3 never changes f, so 0."""
    model = lambda texts: [float("one" in t.split() and "two" in t.split()) for t in texts]  # noqa: E731
    exp = gsmile.explain("one two three", model=model, n_samples=20, random_state=0, interactions=3)
    record = exp.extras["interactions"]
    assert record["exact"] and record["n_evals"] == 8
    assert _pair(record, 0, 1) == pytest.approx(1.0)
    assert _pair(record, 0, 2) == pytest.approx(0.0, abs=1e-12) and _pair(record, 1, 2) == pytest.approx(0.0, abs=1e-12)
    main = dict(zip(record["units"], record["main"]))
    assert main == pytest.approx({0: 0.0, 1: 0.0, 2: 0.0})
    assert record["baseline"] == 0.0
    assert sum(record["main"]) + sum(p["value"] for p in record["pairs"]) == pytest.approx(1.0)  # v(N) − v(∅)


def test_evaluations_counted_and_reproducible():
    model = And()
    plain = _explain(And())
    exp = _explain(model, interactions=3)
    record = exp.extras["interactions"]
    assert record["n_evals"] == 8 and 0 < record["n_new"] <= 8
    assert exp.n_unique == plain.n_unique + record["n_new"] == model.calls  # every input sent once
    assert exp.params["interactions"] == 3 and exp.timings["interactions"] >= 0
    # an estimate (budget below 2^k) is seeded by random_state
    words = [f"w{i}" for i in range(10)]
    additive = Additive(words, np.linspace(1, 2, 10))

    def model2(texts):
        base = np.array(additive(texts))
        return base + np.array([2.0 * ("w0" in t.split() and "w9" in t.split()) for t in texts])

    a = gsmile.explain(" ".join(words), model=model2, n_samples=60, random_state=3, interactions=10)
    b = gsmile.explain(" ".join(words), model=model2, n_samples=60, random_state=3, interactions=10)
    ra, rb = a.extras["interactions"], b.extras["interactions"]
    assert not ra["exact"] and ra["n_evals"] == 256
    assert ra == rb
    top = ra["pairs"][0]
    assert {top["a"], top["b"]} == {0, 9} and top["value"] == pytest.approx(2.0, abs=0.2)
    small = gsmile.explain(" ".join(words), model=model2, n_samples=60, random_state=3, interactions=10,
                           interaction_budget=100)
    assert small.extras["interactions"]["n_evals"] == 100
    exact = gsmile.explain(" ".join(words), model=model2, n_samples=60, random_state=3, interactions=4,
                           interaction_budget=5000)
    assert exact.extras["interactions"]["exact"] and exact.extras["interactions"]["n_evals"] == 16


def test_json_round_trip():
    exp = _explain(And(), interactions=3)
    back = Explanation.from_json(exp.to_json())
    assert back.extras["interactions"] == json.loads(json.dumps(exp.extras["interactions"]))
    assert back.extras["interactions"]["pairs"][0]["value"] == pytest.approx(1.0)


def test_terminal_and_html_show_the_pair():
    exp = _explain(And(), interactions=3)
    lines = interaction_lines(exp)
    assert lines[0].startswith("Interactions (k-SII, top-3 units, exact, 8 evaluations")
    assert "The vault opens at noon." in lines[1] and "The code is 4721." in lines[1] and "+1" in lines[1]
    page = render_html(exp)
    assert "<h2>Interactions</h2>" in page and 'class="interactions"' in page
    assert "The code is 4721." in page.split("<h2>Interactions</h2>")[1]
    assert interaction_lines(_explain(And())) == []


def test_cli_prints_interactions():
    from gsmile import cli

    exp = _explain(And(), interactions=3)
    lines = cli._extra_lines(exp)
    assert any(line.startswith("Interactions (k-SII") for line in lines)
    parser = cli.build_parser()
    args = parser.parse_args(["explain", "a prompt here", "--interactions", "4", "--interaction-budget", "100"])
    options = cli._explanation_options(args)
    assert options["interactions"] == 4 and options["interaction_budget"] == 100
    plain = cli._explanation_options(parser.parse_args(["explain", "a prompt here"]))
    assert "interactions" not in plain and "interaction_budget" not in plain


@pytest.mark.parametrize("options, field, words", [
    (dict(interactions=1), "interactions", "2 or more"),
    (dict(interactions=21), "interactions", "20"),
    (dict(interactions=-1), "interactions", "interactions"),
    (dict(interactions=7), "interactions", "more than the 6 units"),
    (dict(interaction_budget=50), "interaction_budget", "applies to interactions"),
    (dict(interactions=3, interaction_budget=1), "interaction_budget", "interaction_budget"),
    (dict(interactions=10, interaction_budget=40), "interaction_budget", "too small"),
])
def test_bad_input(options, field, words):
    model = And() if options.get("interactions") != 10 else (lambda t: [0.0] * len(t))
    with pytest.raises(InvalidInputError) as info:
        if options.get("interactions") == 10:
            gsmile.explain(" ".join(f"w{i}" for i in range(12)), model=model, n_samples=20, random_state=0, **options)
        else:
            _explain(model, **options)
    assert info.value.field == field and words in str(info.value)


def test_shapiq_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "shapiq", None)
    with pytest.raises(InvalidInputError, match=r"needs the interactions extra: pip install 'gsmile\[interactions\]'"):
        _explain(And(), interactions=3)
    _explain(And())  # without interactions shapiq is not needed


@pytest.mark.model
def test_embedded_model():
    exp = gsmile.explain("The capital of France is", n_samples=20, random_state=0, max_new_tokens=4, interactions=3)
    record = exp.extras["interactions"]
    assert record["exact"] and record["n_evals"] == 8 and len(record["pairs"]) == 3
    assert all(np.isfinite(p["value"]) for p in record["pairs"]) and np.all(np.isfinite(record["main"]))


def test_server_caps_interaction_evaluations():
    pytest.importorskip("fastapi")
    from gsmile.server.errors import FieldError
    from gsmile.server.routes import check_budget
    from gsmile.server.settings import Settings

    settings = Settings(max_samples=100)
    check_budget({"n_samples": 50, "interactions": 6}, settings)  # 64 evaluations
    with pytest.raises(FieldError) as info:
        check_budget({"n_samples": 50, "interactions": 8}, settings)  # 256
    assert info.value.field == "interactions" and "256" in info.value.message
    with pytest.raises(FieldError) as info:
        check_budget({"n_samples": 50, "interactions": 10, "interaction_budget": 200}, settings)
    assert info.value.field == "interaction_budget"
