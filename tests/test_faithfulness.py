"""Faithfulness metrics checked on a scalar additive model, where every curve is known exactly."""

import itertools
import json

import numpy as np
import pytest

import gsmile
from gsmile.cli import main
from gsmile.errors import InvalidInputError
from gsmile.explanation import Explanation
from gsmile.faithfulness import (
    ExplanationScorer,
    aopc,
    comprehensiveness,
    deletion_curve,
    evaluate,
    importance_order,
    insertion_aopc,
    insertion_curve,
    sufficiency,
)
from gsmile.units import Segmentation
from serve_models import ToyLM

PROMPT = "alpha bravo charlie delta echo foxtrot golf"
# conftest's additive model: weights of alpha..golf and bias 0.25.
WEIGHTS = np.array([3.0, -1.5, 0.0, 2.25, 0.5, -0.75, 1.0])
# Removing the units in true order (alpha, delta, golf, echo, charlie, foxtrot, bravo)
# lowers f by the running sums of the sorted weights.
TRUE_DELETION = np.array([0.0, 3.0, 5.25, 6.25, 6.75, 6.75, 6.0, 4.5])
TRUE_AOPC = 38.5 / 8


def exact_explanation(coefficients=WEIGHTS):
    seg = Segmentation.from_text(PROMPT)
    return Explanation(PROMPT, None, seg.units, np.asarray(coefficients, dtype=float), 0.25, 1.0, target="model_output")


def test_deletion_curve_of_the_true_order_is_the_running_sum_of_sorted_weights(additive):
    scorer = ExplanationScorer(exact_explanation(), additive)
    order = importance_order(WEIGHTS)
    assert order.tolist() == [0, 3, 6, 4, 2, 5, 1]
    np.testing.assert_allclose(deletion_curve(scorer, order), TRUE_DELETION)
    assert aopc(deletion_curve(scorer, order)) == pytest.approx(TRUE_AOPC)


def test_insertion_curve_starts_at_the_empty_input_and_ends_at_zero(additive):
    scorer = ExplanationScorer(exact_explanation(), additive)
    curve = insertion_curve(scorer, importance_order(WEIGHTS))
    # only the first k units kept: f(x) - f = sum of the weights still missing
    np.testing.assert_allclose(curve, WEIGHTS.sum() - TRUE_DELETION)
    assert curve[-1] == 0.0
    assert insertion_aopc(curve) == pytest.approx(TRUE_AOPC)


def test_true_order_has_the_largest_deletion_aopc_of_all_orders(additive):
    scorer = ExplanationScorer(exact_explanation(), additive)
    best = aopc(deletion_curve(scorer, importance_order(WEIGHTS)))
    others = [aopc(deletion_curve(scorer, np.array(p))) for p in itertools.permutations(range(7))]
    assert best == pytest.approx(max(others))
    assert min(others) < best - 3  # the worst order is far worse
    # each distinct subset was scored once (2^7 texts at most, the original included)
    assert scorer.n_calls <= 2**7


def test_comprehensiveness_and_sufficiency_at_eraser_bins(additive):
    scorer = ExplanationScorer(exact_explanation(), additive)
    order = importance_order(WEIGHTS)
    # 7 units: 10% -> 1 unit, 20% -> 2 units, 50% -> 4 units
    assert comprehensiveness(scorer, order) == pytest.approx({"0.1": 3.0, "0.2": 5.25, "0.5": 6.75})
    assert sufficiency(scorer, order) == pytest.approx({"0.1": 1.5, "0.2": -0.75, "0.5": -2.25})


def test_evaluate_reports_every_measure_and_a_worse_random_reference(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=60, random_state=0)
    np.testing.assert_allclose(exp.coefficients, WEIGHTS, atol=1e-9)
    m = evaluate(exp, additive, n_random=3, random_state=1)
    assert m["deletion_aopc"] == pytest.approx(TRUE_AOPC)
    assert m["insertion_aopc"] == pytest.approx(TRUE_AOPC)
    assert m["random_deletion_aopc"] < m["deletion_aopc"]
    assert m["random_insertion_aopc"] < m["insertion_aopc"]
    assert m["comprehensiveness_mean"] == pytest.approx((3.0 + 5.25 + 6.75) / 3)
    assert m["fidelity_r2"] == pytest.approx(1.0)
    assert m["topk_jaccard"] is None
    json.dumps(m)  # plain data
    # the same seed gives the same random reference
    assert evaluate(exp, additive, n_random=3, random_state=1)["random_deletion_aopc"] == m["random_deletion_aopc"]


