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
is held fixed. :func:`gsmile.length.fit_length` applies the length limits before anything is scored.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

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


