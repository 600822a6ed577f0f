"""Server settings: constructor arguments, with defaults read from the environment.

Every setting has a ``GSMILE_*`` environment variable; :meth:`Settings.from_env` reads them
once (the CLI and :func:`~gsmile.server.create_app` call it), and a bad value fails at
start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import InvalidInputError, check_int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800


def default_jobs_path() -> Path:
    """``jobs.sqlite3`` in the gsmile cache directory (GSMILE_CACHE_DIR or the user cache)."""
    root = os.environ.get("GSMILE_CACHE_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("gsmile")
    return Path(root).expanduser() / "jobs.sqlite3"


@dataclass
class Settings:
    """What the service needs to know; see the README section "Server" for each variable.

    api_key: when set, every ``/v1`` call needs ``Authorization: Bearer <api_key>``.
    cors_origins: origins allowed by CORS; empty: no CORS headers at all.
    max_body_bytes: larger request bodies get 413.
    max_concurrent: explanations computed at once.
    max_queue: explanations waiting for a slot; beyond it, 503 with Retry-After.
    retry_after_s: the Retry-After value sent with that 503.
    jobs_path: SQLite file keeping jobs and their results across restarts.
    jobs_keep: how many finished jobs the file keeps (the oldest are deleted).
    xai_maxlen: tokens (prompt side + response) of one scoring pass of the analyze score.
    xai_src_chars: context + prompt longer than this is cut from the beginning.
    analyze_min_maxlen: on out-of-memory the pass is retried with half the length, not below this.
    model: the model name used when no model object is given to create_app ("local": SmolLM2).
    """

    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 1_000_000
    max_concurrent: int = 1
    max_queue: int = 16
    retry_after_s: int = 5
    jobs_path: Path | None = None
    jobs_keep: int = 1000
    xai_maxlen: int = 512
    xai_src_chars: int = 2400
    analyze_min_maxlen: int = 512
    model: str = "local"

    #: setting name -> environment variable
    ENV = {
        "api_key": "GSMILE_API_KEY",
        "max_body_bytes": "GSMILE_MAX_BODY_BYTES",
        "max_concurrent": "GSMILE_MAX_CONCURRENT",
        "max_queue": "GSMILE_MAX_QUEUE",
        "retry_after_s": "GSMILE_RETRY_AFTER",
        "jobs_path": "GSMILE_JOBS_DB",
        "jobs_keep": "GSMILE_JOBS_KEEP",
        "xai_maxlen": "GSMILE_XAI_MAXLEN",
        "xai_src_chars": "GSMILE_XAI_SRC_CHARS",
        "analyze_min_maxlen": "GSMILE_ANALYZE_MIN_MAXLEN",
        "model": "GSMILE_MODEL",
    }

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Settings":
        """Settings from ``GSMILE_*`` variables; keyword ``overrides`` win over them."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            if "int" in str(types[name]) and "str" not in str(types[name]):
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise InvalidInputError(f"{var} must be an integer, got {raw!r}") from None
            elif name == "jobs_path":
                values[name] = Path(raw).expanduser()
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).checked()

    def checked(self) -> "Settings":
        """Check every value; raises InvalidInputError naming the setting."""
        for name, lo in (("max_body_bytes", 1024), ("max_concurrent", 1), ("max_queue", 0), ("retry_after_s", 1), ("jobs_keep", 1),
                         ("xai_maxlen", 16), ("xai_src_chars", 16), ("analyze_min_maxlen", 16)):
            check_int(f"{name} ({self.ENV.get(name)})", getattr(self, name), lo)
        if self.analyze_min_maxlen > self.xai_maxlen:
            self.analyze_min_maxlen = self.xai_maxlen
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        self.cors_origins = [o for o in (self.cors_origins or []) if o]
        if self.jobs_path is None:
            self.jobs_path = default_jobs_path()
        self.jobs_path = Path(self.jobs_path)
        return self
