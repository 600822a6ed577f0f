"""White-box methods as methods: what they refuse, and (on a local model) what they make."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_models import ToyLM  # noqa: E402

from gsmile import Explainer  # noqa: E402
from gsmile.cli import main  # noqa: E402
from gsmile.errors import InvalidInputError  # noqa: E402
from gsmile.methods import WHITEBOX_METHODS  # noqa: E402


@pytest.mark.parametrize("method", sorted(WHITEBOX_METHODS))
def test_a_model_that_is_not_local_is_refused_with_one_line(method, capsys):
    code = main(["explain", "What is the capital of France?", "--method", method, "--model", "openai:any", "--base-url", "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{method} needs a local model (local, hf:PATH)" in err and len(err.splitlines()) == 1
    with pytest.raises(InvalidInputError, match="needs a local model"):
        Explainer(lambda texts: [1.0] * len(texts), method=method).validate()
    with pytest.raises(InvalidInputError, match="needs a local model"):
        Explainer(ToyLM(), method=method).explain("a b c", "x")


@pytest.mark.parametrize("option, value", [("runs", 2), ("until_stable", True), ("max_evals", 20), ("interactions", 3)])
def test_sampling_options_are_refused(option, value):
    with pytest.raises(InvalidInputError, match=f"{option} appl.* to perturbation methods"):
        Explainer(ToyLM(), method="gradient_x_input", **{option: value}).explain("a b c", "x")


def test_a_surrogate_is_refused():
    with pytest.raises(InvalidInputError, match="estimates values defined by its own estimator"):
        Explainer("local", method="integrated_gradients", surrogate="lasso").validate()


# ------------------------------------------------ on a model whose answer depends on one word


GXI_FAILS = ("gradient x input: 0 for every word of this model (see tests/test_whitebox_gradients.py: RMSNorm's scale "
             "invariance makes the derivative along the embedding itself vanish)")


@pytest.mark.parametrize("method", [
    "gsmile", "occlusion", "lime", "kernelshap", "shapley", "mupax", "banzhaf", "integrated_gradients", "attention_rollout", "attnlrp",
    pytest.param("gradient_x_input", marks=pytest.mark.xfail(strict=True, reason=GXI_FAILS)),
])
def test_every_method_ranks_the_deciding_word_first(tiny_lm, method):
    import warnings

    import numpy as np
    import tiny_trained_llama as tiny

    for text in ("f3 f1 v2 f5 f0 f7", "f0 f2 f4 f6 f1 v3"):
        words = text.split()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = Explainer(tiny_lm, method=method, target="logprob", n_samples=64, random_state=0).explain(text, tiny.answer(words))
        value_at = next(i for i, w in enumerate(words) if w in tiny.VALUES)
        assert int(np.argmax(np.abs(exp.coefficients))) == value_at, (method, text, exp.coefficients)


@pytest.mark.model
def test_a_white_box_explanation_of_the_embedded_model(lm):
    import json

    import numpy as np

    from gsmile.explanation import Explanation
    from gsmile.render import render_html, render_terminal

    prompt, response = "What is the capital of France?", "Paris"
    exp = Explainer(lm, method="gradient_x_input").explain(prompt, response)
    assert exp.method == "gradient_x_input" and exp.target == "logprob" and exp.params["white_box"]
    assert exp.token_coefficients.shape == (len(exp.units), len(exp.response_tokens))
    np.testing.assert_allclose(exp.token_coefficients.sum(axis=1), exp.coefficients, atol=1e-3)
    assert exp.reliable and "No surrogate (white-box method): no check of its own" in render_terminal(exp)
    assert Explanation.from_json(exp.to_json()).coefficients.tolist() == exp.coefficients.tolist()
    assert "Insight" in render_html(exp)
    ig = Explainer(lm, method="integrated_gradients", method_options={"baseline": "pad"}).explain(prompt, response)
    assert ig.extras["completeness"]["relative_error"] <= 0.01 and ig.reliable
    hint = Explainer(lm, method="attention").explain(prompt, response)
    assert not hint.reliable and "a hint, not an attribution" in hint.reliability_issues[0]
    assert hint.insights.startswith("This explanation is not reliable enough to act on")
    # why "Paris" rather than "Rome": gradients are linear in the explained function
    contrast = Explainer(lm, method="gradient_x_input", contrast="Rome").explain(prompt, response)
    rome = Explainer(lm, method="gradient_x_input").explain(prompt, "Rome")
    np.testing.assert_allclose(contrast.coefficients, exp.coefficients - rome.coefficients, atol=1e-6)
    assert contrast.target == "contrast" and contrast.token_coefficients is None
    json.loads(contrast.to_json())


@pytest.mark.model
def test_attnlrp_is_labelled_as_explaining_logits_and_evaluated_on_log_p(lm):
    from gsmile.faithfulness import evaluate
    from gsmile.render import render_terminal

    exp = Explainer(lm, method="attnlrp").explain("What is the capital of France?", "Paris")
    assert exp.target == "logit" and exp.extras["conservation"]["ratio"] > 0
    assert "relevance conserved at" in render_terminal(exp)
    metrics = evaluate(exp, lm, n_random=0)
    assert metrics["target"].startswith("logprob") and metrics["deletion_aopc"] is not None


def test_integrated_gradients_off_completeness_is_flagged_unreliable(tiny_lm):
    """The reliability figure can fail: at 64 points with no doubling, IG misses completeness on
    the tiny trained Llama by far more than 5% (its integrand is sharp), and the explanation
    says so and gives no advice; with doubling allowed it is within 1% and reliable."""
    import warnings

    import tiny_trained_llama as tiny

    text = "f3 f1 v2 f5 f0 f7"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        once = Explainer(tiny_lm, method="integrated_gradients", method_options={"max_steps": 64}).explain(text, tiny.answer(text.split()))
        doubled = Explainer(tiny_lm, method="integrated_gradients").explain(text, tiny.answer(text.split()))
    assert once.extras["completeness"]["relative_error"] > 0.05 and not once.reliable
    assert "miss completeness" in once.reliability_issues[0] and once.insights.startswith("This explanation is not reliable")
    assert doubled.extras["completeness"]["relative_error"] <= 0.01 and doubled.reliable
