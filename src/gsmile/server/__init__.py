"""``gsmile serve``: an HTTP API and a web page over the library (needs the ``serve`` extra:
``pip install 'gsmile[serve]'``). FastAPI is imported only when :func:`create_app` runs."""

from __future__ import annotations

from .settings import Settings


def create_app(settings: Settings | None = None, model=None):
    from .app import create_app as _create_app

    return _create_app(settings, model)


__all__ = ["Settings", "create_app"]
