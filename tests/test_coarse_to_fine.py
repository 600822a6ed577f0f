"""Coarse-to-fine attribution (Explainer(refine=...)): sentences first, then the words of the
important ones, within one budget of model calls, every level in one explanation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gsmile
from gsmile import Explainer, Explanation
from gsmile.cli import main
from gsmile.errors import InvalidInputError, UnknownNameError
from gsmile.render import render_html, render_png, render_terminal
from gsmile.units import Segmentation

_ADJ = "red green blue quiet loud small large bright dark warm cold soft hard quick slow early late young old fresh".split()
_NOUN = ("river mountain garden window market bridge forest harbor castle valley meadow tower village desert island "
         "canyon library station temple orchard").split()
_VERB = "holds hides shows keeps finds meets joins lifts turns opens greets paints guards builds fills marks leads feeds crosses shades".split()
SENTENCES = [f"The {_ADJ[i]} {_NOUN[i]} {_VERB[i]} a {_ADJ[(i + 7) % 20]}ish {_NOUN[(i + 3) % 20]}s near {i + 1} stones."
             for i in range(20)]
SENTENCES[6] = "The quiet lighthouse keeps a secret signal near seven stones."  # sentence 7 holds the key word
TEXT = " ".join(SENTENCES)
KEY = "secret"


class Counting:
    """A scalar model driven by one word of sentence 7 (and a little by "river"); counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += len(texts)
        return [2.0 * (KEY in t.split()) + 0.2 * ("river" in t.split()) for t in texts]


def c2f(model=None, **options):
    options = {"unit": "sentence", "refine": "word", "refine_top": 1, "max_evals": 120, "random_state": 0, **options}
    return gsmile.explain(TEXT, model=model or Counting(), **options)


def test_level_1_finds_the_sentence_and_level_2_the_word_with_fewer_calls_than_words_alone():
    model = Counting()
    exp = c2f(model)
    coarse, fine = exp.levels
    assert coarse["unit_type"] == "sentence" and len(coarse["units"]) == 20
    assert int(np.argmax(np.abs(coarse["coefficients"]))) == 6 and coarse["refined"] == [6]
    assert exp.top(1)[0].text == KEY and exp.unit_type == "sentence>word"
    assert model.calls <= 120 and exp.n_unique == model.calls == coarse["n_evals"] + fine["n_evals"]
    assert exp.held_out_r2 is not None and exp.held_out_r2 > 0.9 and coarse["held_out_r2"] > 0.9
    # The whole text at word level (200 units) with least squares reaches no such held-out
    # fidelity with the same calls, nor with twice as many: it needs more evaluations than it
    # has units. Left to choose, gsmile fits lasso there (120 < 201) and finds the word.
    assert len(Segmentation.from_text(TEXT, "word")) == 200
    for budget, reached in ((120, False), (240, False), (360, True)):
        words = Counting()
        plain = gsmile.explain(TEXT, model=words, unit="word", max_evals=budget, random_state=0, surrogate="least_squares")
        assert words.calls == budget
        assert (plain.held_out_r2 is not None and plain.held_out_r2 > 0.9) == reached, (budget, plain.held_out_r2)
    chosen = gsmile.explain(TEXT, model=Counting(), unit="word", max_evals=120, random_state=0)
    assert chosen.params["surrogate"] == "lasso" and chosen.top(1)[0].text == KEY and chosen.held_out_r2 > 0.9


def test_the_budget_is_split_and_never_exceeded():
    for share in (0.3, 0.5, 0.8):
        model = Counting()
        exp = c2f(model, max_evals=100, refine_share=share, refine_top=3)
        coarse, fine = exp.levels
        assert model.calls <= 100
        assert coarse["n_evals"] <= round(share * 100) and coarse["n_evals"] + fine["n_evals"] == model.calls
    model = Counting()
    exp = gsmile.explain(TEXT, model=model, unit="sentence", refine="word", n_samples=80, random_state=0)
    assert model.calls <= 81 and exp.levels[0]["n_samples"] == 40 and exp.levels[1]["n_samples"] == 40
    assert exp.n_samples == 80 and exp.params["refine"] == "word" and exp.params["refine_top"] == 3


