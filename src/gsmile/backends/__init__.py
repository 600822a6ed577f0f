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

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InvalidInputError
from .protocols import (
    FallsBackToText,
    ImageModel,
    KnowsWindow,
    LanguageModel,
    Loadable,
    PerExplanation,
    ReducesLogprobs,
    ReportsExtras,
    ScalarModel,
    SizesBatches,
    _finite_values,
    for_explanation,
    is_language_model,
    reduced_logprobs,
)
from .text import TextModel

__all__ = [
    "MODELS", "FallsBackToText", "ImageModel", "KnowsWindow", "LanguageModel", "Loadable", "PerExplanation", "ReducesLogprobs", "ReportsExtras",
    "Route", "ScalarModel", "SizesBatches", "TextModel", "for_explanation", "is_language_model", "prepare_backend",
    "reduced_logprobs", "resolve_model",
]


#: names accepted by ``model=`` -> factory of a LanguageModel.
def _embedded(device: str | None = None, dtype: str | None = None, max_batch_tokens: int | None = None):
    from .local import HFCausalLM

    return HFCausalLM.embedded(device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)


MODELS: dict[str, Callable[[], LanguageModel]] = {
    "local": _embedded,
    "smollm2": _embedded,
}

_loaded: dict[tuple, LanguageModel] = {}  # backends by (name, device, dtype, max_batch_tokens), loaded once per process
_loaded_lock = threading.RLock()


#: prefixes of model names that take an argument -> description (CLI help, errors).
MODEL_PREFIXES = {"hf:": "hf:PATH (a local Hugging Face model directory)", "openai:": "openai:NAME (an OpenAI-compatible API)",
                  "diffusers:": "diffusers:PATH (a local diffusers text-to-image pipeline)",
                  "openai-images:": "openai-images:NAME (an OpenAI-compatible images API)"}
#: prefixes of text-to-image models' names
IMAGE_MODEL_PREFIXES = ("diffusers:", "openai-images:")


