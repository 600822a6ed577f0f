"""Fast checks of the gSMILE pipeline on scalar black boxes and hand-made data (no model)."""

import json
import math

import numpy as np
import pytest

import gsmile
from gsmile.errors import InvalidInputError, SchemaError, UnknownNameError
from gsmile.explanation import Explanation
from gsmile.kernels import GaussianKernel, default_sigma, effective_sample_size
from gsmile.samplers import DropoutSampler
from gsmile.surrogates import WeightedLinearRegression, weighted_r2
from gsmile.units import Segmentation, Unit

PROMPT = "alpha bravo charlie delta echo foxtrot golf"


# ----------------------------------------------------------------- units
def test_word_units_have_spans_into_the_prompt():
    text = "What is the capital of France, and why?"
    seg = Segmentation.from_text(text, "word")
    assert [u.text for u in seg.units] == ["What", "is", "the", "capital", "of", "France", "and", "why"]
    for u in seg.units:
        assert text[u.start : u.end] == u.text


def test_render_drops_units_and_keeps_the_rest_as_written():
    seg = Segmentation.from_text("What is the capital of France, and why?", "word")
    keep = np.ones(len(seg), dtype=bool)
    assert seg.render(keep) == "What is the capital of France, and why?"
    keep[[2, 5]] = False  # "the", "France"
    assert seg.render(keep) == "What is capital of, and why?"
    keep = np.ones(len(seg), dtype=bool)
    keep[-1] = False
    assert seg.render(keep) == "What is the capital of France, and?"


def test_sentence_units():
    seg = Segmentation.from_text("Paris is old. It is big! Is it? yes", "sentence")
    assert [u.text for u in seg.units] == ["Paris is old.", "It is big!", "Is it?", "yes"]
    assert seg.render([True, False, True, True]) == "Paris is old. Is it? yes"


def test_token_units_fall_back_to_words_and_punctuation_without_a_tokenizer():
    seg = Segmentation.from_text("Hi, you!", "token")
    assert [u.text for u in seg.units] == ["Hi", ",", "you", "!"]


def test_segmentation_rejects_units_that_do_not_match_the_text():
    with pytest.raises(InvalidInputError):
        Segmentation("abc def", [Unit("xyz", 0, 3)])


def test_unknown_unit_lists_valid_names():
    with pytest.raises(UnknownNameError, match="sentence, token, word"):
        Segmentation.from_text("a b c", "paragraphs")


# --------------------------------------------------------------- sampler
def test_dropout_sampler_drops_at_least_one_unit_and_about_the_rate():
    masks = DropoutSampler(0.2, random_state=3).sample(10, 4000)
    assert masks.shape == (4000, 10)
    assert (~masks).sum(axis=1).min() >= 1
    assert abs((~masks).mean() - 0.2) < 0.02
    assert np.array_equal(masks, DropoutSampler(0.2, random_state=3).sample(10, 4000))
    assert not np.array_equal(masks, DropoutSampler(0.2, random_state=4).sample(10, 4000))


@pytest.mark.parametrize("rate", [0.0, 0.04, 0.51, 1.0, "x"])
def test_dropout_out_of_range_is_refused(rate):
    with pytest.raises(InvalidInputError, match="dropout must be between 0.05 and 0.5"):
        DropoutSampler(rate).sample(5, 3)


# ---------------------------------------------------------------- kernel
def test_gaussian_kernel_weights_by_units_dropped():
    masks = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1]], dtype=bool)
    sigma = default_sigma(4)
    assert sigma == 1.0
    w = GaussianKernel()(masks)
    np.testing.assert_allclose(w, [1.0, math.exp(-1.0), math.exp(-4.0)])
    np.testing.assert_allclose(GaussianKernel(2.0)(masks), [1.0, math.exp(-0.25), math.exp(-1.0)])
    assert effective_sample_size(np.ones(7)) == pytest.approx(7.0)
    assert effective_sample_size(np.array([1.0, 0.0, 0.0])) == pytest.approx(1.0)