def test_parents_are_the_coarse_units_that_hold_each_unit():
    exp = c2f(refine_top=2)
    coarse, fine = exp.levels
    assert sorted(coarse["refined"]) == coarse["refined"] and len(coarse["refined"]) == 2 and 6 in coarse["refined"]
    assert [u["text"] for u in fine["units"]] == [u.text for u in exp.units]
    for unit in fine["units"]:
        parent = coarse["units"][unit["parent"]]
        assert parent["start"] <= unit["start"] < unit["end"] <= parent["end"]
        whole = unit["parent"] not in coarse["refined"]
        assert (unit["text"] == parent["text"]) == whole
    assert [u["parent"] for u in coarse["units"]] == [None] * 20
    refined_words = [u["text"] for u in fine["units"] if u["parent"] == 6]
    assert refined_words == SENTENCES[6].rstrip(".").split()
    tree = exp.hierarchy()
    assert len(tree) == 20 and [c.text for c in tree[6][1]] == refined_words and tree[0][1] in ([], tree[0][1])
    assert all(not children for i, (_, children) in enumerate(tree) if i not in coarse["refined"])


def test_json_round_trip_keeps_every_level_and_old_files_still_read():
    exp = c2f()
    data = json.loads(exp.to_json())
    assert data["version"] == 1 and len(data["levels"]) == 2
    assert set(data["levels"][1]["units"][0]) == {"text", "start", "end", "parent"}
    back = Explanation.from_json(exp.to_json())
    assert back.levels == json.loads(json.dumps(data["levels"]))
    assert back.hierarchy() == exp.hierarchy() and back.to_dict() == exp.to_dict()
    del data["levels"]  # written before coarse-to-fine existed
    old = Explanation.from_dict(data)
    assert old.levels is None and old.hierarchy() == []
    data["levels"] = [{"units": [{"text": "a", "start": 0, "end": 1}], "coefficients": [0.1, 0.2]}]
    with pytest.raises(gsmile.errors.SchemaError, match="malformed"):
        Explanation.from_dict(data)


def test_same_seed_same_result():
    a, b = c2f(refine_top=2), c2f(refine_top=2)
    assert a.to_dict()["levels"] == b.to_dict()["levels"] and np.array_equal(a.coefficients, b.coefficients)


def test_nothing_to_refine_falls_back_to_the_plain_units_with_a_note():
    # one sentence: explained at word level directly
    model = Counting()
    exp = gsmile.explain(SENTENCES[6], model=model, unit="sentence", refine="word", n_samples=40, random_state=0)
    assert exp.levels is None and exp.unit_type == "word" and exp.top(1)[0].text == KEY
    assert any("has 1" in w and "plain word units" in w for w in exp.warnings)
    # no sentence has more than one word: the plain sentences
    exp = gsmile.explain("Yes. No. Maybe. Secret. Later.", model=lambda ts: [float("Secret" in t) for t in ts],
                         unit="sentence", refine="word", n_samples=40, random_state=0)
    assert exp.levels is None and exp.unit_type == "sentence" and exp.top(1)[0].text == "Secret."
    assert any("nothing to refine" in w for w in exp.warnings)


def test_a_top_unit_without_finer_units_is_kept_whole_with_a_note():
    text = "Stop. " + " ".join(SENTENCES[:6])
    model = lambda ts: [3.0 * ("Stop" in t) + 1.0 * ("river" in t.split()) for t in ts]  # noqa: E731
    exp = gsmile.explain(text, model=model, unit="sentence", refine="word", refine_top=1, max_evals=60, random_state=0)
    coarse, _ = exp.levels
    assert coarse["refined"] == [1]  # "Stop." ranks first but holds one word; the next one is refined
    assert any("'Stop.'" in w and "kept whole" in w for w in exp.warnings)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(unit="word", refine="sentence"), "refine 'sentence' is not finer than unit 'word'"),
        (dict(unit="word", refine="word"), "refine 'word' is not finer than unit 'word'"),
        (dict(unit="token", refine="word"), "none (token is the finest unit)"),
        (dict(unit="sentence", refine="word", runs=2), "refine cannot be combined with until_stable or runs > 1"),
        (dict(unit="sentence", refine="word", refine_share=0.95), "refine_share must be a number from 0.1 to 0.9"),
        (dict(unit="sentence", refine="word", refine_top=0), "refine_top must be an integer from 1"),
        (dict(unit="sentence", refine="word", max_evals=5), "refine splits max_evals between two levels; give at least 10"),
        (dict(unit="sentence", refine="word", max_evals=30, method="occlusion"),
         "level 1 of coarse-to-fine (20 units, max_evals 15 of the budget): this method needs 21 model evaluations"),
    ],
)
def test_nonsensical_options_are_refused_with_the_reason(options, message):
    model = Counting()
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        gsmile.explain(TEXT, model=model, n_samples=20, **options)
    assert info.value.field in ("refine", "refine_share", "refine_top", "max_evals", "n_samples") and model.calls <= 1  # at most the probe of the model


