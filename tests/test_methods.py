"""Attribution methods: each checked against values known exactly."""

import warnings

import numpy as np
import pytest

from gsmile import Explainer, explain
from gsmile.errors import InvalidInputError, UnknownNameError
from gsmile.methods import MAX_EXACT_UNITS, PERTURBATION_METHODS, make_method, method_options, mupax_statistics
from gsmile.samplers import BernoulliSampler, OrthogonalSampler, ShapleySampler, all_coalitions

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
WEIGHTS = np.array([3.0, -1.5, 0.0, 2.25, 0.5, -0.75, 1.0])
BIAS = 0.25
PROMPT = " ".join(WORDS)


def linear(texts):
    """f = b + Σ w_i [word i present]."""
    return [BIAS + sum(w for word, w in zip(WORDS, WEIGHTS) if word in t.split()) for t in texts]


def quiet_explain(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return explain(*args, **kwargs)


def fit_on(method_name, values, n_units, n_samples=200, Y=None, **options):
    """Run a method's sampler and fit on ``values(masks)`` the way the explainer does
    (row 0 = the original, all-kept mask)."""
    method = make_method(method_name, random_state=options.pop("random_state", 0), **options)
    method.validate()
    masks = np.vstack([np.ones((1, n_units), dtype=bool), method.sample(n_units, n_samples)])
    y = values(masks)
    return method, masks, method.fit(masks, y, None if Y is None else Y(masks))


# --------------------------------------------------------------- linear model
@pytest.mark.parametrize(
    "method, options, n_samples",
    [
        ("shapley", {}, 200),
        ("kernelshap", {}, 200),  # 2^7 = 128 coalitions: enumerated
        ("kernelshap", {}, 40),  # sampled
        ("occlusion", {}, 200),
        ("lime", {"alpha": 0.0}, 200),
        ("mupax", {}, 200),
        ("banzhaf", {}, 200),
        ("banzhaf", {"keep": 0.3}, 200),
    ],
)
def test_linear_model_weights_are_recovered(method, options, n_samples):
    exp = quiet_explain(PROMPT, model=linear, method=method, method_options=options, n_samples=n_samples, random_state=3)
    np.testing.assert_allclose(exp.coefficients, WEIGHTS, atol=1e-9)
    assert exp.method == method
    assert exp.fidelity_r2 == pytest.approx(1.0, abs=1e-9)
    for name, value in options.items():
        assert exp.params[name] == value


def test_kernelshap_enumerates_when_the_budget_covers_every_coalition():
    full = quiet_explain(PROMPT, model=linear, method="kernelshap", n_samples=127, random_state=0)
    assert full.extras["exhaustive"] and full.extras["n_coalitions"] == 2**7
    sampled = quiet_explain(PROMPT, model=linear, method="kernelshap", n_samples=126, random_state=0)
    assert not sampled.extras["exhaustive"] and sampled.extras["n_coalitions"] < 2**7


def test_lime_default_ridge_shrinks_but_keeps_the_order():
    exp = quiet_explain(PROMPT, model=linear, method="lime", n_samples=300, random_state=0)
    coef = exp.coefficients
    assert exp.params["alpha"] == 1.0
    # Shrinkage: every nonzero weight is pulled toward 0, never flipped, by less than 25%.
    nonzero = WEIGHTS != 0
    ratio = coef[nonzero] / WEIGHTS[nonzero]
    assert np.all(ratio < 1.0) and np.all(ratio > 0.75)
    assert list(np.argsort(-np.abs(coef))[:4]) == [0, 3, 1, 6]


@pytest.mark.parametrize("selection", ["forward", "highest_weights"])
def test_lime_num_features_keeps_the_largest_units_and_zeroes_the_rest(selection):
    exp = quiet_explain(
        PROMPT, model=linear, method="lime", n_samples=300, random_state=0,
        method_options={"num_features": 3, "alpha": 0.0, "feature_selection": selection},
    )
    assert exp.extras["selected_units"] == [0, 1, 3]  # alpha 3.0, bravo -1.5, delta 2.25
    assert np.all(exp.coefficients[[2, 4, 5, 6]] == 0.0)
    assert np.all(np.sign(exp.coefficients[[0, 1, 3]]) == np.sign(WEIGHTS[[0, 1, 3]]))


def test_lime_kernel_is_exponential_on_cosine_distance():
    from gsmile.kernels import ExponentialCosineKernel

    masks = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    w = ExponentialCosineKernel(kernel_width=0.5)(masks)
    # cosine distance to all-ones: 0; 1 - sqrt(1/4) = 0.5; 1 (empty mask)
    np.testing.assert_allclose(w, np.exp(-np.array([0.0, 0.25, 1.0]) / 0.25))


def test_lime_sampler_removes_a_uniform_number_of_units():
    method = make_method("lime", random_state=0)
    masks = method.sample(5, 20_000)
    removed = (~masks).sum(axis=1)
    assert removed.min() == 1 and removed.max() == 5
    np.testing.assert_allclose(np.bincount(removed)[1:] / len(removed), 0.2, atol=0.015)


# ------------------------------------------------------------------ occlusion
def test_occlusion_evaluates_n_plus_one_inputs():
    calls = []

    def counting(texts):
        calls.extend(texts)
        return linear(texts)

    exp = quiet_explain(PROMPT, model=counting, method="occlusion")
    assert len(calls) == len(set(calls)) == len(WORDS) + 1
    assert exp.n_samples == len(WORDS)


def test_occlusion_window_shares_each_drop_among_the_occluded_units():
    w = np.array([1.0, 2.0, 3.0, 4.0])
    _, masks, result = fit_on("occlusion", lambda m: m.astype(float) @ w, 4, window=2)
    assert masks.shape == (1 + 3, 4)
    # windows {0,1}: 3/2, {1,2}: 5/2, {2,3}: 7/2; a unit gets the mean over its windows
    np.testing.assert_allclose(result.coefficients, [1.5, 2.0, 3.0, 3.5])


def test_occlusion_window_larger_than_the_units_is_refused():
    with pytest.raises(InvalidInputError, match="window 9 is larger than the 7 units"):
        quiet_explain(PROMPT, model=linear, method="occlusion", method_options={"window": 9})


# ------------------------------------------------------------------- Shapley
def test_shapley_matches_a_three_player_game_computed_by_hand():
    # v(∅)=0 v(1)=1 v(2)=2 v(3)=0 v(12)=4 v(13)=1 v(23)=3 v(123)=6
    table = {(): 0, (0,): 1, (1,): 2, (2,): 0, (0, 1): 4, (0, 2): 1, (1, 2): 3, (0, 1, 2): 6}

    def game(masks):
        return np.array([table[tuple(np.flatnonzero(m))] for m in masks], dtype=float)

    _, _, result = fit_on("shapley", game, 3)
    # φ1 = 1/3·1 + 1/6·(4-2) + 1/6·(1-0) + 1/3·(6-3) = 11/6
    # φ2 = 1/3·2 + 1/6·(4-1) + 1/6·(3-0) + 1/3·(6-1) = 10/3
    # φ3 = 1/3·0 + 1/6·(1-1) + 1/6·(3-2) + 1/3·(6-4) = 5/6
    np.testing.assert_allclose(result.coefficients, [11 / 6, 10 / 3, 5 / 6], atol=1e-12)
    assert result.intercept == pytest.approx(0.0, abs=1e-12)


N_INTERACTION = 8
W_INTERACTION = np.array([0.5, -1.2, 2.0, 0.3, -0.7, 1.1, 0.9, -0.4])


def interaction(masks):
    """Linear plus two pairwise interactions: +1.5·z0·z2 and -2·z1·z5."""
    z = masks.astype(float)
    return z @ W_INTERACTION + 0.4 + 1.5 * z[:, 0] * z[:, 2] - 2.0 * z[:, 1] * z[:, 5]


# By hand: a pairwise term c·z_i·z_j gives c/2 to each of i and j.
SHAPLEY_INTERACTION = W_INTERACTION + np.array([0.75, -1.0, 0.75, 0.0, 0.0, -1.0, 0.0, 0.0])


def test_shapley_splits_pairwise_interactions_equally():
    _, masks, result = fit_on("shapley", interaction, N_INTERACTION)
    assert len(masks) == 1 + 2**N_INTERACTION
    np.testing.assert_allclose(result.coefficients, SHAPLEY_INTERACTION, atol=1e-9)


def test_kernelshap_error_shrinks_with_the_budget():
    def mean_rmse(budget):
        errors = []
        for seed in range(10):
            _, _, result = fit_on("kernelshap", interaction, N_INTERACTION, n_samples=budget, random_state=seed)
            errors.append(np.sqrt(np.mean((result.coefficients - SHAPLEY_INTERACTION) ** 2)))
        return float(np.mean(errors))

    small, large = mean_rmse(20), mean_rmse(160)
    assert 0.02 < small < 0.5
    assert large < 0.01
    assert large < small / 10


@pytest.mark.parametrize("budget", [15, 40, 101])
def test_kernelshap_values_sum_to_full_minus_empty(budget):
    def nonlinear(masks):
        z = masks.astype(float)
        return interaction(masks) + 3.0 * z[:, 0] * z[:, 3] * z[:, 6] + np.sin(z @ np.arange(8.0))

    _, masks, result = fit_on("kernelshap", nonlinear, 8, n_samples=budget, random_state=1)
    full, empty = nonlinear(np.ones((1, 8), bool))[0], nonlinear(np.zeros((1, 8), bool))[0]
    assert abs(result.coefficients.sum() - (full - empty)) < 1e-9
    assert result.intercept == pytest.approx(empty, abs=1e-12)


def test_kernelshap_samples_the_empty_mask_and_complementary_pairs():
    masks = ShapleySampler(random_state=0).sample(10, 41)
    assert len(masks) == 41
    assert not masks[0].any()  # the empty input, for the efficiency constraint
    pairs = masks[1:]
    assert np.all(pairs[0::2] == ~pairs[1::2])
    sizes = pairs.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 9


def test_kernelshap_explainer_evaluates_the_empty_input():
    seen = []

    def recording(texts):
        seen.extend(texts)
        return linear(texts)

    exp = quiet_explain(PROMPT, model=recording, method="kernelshap", n_samples=30, random_state=0)
    assert "" in seen
    assert exp.extras["value_empty"] == pytest.approx(BIAS)
    assert exp.coefficients.sum() == pytest.approx(exp.extras["value_full"] - exp.extras["value_empty"], abs=1e-9)


def test_shapley_refuses_more_than_14_units_and_names_kernelshap():
    prompt = " ".join(f"w{i}" for i in range(MAX_EXACT_UNITS + 1))
    with pytest.raises(InvalidInputError, match="kernelshap"):
        quiet_explain(prompt, model=linear, method="shapley")


# --------------------------------------------------------------------- MuPAX
def test_mupax_statistics_on_hand_built_samples():
    masks = np.array(
        [
            [1, 1, 0, 0],  # d = 0.1
            [1, 0, 1, 0],  # d = 0.5
            [0, 1, 1, 0],  # d = 0.2
            [1, 0, 0, 1],  # d = 1.0
            [0, 0, 1, 0],  # d = 0.8
        ],
        dtype=bool,
    )
    y = np.array([-0.1, -0.5, -0.2, -1.0, -0.8])
    stats = mupax_statistics(masks, y, np.array([2.0, -1.0, 0.05, 0.0]), y_original=0.0, threshold_percentile=0.4)
    # 0.4-quantile of [0.1, 0.2, 0.5, 0.8, 1.0]: 0.2 + 0.6·(0.5 - 0.2) = 0.38 -> samples 1 and 3 accepted
    assert stats["threshold_W"] == pytest.approx(0.38)
    assert (stats["n_accepted"], stats["n_total"]) == (2, 5)
    units = stats["units"]
    assert [u["position"] for u in units] == [0, 1, 2, 3]
    # goodness = 1 - d / max d: sample 1 -> 0.9, sample 3 -> 0.8
    assert [u["retention_frequency"] for u in units] == [0.5, 1.0, 0.5, 0.0]
    assert units[0]["conditional_goodness"] == pytest.approx(0.9)
    assert units[1]["conditional_goodness"] == pytest.approx(0.85)
    assert units[2]["conditional_goodness"] == pytest.approx(0.8)
    assert units[3]["conditional_goodness"] is None
    assert [u["importance"] for u in units] == pytest.approx([2 / 3.05, 1 / 3.05, 0.05 / 3.05, 0.0])
    assert [u["effect"] for u in units] == ["positive", "negative", "neutral", "neutral"]


def test_mupax_method_reports_its_statistics_in_extras():
    exp = quiet_explain(PROMPT, model=linear, method="mupax", n_samples=200, random_state=0)
    stats = exp.extras["mupax"]
    assert stats["n_total"] == 200 and stats["threshold_percentile"] == 0.2
    assert 40 <= stats["n_accepted"] < 200
    units = {u["position"]: u for u in stats["units"]}
    # alpha (+3) is kept by every close sample far more often than bravo (-1.5) is
    assert units[0]["retention_frequency"] > units[1]["retention_frequency"]
    assert units[0]["effect"] == "positive" and units[1]["effect"] == "negative" and units[2]["effect"] == "neutral"
    assert sum(u["importance"] for u in stats["units"]) == pytest.approx(1.0)
    # plain JSON survives the round trip
    again = type(exp).from_json(exp.to_json())
    assert again.extras["mupax"] == stats


def test_mupax_samples_keep_and_drop_something():
    masks = make_method("mupax", random_state=0).sample(6, 500)
    assert masks.any(axis=1).all() and (~masks).any(axis=1).all()


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", True])
def test_mupax_threshold_outside_0_1_is_refused(value):
    with pytest.raises(InvalidInputError, match="threshold_percentile must be a number from 0 to 1"):
        quiet_explain(PROMPT, model=linear, method="mupax", method_options={"threshold_percentile": value})


# ------------------------------------------------------------------- banzhaf
def interaction_game(masks):
    """Units 0 and 1 only count together (+4), unit 2 alone counts 1, units 2 and 3 together
    lose 2, and all of 0, 1, 4 together add 3 more."""
    z = np.asarray(masks, dtype=float)
    return 4 * z[:, 0] * z[:, 1] + z[:, 2] - 2 * z[:, 2] * z[:, 3] + 3 * z[:, 0] * z[:, 1] * z[:, 4]


def banzhaf_by_definition(values, n_units):
    """Mean over all 2^(n-1) coalitions S without i of v(S + i) - v(S)."""
    masks = all_coalitions(n_units)
    v = values(masks)
    index = {tuple(m): k for k, m in enumerate(masks)}
    out = np.zeros(n_units)
    for i in range(n_units):
        without = masks[~masks[:, i]]
        with_i = without.copy()
        with_i[:, i] = True
        out[i] = np.mean([v[index[tuple(a)]] - v[index[tuple(b)]] for a, b in zip(with_i, without)])
    return out


def test_banzhaf_on_every_coalition_equals_the_banzhaf_values_by_definition():
    method = make_method("banzhaf")
    masks = all_coalitions(5)
    result = method.fit(masks, interaction_game(masks))
    want = banzhaf_by_definition(interaction_game, 5)
    np.testing.assert_allclose(result.coefficients, want, atol=1e-12)
    # Hand check: unit 0 gains 4 when unit 1 is there (half the coalitions) and 3 more when 4 is too (a quarter).
    assert want[0] == pytest.approx(4 / 2 + 3 / 4)
    assert want[3] == pytest.approx(-2 / 2)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7])
