"""The text-only path: a model that answers with text but no log-probabilities.

:class:`TextModel` presents such a model to the Explainer as a scalar black box: for each
perturbed prompt it regenerates the answer (greedy / temperature 0) and returns
``y = −d``, ``d`` the :class:`~gsmile.targets.EmbeddingTarget` distance between the
regenerated answer and the original response. So y(original prompt) = 0 when the model is
deterministic, as for the log-prob targets.

Sources of text: a Python callable ``list[str] -> list[str]``, an API backend's chat
endpoint, or a local language model's greedy generation (``target="embedding"``).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelError
from .protocols import ReportsExtras, ScalarModel


class TextModel(ScalarModel):
    """Wrap ``generate: list[str] -> list[str]`` (answers at temperature 0) as a scalar model.

    A TextModel compares answers with one explanation's original response:
    :meth:`with_reference` returns a new TextModel bound to it (the object it is called on
    is not changed, so one TextModel can serve several explanations at once).
    """

    target_name = "embedding"

    def __init__(self, generate: Callable[[list[str]], Sequence[str]], model_id: str | None = None, target=None, source=None):
        super().__init__(generate, model_id=model_id)
        self.target = target
        self.source = source  # the per-explanation object that makes the calls (call statistics)

    def texts(self, prompts: Sequence[str]) -> list[str]:
        out = self.raw(prompts)
        out = list(out) if not isinstance(out, str) else [out]
        if len(out) != len(prompts) or not all(isinstance(t, str) for t in out):
            raise ModelError(f"the text model must return one string per prompt; got {len(out)} values for {len(prompts)} prompts")
        return out

    def with_reference(self, prompt: str, response: str | None = None) -> "TextModel":
        """A TextModel bound to the original response (generated from ``prompt`` unless
        given): its ``response_`` and a target prepared on it."""
        from ..targets import EmbeddingTarget

        if response is None:
            response = self.texts([prompt])[0]
        if not response.strip():
            raise InvalidInputError("the model gave an empty response; pass --response to explain a given one")
        bound = copy.copy(self)
        bound.target = (copy.copy(self.target) if self.target is not None else EmbeddingTarget()).prepare_text(response)
        bound.response_ = response
        return bound

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "response_"):
            raise ModelError("TextModel.with_reference must be called before scoring")
        return -self.target.distance(self.texts(prompts))

    def explanation_extras(self) -> dict:
        return self.source.explanation_extras() if isinstance(self.source, ReportsExtras) else {}
