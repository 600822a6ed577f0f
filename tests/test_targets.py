"""Output distances checked on hand-made distributions with values known exactly."""

import math

import numpy as np
import pytest

from gsmile.errors import UnknownNameError
from gsmile.targets import TARGETS, make_target

# A 5-token vocabulary: 0 "Paris", 1 "paris" (a near-synonym: almost the same embedding),
# 2 "banana" (unrelated: orthogonal), 3 and 4 filler tokens.
EMB = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.98, 0.2, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def logp(*rows):
    p = np.asarray(rows, dtype=float)
    with np.errstate(divide="ignore"):
        return np.log(p / p.sum(axis=-1, keepdims=True))


REF = logp([0.9, 0.025, 0.025, 0.025, 0.025], [0.1, 0.1, 0.6, 0.1, 0.1])  # 2 response positions
RESPONSE = np.array([0, 2])


def prepared(name, **kw):
    target = TARGETS[name](**kw) if kw else make_target(name)
    return target.prepare(REF, RESPONSE, EMB)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_identical_output_has_zero_shift(name):
    target = prepared(name)
    shift = target(REF[None])
    assert shift.shape == (1,)
    assert shift[0] == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_moving_mass_to_a_synonym_costs_less_than_to_an_unrelated_token():
    target = prepared("wasserstein", top_k=3)
    to_synonym = logp([0.1, 0.825, 0.025, 0.025, 0.025], [0.1, 0.1, 0.6, 0.1, 0.1])
    to_unrelated = logp([0.1, 0.025, 0.825, 0.025, 0.025], [0.1, 0.1, 0.6, 0.1, 0.1])
    near, far = target(np.stack([to_synonym, to_unrelated]))
    assert 0 < near < far
    # Exact value: 0.8 of the mass moves from token 0 to token 1 at cosine distance 1 - 0.98/|e1|,
    # averaged over the two positions (the second one is unchanged).
    cos01 = 0.98 / np.linalg.norm(EMB[1])
    assert near == pytest.approx(0.8 * (1 - cos01) / 2, rel=1e-5)  # float32 embeddings
    assert far == pytest.approx(0.8 * 1.0 / 2, rel=1e-9)


def test_wasserstein_mass_outside_the_top_k_is_kept_on_a_rest_atom():
    # top_k=1: the union support is {0} for the reference and {0} or {3} for the other.
    target = prepared("wasserstein", top_k=1)
    same_top_other_tail = logp([0.9, 0.0001, 0.0999, 0.0, 0.0], [0.1, 0.1, 0.6, 0.1, 0.1])
    (shift,) = target(same_top_other_tail[None])
    # Both keep 0.9 on token 0 and 0.1 on the rest atom at position 1; position 2 unchanged.
    assert shift == pytest.approx(0.0, abs=1e-12)


def test_kl_js_tv_and_logprob_match_hand_computation():
    p = np.exp(REF)
    q_rows = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = logp(*q_rows)
    kl = np.mean([np.sum(p[t] * (np.log(p[t]) - np.log(q_rows[t]))) for t in range(2)])
    m = 0.5 * (p + q_rows)
    js = np.mean([0.5 * np.sum(p[t] * np.log(p[t] / m[t])) + 0.5 * np.sum(q_rows[t] * np.log(q_rows[t] / m[t])) for t in range(2)])
    tv = np.mean([0.5 * np.abs(p[t] - q_rows[t]).sum() for t in range(2)])
    drop = (math.log(0.9) - math.log(0.5)) + (math.log(0.6) - math.log(0.2))
    assert prepared("kl")(q[None])[0] == pytest.approx(kl)
    assert prepared("js")(q[None])[0] == pytest.approx(js)
    assert prepared("tv")(q[None])[0] == pytest.approx(tv)
    assert prepared("logprob")(q[None])[0] == pytest.approx(drop)
    per = prepared("logprob").per_position(q[None])
    np.testing.assert_allclose(per[0], [math.log(0.9 / 0.5), math.log(0.6 / 0.2)])


def test_js_is_bounded_by_log_2():
    disjoint = logp([0.0, 0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.0, 0.0, 0.0])
    ref = logp([1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0])
    target = make_target("js").prepare(ref, RESPONSE)
    assert target(disjoint[None])[0] == pytest.approx(math.log(2))


def test_unknown_target_lists_valid_names():
    with pytest.raises(UnknownNameError, match="js, kl, logprob, tv, wasserstein"):
        make_target("cosine")


