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

from .errors import InvalidInputError, lookup


class Target:
    name = "target"
    #: How per-position shifts combine into one Δ: "mean" or "sum".
    aggregate = "mean"

    def prepare(self, reference: np.ndarray, response_ids: np.ndarray, embeddings: np.ndarray | None = None) -> "Target":
        """Record the reference log-probs ``(positions, vocab)`` and the response token ids."""
        reference = np.asarray(reference)
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
    """

    name = "wasserstein"

    def __init__(self, top_k: int = 20, rest_cost: float = 1.0):
        self.top_k = top_k
        self.rest_cost = rest_cost

    def prepare(self, reference, response_ids, embeddings=None):
        super().prepare(reference, response_ids)
        if embeddings is None:
            raise InvalidInputError("the wasserstein target needs the model's token embeddings")
        emb = np.asarray(embeddings, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        self.embeddings_ = emb / np.maximum(norms, 1e-12)
        self.k_ = int(min(self.top_k, self.reference_.shape[1]))
        self.reference_top_ = _top_k(self.reference_, self.k_)
        return self

    def per_position(self, logprobs):
        import ot  # POT; imported lazily, it pulls in scipy.

        logprobs = np.asarray(logprobs)
        batch, positions, _ = logprobs.shape
        top = _top_k(logprobs.reshape(batch * positions, -1), self.k_).reshape(batch, positions, -1)
        out = np.empty((batch, positions))
        for t in range(positions):
            ref_row = self.reference_[t]
            for b in range(batch):
                support = np.union1d(self.reference_top_[t], top[b, t])
                out[b, t] = self._distance(ref_row, logprobs[b, t], support, ot)
        return out

    def _distance(self, p_log: np.ndarray, q_log: np.ndarray, support: np.ndarray, ot) -> float:
        p = np.exp(p_log[support].astype(np.float64))
        q = np.exp(q_log[support].astype(np.float64))
        a = np.append(p, max(0.0, 1.0 - p.sum()))
        b = np.append(q, max(0.0, 1.0 - q.sum()))
        a /= a.sum()
        b /= b.sum()
        e = self.embeddings_[support].astype(np.float64)
        cost = np.empty((len(support) + 1, len(support) + 1))
        cost[:-1, :-1] = np.clip(1.0 - e @ e.T, 0.0, 2.0)
        np.fill_diagonal(cost, 0.0)
        cost[-1, :] = cost[:, -1] = self.rest_cost
        cost[-1, -1] = 0.0
        # a and b are normalized above: skip POT's marginal check (a third of its time here).
        return float(max(ot.emd2(a, b, cost, check_marginals=False), 0.0))


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
            from .backends.minilm import embed_texts

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
    """Indices of the ``k`` largest entries of each row (as a set; order unspecified).
    torch.topk when torch is loaded (several times faster than a full argpartition)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and logprobs.dtype in (np.float32, np.float64) and logprobs.ndim == 2:
        with torch.inference_mode():
            return torch.topk(torch.from_numpy(np.ascontiguousarray(logprobs)), k, dim=-1, sorted=False).indices.numpy()
    return np.argpartition(-logprobs, k - 1, axis=-1)[..., :k]


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
    if isinstance(name, Target):
        return name
    return lookup(TARGETS, name, "target")()
