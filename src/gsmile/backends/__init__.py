"""Model backends. gsmile reaches a model only through one of two small protocols.

* :class:`LanguageModel`: a generative model whose next-token distributions can be read
  teacher-forced (the embedded SmolLM2, any local Hugging Face causal LM).
* :class:`ScalarModel`: any black box ``list[str] -> list[float]``; the explained value is
  the function's own output.

Models behind an OpenAI-compatible API (``openai:NAME``, :mod:`.openai`) are explained on
the log-prob path (they act as a LanguageModel) when the server returns prompt
log-probabilities, else on the text-only path (:class:`.text.TextModel`, a ScalarModel
whose value is minus the embedding distance of the regenerated response). A callable that
returns text takes the text-only path too. :func:`prepare_backend` picks the path for one
explanation and says which and why.

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


def reduced_logprobs(model, prompts: Sequence[str], response_ids: Sequence[int],
                     reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce(log-probs)`` for ``prompts``: through the model's own ``reduced_logprobs``
    when it has one (it may call ``reduce`` on a few rows at a time, on arrays it reuses, so
    ``reduce`` must keep nothing it is given), else on the whole ``logprobs`` array."""
    own = getattr(model, "reduced_logprobs", None)
    if callable(own):
        return own(prompts, response_ids, reduce)
    return reduce(np.asarray(model.logprobs(prompts, response_ids)))


class ScalarModel:
    """Wrap ``f: list[str] -> list[float]`` as a scalar black box."""

    def __init__(self, func: Callable[[list[str]], Sequence[float]], model_id: str | None = None):
        self.func = func
        self.model_id = model_id or f"callable:{getattr(func, '__qualname__', type(func).__name__)}"
        #: values already known by text (prepare_backend's probe of the original prompt)
        self._memo: dict[str, float] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        memo = self._memo
        if memo and any(t in memo for t in texts):
            todo = [t for t in texts if t not in memo]
            values = dict(memo)
            if todo:
                values.update(zip(todo, self._call(todo)))
            return np.array([values[t] for t in texts], dtype=float)
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


#: names accepted by ``model=`` -> factory of a LanguageModel.
def _embedded():
    from .local import HFCausalLM

    return HFCausalLM.embedded()


MODELS: dict[str, Callable[[], LanguageModel]] = {
    "local": _embedded,
    "smollm2": _embedded,
}

_loaded: dict[str, LanguageModel] = {}


#: prefixes of model names that take an argument -> description (CLI help, errors).
MODEL_PREFIXES = {"hf:": "hf:PATH (a local Hugging Face model directory)", "openai:": "openai:NAME (an OpenAI-compatible API)"}


def resolve_model(model, **api_options) -> LanguageModel | ScalarModel:
    """Turn ``model=`` into a backend: None/"local" (the embedded SmolLM2), "hf:PATH",
    "openai:NAME" (``api_options`` go to :class:`~gsmile.backends.openai.OpenAIBackend`:
    base_url, api_key_env, concurrency, max_retries, cache_dir, use_cache...), a
    LanguageModel object, or a callable returning one float (scalar) or one string (text)
    per input text."""
    if model is None:
        model = "local"
    if isinstance(model, str) and model.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend(model[len("openai:") :], **api_options).validate()
    if api_options and any(v is not None for v in api_options.values()):
        raise InvalidInputError(f"API options ({', '.join(sorted(api_options))}) apply only to --model openai:NAME")
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
        f"model must be a name ({', '.join(MODELS)}, hf:PATH, openai:NAME), a language-model backend or a "
        f"callable list[str] -> list[float] or list[str]; got {type(model).__name__}"
    )


def prepare_backend(backend, *, prompt: str, response: str | None, target: str, max_new_tokens: int):
    """Pick how one explanation reaches the model. Returns ``(backend, response, info)``:
    the backend the Explainer scores with (a LanguageModel, or a ScalarModel such as a
    :class:`~.text.TextModel`), the response (set by the text-only path), and ``info``:
    ``{"path": ..., "path_reason": ...}`` for ``Explanation.extras``.

    * API backend: the log-prob path when the server echoes prompt log-probabilities and
      the target is not "embedding"; otherwise the text-only path (chat endpoint).
    * A plain callable is called once on the prompt: strings -> text-only path (that
      answer is the original response), numbers -> scalar model (that value is reused).
    * A language model with ``target="embedding"``: text-only path over its own greedy
      generations.
    """
    from .text import TextModel

    if hasattr(backend, "reset_stats"):
        backend.reset_stats()
    if isinstance(backend, TextModel):
        return backend, backend.set_reference(prompt, response), {"path": "text", "path_reason": "a text model"}
    if type(backend) is ScalarModel:
        raw = backend.raw([prompt])
        if isinstance(raw, (list, tuple)) and len(raw) == 1 and isinstance(raw[0], str):
            text = TextModel(backend.func, model_id=backend.model_id)
            text.set_reference(prompt, response if response is not None else raw[0])
            return text, text.response_, {"path": "text", "path_reason": "the model function returns text: its answers are compared by embedding distance"}
        if target == "embedding":
            raise InvalidInputError("the embedding target needs a model that returns text; this function returns numbers")
        backend._memo = {prompt: float(_finite_values(raw, 1, "a list of numbers or of strings")[0])}
        return backend, response, {"path": "scalar", "path_reason": "the model function returns numbers: its own output is explained"}
    if isinstance(backend, ScalarModel):
        return backend, response, {"path": "scalar", "path_reason": "a scalar model"}
    if hasattr(backend, "supports_logprobs"):
        if target == "embedding":
            ok, reason = False, "the embedding target was chosen"
        else:
            ok, reason = backend.supports_logprobs(prompt)
        if ok:
            return backend, response, {"path": "logprobs", "path_reason": reason, "prompt_template": backend.template}
        text = TextModel(lambda ps: backend.complete_texts(ps, max_new_tokens), model_id=backend.model_id, source=backend)
        response = text.set_reference(prompt, response)
        info = {"path": "text", "path_reason": reason, "endpoint": backend.text_endpoint or "/chat/completions"}
        if target != "embedding":
            info["path_reason"] += f"; the {target} target needs log-probabilities, so the embedding target is used"
            info["note"] = f"{backend.model_id} gives no usable log-probabilities: explained on the text-only path (embedding target) instead of {target}"
        return text, response, info
    if target == "embedding":
        def generate(prompts):
            return [backend.decode(backend.generate(p, max_new_tokens)) for p in prompts]

        if hasattr(backend, "load"):
            backend.load()
        text = TextModel(generate, model_id=backend.model_id, source=backend)
        return text, text.set_reference(prompt, response), {"path": "text", "path_reason": "the embedding target was chosen: greedy regenerations are compared"}
    return backend, response, {"path": "logprobs", "path_reason": "a local model: full next-token distributions"}

