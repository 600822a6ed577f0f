"""Output shifts Δ between the model's output for the original prompt and for a perturbed one.

A target sees next-token log-probabilities at every position of the response, shaped
``(batch, positions, vocab)``, and returns Δ per position ``(batch, positions)``;
:meth:`Target.__call__` aggregates them to one Δ per input. Δ is 0 when the
perturbed output equals the original one.

Targets store parameters in ``__init__``; :meth:`Target.prepare` records the reference
(original) output, stored in attributes ending in ``_``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ComputationError, InvalidInputError, lookup


class Target:
    name = "target"
    #: How per-position shifts combine into one Δ: "mean" or "sum".
    aggregate = "mean"
    #: Whether :meth:`prepare` needs the model's token embeddings (a ground metric).
    needs_embeddings = False

    def prepare(self, reference: np.ndarray, response_ids: np.ndarray, embeddings: np.ndarray | None = None) -> "Target":
        """Record the reference log-probs ``(positions, vocab)`` and the response token ids."""
        # A copy: the reference is kept, the batch it came from need not be.
        reference = np.array(reference)
        if reference.ndim != 2:
            raise InvalidInputError(f"reference log-probs must be (positions, vocab), got {reference.shape}")
        self.reference_ = reference
        self.response_ids_ = np.asarray(response_ids, dtype=np.int64)
        return self

    def per_position(self, logprobs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, logprobs: np.ndarray) -> np.ndarray:
        per = self.per_position(logprobs)
        return per.sum(axis=1) if self.aggregate == "sum" else per.mean(axis=1)


class LogProbTarget(Target):
    """Drop in log p(response): Σ_t [log p_orig(y_t) − log p_pert(y_t)] (can be negative)."""

    name = "logprob"
    aggregate = "sum"

    def per_position(self, logprobs):
        # Pick the response tokens first; only those T values per row become float64.
        logprobs = np.asarray(logprobs)
        t = np.arange(len(self.response_ids_))
        ref = self.reference_[t, self.response_ids_].astype(np.float64)
        return ref[None, :] - logprobs[:, t, self.response_ids_].astype(np.float64)


class _VocabTarget(Target):
    """A shift computed over the whole vocabulary. The element-wise work stays in float32
    (the model's own precision) and every sum over the vocabulary accumulates in float64,
    so no float64 copy of the (batch, positions, vocab) array is made."""

    def prepare(self, reference, response_ids, embeddings=None):
        super().prepare(reference, response_ids)
        self.reference32_ = np.asarray(self.reference_, dtype=np.float32)
        self.p32_ = np.exp(self.reference32_)
        self.ref_floor32_ = np.maximum(self.reference32_, LOG_FLOOR)
        return self


#: Log-probabilities are floored here where -inf would give 0·(-inf) = NaN (exp of it is 0).
LOG_FLOOR = np.float32(-1e4)


def _vocab_sum(x: np.ndarray) -> np.ndarray:
    return np.sum(x, axis=-1, dtype=np.float64)


class KLTarget(_VocabTarget):
    """KL(p_orig || p_pert) per position, in nats, averaged over the response."""

    name = "kl"

    def per_position(self, logprobs):
        diff = self.reference32_[None] - np.asarray(logprobs, dtype=np.float32)
        diff *= self.p32_[None]
        return _vocab_sum(diff).clip(min=0.0)


class JSTarget(_VocabTarget):
    """Jensen-Shannon divergence per position, in nats (bounded by ln 2), averaged."""

    name = "js"

    def per_position(self, logprobs):
        # With d = log q − log p, m = (p + q)/2 and g = log1p(expm1(−|d|)/2) ∈ [−log 2, 0]:
        # log m − log p = max(d, 0) + g and log q − log m = min(d, 0) − g, so
        # KL(p||m) + KL(q||m) = Σ q (min(d, 0) − g) − p (max(d, 0) + g): no overflow, no
        # cancellation, exactly 0 where p = q. Log-probs are floored at LOG_FLOOR
        # (probability 0 in float32) so -inf entries give 0 instead of NaN.
        lq = np.maximum(np.asarray(logprobs, dtype=np.float32), LOG_FLOOR)
        d = lq - self.ref_floor32_[None]
        q = np.exp(lq, out=lq)
        g = np.abs(d)
        np.negative(g, out=g)
        np.expm1(g, out=g)
        g *= 0.5
        np.log1p(g, out=g)
        up = np.maximum(d, 0.0)
        np.minimum(d, 0.0, out=d)
        d -= g
        d *= q
        up += g
        up *= self.p32_[None]
        d -= up
        return (0.5 * _vocab_sum(d)).clip(min=0.0)


class TVTarget(_VocabTarget):
    """Total variation distance ½ Σ |p − q| per position, averaged."""

    name = "tv"

    def per_position(self, logprobs):
        q = np.exp(np.asarray(logprobs, dtype=np.float32))
        q -= self.p32_[None]
        return 0.5 * _vocab_sum(np.abs(q, out=q))


class WassersteinTarget(Target):
    """1-Wasserstein distance between next-token distributions, averaged over the response.

    Ground cost between two tokens: the cosine distance ``1 − cos(e_i, e_j)`` of the model's
    own token embeddings. Per position the transport problem is solved exactly (POT's
    network simplex) on the union of the ``top_k`` most likely tokens of each distribution.
    The probability mass outside that union is not dropped: each distribution keeps it on
    one extra "rest" atom, which is at cost ``rest_cost`` (default 1.0, the cosine distance
    of unrelated, orthogonal embeddings) from every token and at cost 0 from the other
    distribution's rest atom. So two distributions that agree on their top tokens and on
    their leftover mass are at distance 0, and mass that leaves the top tokens counts as
    moved to an unrelated token.

    The problems of a batch are set up together (supports, masses and cost matrices as
    arrays) and solved by POT's C solver, on ``n_jobs`` threads if asked (it releases the
    GIL; the default 1 leaves the cores to the model, which gained nothing from 2 threads on
    a 2-core CPU). Each problem is solved on its own, so the result does not depend on the
    batch or the thread count.
    """

    name = "wasserstein"
    needs_embeddings = True

    def __init__(self, top_k: int = 20, rest_cost: float = 1.0, n_jobs: int = 1):
        self.top_k = top_k
        self.rest_cost = rest_cost
        self.n_jobs = n_jobs

    def prepare(self, reference, response_ids, embeddings=None):
        super().prepare(reference, response_ids)
        if embeddings is None:
            raise InvalidInputError("the wasserstein target needs the model's token embeddings")
        emb = np.asarray(embeddings)
        if emb.dtype not in (np.float32, np.float64):
            emb = emb.astype(np.float32)
        # Only the norms are computed here (no normalized copy of the whole matrix): the rows
        # a problem uses are gathered and divided by their norms when it is set up.
        self.embeddings_ = emb
        self.inv_norms_ = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", emb, emb, dtype=np.float64)), 1e-12)
        self.k_ = int(min(self.top_k, self.reference_.shape[1]))
        self.reference_top_ = _top_k(self.reference_, self.k_)
        return self

    def per_position(self, logprobs):
        logprobs = np.asarray(logprobs)
        batch, positions, _ = logprobs.shape
        k = self.k_
        top = _top_k(logprobs.reshape(batch * positions, -1), k).reshape(batch, positions, k)
        ref_top = np.broadcast_to(self.reference_top_[None], (batch, positions, k))
        # Each problem's support: the reference's top-k, then the perturbed top-k. A token in
        # both lists keeps its mass on the first copy; the second copy has mass 0 in both
        # distributions, so the solver drops it and the problem is the one on the union.
        support = np.concatenate([ref_top, top], axis=2)  # (batch, positions, 2k)
        repeated = (top[..., :, None] == ref_top[..., None, :]).any(axis=-1)
        keep = np.concatenate([np.ones_like(repeated), ~repeated], axis=2)
        rows = np.arange(positions)[None, :, None]
        p = np.exp(self.reference_[rows, support].astype(np.float64)) * keep
        q = np.exp(logprobs[np.arange(batch)[:, None, None], rows, support].astype(np.float64)) * keep
        a = _with_rest(p)
        b = _with_rest(q)
        cost = self._costs(support)
        out = _solve_all(a.reshape(batch * positions, -1), b.reshape(batch * positions, -1),
                         cost.reshape(batch * positions, *cost.shape[2:]), self.n_jobs)
        return out.reshape(batch, positions)

    def _costs(self, support: np.ndarray) -> np.ndarray:
        """Cost matrices ``(batch, positions, 2k + 1, 2k + 1)``: cosine distances between the
        support tokens, the rest atom last."""
        n = support.shape[-1]
        cost = np.empty(support.shape[:2] + (n + 1, n + 1))
        # The supports of a batch share most of their tokens: one Gram matrix over the
        # distinct tokens, then each problem's block is gathered from it.
        tokens, index = np.unique(support, return_inverse=True)
        e = self.embeddings_[tokens].astype(np.float64) * self.inv_norms_[tokens][:, None]
        gram = np.clip(1.0 - _gram(e), 0.0, 2.0)
        index = index.reshape(support.shape)
        cost[:, :, :n, :n] = gram[index[..., :, None], index[..., None, :]]
        diag = np.arange(n)
        cost[:, :, diag, diag] = 0.0
        cost[:, :, n, :] = self.rest_cost
        cost[:, :, :, n] = self.rest_cost
        cost[:, :, n, n] = 0.0
        return cost


def _gram(e: np.ndarray) -> np.ndarray:
    """``e @ e.T``; through torch when it is loaded. numpy's OpenBLAS keeps its own threads
    spinning after each product; called between the model's products (the target runs on a
    few rows at a time), they took the cores from torch's: on a 2-core CPU an explanation took
    16.5 s with numpy's product here and 12.5 s with torch's."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return e @ e.T
    t = torch.from_numpy(e)
    return (t @ t.T).numpy()