def test_banzhaf_samples_estimate_the_keep_weighted_banzhaf_values(keep):
    # With units kept independently with probability q, unit 0's value is the expected gain
    # of adding it: 4 q (unit 1 there) + 3 q^2 (units 1 and 4 there); unit 2's: 1 - 2 q.
    _, masks, result = fit_on("banzhaf", interaction_game, 5, n_samples=20000, keep=keep)
    q = keep
    want = [4 * q + 3 * q * q, 4 * q + 3 * q * q, 1 - 2 * q, -2 * q, 3 * q * q]
    np.testing.assert_allclose(result.coefficients, want, atol=0.06)
    assert abs(masks[1:].mean() - q) < 0.01  # the sampler keeps each unit with probability q


def test_banzhaf_records_its_design():
    assert make_method("banzhaf").params == {"keep": 0.5, "design": "orthogonal"}
    assert make_method("banzhaf", keep=0.3).params == {"keep": 0.3, "design": "independent"}
    exp = quiet_explain(PROMPT, model=linear, method="banzhaf", n_samples=20, random_state=0)
    assert exp.params["design"] == "orthogonal"


@pytest.mark.parametrize("n_units", [1, 3, 7, 8, 13])
def test_orthogonal_blocks_balance_every_unit_and_every_pair(n_units):
    size = OrthogonalSampler.block_size(n_units)
    assert size > n_units and size & (size - 1) == 0 and size <= 2 * n_units + 1
    masks = OrthogonalSampler(random_state=5).sample(n_units, 3 * size - 1)
    assert masks.shape == (3 * size - 1, n_units)
    for block in (masks[:size], masks[size : 2 * size]):
        z = np.where(block, 1.0, -1.0)
        # Every unit kept in exactly half the rows, every two units agreeing in exactly half:
        # with the constant column, the design is orthogonal.
        np.testing.assert_array_equal(z.sum(axis=0), 0)
        np.testing.assert_array_equal(z.T @ z, size * np.eye(n_units))
        assert len(np.unique(block, axis=0)) == size  # no mask repeated within a block