def test_a_reversed_explanation_scores_worse_than_the_true_one(additive):
    good = evaluate(exact_explanation(), additive, n_random=0)
    bad = evaluate(exact_explanation(-WEIGHTS), additive, n_random=0)
    assert bad["deletion_aopc"] < good["deletion_aopc"]
    assert bad["sufficiency_mean"] > good["sufficiency_mean"]


def test_stability_report_is_passed_through(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=30, random_state=0, runs=3)
    assert evaluate(exp, additive, n_random=0)["topk_jaccard"] == exp.extras["stability"]["topk_jaccard"]


def test_bad_options_are_refused(additive):
    with pytest.raises(InvalidInputError, match="fractions"):
        evaluate(exact_explanation(), additive, fractions=(0.0,))
    with pytest.raises(InvalidInputError, match="n_random"):
        evaluate(exact_explanation(), additive, n_random=-1)


def test_scalar_explanation_needs_its_model():
    with pytest.raises(InvalidInputError, match="scalar model"):
        ExplanationScorer(exact_explanation(), "local").shifts(np.ones((1, 7), dtype=bool))


# ------------------------------------------------------------------ until_stable
def test_until_stable_stops_when_the_top_units_repeat(additive):
    exp = gsmile.explain(PROMPT, model=additive, n_samples=20, random_state=0, until_stable=True, top_k=2)
    report = exp.extras["until_stable"]
    # an additive model is fitted exactly from the first round on: round 2 repeats it
    assert report["rounds"] == 2 and report["stable"]
    assert report["top_units"] == [[0, 3], [0, 3]]
    assert exp.params["rounds"] == 2
    assert exp.n_samples == 40
    np.testing.assert_allclose(exp.coefficients, WEIGHTS, atol=1e-9)


def _weighted(weights):
    words = PROMPT.split()
    return lambda texts: [sum(w for word, w in zip(words, weights) if word in t.split()) for t in texts]


def test_until_stable_gives_up_after_max_rounds_and_says_so():
    first = _weighted([5.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    later = _weighted([0.0, 0.0, 0.0, 0.0, 500.0, 400.0, 300.0])
    batches = []

    def drifting(texts):  # the first round's batch sees one model, later batches another
        out = (first if not batches else later)(texts)
        if len(texts) > 1:  # (single texts: the explainer's probe of the callable)
            batches.append(len(texts))
        return out

    with pytest.warns(gsmile.explainer.GsmileWarning, match="still changed after 2 rounds"):
        exp = gsmile.explain(PROMPT, model=drifting, n_samples=12, random_state=0, until_stable=True,
                             max_rounds=2, top_k=3, batch_size=1000)
    report = exp.extras["until_stable"]
    assert report["rounds"] == 2 and report["stable"] is False and report["max_rounds"] == 2
    assert report["top_units"][0] == [0, 1, 2] and report["top_units"][1] != [0, 1, 2]
    assert len(batches) == 2  # one batch per round


def test_until_stable_first_round_is_the_plain_explanation(additive):
    def bumpy(texts):  # not additive: the surrogate changes with more samples
        return [len(t) ** 1.5 for t in texts]

    plain = gsmile.explain(PROMPT, model=bumpy, n_samples=15, random_state=4)
    staged = gsmile.explain(PROMPT, model=bumpy, n_samples=15, random_state=4, until_stable=True, max_rounds=2)
    assert staged.extras["until_stable"]["top_units"][0] == sorted(
        np.argsort(-np.abs(plain.coefficients), kind="stable")[:3].tolist()
    )


def test_until_stable_options_are_checked(additive):
    with pytest.raises(InvalidInputError, match="cannot be combined"):
        gsmile.explain(PROMPT, model=additive, until_stable=True, runs=3)
    with pytest.raises(InvalidInputError, match="max_rounds"):
        gsmile.explain(PROMPT, model=additive, until_stable=True, max_rounds=1)


def test_batch_size_auto_and_explicit_agree(additive):
    runs = [gsmile.explain(PROMPT, model=additive, n_samples=30, random_state=2, batch_size=b) for b in (None, 1, 7)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.coefficients, runs[0].coefficients)
    assert runs[0].params["batch_size_auto"] is True


def test_out_of_memory_halves_the_batch_and_keeps_the_results(additive):
    sizes = []

    def picky(texts):
        sizes.append(len(texts))
        if len(texts) > 3:
            raise MemoryError("out of memory")
        return additive(texts)

    from gsmile.backends import ScalarModel

    class Model(ScalarModel):  # a backend whose own errors reach the explainer unwrapped
        def __call__(self, texts):
            return np.asarray(picky(list(texts)), dtype=float)

    exp = gsmile.explain(PROMPT, model=Model(picky), n_samples=30, random_state=2, batch_size=16)
    assert exp.params["batch_size"] == 2  # 16 -> 8 -> 4 -> 2
    np.testing.assert_allclose(exp.coefficients, WEIGHTS, atol=1e-9)
    assert sizes[:3] == [16, 8, 4]


# ------------------------------------------------------------------ CLI
def test_cli_evaluate_prints_and_saves_the_metrics(tmp_path, capsys, additive):
    # The CLI scores with a built-in model; here the saved explanation is evaluated through
    # the library with the same code path the CLI uses to print.
    from gsmile.cli import format_metrics

    m = evaluate(exact_explanation(), additive, n_random=0)
    text = format_metrics(m)
    assert "deletion AOPC:  4.8125" in text and "random order: n/a" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "missing.json"], "cannot read"),
        (["evaluate", "EXP", "--fractions", "0.1,x"], "--fractions"),
        (["evaluate", "EXP", "--fractions", "1.5"], "--fractions"),
        (["evaluate", "EXP", "--random-orders", "-1"], "--random-orders"),
    ],
)
def test_cli_evaluate_user_mistakes_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXP").write_text(exact_explanation().to_json())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsmile: error:") and message in err and err.count("\n") == 1


