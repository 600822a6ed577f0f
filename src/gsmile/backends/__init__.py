"""Model backends. gsmile reaches a model only through one of two small protocols.

* :class:`LanguageModel`: a generative model whose next-token distributions can be read
  teacher-forced (the embedded SmolLM2, any local Hugging Face causal LM).
* :class:`ScalarModel`: any black box ``list[str] -> list[float]``; the explained value is
  the function's own output.

Nothing here imports torch; the local backend loads it when first used.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InvalidInputError, ModelError


@runtime_checkable
class LanguageModel(Protocol):
    """A generative model scored teacher-forced on a fixed response."""

    model_id: str

    def generate(self, prompt: str, max_new_tokens: int) -> list[int]:
        """Greedy response token ids for ``prompt`` (without the end-of-turn token)."""

    def encode_response(self, response: str) -> list[int]:
        """Token ids of a response given as text."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of token ids."""

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """One display string per token id."""

    def logprobs(self, prompts: Sequence[str], response_ids: Sequence[int]) -> np.ndarray:
        """Next-token log-probabilities ``(len(prompts), len(response_ids), vocab)`` at every
        response position, the response appended to each prompt (one batch, one pass)."""

    def token_embeddings(self) -> np.ndarray:
        """The input embedding matrix ``(vocab, hidden)``, used as a ground metric."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokenizer's tokens of ``text``."""


class ScalarModel:
    """Wrap ``f: list[str] -> list[float]`` as a scalar black box."""

    def __init__(self, func: Callable[[list[str]], Sequence[float]], model_id: str | None = None):
        self.func = func
        self.model_id = model_id or f"callable:{getattr(func, '__qualname__', type(func).__name__)}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        try:
            out = self.func(list(texts))
        except Exception as exc:  # the user's function failed; say so without our traceback
            raise ModelError(f"the model function raised {type(exc).__name__}: {exc}") from exc
        try:
            values = np.asarray(out, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise ModelError("the model function must return a list of numbers, one per input text") from None
        if values.shape != (len(texts),):
            raise ModelError(f"the model function returned {values.size} values for {len(texts)} texts")
        if not np.all(np.isfinite(values)):
            raise ModelError("the model function returned NaN or infinite values")
        return values


#: names accepted by ``model=`` -> factory of a LanguageModel.
def _embedded():
    from .local import HFCausalLM

    return HFCausalLM.embedded()


MODELS: dict[str, Callable[[], LanguageModel]] = {
    "local": _embedded,
    "smollm2": _embedded,
}

_loaded: dict[str, LanguageModel] = {}


def resolve_model(model) -> LanguageModel | ScalarModel:
    """Turn ``model=`` into a backend: None/"local" (the embedded SmolLM2), "hf:PATH",
    a LanguageModel object, or a callable returning one float per text."""
    if model is None:
        model = "local"
    if isinstance(model, str):
        if model.startswith("hf:"):
            from .local import HFCausalLM

            path = model[3:]
            if path not in _loaded:
                _loaded[path] = HFCausalLM.from_path(path)
            return _loaded[path]
        from ..errors import lookup

        factory = lookup(MODELS, model, "model")
        key = "local" if factory is _embedded else model
        if key not in _loaded:
            _loaded[key] = factory()
        return _loaded[key]
    if isinstance(model, (LanguageModel, ScalarModel)):
        return model
    if callable(model):
        return ScalarModel(model)
    raise InvalidInputError(
        f"model must be a name ({', '.join(MODELS)}, hf:PATH), a language-model backend or a "
        f"callable list[str] -> list[float]; got {type(model).__name__}"
    )