# ------------------------------------------------------------- surrogate
def test_weighted_least_squares_recovers_an_exact_linear_model():
    rng = np.random.default_rng(0)
    Z = rng.integers(0, 2, size=(60, 5)).astype(float)
    coef = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    y = Z @ coef + 0.7
    w = rng.random(60)
    model = WeightedLinearRegression().fit(Z, y, sample_weight=w)
    np.testing.assert_allclose(model.coef_, coef, atol=1e-10)
    assert model.intercept_ == pytest.approx(0.7)
    assert model.r2_ == pytest.approx(1.0)


def test_weighted_r2_matches_hand_computation():
    y = np.array([1.0, 2.0, 4.0])
    y_hat = np.array([1.0, 3.0, 3.0])
    w = np.array([1.0, 1.0, 2.0])
    mean = (1 + 2 + 8) / 4
    ss_tot = (1 - mean) ** 2 + (2 - mean) ** 2 + 2 * (4 - mean) ** 2
    assert weighted_r2(y, y_hat, w) == pytest.approx(1 - (0 + 1 + 2) / ss_tot)
    assert math.isnan(weighted_r2(np.ones(3), np.ones(3), w))


# ------------------------------------------------- explain on a scalar model
def test_additive_model_coefficients_equal_its_weights(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=300, random_state=0)
    np.testing.assert_allclose(exp.coefficients, additive.weights, atol=1e-6)
    assert exp.intercept == pytest.approx(additive.bias, abs=1e-6)
    assert exp.fidelity_r2 == pytest.approx(1.0, abs=1e-9)
    assert exp.reliable
    assert [u.text for u in exp.units] == additive.words
    np.testing.assert_allclose(exp.scores, np.abs(additive.weights) / 3.0, atol=1e-9)
    assert [a.text for a in exp.top(3)] == ["alpha", "delta", "bravo"]
    assert exp.response is None and exp.target == "model_output"


def test_identical_masks_are_evaluated_once(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=400, random_state=1)
    assert exp.n_samples == 400
    assert exp.n_unique < 400  # 7 units: many repeats
    assert additive.calls == exp.n_unique  # includes the original prompt for a scalar model


def test_same_seed_same_explanation_and_batch_size_does_not_matter(additive):
    runs = [gsmile.explain(PROMPT, model=lambda t: np.array(additive(t)) + np.array([len(x) % 3 for x in t]),
                           n_samples=80, random_state=7, batch_size=b) for b in (1, 2, 3, 8)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.coefficients, runs[0].coefficients)
    different = gsmile.explain(PROMPT, model=lambda t: np.array(additive(t)) + np.array([len(x) % 3 for x in t]),
                               n_samples=80, random_state=8)
    assert not np.allclose(different.coefficients, runs[0].coefficients)


def test_explanation_records_its_settings(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=50, dropout=0.25, sigma=1.5, random_state=4)
    assert exp.method == "gsmile" and exp.n_samples == 50 and exp.random_state == 4
    assert exp.sigma == 1.5 and exp.params["dropout"] == 0.25
    masks_weights = exp.effective_sample_size
    assert 1.0 <= masks_weights <= 51
    assert {"load", "score", "fit", "total"} <= set(exp.timings)
    assert exp.model_id.startswith("callable:")


def test_low_effective_sample_size_and_high_dropout_warn(additive):
    with pytest.warns(gsmile.explainer.GsmileWarning) as record:
        exp = gsmile.explain(PROMPT, model=additive, n_samples=50, dropout=0.45, sigma=0.5, random_state=0)
    messages = " ".join(str(r.message) for r in record)
    assert "effective sample size" in messages and "dropout 0.45" in messages
    assert len(exp.warnings) == 2


