"""The diverging colour scale, defined once for every renderer and for the web page.

Blue is a positive coefficient, red a negative one (ColorBrewer RdBu ends); a value is
mixed from white towards its colour by a strength in [0, 1]. The HTML export
(:mod:`gsmile.render.html`) and the PNG use these values directly; the server injects
:func:`scale_js` and :func:`scale_css` into the page's script and stylesheet where their
``gsmile:colour-scale`` markers stand, so the page has no copy of its own.
"""

from __future__ import annotations

import json
import math

POSITIVE_RGB = (33, 102, 172)
NEGATIVE_RGB = (178, 24, 43)
NEUTRAL_RGB = (255, 255, 255)
#: Text on a light cell, and on a cell stronger than INK_THRESHOLD.
DARK_INK = "#1f2328"
LIGHT_INK = "#fff"
INK_THRESHOLD = 0.55

#: The line of static/app.js that the server replaces with :func:`scale_js`.
JS_MARKER = "const SCALE = null; // gsmile:colour-scale"
#: The rule of static/app.css that the server replaces with :func:`scale_css`.
CSS_MARKER = "/* gsmile:colour-scale */"


def mix(value: float, strength: float) -> tuple[int, int, int]:
    """The colour of a signed ``value`` at ``strength`` in [0, 1] (0, or a zero or
    non-finite value: white)."""
    if not math.isfinite(strength) or not math.isfinite(value) or value == 0:
        return NEUTRAL_RGB
    strength = min(max(strength, 0.0), 1.0)
    base = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    # halves round up, as JavaScript's Math.round does (Python's round would go to even)
    return tuple(math.floor(n + (b - n) * strength + 0.5) for n, b in zip(NEUTRAL_RGB, base))  # type: ignore[return-value]


def ink(value: float, strength: float) -> str:
    """The text colour readable on :func:`mix`'s colour."""
    light = math.isfinite(value) and math.isfinite(strength) and value != 0 and strength > INK_THRESHOLD
    return LIGHT_INK if light else DARK_INK


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def scale() -> dict:
    """The scale as JSON-ready data (what the page receives)."""
    return {"positive": list(POSITIVE_RGB), "negative": list(NEGATIVE_RGB), "neutral": list(NEUTRAL_RGB),
            "dark_ink": DARK_INK, "light_ink": LIGHT_INK, "ink_threshold": INK_THRESHOLD}


def scale_js() -> str:
    """The line standing for :data:`JS_MARKER` in the served script."""
    return f"const SCALE = {json.dumps(scale(), sort_keys=True)};"


def scale_css() -> str:
    """The rule standing for :data:`CSS_MARKER` in the served stylesheet."""
    rgb = lambda c: ",".join(map(str, c))  # noqa: E731
    return f":root{{--pos:{rgb(POSITIVE_RGB)};--neg:{rgb(NEGATIVE_RGB)};--ink:{DARK_INK}}}"


def inject(name: str, text: str) -> str:
    """``text`` of the static file ``name`` with its colour-scale marker replaced (other
    files unchanged). Raises ValueError when the marker is missing."""
    marker, value = {"app.js": (JS_MARKER, scale_js), "app.css": (CSS_MARKER, scale_css)}.get(name, (None, None))
    if marker is None:
        return text
    if text.count(marker) != 1:
        raise ValueError(f"static/{name} must hold the marker {marker!r} once")
    return text.replace(marker, value())
