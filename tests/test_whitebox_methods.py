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