def test_constant_model_has_undefined_fidelity_and_says_so():
    exp = gsmile.explain(PROMPT, model=lambda t: [1.0] * len(t), n_samples=30, random_state=0)
    assert math.isnan(exp.fidelity_r2) and not exp.reliable
    assert np.all(exp.coefficients == 0) and np.all(exp.scores == 0)
    assert any("did not change" in w for w in exp.warnings)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_samples": 5}, "n_samples must be an integer from 10"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"dropout": 0.9}, "dropout must be between"),
        ({"sigma": -1.0}, "sigma must be a positive number"),
        ({"batch_size": 0}, "batch_size"),
        ({"random_state": -3}, "random_state"),
    ],
)
def test_bad_options_raise_clear_errors(additive, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        gsmile.explain(PROMPT, model=additive, **kwargs)


def test_bad_prompts_and_names(additive):
    with pytest.raises(InvalidInputError, match="prompt is empty"):
        gsmile.explain("   ", model=additive)
    with pytest.raises(InvalidInputError, match="at least 2 are needed"):
        gsmile.explain("alpha", model=additive)
    with pytest.raises(UnknownNameError, match="gsmile"):
        gsmile.explain(PROMPT, model=additive, method="magic")
    with pytest.raises(UnknownNameError, match="unknown model 'gpt-9'"):
        gsmile.explain(PROMPT, model="gpt-9")
    with pytest.raises(InvalidInputError, match="model must be"):
        gsmile.explain(PROMPT, model=42)


def test_failing_or_malformed_model_functions_give_model_errors():
    from gsmile.errors import ModelError

    def boom(texts):
        raise RuntimeError("backend down")

    with pytest.raises(ModelError, match="backend down"):
        gsmile.explain(PROMPT, model=boom, n_samples=10)
    with pytest.raises(ModelError, match="returned 1 values"):
        gsmile.explain(PROMPT, model=lambda t: [0.0], n_samples=10)
    with pytest.raises(ModelError, match="NaN"):
        gsmile.explain(PROMPT, model=lambda t: [float("nan")] * len(t), n_samples=10)


def test_few_units_warn(additive):
    with pytest.warns(gsmile.explainer.GsmileWarning, match="only 3 units"):
        gsmile.explain("alpha bravo delta", model=additive, n_samples=20, random_state=0)


# ---------------------------------------------------------------- JSON
def test_json_round_trip_is_lossless(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=40, random_state=2)
    exp.token_coefficients = np.arange(14, dtype=float).reshape(7, 2)
    exp.response_tokens = ["a", "b"]
    text = exp.to_json()
    data = json.loads(text)
    assert data["schema"] == "gsmile.explanation" and data["version"] == 1
    assert "class" not in text and "gsmile.explanation.Explanation" not in text
    back = Explanation.from_json(text)
    assert back.to_dict() == exp.to_dict()
    np.testing.assert_array_equal(back.coefficients, exp.coefficients)
    np.testing.assert_array_equal(back.token_coefficients, exp.token_coefficients)


def test_json_with_nan_fidelity_round_trips():
    exp = gsmile.explain(PROMPT, model=lambda t: [1.0] * len(t), n_samples=20, random_state=0)
    back = Explanation.from_json(exp.to_json())
    assert math.isnan(back.fidelity_r2)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"schema": "other"}, "not a gsmile explanation"),
        ({"schema": "gsmile.explanation", "version": 99}, "unsupported explanation version 99"),
        ({"schema": "gsmile.explanation", "version": 1}, "malformed"),
        ([1, 2], "not a gsmile explanation"),
    ],
)
def test_from_dict_refuses_other_data(data, message):
    with pytest.raises(SchemaError, match=message):
        Explanation.from_dict(data)


def test_public_api_is_small():
    assert sorted(gsmile.__all__) == ["Explainer", "Explanation", "audit", "explain"]