def test_orthogonal_rows_are_uniform_over_coalitions_like_bernoulli_draws():
    # 3 units: each of the 8 masks should appear in 1/8 of the rows, and a row's units
    # are independent fair coins, whatever rows they share a block with.
    masks = OrthogonalSampler(random_state=0).sample(3, 4 * 8000)
    codes = masks @ np.array([1, 2, 4])
    np.testing.assert_allclose(np.bincount(codes, minlength=8) / len(codes), 1 / 8, atol=0.01)
    first_rows = masks[::4]  # one row of each block
    np.testing.assert_allclose(np.bincount(first_rows @ np.array([1, 2, 4]), minlength=8) / len(first_rows), 1 / 8, atol=0.015)


def test_orthogonal_sampler_is_seeded_and_cut_to_the_request():
    a = OrthogonalSampler(random_state=7).sample(9, 40)
    assert a.shape == (40, 9)
    np.testing.assert_array_equal(a, OrthogonalSampler(random_state=7).sample(9, 40))
    assert not np.array_equal(a, OrthogonalSampler(random_state=8).sample(9, 40))
    assert OrthogonalSampler(random_state=0).sample(4, 0).shape == (0, 4)


def test_orthogonal_blocks_estimate_banzhaf_values_better_than_independent_draws():
    # Same estimator (least squares), same budget of 2 evaluations per unit (the original
    # row included, as the explainer fits), 200 seeds: the orthogonal design's error against
    # the exact values is far smaller on a game with interactions. On whole blocks alone the
    # slopes are unbiased: their mean over 2000 seeds is the Banzhaf values.
    want = banzhaf_by_definition(interaction_game, 5)
    method = make_method("banzhaf")

    def estimates(sampler, original=True, seeds=200):
        out = []
        for seed in range(seeds):
            masks = sampler(seed).sample(5, 8)
            if original:
                masks = np.vstack([np.ones((1, 5), dtype=bool), masks])
            out.append(method.fit(masks, interaction_game(masks)).coefficients)
        return np.array(out)

    orthogonal = estimates(lambda seed: OrthogonalSampler(random_state=seed))
    independent = estimates(lambda seed: BernoulliSampler(0.5, random_state=seed))
    assert ((orthogonal - want) ** 2).mean() < 0.5 * ((independent - want) ** 2).mean()
    blocks = estimates(lambda seed: OrthogonalSampler(random_state=seed), original=False, seeds=2000)
    np.testing.assert_allclose(blocks.mean(axis=0), want, atol=0.1)  # standard errors about 0.03