def resolve_model(model, *, device: str | None = None, dtype: str | None = None, max_batch_tokens: int | None = None,
                  image_options: dict[str, Any] | None = None, **api_options):
    """Turn ``model=`` into a backend: None/"local" (the embedded SmolLM2), "hf:PATH",
    "openai:NAME" (``api_options`` go to :class:`~gsmile.backends.openai.OpenAIBackend`:
    base_url, api_key_env, concurrency, max_retries, cache_dir, use_cache...), a
    LanguageModel or a backend with per-explanation state (an OpenAIBackend), or a callable
    returning one float (scalar) or one string (text) per input text. The backend is shared:
    one explanation's state lives in :func:`prepare_backend`'s :class:`Route`.

    ``device`` and ``dtype`` place a local model ("local", "hf:PATH"; see
    :mod:`gsmile.backends.devices`): default "auto" (cuda, else mps, else cpu) and "float32".
    ``max_batch_tokens`` bounds the tokens of one scoring pass of a local model (its memory;
    see :class:`~gsmile.backends.local.HFCausalLM`). A backend is kept per (name, device, dtype,
    max_batch_tokens), "auto" counted as the device it chose.

    Text-to-image models: "diffusers:PATH" (``device``, ``dtype``, and ``image_options``:
    steps, guidance_scale, size, cache_dir, use_cache; see
    :class:`~gsmile.backends.diffusion.DiffusersModel`), "openai-images:NAME"
    (``api_options`` and ``image_options``; see
    :class:`~gsmile.backends.images_api.ImagesAPIBackend`), or an ImageModel object."""
    if model is None:
        model = "local"
    image_options = {k: v for k, v in (image_options or {}).items() if v is not None}
    if isinstance(model, str) and model.startswith("diffusers:"):
        if max_batch_tokens is not None:
            raise InvalidInputError("max_batch_tokens applies only to a local language model", field="max_batch_tokens")
        if api_options and any(v is not None for v in api_options.values()):
            raise InvalidInputError(f"API options ({', '.join(sorted(api_options))}) apply only to --model openai:NAME or openai-images:NAME")
        from .devices import resolve_device
        from .diffusion import DiffusersModel

        dev, dt = resolve_device(device, dtype)
        key = (model, dev, dt, tuple(sorted((k, str(v)) for k, v in image_options.items())))
        with _loaded_lock:
            if key not in _loaded:
                _loaded[key] = DiffusersModel(model[len("diffusers:") :], device=dev, dtype=dt, **image_options).validate()
            return _loaded[key]
    if isinstance(model, str) and model.startswith("openai-images:"):
        if device is not None or dtype is not None or max_batch_tokens is not None:
            raise InvalidInputError(f"device, dtype and max_batch_tokens apply only to local models; the API's server places {model}", field="device")
        from .images_api import ImagesAPIBackend

        return ImagesAPIBackend(model[len("openai-images:") :], **{**api_options, **image_options}).validate()
    if image_options:
        raise InvalidInputError(f"image options ({', '.join(sorted(image_options))}) apply only to text-to-image models (diffusers:PATH, openai-images:NAME)")
    given = {"device": device, "dtype": dtype, "max_batch_tokens": max_batch_tokens}
    names = [name for name, value in given.items() if value is not None]
    placed = names[0] if names else None
    where = f"{' and '.join(names)} appl{'ies' if len(names) == 1 else 'y'} only to a local model given by name (local, hf:PATH)"
    if isinstance(model, str) and model.startswith("openai:"):
        if placed:
            raise InvalidInputError(f"{where}; the API's server places {model}", field=placed)
        from .openai import OpenAIBackend

        return OpenAIBackend(model[len("openai:") :], **api_options).validate()
    if api_options and any(v is not None for v in api_options.values()):
        raise InvalidInputError(f"API options ({', '.join(sorted(api_options))}) apply only to --model openai:NAME")
    if isinstance(model, str):
        from .devices import resolve_device
        from .local import check_batch_tokens

        if max_batch_tokens is not None:
            check_batch_tokens(max_batch_tokens)
        if model.startswith("hf:"):
            from .local import HFCausalLM

            path = model[3:]
            key = (model, *resolve_device(device, dtype), max_batch_tokens)
            with _loaded_lock:
                if key not in _loaded:
                    _loaded[key] = HFCausalLM.from_path(path, device=key[1], dtype=key[2], max_batch_tokens=key[3])
                return _loaded[key]
        from ..errors import lookup

        factory = lookup(MODELS, model, "model")
        if factory is not _embedded:
            if placed:
                raise InvalidInputError(f"{where}; {model!r} is not one", field=placed)
            key = (model,)
        else:
            key = ("local", *resolve_device(device, dtype), max_batch_tokens)
        with _loaded_lock:
            if key not in _loaded:
                _loaded[key] = resolve_model(factory(*key[1:]))
            return _loaded[key]
    if placed:
        raise InvalidInputError(f"{where}; place a model object of your own yourself", field=placed)
    if isinstance(model, (LanguageModel, ScalarModel, PerExplanation, ImageModel)):
        return model
    if callable(model):
        return ScalarModel(model, model_id=getattr(model, "model_id", None))
    raise InvalidInputError(
        f"model must be a name ({', '.join(MODELS)}, hf:PATH, openai:NAME, diffusers:PATH, openai-images:NAME), a language-model "
        f"or image-model backend or a callable list[str] -> list[float], list[str] or list[PIL.Image]; got {type(model).__name__}"
    )


@dataclass
class Route:
    """How one explanation reaches the model (made by :func:`prepare_backend`).

    model: what the explanation scores with, holding that explanation's state only (a
        LanguageModel, or a ScalarModel such as a :class:`~.text.TextModel`);
    response: the response explained (set by the text-only path when it generated it);
    info: ``{"path": ..., "path_reason": ...}`` for ``Explanation.extras``;
    known: model values already computed, by input text (a callable's answer to the
        original prompt, asked while choosing the path): the scorer reuses them.
    """

    model: Any
    response: str | None
    info: dict[str, Any]
    known: dict[str, float] = field(default_factory=dict)

    @property
    def is_lm(self) -> bool:
        return is_language_model(self.model)