def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, gsmile, gsmile.cli; print('torch' in sys.modules, 'transformers' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


@pytest.mark.parametrize("method", ["gsmile", "kernelshap", "lime", "mupax"])
def test_max_evals_fills_a_budget_of_model_evaluations(additive, method):
    budget = 40
    exp = gsmile.explain(PROMPT, model=additive, method=method, max_evals=budget, random_state=3)
    # The original prompt counts: exactly budget evaluations in all (the mask space is larger).
    assert additive.calls == exp.n_unique == budget
    # At least as many draws as evaluations: repeats are free.
    assert exp.n_samples >= exp.n_unique - 1
    assert exp.params["max_evals"] == budget
    again = gsmile.explain(PROMPT, model=additive, method=method, max_evals=budget, random_state=3)
    np.testing.assert_array_equal(again.coefficients, exp.coefficients)


def test_max_evals_stops_when_every_mask_is_drawn(additive):
    # 7 units: 127 masks drop at least one unit; a budget of 500 is more than there is. lime
    # draws how many units to drop uniformly, so every mask turns up.
    exp = gsmile.explain(PROMPT, model=additive, method="lime", max_evals=500, random_state=0)
    assert exp.n_unique == 128
    # every coalition seen: lime's ridge fit ranks the units as the true weights do
    np.testing.assert_array_equal(np.argsort(exp.coefficients), np.argsort(additive.weights))
    # gSMILE's dropout rarely drops most units: drawing stops once doubling adds no mask.
    exp = gsmile.explain(PROMPT, model=additive, max_evals=500, random_state=0)
    assert 100 < exp.n_unique <= 128 and exp.n_samples > 500


def test_max_evals_below_a_fixed_method_needs_is_refused(additive):
    with pytest.raises(InvalidInputError, match=r"needs 128 model evaluations .* max_evals = 20.*kernelshap"):
        gsmile.explain(PROMPT, model=additive, method="shapley", max_evals=20)
    exp = gsmile.explain(PROMPT, model=additive, method="occlusion", max_evals=20)
    assert exp.n_unique == 8
    with pytest.raises(InvalidInputError, match="max_evals must be an integer from 2"):
        gsmile.explain(PROMPT, model=additive, max_evals=1)
    with pytest.raises(InvalidInputError, match="max_evals and until_stable"):
        gsmile.explain(PROMPT, model=additive, max_evals=50, until_stable=True)


def test_max_evals_never_cuts_an_enumeration_of_coalitions():
    from gsmile.samplers import ShapleySampler, all_coalitions, draw_within

    # 8 units, 15 evaluations: random paired draws, different for each seed, exactly 15 distinct
    draws = [draw_within(ShapleySampler(seed).sample, 8, 15) for seed in (0, 1)]
    for masks in draws:
        unique = np.unique(masks, axis=0)
        assert len(unique) - unique.all(axis=1).any() == 15
    assert not np.array_equal(draws[0], draws[1])
    # 200 of 255: doubling reaches the size where the sampler enumerates; no prefix of it is taken
    masks = draw_within(ShapleySampler(0).sample, 8, 200)
    enumeration = all_coalitions(8)
    assert len(masks) < len(enumeration) or not np.array_equal(masks, enumeration)
    assert not np.array_equal(masks[:20], enumeration[:20])
    # with the sampler's random draws to grow on, those 200 are filled exactly, none cut from the enumeration
    sampler = ShapleySampler(0)
    masks = draw_within(sampler.sample, 8, 200, draw=sampler.draw)
    unique = np.unique(masks, axis=0)
    assert len(unique) - unique.all(axis=1).any() == 200
    assert not np.array_equal(masks[:20], enumeration[:20])


@pytest.mark.parametrize("budget, exhaustive", [(112, False), (127, False), (128, True), (300, True)])
def test_kernelshap_fills_a_budget_just_below_every_coalition(additive, budget, exhaustive):
    # 7 units, 128 coalitions. Draws enumerate them all once 127 draws could; a budget of 112
    # used to stop at the ~66 distinct coalitions 111 draws hold. Now it is filled exactly.
    exp = gsmile.explain(PROMPT, model=additive, method="kernelshap", max_evals=budget, random_state=0)
    assert exp.n_unique == min(budget, 128) == additive.calls
    assert exp.extras["exhaustive"] is exhaustive
    # an additive model's Shapley values are its weights, from any set of coalitions
    np.testing.assert_allclose(exp.coefficients, additive.weights, atol=1e-9)


def test_check_int_takes_integers_in_range_and_refuses_the_rest():
    from gsmile.errors import check_int

    assert check_int("n", np.int64(5), 1, 10) == 5 and isinstance(check_int("n", np.int64(5), 1), int)
    assert check_int("n", 10, 1, 10) == 10 and check_int("n", 10**9, 1) == 10**9
    for bad in (True, 2.0, "3", None, 0, 11):
        with pytest.raises(InvalidInputError, match=r"n must be an integer from 1 to 10, got"):
            check_int("n", bad, 1, 10)
    with pytest.raises(InvalidInputError, match=r"x \(X\) must be an integer of at least 2, got 1"):
        check_int("x (X)", 1, 2)
