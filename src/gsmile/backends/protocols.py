"""The protocols through which gsmile reaches a model, and the scalar black box.

:class:`LanguageModel` is what a user implements to explain their own generative model;
the capabilities below are what a backend may offer beyond it, each a protocol of its own
(checked with isinstance). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import ModelError


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


@runtime_checkable
class ImageModel(Protocol):
    """A text-to-image model treated as a black box (a diffusers pipeline, an images API, a
    function). gsmile explains a prompt by how far the images move when words are removed."""

    model_id: str

    def generate_images(self, prompts: Sequence[str], seed: int) -> list[Any]:
        """One PIL image per prompt, every one generated from ``seed``: the same seed gives
        the same starting noise, so two prompts' images differ by the prompts alone
        (common random numbers). A prompt's image must not depend on the other prompts of
        the call (batch size never changes results)."""


# Capabilities: what a backend may offer beyond the protocol above, each declared as a
# protocol of its own and checked with isinstance (never by probing names).
@runtime_checkable
class Loadable(Protocol):
    """Loads its weights on first use; :meth:`load` does it now (idempotent, thread-safe)."""

    def load(self) -> Any: ...


@runtime_checkable
class ReducesLogprobs(Protocol):
    """Hands log-probs to ``reduce`` a few rows at a time instead of returning them all."""

    def reduced_logprobs(self, prompts: Sequence[str], response_ids: Sequence[int],
                         reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class SizesBatches(Protocol):
    """Knows the chat-formatted token count of a prompt and a good batch size for it."""

    def prompt_ids(self, prompt: str) -> list[int]: ...

    def suggest_batch_size(self, n_tokens: int) -> int: ...


@runtime_checkable
class KnowsWindow(Protocol):
    """Knows the most tokens (prompt and response together) one sequence may have."""

    def max_tokens(self) -> int | None: ...


@runtime_checkable
class PerExplanation(Protocol):
    """A backend shared between explanations that needs state of one explanation's own (an
    API's token vocabulary, call counters): :meth:`for_explanation` makes a fresh object
    holding that state; the backend itself keeps none."""

    def for_explanation(self) -> Any: ...


@runtime_checkable
class ReportsExtras(Protocol):
    """Says how it reached the model for ``Explanation.extras`` (call counts, ground cost)."""

    def explanation_extras(self) -> dict[str, Any]: ...


@runtime_checkable
class FallsBackToText(Protocol):
    """A model that may give no usable log-probabilities (an API): it says so for a prompt,
    and answers with text instead."""

    template: str
    text_endpoint: str | None

    def supports_logprobs(self, prompt: str) -> tuple[bool, str]: ...

    def complete_texts(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]: ...


def for_explanation(backend):
    """The object one explanation scores with: ``backend.for_explanation()`` for backends with
    per-explanation state, else the (stateless) backend itself."""
    return backend.for_explanation() if isinstance(backend, PerExplanation) else backend


def reduced_logprobs(model, prompts: Sequence[str], response_ids: Sequence[int],
                     reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce(log-probs)`` for ``prompts``: through the model's own ``reduced_logprobs``
    when it has one (it may call ``reduce`` on a few rows at a time, on arrays it reuses, so
    ``reduce`` must keep nothing it is given), else on the whole ``logprobs`` array."""
    if isinstance(model, ReducesLogprobs):
        return model.reduced_logprobs(prompts, response_ids, reduce)
    return reduce(np.asarray(model.logprobs(prompts, response_ids)))


class ScalarModel:
    """Wrap ``f: list[str] -> list[float]`` as a scalar black box (stateless: safe to share
    between explanations and threads when ``f`` is)."""

    #: What an explanation of this model explains (``Explanation.target``).
    target_name = "model_output"
    #: Texts per call when batch_size is left to gsmile.
    default_batch_size = 64
    #: What one scored input produces, for progress bars: ("prompt", 1), or ("image", K).
    progress_unit = "prompt"
    outputs_per_input = 1

    def __init__(self, func: Callable[[list[str]], Sequence[float]], model_id: str | None = None):
        self.func = func
        self.model_id = model_id or f"callable:{getattr(func, '__qualname__', type(func).__name__)}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self._call(texts)

    def raw(self, texts: Sequence[str]):
        """The function's own answer for ``texts``; its failures become a ModelError."""
        try:
            return self.func(list(texts))
        except ModelError:  # a backend's own, already worded (an API that gave up)
            raise
        except Exception as exc:  # the user's function failed; say so without our traceback
            raise ModelError(f"the model function raised {type(exc).__name__}: {exc}") from exc

    def _call(self, texts: Sequence[str]) -> np.ndarray:
        return _finite_values(self.raw(texts), len(texts), "a list of numbers")


def _finite_values(out, n: int, expected: str) -> np.ndarray:
    """``out`` as ``n`` finite floats, or a ModelError saying what the function must return."""
    try:
        values = np.asarray(out, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ModelError(f"the model function must return {expected}, one per input text") from None
    if values.shape != (n,):
        raise ModelError(f"the model function returned {values.size} values for {n} texts")
    if not np.all(np.isfinite(values)):
        raise ModelError("the model function returned NaN or infinite values")
    return values


def is_language_model(backend) -> bool:
    """Whether ``backend`` is scored as a language model (next-token distributions), not as a
    scalar black box."""
    return isinstance(backend, LanguageModel) and not isinstance(backend, ScalarModel)
