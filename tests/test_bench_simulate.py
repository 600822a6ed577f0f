"""bench/simulate.py runs methods on tabulated games by look-up: its scores must be
gsmile.faithfulness' definitions, its exact Shapley values exact, and gsmile's methods on a table
must give what they give on the model the table came from."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gsmile
from gsmile.explanation import Explanation
from gsmile.faithfulness import ExplanationScorer, aopc, deletion_curve, importance_order, insertion_aopc, insertion_curve
from gsmile.samplers import all_coalitions
from gsmile.units import Segmentation

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Why do cats purr so loudly, doctor?"
WEIGHTS = np.array([0.5, -1.0, 3.0, 2.0, 0.0, -0.25, 1.5])


def _load(name):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module")
def bench():
    return _load("simulate")


def game_doc(value):
    seg = Segmentation.from_text(PROMPT, "word")
    masks = all_coalitions(len(seg))
    return {"id": "g", "prompt": PROMPT, "response": "", "units": [u.text for u in seg.units],
            "values": [float(value(m)) for m in masks]}


def interaction(m):
    z = np.asarray(m, dtype=float)
    return 1.0 + z @ WEIGHTS + 2.5 * z[0] * z[2] - 1.5 * z[3] * z[5] * z[6]


def test_an_additive_table_gives_its_weights_as_exact_shapley_values(bench):
    simulate = bench
    game = simulate.Game(game_doc(lambda m: 1.0 + m @ WEIGHTS))
    np.testing.assert_allclose(game.exact_shapley(), WEIGHTS, atol=1e-12)
    assert game.values[-1] == pytest.approx(1.0 + WEIGHTS.sum())  # the last entry keeps every unit


def test_exact_shapley_of_an_interaction_table_splits_each_interaction_evenly(bench):
    simulate = bench
    game = simulate.Game(game_doc(interaction))
    want = WEIGHTS.copy()
    want[[0, 2]] += 2.5 / 2
    want[[3, 5, 6]] -= 1.5 / 3
    np.testing.assert_allclose(game.exact_shapley(), want, atol=1e-12)


def test_look_up_faithfulness_equals_gsmile_faithfulness_on_the_same_model(bench):
    simulate = bench
    game = simulate.Game(game_doc(interaction))
    attributions = np.array([0.3, -2.0, 1.0, 0.9, 0.0, 0.1, 2.0])
    exp = Explanation(PROMPT, "", Segmentation.from_text(PROMPT, "word").units, attributions, 0.0, float("nan"),
                      target="model_output")
    scorer = ExplanationScorer(exp, game)
    order = importance_order(attributions)
    deletion, insertion = game.faithfulness(attributions)
    assert deletion == pytest.approx(aopc(deletion_curve(scorer, order)), abs=1e-12)
    assert insertion == pytest.approx(insertion_aopc(insertion_curve(scorer, order)), abs=1e-12)


def test_texts_are_found_by_their_words_whatever_the_spacing(bench):
    simulate = bench
    game = simulate.Game(game_doc(lambda m: 1.0 + m @ WEIGHTS))
    assert game.logp(["Why  do cats", "Why do cats?", PROMPT]).tolist() == pytest.approx(
        [1.0 + WEIGHTS[:3].sum()] * 2 + [1.0 + WEIGHTS.sum()])
    with pytest.raises(RuntimeError, match="no subset of the prompt's words"):
        game.logp(["Why do dogs"])


def test_gsmile_methods_on_a_table_are_the_methods_on_the_model(bench):
    simulate = bench
    game = simulate.Game(game_doc(interaction))
    for method in ("banzhaf", "kernelshap", "mupax"):
        got, evals = simulate.RUNNERS[f"gsmile:{method}"](game, 14, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = gsmile.explain(PROMPT, model=lambda texts: [interaction(m) for m in _masks_of(texts)],
                                  method=method, max_evals=14, random_state=3)
        np.testing.assert_allclose(got, want.coefficients, atol=1e-12)
        assert evals == want.n_unique == 14


def _masks_of(texts):
    words = [u.text for u in Segmentation.from_text(PROMPT, "word").units]
    return [np.array([w in t.replace("?", " ").replace(",", " ").split() for w in words]) for t in texts]


def test_a_table_that_does_not_match_its_prompt_is_refused(bench):
    simulate = bench
    doc = game_doc(lambda m: 0.0)
    doc["values"] = doc["values"][:-1]
    with pytest.raises(SystemExit, match="tabulate it again"):
        simulate.Game(doc)


def test_captum_runner_on_a_table_recovers_an_additive_game(bench):
    simulate = bench
    game = simulate.Game(game_doc(lambda m: 1.0 + m @ WEIGHTS))
    got, calls = simulate.RUNNERS["captum:FeatureAblation"](game, 14, 0)
    np.testing.assert_allclose(got, WEIGHTS, atol=1e-9)
    assert calls == 8