def _wasserstein_by_hand(ref, q, emb, k, rest_cost=1.0):
    """The definition, one problem at a time: the union of both top-k, a rest atom, ot.emd2."""
    import ot

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = []
    for t in range(len(ref)):
        support = np.union1d(np.argsort(-ref[t])[:k], np.argsort(-q[t])[:k])
        a = np.exp(ref[t, support])
        b = np.exp(q[t, support])
        a = np.append(a, max(0.0, 1 - a.sum()))
        b = np.append(b, max(0.0, 1 - b.sum()))
        cost = np.full((len(support) + 1,) * 2, rest_cost)
        cost[:-1, :-1] = np.clip(1 - unit[support] @ unit[support].T, 0, 2)
        np.fill_diagonal(cost, 0.0)
        out.append(ot.emd2(a / a.sum(), b / b.sum(), cost))
    return np.mean(out)


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_wasserstein_batch_setup_matches_the_definition_problem_by_problem(n_jobs):
    rng = np.random.default_rng(7)
    V, T, k = 300, 6, 8
    emb = rng.normal(size=(V, 16))
    ref = np.log(rng.dirichlet(np.full(V, 0.05), size=T))
    # Perturbed outputs that share some top tokens with the reference and not others.
    qs = np.log(np.stack([0.5 * np.exp(ref) + 0.5 * rng.dirichlet(np.full(V, 0.05), size=T) for _ in range(70)]))
    target = TARGETS["wasserstein"](top_k=k, n_jobs=n_jobs).prepare(ref, np.zeros(T, dtype=int), emb)
    got = target(qs)
    want = [_wasserstein_by_hand(ref, q, emb, k) for q in qs]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.all(got > 0)


def test_top_k_breaks_a_tie_at_the_kth_place_towards_the_lower_index():
    import torch  # noqa: F401  (the torch path)

    from gsmile.targets import _top_k

    x = np.array([[0.0, 5.0, 1.0, 1.0, 1.0, -2.0], [3.0, 2.0, 1.0, 0.0, -1.0, -2.0]], dtype=np.float32)
    for rows in (x, np.vstack([x] * 7), x[:1]):
        got = [sorted(r) for r in _top_k(rows, 3)]
        assert got[0] == [1, 2, 3]  # 5 then the first two of the three tied 1.0s
        if len(rows) > 1:
            assert got[1] == [0, 1, 2]
    assert sorted(_top_k(x.astype(np.float16), 3)[0]) == [1, 2, 3]  # the numpy path
    assert _top_k(x, 6).shape == (2, 6)


def test_top_k_on_wide_rows_searches_blocks_and_finds_the_same_sets():
    import torch  # noqa: F401  (the torch path, with its block pre-selection)

    from gsmile import targets

    rng = np.random.default_rng(3)
    width = 64 * 8 * 22 * 2  # wide enough for the block path at k = 21
    x = np.log(rng.dirichlet(np.full(width, 0.05), size=40) + 1e-12).astype(np.float32)
    x[:4, 100:130] = x[:4].max(axis=1, keepdims=True)  # 30 tied maxima
    kth = np.sort(x[4:8], axis=1)[:, -21:-20]
    x[4:8, ::997] = kth  # ties at the k-th place, spread over many blocks
    x[8, :] = 0.0  # a whole row tied
    for k in (1, 5, 21):
        got = targets._top_k(x, k)
        # what the definition says: everything above the k-th value, then the lowest tied indices
        for row, top in zip(x, got):
            value = np.sort(row)[-k]
            above = np.flatnonzero(row > value)
            want = np.concatenate([above, np.flatnonzero(row == value)[: k - len(above)]])
            assert sorted(top) == sorted(want)


def test_gram_through_torch_is_the_product():
    import torch  # noqa: F401

    from gsmile.targets import _gram

    e = np.random.default_rng(0).normal(size=(30, 7))
    np.testing.assert_allclose(_gram(e), e @ e.T, rtol=1e-12)


def test_a_failing_transport_solver_is_a_gsmile_error_that_names_another_target(monkeypatch):
    import ot.lp.emd_wrap

    from gsmile.errors import ComputationError, GsmileError

    rng = np.random.default_rng(1)
    ref = np.log(rng.dirichlet(np.ones(40), size=3))
    target = TARGETS["wasserstein"](top_k=4).prepare(ref, np.zeros(3, dtype=int), rng.normal(size=(40, 5)))
    real = ot.lp.emd_wrap.emd_c
    monkeypatch.setattr(ot.lp.emd_wrap, "emd_c", lambda *a: (*real(*a)[:-1], 3))  # the iteration cap
    with pytest.raises(ComputationError, match="--target kl") as info:
        target(ref[None])
    assert isinstance(info.value, GsmileError)