def _with_rest(p: np.ndarray) -> np.ndarray:
    """Masses on the support plus the rest atom (what the support leaves), normalized."""
    rest = np.maximum(0.0, 1.0 - p.sum(axis=-1, keepdims=True))
    out = np.concatenate([p, rest], axis=-1)
    out /= out.sum(axis=-1, keepdims=True)
    return out


#: Iteration cap of the network simplex (POT's default); hitting it is reported.
EMD_MAX_ITER = 100_000


def _emd_solver():
    """POT's exact solver ``(a, b, M) -> cost``: its C entry point when present (no
    per-call checks; ~2x less overhead on these small problems), else ``ot.emd2``."""
    try:
        from ot.lp.emd_wrap import emd_c
    except ImportError:  # a POT without the private entry point
        import ot

        return lambda a, b, m: float(ot.emd2(a, b, m, check_marginals=False))

    def solve(a, b, m):
        result = emd_c(a, b, m, EMD_MAX_ITER, 1)
        if result[-1] != 1:  # 1 = optimal; 0 infeasible, 2 unbounded, 3 iteration cap
            raise ComputationError(
                f"the optimal-transport solver of the wasserstein target stopped without an optimum "
                f"(POT code {result[-1]}); use another target, e.g. --target kl or --target logprob"
            )
        return float(result[1])

    return solve