@pytest.mark.parametrize("method", sorted(PERTURBATION_METHODS))
def test_per_token_columns_are_fitted_the_same_way_in_one_solve(method):
    # Column 0 repeats the explained value, column 1 doubles it, column 2 is another model.
    def other(masks):
        return masks.astype(float) @ np.arange(1.0, 8.0)

    Y = lambda m: np.column_stack([linear_masks(m), 2 * linear_masks(m), other(m)])  # noqa: E731
    options = {"alpha": 0.0} if method == "lime" else {}
    _, masks, result = fit_on(method, linear_masks, 7, n_samples=150, Y=Y, **options)
    tc = result.token_coefficients
    assert tc.shape == (7, 3)
    np.testing.assert_allclose(tc[:, 0], result.coefficients, atol=1e-9)
    np.testing.assert_allclose(tc[:, 1], 2 * result.coefficients, atol=1e-9)
    _, _, alone = fit_on(method, other, 7, n_samples=150, **options)
    np.testing.assert_allclose(tc[:, 2], alone.coefficients, atol=1e-9)


def linear_masks(masks):
    return masks.astype(float) @ WEIGHTS + BIAS


# ------------------------------------------------------ seeds, names, options
@pytest.mark.parametrize("method", ["gsmile", "lime", "kernelshap", "mupax", "banzhaf"])
def test_same_seed_same_masks_other_seed_other_masks(method):
    a = make_method(method, random_state=7).sample(9, 60)
    b = make_method(method, random_state=7).sample(9, 60)
    c = make_method(method, random_state=8).sample(9, 60)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def nonlinear_words(texts):
    return [float(len(t)) ** 0.5 + (2.0 if "alpha" in t and "delta" in t else 0.0) for t in texts]