def test_cli_evaluate_refuses_a_file_that_is_not_an_explanation(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    assert main(["evaluate", str(bad)]) == 2
    assert "not a gsmile explanation" in capsys.readouterr().err


class _CountingToyLM(ToyLM):
    """serve_models.ToyLM, recording the prompts of each forward call."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def logprobs(self, prompts, response_ids):
        self.batches.append(list(prompts))
        return super().logprobs(prompts, response_ids)


@pytest.mark.parametrize("target", ["logprob", "wasserstein"])
def test_the_reference_rides_in_the_first_batch(target):
    prompt = "alpha bravo charlie delta echo"
    kw = dict(method="occlusion", target=target, progress=False)
    one = _CountingToyLM()
    exp = gsmile.Explainer(one, batch_size=8, **kw).explain(prompt, "bravo delta")
    # N + 1 = 6 inputs in one forward call: the original first, then the 5 occlusions.
    assert len(one.batches) == 1 and one.batches[0][0] == prompt and len(one.batches[0]) == 6
    assert exp.n_unique == 6  # the model evaluations, the original included
    for b in (1, 2, 3):
        lm = _CountingToyLM()
        again = gsmile.Explainer(lm, batch_size=b, **kw).explain(prompt, "bravo delta")
        assert sum(map(len, lm.batches)) == 6 and lm.batches[0][0] == prompt
        np.testing.assert_allclose(again.coefficients, exp.coefficients, atol=1e-12)
    # The metrics' scorer does the same: one call for the reference and a deletion curve.
    lm = _CountingToyLM()
    scorer = ExplanationScorer(exp, lm, batch_size=16)
    curve = deletion_curve(scorer, importance_order(exp.coefficients))
    assert len(lm.batches) == 1 and lm.batches[0][0] == prompt
    assert curve[0] == 0.0 and curve[-1] > 0


class _StreamingToyLM(ToyLM):
    """ToyLM with ``reduced_logprobs``: its rows go to ``reduce`` one at a time, through one
    reused array that is spoiled afterwards (a reduce that kept it would see NaN)."""

    def reduced_logprobs(self, prompts, response_ids, reduce):
        out, scratch = [], None
        for p in prompts:
            lp = self.logprobs([p], response_ids)
            scratch = np.empty_like(lp) if scratch is None else scratch
            scratch[...] = lp
            out.append(reduce(scratch))
        if scratch is not None:
            scratch[...] = np.nan
        return np.concatenate(out) if out else np.zeros((0, len(response_ids)))


@pytest.mark.parametrize("target", ["wasserstein", "logprob", "kl"])
def test_a_backend_streaming_rows_to_the_target_gives_the_same_explanation(target):
    prompt = "Name the capital city of France and the river through it"
    kw = dict(target=target, n_samples=60, random_state=3, progress=False)
    plain = gsmile.Explainer(ToyLM(), **kw).explain(prompt, "Paris river")
    for b in (1, 2, 3):
        streamed = gsmile.Explainer(_StreamingToyLM(), batch_size=b, **kw).explain(prompt, "Paris river")
        np.testing.assert_allclose(streamed.coefficients, plain.coefficients, atol=1e-12)
        assert np.all(np.isfinite(streamed.coefficients))
