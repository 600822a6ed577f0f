"""The detection scores explained by the analyze endpoint, built on a language model's
teacher-forced log-probabilities (:meth:`~gsmile.backends.LanguageModel.logprobs`).

Let ``r = r_1 .. r_T`` be the response tokens and, for a user turn ``x``,
``ℓ(x) = (1/T) Σ_t log p(r_t | x, r_<t)`` the mean log-probability per response token.

* ``answer_likelihood`` (no context): ``exp(ℓ(prompt))``, the geometric mean probability
  of the response tokens given the prompt. In (0, 1]; high: the model finds the response likely.
* ``halluc_context`` (with a context): the per-token pointwise mutual information between
  context and response, ``PMI = ℓ(turn(context, prompt)) − ℓ(prompt)``, mapped through a
  logistic: ``score = 1 / (1 + exp(PMI / PMI_SCALE))`` with ``PMI_SCALE = 0.5`` nats per
  token. In (0, 1); 0.5: the context neither helps nor hurts the response; towards 0: the
  context supports it (PMI > 0); towards 1: the context makes it less likely (poorly
  supported, a likely hallucination). ``turn(context, prompt)`` is :func:`gsmile.inputs.user_turn`;
  an empty context gives the prompt alone (PMI = 0, score 0.5).

A :class:`DetectionScore` is a scalar black box ``list[str] -> list[float]``: the texts are
perturbed versions of the explained part (the context, else the prompt); everything else
is held fixed. :func:`fit_length` applies the length limits before anything is scored.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..backends import SizesBatches
from ..errors import ModelError
from ..inputs import user_turn  # the same user turn the attribution perturbs
PMI_SCALE = 0.5
DETECTION_TYPES = ("halluc_context", "answer_likelihood")


def halluc_from_pmi(pmi: float, scale: float = PMI_SCALE) -> float:
    """``1 / (1 + exp(pmi / scale))``, computed without overflow."""
    z = pmi / scale
    if z >= 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


class DetectionScore:
    """Detection score of perturbed texts of the explained part.

    backend: a LanguageModel; prompt/context: the request's (already length-limited) texts;
    response_ids: the response tokens; explained: "context" or "prompt".
    ``calls`` counts the texts scored (used for progress).
    """

    def __init__(self, backend, prompt: str, context: str | None, response_ids: Sequence[int], explained: str):
        self.backend = backend
        self.prompt = prompt
        self.context = context
        self.response_ids = list(response_ids)
        self.explained = explained
        self.detection_type = "halluc_context" if explained == "context" else "answer_likelihood"
        self.model_id = f"{self.detection_type}:{backend.model_id}"
        self.calls = 0
        self._baseline: float | None = None

    def mean_logprob(self, turns: Sequence[str]) -> np.ndarray:
        """ℓ(x) for each user turn (one batch)."""
        lp = np.asarray(self.backend.logprobs(list(turns), self.response_ids), dtype=np.float64)
        t = np.arange(len(self.response_ids))
        return lp[:, t, self.response_ids].mean(axis=1)

    def baseline(self) -> float:
        """ℓ(prompt), the reference of the PMI (computed once)."""
        if self._baseline is None:
            self._baseline = float(self.mean_logprob([self.prompt])[0])
        return self._baseline

    def __call__(self, texts: Sequence[str]) -> list[float]:
        texts = list(texts)
        if self.explained == "context":
            base = self.baseline()
            turns = [user_turn(self.prompt, t) for t in texts]
            lp = self.mean_logprob(turns)
            scores = [0.5 if not t.strip() else halluc_from_pmi(float(v) - base) for t, v in zip(texts, lp)]
        else:
            lp = self.mean_logprob(texts)
            scores = [float(math.exp(v)) for v in lp]
        self.calls += len(texts)
        return scores

    def score(self) -> float:
        """The score of the unperturbed request (the base score)."""
        return self([self.context if self.explained == "context" else self.prompt])[0]


# ------------------------------------------------------------------- length limits
def _n_tokens(backend, text: str) -> int:
    """Tokens of the chat-formatted user turn (the template's markup counted when the
    backend can say so)."""
    if isinstance(backend, SizesBatches):
        return len(backend.prompt_ids(text))
    return len(backend.token_spans(text))


def _cut_front_tokens(backend, text: str, n: int) -> str:
    """``text`` without its first ``n`` tokens (empty when it has no more)."""
    spans = backend.token_spans(text)
    if n <= 0:
        return text
    if n >= len(spans):
        return ""
    return text[spans[n][0]:].lstrip()


def cut_front_chars(text: str, keep: int) -> str:
    """The last ``keep`` characters of ``text``, starting at a word boundary when possible."""
    if len(text) <= keep:
        return text
    tail = text[len(text) - keep:]
    space = next((i for i, ch in enumerate(tail) if ch.isspace()), None)
    if space is not None and space < len(tail) - 1 and space < 40:
        tail = tail[space:]
    return tail.lstrip()


def fit_length(backend, prompt: str, context: str | None, response_ids: list[int], src_chars: int, maxlen: int):
    """Apply the limits: context + prompt cut from the beginning to ``src_chars`` characters,
    then the response to at most half of ``maxlen`` tokens and the user turn (context first,
    then prompt) from the beginning so that turn + response fit in ``maxlen`` tokens.
    Returns (prompt, context, response_ids, notes)."""
    notes: list[str] = []
    ctx_len = len(context) if context else 0
    if ctx_len + len(prompt) > src_chars:
        if len(prompt) >= src_chars:
            prompt, context = cut_front_chars(prompt, src_chars), None
        else:
            context = cut_front_chars(context, src_chars - len(prompt))
        notes.append(f"context and prompt were longer than {src_chars} characters; their beginning was cut")
    if len(response_ids) > maxlen // 2:
        response_ids = response_ids[: maxlen // 2]
        notes.append(f"the response was cut to its first {maxlen // 2} tokens")
    budget = maxlen - len(response_ids)
    for _ in range(4):  # re-tokenizing after a cut can shift a token; a few rounds settle it
        excess = _n_tokens(backend, user_turn(prompt, context)) - budget
        if excess <= 0:
            break
        if context:
            n_ctx = len(backend.token_spans(context))
            context = _cut_front_tokens(backend, context, excess) if excess < n_ctx else None
        else:
            prompt = _cut_front_tokens(backend, prompt, excess)
        msg = f"the input was cut from the beginning to fit {maxlen} tokens per scoring pass"
        if msg not in notes:
            notes.append(msg)
    if not prompt.strip():
        raise ModelError(f"the prompt does not fit in {maxlen} tokens with the response; raise GSMILE_XAI_MAXLEN")
    return prompt, context or None, response_ids, notes
