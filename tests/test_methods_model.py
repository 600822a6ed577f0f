"""Every method end to end on the real embedded SmolLM2 (few samples, short prompt)."""

import json
import warnings

import numpy as np
import pytest

from gsmile import explain
from gsmile.cli import main
from gsmile.methods import PERTURBATION_METHODS

pytestmark = pytest.mark.model

PROMPT = "Name the capital of France, briefly, in one word."
RESPONSE = "Paris."
PHRASES = ["Name the capital of France,", "briefly,", "in one word."]


@pytest.mark.parametrize("method", sorted(PERTURBATION_METHODS))
def test_every_method_explains_a_short_prompt(lm, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = explain(PROMPT, RESPONSE, model=lm, method=method, unit="phrase", target="logprob", n_samples=10, random_state=0)
    assert exp.method == method and [u.text for u in exp.units] == PHRASES
    assert np.all(np.isfinite(exp.coefficients)) and np.ptp(exp.coefficients) > 0
    assert exp.token_coefficients.shape == (3, len(exp.response_tokens))
    # the per-token columns are fitted like the explained value: logprob sums the positions
    np.testing.assert_allclose(exp.token_coefficients.sum(axis=1), exp.coefficients, atol=1e-6)
    if method in ("shapley", "kernelshap"):  # 2^3 coalitions: both enumerate them
        assert exp.extras["exhaustive"]
        # y(original) = 0 for a language model: the values sum to -y(empty) = Δ(empty input)
        assert exp.extras["value_full"] == pytest.approx(0.0, abs=1e-9)
        assert exp.coefficients.sum() == pytest.approx(-exp.extras["value_empty"], abs=1e-9)
    if method == "mupax":
        assert exp.extras["mupax"]["n_total"] == 10
    json.loads(exp.to_json())


def test_cli_runs_a_method_with_context_on_the_model(lm, tmp_path, capsys):
    context = tmp_path / "context.txt"
    context.write_text("Paris is the capital of France. Bananas are yellow.", encoding="utf-8")
    out = tmp_path / "exp.json"
    code = main(["explain", "What is the capital of France?", "--response", "Paris.", "--context-file", str(context),
                 "--method", "kernelshap", "--target", "logprob", "--samples", "10", "--runs", "2", "--quiet",
                 "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Stability over 2 runs" in printed
    data = json.loads(out.read_text())
    assert data["explained"] == "context" and data["method"] == "kernelshap" and data["unit_type"] == "sentence"
    assert [u["text"] for u in data["units"]] == ["Paris is the capital of France.", "Bananas are yellow."]
    # the sentence that answers the question matters more than the unrelated one
    assert data["coefficients"][0] > data["coefficients"][1]
