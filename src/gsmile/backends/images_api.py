"""``openai-images:NAME``: a text-to-image model behind an OpenAI-compatible images API.

Each prompt is one ``POST {base_url}/images/generations`` with the body ::

    {"model": NAME, "prompt": ..., "n": 1, "response_format": "b64_json", "seed": SEED,
     "size": "WxH"}                       # size only when set
    + {"steps": ..., "guidance_scale": ...}  # each only when set

and the image is read from ``data[0].b64_json`` (PNG, JPEG...; decoded losslessly). One
request per prompt, never a list of prompts, so a prompt's image depends on its prompt, the
seed and the settings only, not on the other prompts of a batch. The requests of one call
are sent ``concurrency`` at a time through :class:`~.http.JSONClient`: retries on 429 (with
``Retry-After``), 5xx, timeouts and dropped connections, and every usable answer is kept in
the persistent call cache (:class:`~.cache.CallCache`) as it arrives, keyed by the whole
request (model, prompt, seed, size, steps, guidance), so a killed or failed run resumes
without asking for an image twice. An answer without an image is never cached.

Whether a server honours ``seed`` is up to the server (OpenAI's own images API ignores it;
servers in front of diffusion models usually use it). Without it, two prompts' images
differ by their starting noise too and the explanation measures that noise as well.

The backend is shared between explanations and threads and holds no explanation's state:
its call counters (:meth:`ImagesAPIBackend.call_stats`) are totals over every explanation
that used it, so an explanation's extras give the settings and the API, not counts.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

from ..errors import InvalidInputError, ModelError, check_int
from .cache import CallCache
from .images import decode_png
from .openai import APIClient

ENDPOINT = "/images/generations"
#: options of a text API (``openai:NAME``) that the CLI passes to every API model; they do
#: not apply to images and are ignored.
TEXT_OPTIONS = frozenset({"prompt_template", "top_logprobs", "batch_prompts"})


class ImagesAPIBackend(APIClient):
    """``openai-images:NAME``: an OpenAI-compatible images API as an
    :class:`~.protocols.ImageModel`.

    model: the model name the server expects.
    base_url: e.g. ``http://127.0.0.1:8000/v1``; default ``$OPENAI_BASE_URL`` or OpenAI's.
    api_key: the key itself; default: the environment variable ``api_key_env``
        (``OPENAI_API_KEY``); none is sent when it is unset (local servers).
    concurrency, max_retries, timeout, backoff, max_backoff: call behaviour (see
        :mod:`gsmile.backends.http`); a generation is slow, hence the longer timeout.
    size: ``(width, height)`` of the images, sent as ``"WxH"`` (None: the server's default).
    steps, guidance_scale: sent as extra body fields when set (servers in front of
        diffusion pipelines read them; others may refuse or ignore them).
    cache_dir / use_cache: the persistent call cache (default ``<gsmile cache>/calls``).
    random_state: seeds the retry jitter.
    sleep: how to wait between retries (tests inject one).
    The text API's options (``prompt_template``, ``top_logprobs``, ``batch_prompts``) are
    accepted and ignored, so one set of API flags serves both kinds of model.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 4,
        max_retries: int = 6,
        timeout: float = 120.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        size: tuple[int, int] | str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        random_state: int | None = None,
        sleep: Callable[[float], None] | None = None,
        **ignored_text_options: Any,
    ):
        unknown = sorted(set(ignored_text_options) - TEXT_OPTIONS)
        if unknown:
            raise TypeError(f"ImagesAPIBackend got unexpected keyword argument(s): {', '.join(unknown)}")
        self._store_connection(model, base_url, api_key, api_key_env, concurrency, max_retries, timeout, backoff,
                               max_backoff, cache_dir, use_cache, random_state, model_id=f"openai-images:{model}")
        self.size = size
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.sleep = sleep

    # --------------------------------------------------------------- set-up
    def validate(self) -> "ImagesAPIBackend":
        """Refuse bad settings before any call (InvalidInputError, one line each)."""
        self._validate_connection("openai-images:dall-e-3")
        self.size_text  # checks size
        if self.steps is not None:
            check_int("image steps", self.steps, 1, field="image_steps")
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g)):
            raise InvalidInputError(f"guidance_scale must be a finite number, got {g!r}", field="guidance_scale")
        return self

    @property
    def size_text(self) -> str | None:
        """``size`` as the API writes it, ``"WxH"`` (None when unset)."""
        size = self.size
        if size is None:
            return None
        if isinstance(size, str):
            parts = size.lower().split("x")
            try:
                size = tuple(int(p) for p in parts)
            except ValueError:
                size = ()
        ok = (isinstance(size, (tuple, list)) and len(size) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size))
        if not ok:
            raise InvalidInputError(f"image size must be (width, height) in pixels, two positive integers, got {self.size!r}", field="size")
        return f"{size[0]}x{size[1]}"

    def settings(self) -> dict[str, Any]:
        """The generation settings sent with every prompt (besides the prompt and the seed)."""
        return {"model": self.model, "size": self.size_text, "steps": self.steps, "guidance_scale": self.guidance_scale}

    def body(self, prompt: str, seed: int) -> dict[str, Any]:
        """The request body for one prompt and seed."""
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": 1, "response_format": "b64_json", "seed": int(seed)}
        if self.size is not None:
            body["size"] = self.size_text
        if self.steps is not None:
            body["steps"] = int(self.steps)
        if self.guidance_scale is not None:
            body["guidance_scale"] = float(self.guidance_scale)
        return body

    # ---------------------------------------------------------- generation
    def generate_images(self, prompts: Sequence[str], seed: int) -> list:
        """One image per prompt, each its own request (``concurrency`` in flight), all with
        ``seed``; answers from the cache when they are there."""
        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        bodies = [self.body(p, seed) for p in prompts]
        answers = self.client.post_many(ENDPOINT, bodies, check=self._check)
        return [self._image(answer, body) for answer, body in zip(answers, bodies)]

    def _check(self, answer: dict[str, Any], body: dict[str, Any]) -> None:
        """A new answer must hold a decodable image, or it is not cached (see JSONClient.post)."""
        self._image(answer, body)

    def _image(self, answer: dict[str, Any], body: dict[str, Any]):
        where = f"{self.model_id} at {self.client.base_url}{ENDPOINT}"
        prompt = _short(body.get("prompt", ""))
        try:
            item = answer["data"][0]
        except (KeyError, IndexError, TypeError):
            item = None
        if not isinstance(item, dict):
            raise ModelError(f"{where} returned no image for prompt {prompt} (the answer has no data[0])")
        data = item.get("b64_json")
        if not isinstance(data, str) or not data:
            if item.get("url"):
                raise ModelError(f"{where} returned an image URL instead of image data for prompt {prompt}; gsmile fetches "
                                 f"nothing from elsewhere: use a server that honours response_format=b64_json")
            raise ModelError(f"{where} returned no image for prompt {prompt} (data[0].b64_json is missing or empty)")
        try:
            return decode_png(data)
        except ModelError as exc:
            raise ModelError(f"{where} returned an unreadable image for prompt {prompt}: {exc}") from None

    # ------------------------------------------------------------ reports
    def call_stats(self) -> dict[str, int]:
        """This backend's call counters: totals over every explanation that used it."""
        return self.client.stats.as_dict()

    def explanation_extras(self) -> dict[str, Any]:
        """The settings and the API (not call counts: the backend is shared, so its counts are
        not one explanation's)."""
        cache = None
        if self.use_cache:
            cache = str(self._client.cache.path if self._client is not None and self._client.cache is not None
                        else CallCache(self.cache_dir).path)
        return {"generation": self.settings(),
                "api": {"base_url": self.effective_base_url.rstrip("/"), "endpoint": ENDPOINT, "concurrency": self.concurrency,
                        "cache": cache}}

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                if self._client.cache is not None:
                    self._client.cache.close()


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