def test_unknown_refine_unit_and_context_unit_check():
    with pytest.raises(UnknownNameError, match="unknown refine unit 'paragraph'"):
        Explainer(Counting(), refine="paragraph").validate()
    with pytest.raises(InvalidInputError, match="not finer than context_unit 'word'"):
        gsmile.explain("Who?", model=Counting(), context=TEXT, context_unit="word", refine="word")


def test_a_context_and_custom_segments_are_refined_too():
    model = Counting()
    exp = gsmile.explain("Which signal?", model=model, context=TEXT, refine="word", refine_top=1, max_evals=120, random_state=0)
    assert exp.explained == "context" and exp.top(1)[0].text == KEY and model.calls <= 120
    paragraphs = [" ".join(SENTENCES[i : i + 5]) for i in range(0, 20, 5)]
    exp = gsmile.explain(TEXT, model=Counting(), segments=paragraphs, refine="sentence", refine_top=1, max_evals=60, random_state=0)
    assert exp.levels[0]["unit_type"] == "custom" and exp.levels[0]["refined"] == [1]
    assert SENTENCES[6] in [u.text for u in exp.units] and exp.unit_type == "custom>sentence"


def test_renderers_show_both_levels():
    exp = c2f()
    text = render_terminal(exp)
    assert "Level 1: 20 sentence units" in text and "Level 2:" in text
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("The quiet lighthouse"))
    assert "refined into 10 word units" in lines[at]
    assert any(line.startswith("  └ secret") for line in lines[at + 1 : at + 11])
    assert "unit: sentence>word" in text
    html = render_html(exp)
    assert "<h2>Levels</h2>" in html and '<tr class="fine"><td class="label">secret</td>' in html
    assert '<tr class="coarse refined"><td class="label">The quiet lighthouse' in html
    assert render_png(exp).startswith(b"\x89PNG")
    plain = gsmile.explain(TEXT, model=Counting(), unit="sentence", n_samples=30, random_state=0)
    assert "Level 1" not in render_terminal(plain) and "<h2>Levels</h2>" not in render_html(plain)


def test_cli_flags_reach_the_explainer(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gsmile.backends.MODELS", {"local": lambda: Counting()})
    monkeypatch.setattr("gsmile.backends._loaded", {})
    out = tmp_path / "exp.json"
    code = main(["explain", TEXT, "--unit", "sentence", "--refine", "word", "--refine-top", "1", "--max-evals", "120",
                 "--json", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["params"]["refine"] == "word" and data["levels"][0]["refined"] == [6]
    assert "  └ secret" in capsys.readouterr().out
    assert main(["explain", TEXT, "--refine-top", "2"]) == 2
    assert "add --refine UNIT" in capsys.readouterr().err
    assert main(["explain", TEXT, "--refine", "word"]) == 2  # a prompt's default unit is the word
    assert "refine 'word' is not finer than unit 'word'" in capsys.readouterr().err


@pytest.mark.model
def test_cli_refines_a_context_with_the_embedded_model(tmp_path, lm):
    context = ("The Eiffel Tower is in Paris. It was built by Gustave Eiffel's company. "
               "Cheese is made from milk. It rained all day in London.")
    out = tmp_path / "exp.json"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "gsmile.cli", "explain", "Who built the tower?", "--context", context, "--refine", "word",
         "--refine-top", "1", "--samples", "24", "--max-new-tokens", "4", "--json", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Level 1: 4 sentence units" in proc.stdout and "  └ " in proc.stdout
    data = json.loads(out.read_text())
    coarse, fine = data["levels"]
    assert len(coarse["units"]) == 4 and len(coarse["refined"]) == 1
    assert data["n_unique"] <= 25 and data["unit_type"] == "sentence>word"
    assert [u["text"] for u in fine["units"]] == [u["text"] for u in data["units"]]


def test_the_http_api_takes_the_options(tmp_path):
    from fastapi.testclient import TestClient

    from gsmile.server import Settings, create_app

    app = create_app(Settings(jobs_path=tmp_path / "jobs.sqlite3"), model=Counting())
    try:
        with TestClient(app) as client:
            body = {"prompt": TEXT, "unit": "sentence", "refine": "word", "refine_top": 1, "max_evals": 120}
            reply = client.post("/v1/explain", json=body)
            assert reply.status_code == 200, reply.text
            data = reply.json()
            assert data["levels"][0]["refined"] == [6] and data["scores"][data["units"].index(
                next(u for u in data["units"] if u["text"] == KEY))] == 1.0
            reply = client.post("/v1/explain", json={"prompt": TEXT, "refine": "word"})
            assert reply.status_code == 422 and "not finer than unit 'word'" in reply.json()["error"]
    finally:
        app.state.manager.shutdown()
        app.state.store.close()
