"""The reliability flag can fail: a held-out R² next to the in-sample one, and too few
effective samples for the number of units, each make an explanation unreliable even when
the in-sample R² looks good."""

import warnings
import zlib

import numpy as np
import pytest

import gsmile
from gsmile.errors import GsmileError, InvalidInputError
from gsmile.explanation import HELD_OUT_THRESHOLD, Explanation
from gsmile.kernels import UniformKernel
from gsmile.methods import SurrogateMethod
from gsmile.render import render_html, render_terminal
from gsmile.samplers import BernoulliSampler
from gsmile.surrogates import LassoSurrogate, WeightedLinearRegression

PROMPT = "the quick brown fox jumps over the lazy dog today"
WEIGHTS = {"quick": 1.5, "fox": 3.0, "lazy": -2.0, "dog": 0.5}


def additive(texts):
    return [sum(w for word, w in WEIGHTS.items() if word in t.split()) for t in texts]


def noise(texts):
    """A model with no structure: a fixed random value per text."""
    return [float(np.random.default_rng(zlib.crc32(t.encode())).normal()) for t in texts]


def explain(prompt, model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gsmile.explain(prompt, model=model, random_state=0, **kw)


@pytest.mark.parametrize("method", ["gsmile", "lime", "kernelshap", "mupax", "banzhaf"])
def test_a_linear_model_is_predicted_on_held_out_samples(method):
    exp = explain(PROMPT, additive, method=method, n_samples=100)
    assert exp.held_out_r2 == pytest.approx(1.0, abs=0.1) and exp.reliable, exp.reliability_issues


def test_occlusion_has_no_held_out_figure():
    exp = explain(PROMPT, additive, method="occlusion")  # N + 1 samples for N + 1 parameters
    assert exp.held_out_r2 is None and exp.reliable


def test_an_overfitted_surrogate_is_caught_by_its_held_out_r2():
    # 30 units, 41 samples, no structure: with most seeds the in-sample R² passes 0.7 by
    # chance alone (the old flag said "reliable"); the held-out R² shows it predicts nothing.
    prompt = " ".join(f"w{i}" for i in range(30))
    fooled = 0
    for seed in range(8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = gsmile.explain(prompt, model=noise, method="banzhaf", n_samples=40, random_state=seed)
        fooled += exp.fidelity_r2 >= 0.7
        assert exp.effective_sample_size >= 31 and exp.held_out_r2 < HELD_OUT_THRESHOLD and not exp.reliable
        assert f"held-out R² {exp.held_out_r2:.2f} is below 0.5" in exp.reliability_issues[-1]
    assert fooled >= 4


def test_too_few_effective_samples_for_the_units_is_unreliable_whatever_the_r2():
    # The issue's case: gSMILE's published width 0.5·sqrt(60) on 60 units leaves about 4
    # effective samples (the default is wider now; see the next test).
    prompt = " ".join(f"w{i}" for i in range(60))
    exp = explain(prompt, lambda ts: [float("w3" in t.split()) for t in ts], n_samples=200, sigma=0.5 * 60**0.5)
    assert exp.fidelity_r2 > 0.99 and exp.effective_sample_size < 10
    assert not exp.reliable
    assert any("effective sample size" in issue and "61 parameters" in issue for issue in exp.reliability_issues)
    text = render_terminal(exp)
    assert "the scores are unreliable" in text and "61 parameters" in text
    assert "raise --sigma or lower --dropout" in text  # the explainer's advice is still shown
    assert "61 parameters" in render_html(exp)


@pytest.mark.parametrize("n_units", [5, 12, 20, 60, 150, 500])
def test_default_kernel_keeps_the_effective_sample_size_at_any_size(n_units):
    prompt = " ".join(f"w{i}" for i in range(n_units))
    exp = explain(prompt, lambda ts: [float("w3" in t.split()) for t in ts], n_samples=200, surrogate="least_squares")
    assert exp.effective_sample_size >= 0.3 * exp.n_unique
    assert exp.params["sigma_rule"] == "max(0.5·sqrt(N), 0.7·dropout·N)"
    assert exp.sigma == pytest.approx(max(0.5 * n_units**0.5, 0.7 * 0.2 * n_units))
    if n_units <= 12:
        assert exp.sigma == pytest.approx(0.5 * n_units**0.5)  # gSMILE's own width where it was published
    if n_units >= 200:
        assert not exp.reliable  # 200 samples cannot fit more parameters than that, however they are weighted
        chosen = explain(prompt, lambda ts: [float("w3" in t.split()) for t in ts], n_samples=200)  # no surrogate asked for
        assert chosen.params["surrogate"] == "lasso" and chosen.top(1)[0].text == "w3" and chosen.reliable


def test_held_out_figure_and_issues_round_trip_through_json():
    prompt = " ".join(f"w{i}" for i in range(30))
    exp = explain(prompt, noise, method="banzhaf", n_samples=40, runs=2)
    data = exp.to_dict()
    assert data["held_out_r2"] == pytest.approx(exp.held_out_r2) and data["reliable"] is False
    assert data["reliability_issues"] == exp.reliability_issues
    assert len(data["extras"]["stability"]["held_out_r2"]) == 2
    back = Explanation.from_dict(data)
    assert back.held_out_r2 == pytest.approx(exp.held_out_r2) and back.reliability_issues == exp.reliability_issues
    del data["held_out_r2"]  # written before the held-out figure existed
    assert Explanation.from_dict(data).held_out_r2 is None


def test_terminal_shows_the_held_out_figure():
    exp = explain(PROMPT, additive, n_samples=100)
    assert f"Surrogate fidelity R²: 1.00 (held out: {exp.held_out_r2:.2f})" in render_terminal(exp)


# ------------------------------------------------------------------ a sparse surrogate
def sparse_model(texts):
    """100 words, three of which matter, and a little noise."""
    weights = {"w3": 2.0, "w40": -1.5, "w77": 1.0}
    return [sum(v for k, v in weights.items() if k in t.split()) + 0.05 * np.random.default_rng(zlib.crc32(t.encode())).normal()
            for t in texts]


@pytest.mark.parametrize("surrogate, n_parameters", [(lambda: LassoSurrogate(), None), (lambda: LassoSurrogate(max_units=3), 4)])
def test_a_lasso_surrogate_is_reliable_where_least_squares_cannot_be(surrogate, n_parameters):
    prompt = " ".join(f"w{i}" for i in range(100))

    def method(factory):
        return SurrogateMethod(sampler=BernoulliSampler(keep=0.5), kernel=UniformKernel(), surrogate_factory=factory)

    dense = explain(prompt, sparse_model, method=method(WeightedLinearRegression), n_samples=60)
    assert not dense.reliable and dense.n_parameters == 101 and dense.held_out_r2 is None  # 61 samples, 101 parameters
    sparse = explain(prompt, sparse_model, method=method(surrogate), n_samples=60)
    assert [a.text for a in sparse.top(3)] == ["w3", "w40", "w77"]
    assert sparse.reliable and sparse.held_out_r2 > 0.9, sparse.reliability_issues
    assert sparse.n_parameters < 20 and (n_parameters is None or sparse.n_parameters == n_parameters)
    assert np.count_nonzero(sparse.coefficients) == sparse.n_parameters - 1


def test_lasso_options_are_checked():
    for bad, field in ((LassoSurrogate(alpha=-1.0), "alpha"), (LassoSurrogate(max_units=0), "max_units")):
        with pytest.raises(InvalidInputError) as err:
            bad.validate()
        assert err.value.field == field


def _two_words(texts):
    return [2.0 * ("w3" in t.split()) + 1.0 * ("w40" in t.split()) for t in texts]


@pytest.mark.parametrize("method", ["gsmile", "banzhaf", "lime", "mupax"])
def test_lasso_surrogate_for_every_fitting_method_finds_the_two_units_and_reports_them(method):
    prompt = " ".join(f"w{i}" for i in range(80))
    exp = explain(prompt, _two_words, method=method, surrogate="lasso", n_samples=120)
    assert [a.text for a in exp.top(2)] == ["w3", "w40"]
    assert set(exp.extras["selected_units"]) >= {3, 40} and exp.n_parameters == len(exp.extras["selected_units"]) + 1
    assert exp.params["surrogate"] == "lasso"
    dense = explain(prompt, _two_words, method=method, n_samples=120)
    assert "selected_units" not in dense.extras and dense.n_parameters == 81


def test_lasso_max_units_keeps_that_many_and_bad_combinations_are_refused():
    prompt = " ".join(f"w{i}" for i in range(40))
    noisy = lambda ts: [2.0 * ("w3" in t.split()) + 1.0 * ("w30" in t.split()) + 0.5 * ("w7" in t.split()) for t in ts]  # noqa: E731
    exp = explain(prompt, noisy, surrogate="lasso", max_units=2, n_samples=100)
    assert sorted(exp.extras["selected_units"]) == [3, 30]
    for options, message in [(dict(surrogate="lasso", method="occlusion"), "defined by its own estimator"),
                             (dict(surrogate="lasso", method="kernelshap"), "applies to gsmile, lime, banzhaf, mupax"),
                             (dict(surrogate="ridge"), "unknown surrogate 'ridge'"),
                             (dict(max_units=3), "max_units applies to surrogate='lasso'")]:
        with pytest.raises(GsmileError, match=message):
            explain(prompt, noisy, **options)


def test_cli_lasso_prints_the_kept_units(capsys, monkeypatch):
    from gsmile import cli

    monkeypatch.setattr(cli, "_model", lambda args, name: _two_words)
    prompt = " ".join(f"w{i}" for i in range(50))
    assert cli.main(["explain", prompt, "--surrogate", "lasso", "--max-units", "2", "--samples", "80", "--quiet", "--color", "never"]) == 0
    assert "Sparse surrogate (lasso): kept 2 of 50 units: w3, w40" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["gsmile", "banzhaf"])
def test_lasso_is_chosen_when_the_budget_cannot_pin_down_least_squares(method):
    """No surrogate asked for: 40 evaluations for 80 units (81 least-squares parameters) get
    lasso, recorded with the reason, and find the two units; 100 evaluations keep least squares."""
    prompt = " ".join(f"w{i}" for i in range(80))
    exp = explain(prompt, _two_words, method=method, max_evals=40)
    assert exp.params["surrogate"] == "lasso"
    assert exp.params["surrogate_reason"] == "lasso chosen: 40 evaluations for 80 units, fewer than the 81 parameters of a least-squares fit"
    assert [a.text for a in exp.top(2)] == ["w3", "w40"] and "selected_units" in exp.extras
    plenty = explain(prompt, _two_words, method=method, max_evals=100)
    assert "surrogate" not in plenty.params and "selected_units" not in plenty.extras
    asked = explain(prompt, _two_words, method=method, max_evals=40, surrogate="least_squares")  # the user's choice stands
    assert "surrogate_reason" not in asked.params and "selected_units" not in asked.extras and not asked.reliable
    assert "surrogate" not in explain(prompt, _two_words, method="kernelshap", max_evals=40).params  # its own estimator
