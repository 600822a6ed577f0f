"""A PNG bar chart of an :class:`~gsmile.explanation.Explanation`'s signed coefficients.

matplotlib is imported inside :func:`render_png`, and only through ``Figure`` and the Agg
canvas: no pyplot, no global figure state, so it is safe in servers and threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (types only: Explanation renders itself in notebooks through render.html)
    from ..explanation import Explanation

import io

import numpy as np

from .palette import NEGATIVE_RGB, POSITIVE_RGB, hex_colour
from .terminal import format_r2, one_line, truncate

POSITIVE_COLOR = hex_colour(POSITIVE_RGB)
NEGATIVE_COLOR = hex_colour(NEGATIVE_RGB)
NEUTRAL_COLOR = "#999999"
#: Longest unit label, in characters, before it is cut with an ellipsis.
MAX_LABEL_CHARS = 24
_MAX_HEIGHT_IN = 60.0


def _label(text: str) -> str:
    # "$" would start matplotlib mathtext; escape it so labels show as written.
    return truncate(one_line(text), MAX_LABEL_CHARS).replace("$", r"\$")


def render_png(exp: Explanation, *, dpi: int = 100) -> bytes:
    """Horizontal signed bars, one per unit in input order (first on top); returns PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    coefficients = np.asarray(exp.coefficients, dtype=float)
    n = len(coefficients)
    height = min(max(2.5, 1.4 + 0.32 * n), _MAX_HEIGHT_IN)
    fig = Figure(figsize=(7.5, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    title = f"{exp.method}: fidelity R² = {format_r2(exp.fidelity_r2)}"
    if not exp.reliable:
        title += " (unreliable)"
    ax.set_title(title.replace("$", r"\$"), fontsize=11)

    if n:
        values = np.where(np.isfinite(coefficients), coefficients, 0.0)
        colors = [POSITIVE_COLOR if c > 0 else NEGATIVE_COLOR if c < 0 else NEUTRAL_COLOR for c in values]
        positions = np.arange(n)
        ax.barh(positions, values, color=colors, height=0.7)
        ax.set_yticks(positions)
        ax.set_yticklabels([_label(u.text) for u in exp.units])
        ax.axvline(0.0, color="#444444", linewidth=0.8)
        limit = float(np.abs(values).max()) if np.abs(values).max() > 0 else 1.0
        ax.set_xlim(-1.1 * limit, 1.1 * limit)
        ax.set_ylim(n - 0.5, -0.5)  # inverted: first unit on top
    else:
        ax.text(0.5, 0.5, "no units", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel(f"signed coefficient (target: {one_line(exp.target)})".replace("$", r"\$"))
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
