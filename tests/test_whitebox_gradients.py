"""White-box attributions (gradient×input, integrated gradients, attention hints) on a tiny Llama
trained so that its answer depends on one word (tests/tiny_trained_llama.py), and integrated
gradients' completeness on the embedded SmolLM2."""


import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("captum")

import tiny_trained_llama as tiny
from threads import run_together  # noqa: E402
from tiny_trained_llama import word_spans  # noqa: E402

from gsmile.errors import InvalidInputError  # noqa: E402
from gsmile.whitebox.attention import attention_attribution  # noqa: E402
from gsmile.whitebox.gradients import gradient_attribution  # noqa: E402

PROMPTS = ["f3 f1 v2 f5 f0 f7", "v1 f6 f6 f2 f4 f0", "f0 f2 f4 f6 f1 v3", "f5 f5 f3 v0 f1 f2"]


GXI_FAILS = ("measured: gradient×input is ~0 for every word of this model (|coefficients| < 1e-7 without label "
             "smoothing, exactly 0.000 with it): each word reaches the answer through RMSNorms, which are scale-"
             "invariant, so ∂F/∂e·e (a derivative along e itself) vanishes once the word's residual stream is "
             "dominated by the layers' outputs; integrated gradients, which integrate from a baseline, do not")


@pytest.mark.parametrize("method, options", [
    pytest.param("gradient_x_input", {}, marks=pytest.mark.xfail(strict=True, reason=GXI_FAILS)),
    ("integrated_gradients", {"baseline": "zero"}), ("integrated_gradients", {"baseline": "pad"})])
def test_gradients_rank_the_deciding_word_first(tiny_lm, method, options):
    for text in PROMPTS:
        words = text.split()
        response = tiny_lm.encode_response(tiny.answer(words))
        res = gradient_attribution(tiny_lm, text, word_spans(text), response, method=method, **options)
        value_at = next(i for i, w in enumerate(words) if w in tiny.VALUES)
        assert int(np.argmax(res.coefficients)) == value_at, (text, res.coefficients)
        assert res.coefficients[value_at] > 0
        assert res.extras["outside_units"]["text_tokens"] == []  # every text token is a word
        if method == "integrated_gradients":
            assert res.extras["outside_units"]["template_share"] == 0  # the template is not replaced
            # completeness is reported, not asserted here: measured 0.18 at 64 points on this
            # tiny model (its integrand is sharp); the embedded model's test checks it
            assert res.extras["completeness"]["relative_error"] >= 0


def test_attention_hints_on_the_deciding_word(tiny_lm):
    """Rollout and last-layer attention are reported as hints. Measured on this model: rollout puts
    the most weight on the value word for every prompt; the last layer's attention does not (its
    weights are nearly flat over the words, e.g. 0.11 0.13 0.13 0.12 0.10 0.09 for "f3 f1 v2 f5 f0
    f7"): the value is read in the first layer. Only rollout's ranking is asserted."""
    for text in PROMPTS:
        words = text.split()
        response = tiny_lm.encode_response(tiny.answer(words))
        value_at = next(i for i, w in enumerate(words) if w in tiny.VALUES)
        for method in ("attention", "attention_rollout"):
            res = attention_attribution(tiny_lm, text, word_spans(text), response, method=method)
            assert res.hint.startswith("a hint, not an attribution: ")
            assert res.token_coefficients.shape == (6, 1)
            assert np.all(res.coefficients >= 0) and res.coefficients.sum() <= 1 + 1e-9
            if method == "attention_rollout":
                assert int(np.argmax(res.coefficients)) == value_at, (method, text, res.coefficients)
    # the shared model was not switched to eager attention
    assert tiny_lm.model.config._attn_implementation != "eager"


def test_per_token_rows_sum_to_the_total(tiny_lm):
    text = PROMPTS[0]
    response = tiny_lm.encode_response("a2 <end>")  # two response tokens
    assert len(response) == 2
    gxi = gradient_attribution(tiny_lm, text, word_spans(text), response, method="gradient_x_input")
    assert gxi.token_coefficients.shape == (6, 2)
    np.testing.assert_allclose(gxi.token_coefficients.sum(axis=1), gxi.coefficients, rtol=1e-4, atol=1e-6)
    ig = gradient_attribution(tiny_lm, text, word_spans(text), response, method="integrated_gradients", steps=16)
    assert ig.token_coefficients is None  # IG computes per-token rows only when asked
    ig_t = gradient_attribution(tiny_lm, text, word_spans(text), response, method="integrated_gradients", steps=16, per_token=True)
    np.testing.assert_allclose(ig_t.coefficients, ig.coefficients, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ig_t.token_coefficients.sum(axis=1), ig_t.coefficients, rtol=1e-4, atol=1e-6)