def _solve_all(a: np.ndarray, b: np.ndarray, cost: np.ndarray, n_jobs: int) -> np.ndarray:
    """Exact transport cost of each problem ``i`` (``a[i]``, ``b[i]``, ``cost[i]``)."""
    solve = _emd_solver()
    a, b, cost = (np.ascontiguousarray(x, dtype=np.float64) for x in (a, b, cost))
    n = len(a)
    out = np.empty(n)

    def run(lo, hi):
        for i in range(lo, hi):
            out[i] = solve(a[i], b[i], cost[i])

    jobs = _n_jobs(n_jobs, n)
    if jobs == 1:
        run(0, n)
    else:
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, n, jobs + 1).astype(int)
        with ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(run, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
                f.result()
    return np.maximum(out, 0.0)


def _n_jobs(n_jobs: int, n_problems: int) -> int:
    """Threads worth starting: at most one per 64 problems."""
    return int(max(1, min(n_jobs, n_problems // 64 or 1)))


class EmbeddingTarget(Target):
    """Text-only target: the distance ``1 − cos(e(original response), e(regenerated response))``
    between sentence embeddings (the embedded all-MiniLM-L6-v2 by default), in [0, 2].

    Used when a model gives text but no log-probabilities (chat-only APIs, servers without
    ``echo``, a Python function returning text): each perturbed prompt is answered again at
    temperature 0 and its answer compared with the original one. Identical texts are at
    distance 0 exactly. ``embedder`` maps a list of texts to unit-norm rows.
    """

    name = "embedding"
    text_only = True

    def __init__(self, embedder: Callable[[list[str]], np.ndarray] | None = None):
        self.embedder = embedder

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.embedder is not None:
            emb = np.asarray(self.embedder(list(texts)), dtype=np.float64)
        else:
            from ..backends.minilm import embed_texts

            emb = embed_texts(texts)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def prepare_text(self, response: str) -> "EmbeddingTarget":
        self.reference_text_ = response
        self.reference_embedding_ = self._embed([response])[0]
        return self

    def distance(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros(len(texts))
        todo = [i for i, t in enumerate(texts) if t != self.reference_text_]
        if todo:
            emb = self._embed([texts[i] for i in todo])
            out[todo] = np.clip(1.0 - emb @ self.reference_embedding_, 0.0, 2.0)
        return out

    def per_position(self, logprobs):
        raise InvalidInputError("the embedding target compares regenerated texts; it has no per-token log-probabilities")


def _top_k(logprobs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row of a 2-D array (as a set; order
    unspecified). A tie at the k-th place is broken towards the lower index, so a row's set
    never depends on the other rows it is computed with (batch size) or on the algorithm.
    torch.topk when torch is loaded (several times faster than a full argpartition)."""
    import sys

    rows, width = logprobs.shape
    k = min(k, width)
    if k == width:
        return np.broadcast_to(np.arange(width), (rows, width)).copy()
    torch = sys.modules.get("torch")
    if torch is not None and logprobs.dtype in (np.float32, np.float64):
        # k + 1 entries, sorted: the (k+1)-th tells whether the k-th place is tied.
        with torch.inference_mode():
            vals, idx = _torch_top(torch, torch.from_numpy(np.ascontiguousarray(logprobs)), k + 1)
        vals, idx = vals.numpy(), idx.numpy()
    else:
        idx = np.argpartition(-logprobs, k, axis=-1)[:, : k + 1]
        vals = np.take_along_axis(logprobs, idx, axis=-1)
        order = np.argsort(-vals, axis=-1, kind="stable")
        idx, vals = np.take_along_axis(idx, order, axis=-1), np.take_along_axis(vals, order, axis=-1)
    top = idx[:, :k].copy()
    for r in np.flatnonzero(vals[:, k] == vals[:, k - 1]):  # rare with a real model's logits
        row, kth = logprobs[r], vals[r, k - 1]
        above = np.flatnonzero(row > kth)
        top[r] = np.concatenate([above, np.flatnonzero(row == kth)[: k - len(above)]])
    return top


#: Block length of the pre-selection in :func:`_torch_top`.
TOP_BLOCK = 64


def _torch_top(torch, x, m: int):
    """The ``m`` largest values of each row of ``x`` (sorted, descending) and indices holding
    them. On wide rows (a vocabulary) the rows are cut into blocks of ``TOP_BLOCK`` and only
    the ``m`` blocks with the largest maxima are searched: every one of the ``m`` largest
    values lies in such a block (a value outside them has ``m`` block maxima at least as
    large above it), so the values are exact; under ties the indices may differ, which
    :func:`_top_k` settles on the whole row. 0.36 s of topk over a 12 s explanation became
    about 0.1 s."""
    rows, width = x.shape
    if width % TOP_BLOCK or width < 8 * TOP_BLOCK * m:
        return torch.topk(x, m, dim=-1, sorted=True)
    _, blocks = torch.topk(x.view(rows, -1, TOP_BLOCK).amax(dim=-1), m, dim=-1, sorted=False)
    candidates = (blocks[:, :, None] * TOP_BLOCK + torch.arange(TOP_BLOCK)).reshape(rows, -1)
    vals, where = torch.topk(torch.gather(x, 1, candidates), m, dim=-1, sorted=True)
    return vals, torch.gather(candidates, 1, where)


#: target name -> factory. CLI choices come from this dict.
TARGETS: dict[str, Callable[[], Target]] = {
    "wasserstein": WassersteinTarget,
    "logprob": LogProbTarget,
    "kl": KLTarget,
    "js": JSTarget,
    "tv": TVTarget,
}

#: targets that compare regenerated texts instead of distributions (the text-only path).
TEXT_TARGETS: dict[str, Callable[[], EmbeddingTarget]] = {
    "embedding": EmbeddingTarget,
}


def make_target(name: str | Target) -> Target:
    """A new, unprepared target: by name, or a copy of a given Target (its parameters; the
    reference it holds belongs to one explanation, so a given object is never prepared)."""
    if isinstance(name, Target):
        import copy

        return copy.copy(name)
    return lookup(TARGETS, name, "target")()
