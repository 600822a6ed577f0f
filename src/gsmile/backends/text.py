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

from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelError
from . import ScalarModel


class TextModel(ScalarModel):
    """Wrap ``generate: list[str] -> list[str]`` (answers at temperature 0) as a scalar model.

    Call :meth:`set_reference` once per explanation before scoring.
    """

    target_name = "embedding"

    def __init__(self, generate: Callable[[list[str]], Sequence[str]], model_id: str | None = None, target=None, source=None):
        super().__init__(generate, model_id=model_id)
        self.target = target
        self.source = source  # the backend that makes the calls (for call statistics)

    def texts(self, prompts: Sequence[str]) -> list[str]:
        out = self.raw(prompts)
        out = list(out) if not isinstance(out, str) else [out]
        if len(out) != len(prompts) or not all(isinstance(t, str) for t in out):
            raise ModelError(f"the text model must return one string per prompt; got {len(out)} values for {len(prompts)} prompts")
        return out

    def set_reference(self, prompt: str, response: str | None = None) -> str:
        """Fix the original response (generated from ``prompt`` unless given); returns it."""
        from ..targets import EmbeddingTarget

        if response is None:
            response = self.texts([prompt])[0]
        if not response.strip():
            raise InvalidInputError("the model gave an empty response; pass --response to explain a given one")
        if self.target is None:
            self.target = EmbeddingTarget()
        self.target.prepare_text(response)
        self.response_ = response
        return response

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "response_"):
            raise ModelError("TextModel.set_reference must be called before scoring")
        return -self.target.distance(self.texts(prompts))

    def reset_stats(self) -> None:
        if self.source is not None and hasattr(self.source, "reset_stats"):
            self.source.reset_stats()

    def call_stats(self):
        if self.source is not None and hasattr(self.source, "call_stats"):
            return self.source.call_stats()
        return None