def test_units_cover_part_of_the_text(tiny_lm):
    """Tokens of the text outside every unit are reported; a token goes to the unit it overlaps."""
    text = PROMPTS[0]
    response = tiny_lm.encode_response("a2")
    res = gradient_attribution(tiny_lm, text, [(0, 2), (6, 8)], response, method="gradient_x_input")
    outside = res.extras["outside_units"]
    assert outside["text_tokens"] == ["f1", "f5", "f0", "f7"]
    assert 0 < outside["text_share"] < 1
    assert [t["unit"] for t in res.extras["tokens"]] == [0, None, 1, None, None, None]


def test_two_explanations_at_once_match_one_by_one(tiny_lm):
    """Two different gradient explanations (and a black-box scoring) at the same moment in two
    threads give what they give one by one; the shared model is left as it was."""
    model = tiny_lm.model
    a_text, b_text = PROMPTS[1], PROMPTS[2]
    a_resp = tiny_lm.encode_response(tiny.answer(a_text.split()))
    b_resp = tiny_lm.encode_response(tiny.answer(b_text.split()))
    jobs = {
        "a": lambda: gradient_attribution(tiny_lm, a_text, word_spans(a_text), a_resp, method="gradient_x_input"),
        "b": lambda: gradient_attribution(tiny_lm, b_text, word_spans(b_text), b_resp, method="integrated_gradients", steps=32),
        "black": lambda: tiny_lm.logprobs([a_text, b_text, "f0 f0 f0 v1 f0 f0"], a_resp),
    }
    alone = {k: job() for k, job in jobs.items()}
    # (after the black-box scoring: its lean Llama body sets requires_grad=False on the linear
    # weights it stacks, once; the white-box methods change nothing)
    before = {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()}
    for _ in range(3):
        together = dict(zip(jobs, (result for result, _, _ in run_together(list(jobs.values())))))
        for key in ("a", "b"):
            np.testing.assert_allclose(together[key].coefficients, alone[key].coefficients, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together["black"], alone["black"], rtol=1e-5, atol=1e-6)
    after = {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()}
    assert after == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_only_local_models_are_accepted():
    from gsmile.backends import resolve_model
    from gsmile.backends.openai import OpenAIBackend

    scalar = resolve_model(lambda texts: [0.0 for _ in texts])
    api = OpenAIBackend("some-model", base_url="http://127.0.0.1:9/v1", api_key="x")
    for model in (scalar, api, "local"):
        for call in (lambda m: gradient_attribution(m, "a b", [(0, 1)], [1], method="gradient_x_input"),
                     lambda m: attention_attribution(m, "a b", [(0, 1)], [1], method="attention")):
            with pytest.raises(InvalidInputError, match=r"^(gradient|attention) methods need a local model \(local, hf:PATH\) whose internals gsmile can read; .* is not one$"):
                call(model)


def test_bad_arguments_are_refused(tiny_lm):
    text = PROMPTS[0]
    for kwargs, field in [({"method": "saliency"}, "method"), ({"method": "integrated_gradients", "baseline": "mean"}, "baseline"),
                          ({"method": "integrated_gradients", "steps": 0}, "steps")]:
        with pytest.raises(InvalidInputError) as info:
            gradient_attribution(tiny_lm, text, word_spans(text), [19], **kwargs)
        assert info.value.field == field
    with pytest.raises(InvalidInputError, match="not inside the text"):
        gradient_attribution(tiny_lm, text, [(0, 99)], [19], method="gradient_x_input")
    with pytest.raises(InvalidInputError, match="response is empty"):
        gradient_attribution(tiny_lm, text, word_spans(text), [], method="gradient_x_input")
    with pytest.raises(InvalidInputError):
        attention_attribution(tiny_lm, text, word_spans(text), [19], method="attention_flow")


@pytest.mark.model
def test_integrated_gradients_completeness_on_the_embedded_model(lm):
    """IG on the embedded SmolLM2 (zero baseline), starting at 64 points. Measured on this
    prompt: 3.7% off at 64 points, 0.4% at 128, so the points are doubled once; the method
    stops at the first try within 1% (see gradients.py). With max_steps=64 it stays at 64 and
    the explanation says it is off by more than 1%."""
    text = "What is the capital of France?"
    response = lm.encode_response("Paris")
    res = gradient_attribution(lm, text, word_spans(text), response, method="integrated_gradients", steps=64)
    comp = res.extras["completeness"]
    assert comp["relative_error"] <= 0.01, (comp, res.extras["step_tries"])
    assert res.extras["step_tries"][0]["steps"] == 64 and res.extras["steps"] == res.extras["step_tries"][-1]["steps"]
    assert all(t["relative_error"] > 0.01 for t in res.extras["step_tries"][:-1])
    assert res.extras["outside_units"]["template_share"] == 0
    assert comp["f_input"] > comp["f_baseline"]
    once = gradient_attribution(lm, text, word_spans(text), response, method="integrated_gradients", steps=64, max_steps=64)
    assert once.extras["steps"] == 64 and len(once.extras["step_tries"]) == 1
    assert once.extras["completeness"]["relative_error"] == pytest.approx(res.extras["step_tries"][0]["relative_error"])
