"""The composable core: ``method=`` takes a SurrogateMethod a user builds from any sampler,
kernel and surrogate (the README's example), and treats it exactly like a named method."""

import numpy as np
import pytest

from gsmile import Explainer, explain
from gsmile.errors import InvalidInputError
from gsmile.kernels import GaussianKernel, UniformKernel
from gsmile.methods import SurrogateMethod
from gsmile.samplers import BernoulliSampler, DropoutSampler
from gsmile.surrogates import WeightedLinearRegression

PROMPT = "the quick brown fox jumps over the lazy dog today"
WEIGHTS = {"quick": 1.5, "fox": 3.0, "lazy": -2.0, "dog": 0.5}


def additive(texts):
    """A scalar model whose exact attributions are its weights: y = Σ weights of the words kept."""
    return [sum(w for word, w in WEIGHTS.items() if word in t.split()) for t in texts]


def test_a_user_built_gsmile_is_the_named_one():
    mine = SurrogateMethod(sampler=DropoutSampler(dropout=0.2), kernel=GaussianKernel(), surrogate_factory=WeightedLinearRegression)
    for runs in (1, 3):
        got = explain(PROMPT, model=additive, method=mine, n_samples=80, random_state=4, runs=runs)
        want = explain(PROMPT, model=additive, method="gsmile", n_samples=80, random_state=4, runs=runs)
        np.testing.assert_array_equal(got.coefficients, want.coefficients)
        assert got.n_unique == want.n_unique and got.method == "custom"
    assert mine.sampler.random_state is None  # reseeded copies; the user's object is unchanged


class Ridge:
    """A surrogate written by a user: fit(Z, y, sample_weight) sets coef_, intercept_, r2_."""

    def __init__(self, alpha: float = 1e-9):
        self.alpha = alpha

    def validate(self):
        pass

    def fit(self, Z, y, sample_weight):
        w = np.sqrt(sample_weight)[:, None]
        X = np.column_stack([np.ones(len(Z)), Z])
        Y = y.reshape(len(y), -1)
        beta = np.linalg.solve((X * w).T @ (X * w) + self.alpha * np.eye(X.shape[1]), (X * w).T @ (Y * w))
        resid = Y - X @ beta
        self.intercept_ = beta[0] if y.ndim > 1 else float(beta[0, 0])
        self.coef_ = beta[1:] if y.ndim > 1 else beta[1:, 0]
        r2 = 1 - (sample_weight[:, None] * resid**2).sum(0) / (sample_weight[:, None] * (Y - Y.mean(0)) ** 2).sum(0)
        self.r2_ = r2 if y.ndim > 1 else float(r2[0])
        return self


def test_any_sampler_kernel_and_surrogate_recover_a_linear_models_weights():
    method = SurrogateMethod(name="banzhaf-ridge", sampler=BernoulliSampler(keep=0.5), kernel=UniformKernel(),
                             surrogate_factory=Ridge)
    exp = Explainer(additive, method=method, n_samples=120, random_state=0).explain(PROMPT)
    got = {u.text: c for u, c in zip(exp.units, exp.coefficients)}
    for word in ("quick", "brown", "fox", "lazy", "dog", "today"):
        assert got[word] == pytest.approx(WEIGHTS.get(word, 0.0), abs=1e-6)
    assert exp.method == "banzhaf-ridge" and exp.fidelity_r2 == pytest.approx(1.0)


def test_options_belong_to_the_users_method():
    mine = SurrogateMethod(sampler=DropoutSampler(), kernel=GaussianKernel(), surrogate_factory=WeightedLinearRegression)
    for options in ({"dropout": 0.3}, {"method_options": {"sigma": 2.0}}):
        with pytest.raises(InvalidInputError, match="options apply to a method given by name") as err:
            Explainer(additive, method=mine, **options).validate()
        assert err.value.field == "method_options"
    bad = SurrogateMethod(sampler=DropoutSampler(dropout=0.9), kernel=GaussianKernel(), surrogate_factory=WeightedLinearRegression)
    with pytest.raises(InvalidInputError, match="dropout must be between"):
        Explainer(additive, method=bad).validate()