@pytest.mark.parametrize("method", sorted(PERTURBATION_METHODS))
def test_seeds_reproduce_explanations(method):
    first = quiet_explain(PROMPT, model=nonlinear_words, method=method, n_samples=40, random_state=11)
    again = quiet_explain(PROMPT, model=nonlinear_words, method=method, n_samples=40, random_state=11, batch_size=3)
    np.testing.assert_array_equal(first.coefficients, again.coefficients)
    assert first.extras == again.extras


def test_unknown_method_lists_the_methods():
    with pytest.raises(UnknownNameError) as err:
        Explainer(linear, method="integrated-gradients").validate()
    for name in ["gsmile", "occlusion", "lime", "kernelshap", "shapley", "mupax", "banzhaf"]:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "method, option, listed",
    [
        ("lime", "window", "kernel_width, num_features, feature_selection, alpha"),
        ("occlusion", "kernel_width", "valid options: window"),
        ("mupax", "windows", "threshold_percentile"),
        ("shapley", "budget", "it takes no options"),
    ],
)
def test_unknown_option_names_the_valid_ones(method, option, listed):
    with pytest.raises(InvalidInputError, match=f"unknown option '{option}' for method '{method}'") as err:
        Explainer(linear, method=method, method_options={option: 1}).validate()
    assert listed in str(err.value)