def prepare_backend(backend, *, prompt: str, response: str | None, target: str, max_new_tokens: int,
                    image_seeds: int | None = None, embedder=None) -> Route:
    """Pick how one explanation reaches the shared ``backend`` and make the objects that hold
    that explanation's state (the backend is never changed).

    * API backend: the log-prob path when the server echoes prompt log-probabilities and
      the target is not "embedding"; otherwise the text-only path (chat endpoint).
    * A plain callable is called once on the prompt: strings -> text-only path (that
      answer is the original response), numbers -> scalar model (that value is reused).
    * A language model with ``target="embedding"``: text-only path over its own greedy
      generations.
    * A text-to-image model (an ImageModel, or a function returning PIL images or taking a
      ``seed``): the image path, ``image_seeds`` images per prompt compared by ``embedder``
      (see :mod:`.images`).
    """
    from .images import ImageFunction, takes_seed

    if type(backend) is ScalarModel and takes_seed(backend.func):
        backend = ImageFunction(backend.func, model_id=backend.model_id)
    if isinstance(backend, ImageModel):
        return _image_route(backend, prompt, response, image_seeds, embedder)
    if type(backend) is not ScalarModel:  # (a plain function says what it returns when called, below)
        _no_image_options(image_seeds, embedder)
    if isinstance(backend, TextModel):
        text = backend.with_reference(prompt, response)
        return Route(text, text.response_, {"path": "text", "path_reason": "a text model"})
    if type(backend) is ScalarModel:
        raw = backend.raw([prompt])
        if _is_image_list(raw):
            return _image_route(ImageFunction(backend.func, model_id=backend.model_id), prompt, response, image_seeds, embedder)
        _no_image_options(image_seeds, embedder)
        if isinstance(raw, (list, tuple)) and len(raw) == 1 and isinstance(raw[0], str):
            text = TextModel(backend.func, model_id=backend.model_id).with_reference(prompt, response if response is not None else raw[0])
            return Route(text, text.response_, {"path": "text", "path_reason": "the model function returns text: its answers are compared by embedding distance"})
        if target == "embedding":
            raise InvalidInputError("the embedding target needs a model that returns text; this function returns numbers")
        value = float(_finite_values(raw, 1, "a list of numbers or of strings")[0])
        return Route(backend, response, {"path": "scalar", "path_reason": "the model function returns numbers: its own output is explained"},
                     known={prompt: value})
    if isinstance(backend, ScalarModel):
        return Route(backend, response, {"path": "scalar", "path_reason": "a scalar model"})
    model = for_explanation(backend)
    if isinstance(model, FallsBackToText):
        if target == "embedding":
            ok, reason = False, "the embedding target was chosen"
        else:
            ok, reason = model.supports_logprobs(prompt)
        if ok:
            return Route(model, response, {"path": "logprobs", "path_reason": reason, "prompt_template": model.template})
        text = TextModel(lambda ps: model.complete_texts(ps, max_new_tokens), model_id=model.model_id, source=model)
        text = text.with_reference(prompt, response)
        info = {"path": "text", "path_reason": reason, "endpoint": model.text_endpoint or "/chat/completions"}
        if target != "embedding":
            info["path_reason"] += f"; the {target} target needs log-probabilities, so the embedding target is used"
            info["note"] = f"{model.model_id} gives no usable log-probabilities: explained on the text-only path (embedding target) instead of {target}"
        return Route(text, text.response_, info)
    if target == "embedding":
        def generate(prompts):
            return [model.decode(model.generate(p, max_new_tokens)) for p in prompts]

        if isinstance(model, Loadable):
            model.load()
        text = TextModel(generate, model_id=model.model_id, source=model).with_reference(prompt, response)
        return Route(text, text.response_, {"path": "text", "path_reason": "the embedding target was chosen: greedy regenerations are compared"})
    return Route(model, response, {"path": "logprobs", "path_reason": "a local model: full next-token distributions"})


def _no_image_options(image_seeds, embedder) -> None:
    if image_seeds is not None or embedder is not None:
        which = "image_seeds" if image_seeds is not None else "embedder"
        raise InvalidInputError(f"{which} applies only to text-to-image models (diffusers:PATH, openai-images:NAME, a function returning images)",
                                field=which)


def _is_image_list(raw) -> bool:
    """Whether a function's answer is a list of PIL images (PIL imported only if loaded)."""
    import sys

    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(raw, (list, tuple)) and len(raw) >= 1 and isinstance(raw[0], image.Image)


def _image_route(backend, prompt: str, response: str | None, image_seeds, embedder) -> Route:
    from .images import image_route_model

    if response is not None:
        raise InvalidInputError("a text-to-image model has no text response; leave response unset", field="response")
    model = image_route_model(backend, prompt, image_seeds=1 if image_seeds is None else image_seeds, embedder=embedder)
    k, distance = len(model.seeds), model.target.describe()
    how = f"the {distance} distance between the two images" if k == 1 else \
        f"the Wasserstein-1 distance between the two sets of {k} images ({distance} cost, exact optimal transport)"
    info = {"path": "image", "path_reason": f"a text-to-image model: each prompt's images (seeds {model.seeds[0]}..{model.seeds[-1]}) "
                                            f"are compared with the original prompt's by {how}"}
    # The original prompt's images are the reference: its own distance is 0.
    return Route(model, None, info, known={prompt: 0.0})
