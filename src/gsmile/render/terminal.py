"""Plain-text rendering of an :class:`~gsmile.explanation.Explanation` for a terminal.

:func:`render_terminal` returns a string; the caller prints it. The formatting helpers
here (coefficient format, fidelity message, text sanitizing) are shared with the HTML
and PNG renderers so that every output says the same thing the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (types only: Explanation renders itself in notebooks through render.html)
    from ..explanation import Explanation

import math
import re
import unicodedata

FILLED = "█"
EMPTY = "░"
ELLIPSIS = "…"
#: Unit texts longer than this many display cells are truncated with an ellipsis.
MAX_LABEL_WIDTH = 24

# ANSI SGR codes: bright blue for positive coefficients, bright red for negative ones.
_POSITIVE = "\x1b[94m"
_NEGATIVE = "\x1b[91m"
_BOLD = "\x1b[1m"
_YELLOW = "\x1b[33m"
_RESET = "\x1b[0m"

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s+")


# ------------------------------------------------------------- shared helpers
def format_coefficient(value: float) -> str:
    """Signed, compact: ``+0.0645``, ``-1.2``, ``+3.4e-05``, ``nan``."""
    value = float(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("+inf" if value > 0 else "-inf")
    if value == 0:
        return "+0"
    return f"{value:+.3g}"


def format_r2(r2: float) -> str:
    """The fidelity R² with 2 decimals, or ``undefined`` for NaN."""
    r2 = float(r2)
    return f"{r2:.2f}" if math.isfinite(r2) else "undefined"


def fidelity_line(exp: Explanation) -> str:
    """``Surrogate fidelity R²: 0.94 (held out: 0.88)`` (the held-out figure when there is one)."""
    if exp.params.get("white_box"):
        completeness, conservation = exp.extras.get("completeness"), exp.extras.get("conservation")
        check = (f"completeness error {float(completeness['relative_error']):.2%}" if completeness
                 else f"relevance conserved at {float(conservation['ratio']):.0%} of the explained logits" if conservation
                 else "no check of its own; measure it with gsmile evaluate")
        return f"No surrogate (white-box method): {check}"
    held = f" (held out: {format_r2(exp.held_out_r2)})" if exp.held_out_r2 is not None else ""
    return f"Surrogate fidelity R²: {format_r2(exp.fidelity_r2)}{held}"


def fidelity_warning(exp: Explanation) -> str | None:
    """Why the scores should not be trusted (every reason, see
    :attr:`Explanation.reliability_issues`), or None when nothing speaks against them."""
    issues = exp.reliability_issues
    return "; ".join(issues) + ": the scores are unreliable" if issues else None


def extra_warnings(exp: Explanation) -> list[str]:
    """``exp.warnings`` without the fidelity notes that :func:`fidelity_warning` already says."""
    if exp.reliable:
        return list(exp.warnings)
    return [w for w in exp.warnings if not _is_fidelity_note(w)]


#: Pairs of ``extras["interactions"]`` the terminal and HTML outputs list.
INTERACTION_PAIRS = 5


def interaction_caption(record: dict) -> str:
    """``k-SII, top-3 units, exact, 8 evaluations (5 new)``."""
    how = "exact" if record.get("exact") else "estimated"
    new = f" ({record['n_new']} new)" if "n_new" in record else ""
    return f"{record['index']}, top-{len(record['units'])} units, {how}, {record['n_evals']} evaluations{new}"


def interaction_lines(exp: Explanation, limit: int = INTERACTION_PAIRS) -> list[str]:
    """The strongest pairs of ``extras["interactions"]``, one line each under a caption (none
    when the explanation has no interactions)."""
    record = exp.extras.get("interactions")
    if not record:
        return []

    def label(i: int) -> str:
        return repr(truncate(one_line(exp.units[i].text), 30)) if 0 <= i < len(exp.units) else f"#{i}"

    lines = [f"Interactions ({interaction_caption(record)}; positive: the pair does more together than each alone):"]
    lines.extend(f"  {label(p['a'])} × {label(p['b'])} {format_coefficient(p['value'])}" for p in record["pairs"][:limit])
    return lines


def _is_fidelity_note(note: str) -> bool:
    return "fidelity R²" in note or "output did not change" in note


def summary_items(exp: Explanation) -> list[tuple[str, str]]:
    """(label, value) pairs describing how the explanation was computed."""
    items = [("method", exp.method), ("target", exp.target), ("unit", exp.unit_type)]
    samples = f"{int(exp.n_samples)}"
    if exp.n_unique:
        samples += f" ({int(exp.n_unique)} evaluated)"
    items.append(("samples", samples))
    if exp.sigma is not None and math.isfinite(float(exp.sigma)):
        items.append(("σ", f"{float(exp.sigma):.3g}"))
    ess = exp.effective_sample_size
    if ess is not None and math.isfinite(float(ess)):
        items.append(("effective sample size", f"{float(ess):.1f}"))
    total = exp.timings.get("total") if exp.timings else None
    if total is not None and math.isfinite(float(total)):
        items.append(("time", f"{float(total):.1f} s"))
    peak = exp.timings.get("peak_rss_mb") if exp.timings else None
    if peak is not None and math.isfinite(float(peak)):
        items.append(("peak memory", f"{float(peak) / 1024:.2f} GB (the process's)"))
    if exp.model_id:
        items.append(("model", exp.model_id))
    return items


def image_line(exp: Explanation) -> str:
    """What an image explanation compared, and how far removing each top unit moved the images."""
    images = exp.images or {}
    seeds = images.get("seeds") or []
    how = (f"{len(seeds)} image{'s' if len(seeds) != 1 else ''} per prompt (seed{'s' if len(seeds) != 1 else ''} "
           f"{', '.join(str(s) for s in seeds)}), compared by {images.get('distance')}"
           + (" (Wasserstein between the sets)" if len(seeds) > 1 else ""))
    moved = "; ".join(f"without {one_line(str(w.get('text', '')))}: {float(w.get('distance', float('nan'))):.3f}" for w in images.get("without") or [])
    return f"Images: {how}" + (f"; distance {moved}" if moved else "") + " (--html shows them)"


def one_line(text: str) -> str:
    """Collapse whitespace runs (line breaks included) to one space; make control characters visible."""
    return sanitize(_WHITESPACE.sub(" ", text).strip())


def sanitize(text: str) -> str:
    """Replace control characters other than tab and line feed by a visible ``\\xNN`` escape.

    This keeps escape sequences in user text (prompt, response, units) from reaching the terminal.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def display_width(text: str) -> int:
    """Terminal cells taken by ``text``: wide East Asian characters count 2, combining marks 0."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def truncate(text: str, limit: int = MAX_LABEL_WIDTH) -> str:
    """``text`` cut to at most ``limit`` display cells, ending with … when cut."""
    if display_width(text) <= limit:
        return text
    out, width = [], 0
    for ch in text:
        w = display_width(ch)
        if width + w > limit - 1:
            break
        out.append(ch)
        width += w
    return "".join(out) + ELLIPSIS


def filled_cells(score: float, width: int) -> int:
    """Cells of a ``width``-cell bar to fill for a score in [0, 1] (rounded half up)."""
    score = float(score)
    if not math.isfinite(score):
        return 0
    score = min(max(score, 0.0), 1.0)
    return int(math.floor(score * width + 0.5))


def level_caption(level: dict, number: int) -> str:
    """``Level 1: 20 sentence units, fidelity R² 0.97, 75 model evaluations``."""
    return (f"Level {number}: {len(level['units'])} {level['unit_type']} units, fidelity R² "
            f"{format_r2(float('nan') if level.get('fidelity_r2') is None else level['fidelity_r2'])}, "
            f"{int(level.get('n_evals', 0))} model evaluations")


def hierarchy_lines(exp: Explanation, tree, bar_line) -> list[str]:
    """A coarse-to-fine explanation: every coarse unit with its level-1 bar, the refined ones
    followed by their finer units (level-2 bars) indented under them."""
    lines = [level_caption(level, n) for n, level in enumerate(exp.levels, start=1)]
    labels = [truncate(one_line(a.text)) for a, _ in tree]
    child_labels = [["  └ " + truncate(one_line(c.text), MAX_LABEL_WIDTH - 4) for c in children] for _, children in tree]
    pad = max(display_width(label) for label in labels + [c for cs in child_labels for c in cs])
    for (a, children), label, kids in zip(tree, labels, child_labels):
        lines.append(bar_line(a, label, pad) + (f"  refined into {len(children)} {exp.levels[-1]['unit_type'].split('>')[-1]} units"
                                                if children else ""))
        lines.extend(bar_line(c, kid, pad) for c, kid in zip(children, kids))
    return lines


# ------------------------------------------------------------------ renderer
def render_terminal(exp: Explanation, *, color: bool = False, bar_width: int = 10, top_k: int = 3) -> str:
    """The explanation as text: response, one bar per unit, fidelity, top drivers, summary, warnings.

    ``color`` adds ANSI colours (positive coefficients blue, negative red); without it the
    output holds no escape codes at all. ``bar_width`` is the number of cells of each bar.
    """
    bar_width = max(int(bar_width), 1)

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color and code else text

    lines: list[str] = []
    if exp.explained == "context":
        lines.append(f"Prompt: {sanitize(exp.prompt)}")
    if exp.response is not None:
        lines.append(f"Response: {sanitize(exp.response)}")

    def bar_line(a, label: str, pad: int) -> str:
        filled = filled_cells(a.score, bar_width)
        bar = FILLED * filled + EMPTY * (bar_width - filled)
        score = f"{a.score:.2f}" if math.isfinite(a.score) else " nan"
        sign = _POSITIVE if a.coefficient > 0 else _NEGATIVE if a.coefficient < 0 else ""
        label = label + " " * (pad - display_width(label))
        return f"{label} {paint(bar, sign)} {score} {paint(f'({format_coefficient(a.coefficient)})', sign)}"

    tree = exp.hierarchy()
    attributions = exp.attributions()
    if tree:
        lines.extend(hierarchy_lines(exp, tree, bar_line))
    elif attributions:
        labels = [truncate(one_line(a.text)) for a in attributions]
        pad = max(display_width(label) for label in labels)
        lines.extend(bar_line(a, label, pad) for a, label in zip(attributions, labels))
    else:
        lines.append("(no units to attribute)")

    lines.append(fidelity_line(exp))
    problem = fidelity_warning(exp)
    if problem:
        lines.append(paint(f"Warning: {problem}", _YELLOW))

    top = exp.top(top_k)
    if top and any(a.score > 0 for a in top):
        drivers = ", ".join(f"{one_line(a.text)} ({a.score:.2f})" for a in top if a.score > 0)
        count = sum(1 for a in top if a.score > 0)
        lines.append(f"Top {count} driver{'s' if count != 1 else ''}: {drivers}")
    else:
        lines.append("Top drivers: none (every coefficient is zero)")

    if exp.images is not None:
        lines.append(image_line(exp))
    lines.append(f"Insight: {one_line(exp.insights)}")
    lines.append(" | ".join(f"{label}: {one_line(str(value))}" for label, value in summary_items(exp)))

    for note in extra_warnings(exp):
        lines.append(paint(f"Warning: {sanitize(note)}", _YELLOW))
    return "\n".join(lines)
