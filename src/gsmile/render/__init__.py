"""Renderers: turn an :class:`~gsmile.explanation.Explanation` into text, HTML or PNG.

Each renderer is a pure function returning ``str`` or ``bytes``; callers print, save or serve.
matplotlib is imported only when a PNG is rendered.
"""

from __future__ import annotations

from typing import Callable

from .html import render_html, render_html_fragment
from .png import render_png
from .terminal import render_terminal

#: format name -> renderer. CLI choices come from this dict.
RENDERERS: dict[str, Callable] = {
    "terminal": render_terminal,
    "html": render_html,
    "png": render_png,
}

__all__ = ["RENDERERS", "render_html", "render_html_fragment", "render_png", "render_terminal"]