def test_method_options_lists_defaults():
    assert method_options("occlusion") == {"window": 1}
    assert method_options("mupax")["threshold_percentile"] == 0.2
    assert method_options("lime")["kernel_width"] == 0.25


def test_gsmile_options_still_work_and_are_refused_elsewhere():
    exp = quiet_explain(PROMPT, model=linear, dropout=0.25, sigma=1.5, n_samples=100, random_state=0)
    assert exp.params["dropout"] == 0.25 and exp.params["sigma"] == 1.5 and exp.sigma == 1.5
    via_options = quiet_explain(PROMPT, model=linear, method_options={"dropout": 0.25, "sigma": 1.5}, n_samples=100, random_state=0)
    np.testing.assert_array_equal(exp.coefficients, via_options.coefficients)
    with pytest.raises(InvalidInputError, match="sigma is an option of gsmile"):
        Explainer(linear, method="lime", sigma=1.0).validate()
    with pytest.raises(InvalidInputError, match="dropout is an option of gsmile"):
        Explainer(linear, method="occlusion", dropout=0.3).validate()


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("lime", {"kernel_width": 0}, "kernel_width must be a positive number"),
        ("lime", {"num_features": 0}, "num_features must be a positive integer"),
        ("lime", {"feature_selection": "lasso"}, "feature_selection must be one of"),
        ("lime", {"alpha": -1}, "alpha must be a non-negative number"),
        ("occlusion", {"window": 1.5}, "window must be a positive integer"),
        ("mupax", {"neutral_tolerance": 2}, "neutral_tolerance must be a number from 0 to 1"),
        ("banzhaf", {"keep": 1.0}, "keep must be a probability strictly between 0 and 1"),
        ("banzhaf", {"keep": 0}, "keep must be a probability strictly between 0 and 1"),
    ],
)
def test_bad_option_values_say_what_to_fix(method, options, message):
    with pytest.raises(InvalidInputError, match=message):
        Explainer(linear, method=method, method_options=options).validate()


def test_method_options_must_be_a_dict():
    with pytest.raises(InvalidInputError, match="method_options must be a dict"):
        Explainer(linear, method="lime", method_options=[("alpha", 1)]).validate()


def test_all_coalitions_enumerates_each_mask_once():
    masks = all_coalitions(4)
    assert masks.shape == (16, 4) and len(np.unique(masks, axis=0)) == 16
    assert not masks[0].any() and masks[-1].all()
