"""Contrastive explanations: why this response rather than that one.

The value explained is the change of the margin log p(response | x) − log p(contrast | x).
With serve_models.ToyLM the margin of one-word answers is exactly boost · (z_answer −
z_contrast): the normalizer cancels, so every method's coefficients are known exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI  # noqa: E402
from serve_models import ToyLM  # noqa: E402

from gsmile import Explainer  # noqa: E402
from gsmile.backends.openai import OpenAIBackend  # noqa: E402
from gsmile.cli import main  # noqa: E402
from gsmile.errors import InvalidInputError  # noqa: E402
from gsmile.faithfulness import evaluate  # noqa: E402

PROMPT = "Is the capital Paris or Rome in this old riddle"
EXACT = np.array([0, 0, 0, 3.0, 0, -3.0, 0, 0, 0, 0])  # +boost for Paris, −boost for Rome


@pytest.mark.parametrize("method", ["occlusion", "shapley", "kernelshap", "gsmile", "lime", "banzhaf"])
def test_a_linear_margin_gives_every_method_the_exact_weights(method):
    exp = Explainer(ToyLM(), method=method, n_samples=120, random_state=0, contrast="Rome").explain(PROMPT, "Paris")
    if method == "lime":  # ridge (alpha 1) shrinks every weight a little: the same signs and order
        assert np.array_equal(np.argsort(exp.coefficients)[[0, -1]], [5, 3]) and np.max(np.abs(exp.coefficients - EXACT)) < 0.4
    else:
        np.testing.assert_allclose(exp.coefficients, EXACT, atol=1e-8)
    assert exp.target == "contrast" and exp.params["contrast"] == "Rome"
    assert exp.token_coefficients is None  # the margin has no per-token column


def test_without_the_contrast_the_response_alone_spreads_over_every_word():
    plain = Explainer(ToyLM(), method="shapley", target="logprob").explain(PROMPT, "Paris")
    assert np.count_nonzero(np.abs(plain.coefficients) > 1e-6) > 2  # the normalizer moves with every word


def test_batch_size_does_not_change_a_contrastive_explanation():
    runs = [Explainer(ToyLM(), method="gsmile", n_samples=40, random_state=1, batch_size=b, contrast="Rome").explain(PROMPT, "Paris")
            for b in (1, 3, 50)]
    for other in runs[1:]:
        np.testing.assert_allclose(other.coefficients, runs[0].coefficients, atol=1e-12)


def test_evaluate_scores_the_margin_again():
    exp = Explainer(ToyLM(), method="occlusion", contrast="Rome").explain(PROMPT, "Paris")
    metrics = evaluate(exp, ToyLM())
    assert metrics["target"] == "contrast"
    # Deleting "Paris" first drops the margin by exactly boost.
    assert metrics["deletion"][1] == pytest.approx(3.0)


@pytest.mark.parametrize("contrast, message", [
    ("", "contrast must be a non-empty text"),
    ("Paris", "the contrast equals the response"),
])
def test_bad_contrasts_are_refused(contrast, message):
    with pytest.raises(InvalidInputError, match=message):
        Explainer(ToyLM(), method="occlusion", contrast=contrast).explain(PROMPT, "Paris")


def test_a_contrast_needs_log_probabilities():
    with pytest.raises(InvalidInputError, match="contrast needs the model's log-probabilities"):
        Explainer(lambda texts: [float(len(t)) for t in texts], contrast="no").explain(PROMPT)
    with FakeOpenAI(logprobs=False) as srv:
        api = OpenAIBackend("fake", base_url=srv.base_url, use_cache=False)
        with pytest.raises(InvalidInputError, match="contrast needs the model's log-probabilities.*text path"):
            Explainer(api, method="occlusion", contrast="Rome").explain(PROMPT, "Paris")


def test_an_api_on_its_log_prob_path_explains_a_contrast():
    with FakeOpenAI() as srv:
        api = OpenAIBackend("fake", base_url=srv.base_url, use_cache=False)
        exp = Explainer(api, method="occlusion", contrast="Rome").explain(PROMPT, "Paris")
    assert exp.target == "contrast" and exp.extras["path"] == "logprobs"
    assert np.all(np.isfinite(exp.coefficients)) and np.any(exp.coefficients != 0)


def test_cli_contrast_mistakes_exit_2_with_one_line(capsys):
    assert main(["explain", PROMPT, "--contrast", "  ", "--model", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert "contrast must be a non-empty text" in err and len(err.splitlines()) == 1


@pytest.mark.model
def test_on_the_embedded_model_each_occlusion_coefficient_is_the_margin_change(lm):
    prompt = "Name a fruit that is red"
    exp = Explainer(lm, method="occlusion", contrast="Banana").explain(prompt, "Apple")
    resp, other = lm.encode_response("Apple"), lm.encode_response("Banana")

    def margin(texts):
        a, b = lm.logprobs(texts, resp), lm.logprobs(texts, other)
        pick = lambda lp, ids: lp[:, np.arange(len(ids)), ids].sum(axis=1)  # noqa: E731
        return pick(a, resp) - pick(b, other)

    texts = [prompt] + [" ".join(w for j, w in enumerate(prompt.split()) if j != i) for i in range(len(prompt.split()))]
    m = margin(texts)
    np.testing.assert_allclose(exp.coefficients, m[0] - m[1:], atol=2e-3)


def test_the_server_explains_a_contrast_and_refuses_one_equal_to_the_response(tmp_path):
    from server_client import AppFactory

    factory = AppFactory(tmp_path, ToyLM)
    try:
        api = factory()
        r = api.post("/v1/explain", json={"prompt": PROMPT, "response": "Paris", "contrast": "Rome", "method": "shapley"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["target"] == "contrast" and body["params"]["contrast"] == "Rome"
        np.testing.assert_allclose(body["coefficients"], EXACT, atol=1e-8)
        r = api.post("/v1/explain", json={"prompt": PROMPT, "response": "Paris", "contrast": "Paris", "method": "occlusion"})
        assert r.status_code in (400, 422) and "contrast equals the response" in r.text
    finally:
        factory.close()


@pytest.mark.model
def test_cli_refuses_a_contrast_equal_to_the_response_with_one_line(lm, capsys, monkeypatch):
    monkeypatch.setattr("gsmile.backends._loaded", {("local", "cpu", "float32", None): lm})
    assert main(["explain", "Name a fruit that is red", "--response", "Apple", "--contrast", "Apple", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the contrast equals the response" in err and len(err.splitlines()) == 1
