"""Server settings: a pydantic-settings ``BaseSettings`` whose values come from ``GSMILE_*``
environment variables (``env_prefix="GSMILE_"``).

``Settings(...)`` takes the values given and the defaults, nothing else (tests build it
directly); :meth:`Settings.from_env` also reads the environment (the CLI and
:func:`~gsmile.server.create_app` call it), and a bad value fails at start-up with a
message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from ..errors import InvalidInputError, check_int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800
ENV_PREFIX = "GSMILE_"

#: The environment read by the Settings being built (None: none, the constructor's case).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("gsmile_settings_environ", default=None)


def default_jobs_path() -> Path:
    """``jobs.sqlite3`` in the gsmile cache directory (GSMILE_CACHE_DIR or the user cache)."""
    root = os.environ.get("GSMILE_CACHE_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("gsmile")
    return Path(root).expanduser() / "jobs.sqlite3"


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping (``os.environ`` or a test's dict)."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self):
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class Settings(BaseSettings):
    """What the service needs to know; see the README section "Server" for each variable.

    api_key (GSMILE_API_KEY): when set, every ``/v1`` call needs ``Authorization: Bearer <api_key>``.
    cors_origins (GSMILE_CORS_ORIGINS, comma-separated): origins allowed by CORS; empty: no CORS headers at all.
    max_body_bytes: larger request bodies get 413.
    max_concurrent: explanations computed at once.
    max_queue: explanations waiting for a slot; beyond it, 503 with Retry-After.
    retry_after_s (GSMILE_RETRY_AFTER): the Retry-After value sent with that 503.
    max_samples: the most perturbed prompts one explain request may draw in all (``n_samples``
        or ``max_evals``, times ``runs`` or, with ``until_stable``, ``max_rounds``); for
        ``/v1/patch``, the patched runs (components × layers × positions) of one request.
    jobs_path (GSMILE_JOBS_DB): SQLite file keeping jobs and their results across restarts.
    jobs_keep: how many finished jobs the file keeps (the oldest are deleted).
    xai_maxlen: tokens (prompt side + response) of one scoring pass of the analyze score.
    xai_src_chars: context + prompt longer than this is cut from the beginning.
    analyze_min_maxlen: on out-of-memory the pass is retried with half the length, not below this.
    model: the model name used when no model object is given to create_app ("local": SmolLM2).
    device: where that model runs when it is a local one (local, hf:PATH): auto (default: cuda, else
        mps, else cpu), cpu, cuda, cuda:N, mps or auto-map (see :mod:`gsmile.backends.devices`).
    dtype: its precision: float32 (default), bfloat16 or float16 (float16 on a GPU only).
    max_batch_tokens: the most tokens one scoring pass of that model computes (its memory bound;
        default 2048); never changes results.
    max_image_seeds: the most images per prompt (``image_seeds``) one request of a text-to-image
        model may ask for (default 4); each is a generation for every perturbed prompt.
    embedder: how a text-to-image model's images are compared: pixel (default), lpips or
        clip:PATH (a local CLIP directory). A server setting, never a request field, so no
        request makes the server load files from a path of its choosing.
    image_steps: denoising steps of a diffusers:PATH model (default: the pipeline's own).
    image_size (``WxH``, e.g. 512x512): the size of the images of a diffusers:PATH or
        openai-images:NAME model (default: the model's own).

    Each setting's variable is ``GSMILE_`` + its name in capitals unless named above.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
    )

    api_key: str | None = Field(None, repr=False)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1_000_000
    max_concurrent: int = 1
    max_queue: int = 16
    retry_after_s: int = Field(5, validation_alias="GSMILE_RETRY_AFTER")
    max_samples: int = 5000
    jobs_path: Path | None = Field(None, validation_alias="GSMILE_JOBS_DB")
    jobs_keep: int = 1000
    xai_maxlen: int = 512
    xai_src_chars: int = 2400
    analyze_min_maxlen: int = 512
    model: str = "local"
    device: str | None = None
    dtype: str | None = None
    max_batch_tokens: int | None = None
    max_image_seeds: int = 4
    embedder: str = "pixel"
    image_steps: int | None = None
    image_size: str | None = None

    #: lower bounds checked by :meth:`checked`
    MINIMA: ClassVar[dict[str, int]] = {
        "max_body_bytes": 1024, "max_concurrent": 1, "max_queue": 0, "retry_after_s": 1, "max_samples": 10,
        "jobs_keep": 1, "xai_maxlen": 16, "xai_src_chars": 16, "analyze_min_maxlen": 16, "max_batch_tokens": 64,
        "max_image_seeds": 1, "image_steps": 1,
    }

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _MappingEnvSource(settings_cls, environ))

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("jobs_path", mode="after")
    @classmethod
    def _expand(cls, value):
        return None if value is None else Path(value).expanduser()

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of setting ``name``."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else ENV_PREFIX + name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from ``GSMILE_*`` variables (of ``environ``, default ``os.environ``);
        keyword ``overrides`` that are not None win over them."""
        values = {k: v for k, v in overrides.items() if v is not None}
        environ = os.environ if environ is None else environ
        with _reading(environ):
            try:
                settings = cls(**values)
            except ValidationError as exc:
                raise InvalidInputError(_env_message(cls, exc, environ, values), field=_loc_name(cls, exc)) from None
        return settings.checked()

    def checked(self) -> "Settings":
        """Check every value; raises InvalidInputError naming the setting."""
        for name, lo in self.MINIMA.items():
            if getattr(self, name) is not None:  # None: the library's default (max_batch_tokens)
                check_int(f"{name} ({self.env_name(name)})", getattr(self, name), lo, field=name)
        if self.analyze_min_maxlen > self.xai_maxlen:
            self.analyze_min_maxlen = self.xai_maxlen
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        self.cors_origins = [o for o in (self.cors_origins or []) if o]
        if self.jobs_path is None:
            self.jobs_path = default_jobs_path()
        self.jobs_path = Path(self.jobs_path)
        from ..backends.devices import check_device, check_dtype

        for name, check in (("device", check_device), ("dtype", check_dtype)):
            if getattr(self, name) is not None:
                try:
                    setattr(self, name, check(getattr(self, name)))
                except InvalidInputError as exc:
                    raise InvalidInputError(f"{self.env_name(name)}: {exc}", field=name) from None
        from ..backends.images import MAX_IMAGE_SEEDS
        from ..targets.images import make_image_distance

        if self.max_image_seeds > MAX_IMAGE_SEEDS:
            raise InvalidInputError(f"max_image_seeds ({self.env_name('max_image_seeds')}) must be at most {MAX_IMAGE_SEEDS}, "
                                    f"got {self.max_image_seeds}", field="max_image_seeds")
        self.embedder = str(self.embedder).strip() or "pixel"
        try:
            make_image_distance(self.embedder)  # the name's check; a CLIP model loads on first use
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self.env_name('embedder')}: {exc}", field="embedder") from None
        if self.image_size is not None:
            self.image_size = str(self.image_size).strip().lower() or None
            if self.image_size is not None:
                parse_size(self.image_size, self.env_name("image_size"))
        return self

    def image_options(self) -> dict:
        """The generation settings of a text-to-image model given by name (``resolve_model``'s
        ``image_options``): only those set."""
        options = {}
        if self.image_steps is not None:
            options["steps"] = int(self.image_steps)
        if self.image_size is not None:
            options["size"] = parse_size(self.image_size, self.env_name("image_size"))
        return options


def parse_size(value: str, label: str = "image_size") -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``, both from 8 to 4096 pixels; InvalidInputError naming ``label``."""
    width, sep, height = str(value).strip().lower().partition("x")
    if sep and width.strip().isdigit() and height.strip().isdigit():
        size = (int(width), int(height))
        if all(8 <= side <= 4096 for side in size):
            return size
    raise InvalidInputError(f"{label} must be WIDTHxHEIGHT in pixels (8 to 4096 each), e.g. 512x512; got {value!r}",
                            field="image_size")


@contextmanager
def _reading(environ: Mapping[str, str]):
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _loc_name(cls, exc: ValidationError) -> str | None:
    loc = exc.errors()[0].get("loc") or ()
    if not loc:
        return None
    first = str(loc[0])
    by_alias = {f.validation_alias: n for n, f in cls.model_fields.items() if isinstance(f.validation_alias, str)}
    return by_alias.get(first, first)


def _env_message(cls, exc: ValidationError, environ: Mapping[str, str], given: dict) -> str:
    """One line naming the variable (or the option given) and what it must be."""
    err = exc.errors()[0]
    name = _loc_name(cls, exc) or "settings"
    label = name if name in given or name not in cls.model_fields else cls.env_name(name)
    raw = given.get(name, environ.get(label) if label != name else None)
    if err.get("type", "").startswith("int_"):
        return f"{label} must be an integer, got {raw!r}"
    return f"{label}: {err.get('msg', 'invalid value')}, got {raw!r}"
