"""End-to-end checks on the real embedded SmolLM2 (loaded once per session)."""

import numpy as np
import pytest

import gsmile
from gsmile.units import Segmentation

pytestmark = pytest.mark.model

PROMPT = "What is the capital of France and why is it historically significant?"
SHORT = "Name the capital city of France."


def test_explains_the_example_prompt_end_to_end(lm):
    exp = gsmile.explain(PROMPT, model=lm, n_samples=40, max_new_tokens=12, random_state=0)
    assert exp.response.startswith("The capital of France is Paris")
    assert [u.text for u in exp.units][:4] == ["What", "is", "the", "capital"]
    assert exp.coefficients.shape == (12,) and np.all(np.isfinite(exp.coefficients))
    assert exp.scores.max() == pytest.approx(1.0)
    assert np.isfinite(exp.fidelity_r2)
    assert exp.target == "wasserstein" and exp.model_id.startswith("SmolLM2-135M-Instruct")
    assert 1 < exp.n_unique <= 40
    assert exp.token_coefficients.shape == (12, len(exp.response_tokens))
    assert "".join(exp.response_tokens) == exp.response


def test_given_response_is_explained_teacher_forced(lm):
    response = "Paris is the capital of France."
    exp = gsmile.explain(SHORT, response, model=lm, n_samples=20, target="logprob", random_state=0)
    assert exp.response == response
    assert "".join(exp.response_tokens) == response
    # removing words never makes the response *more* likely in every sample: y is not constant
    assert np.ptp(exp.coefficients) > 0


@pytest.mark.parametrize("target", ["wasserstein", "kl"])
def test_batch_size_does_not_change_results(lm, target):
    runs = [
        gsmile.explain(SHORT, "Paris.", model=lm, n_samples=12, target=target, random_state=3, batch_size=b)
        for b in (1, 2, 3)
    ]
    for other in runs[1:]:
        np.testing.assert_allclose(other.coefficients, runs[0].coefficients, atol=1e-4)
        assert other.fidelity_r2 == pytest.approx(runs[0].fidelity_r2, abs=1e-4)


def test_token_units_use_the_model_tokenizer(lm):
    seg = Segmentation.from_text("Define antidisestablishmentarianism briefly.", "token", tokenizer=lm.token_spans)
    texts = [u.text for u in seg.units]
    # the long word is several BPE pieces; leading spaces are trimmed from the spans
    assert texts == ["Define", "ant", "idis", "establish", "ment", "arianism", "briefly", "."]


def test_dropping_the_top_words_moves_the_output_more_than_dropping_the_bottom_words(lm):
    exp = gsmile.explain(PROMPT, model=lm, n_samples=60, max_new_tokens=16, target="kl", random_state=0)
    seg = Segmentation(exp.prompt, exp.units)
    order = np.argsort(-exp.coefficients)
    top, bottom = seg.full_mask, seg.full_mask
    top[order[:3]] = False
    bottom[order[-3:]] = False
    from gsmile.targets import make_target

    ids = lm.encode_response(exp.response)
    target = make_target("kl").prepare(lm.logprobs([PROMPT], ids)[0], ids)
    shift_top, shift_bottom = target(lm.logprobs([seg.render(top), seg.render(bottom)], ids))
    assert shift_top > shift_bottom
