"""A standalone HTML report of an :class:`~gsmile.explanation.Explanation`.

:func:`render_html` returns one HTML5 document as a string: inline CSS, no scripts, no
external resources, so it can be saved and opened anywhere. Every piece of user text
(prompt, context, response, units, response tokens, warnings, model id) is escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (types only: Explanation renders itself in notebooks through render.html)
    from ..explanation import Explanation

import html
import math
import re

import numpy as np

from .palette import ink, mix
from .terminal import INTERACTION_PAIRS, extra_warnings, fidelity_warning, format_coefficient, format_r2, interaction_caption, summary_items

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.5}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.8rem;border-bottom:1px solid #ddd}
.text,.response{white-space:pre-wrap;padding:.6rem .8rem;background:#fafafa;border:1px solid #e3e3e3;border-radius:4px}
.unit{border-radius:3px;padding:0 1px}
table{border-collapse:collapse}
td,th{padding:2px 8px;text-align:left;vertical-align:middle}
.bars td.label{white-space:pre;font-family:ui-monospace,monospace}
.track{width:12rem;height:.9rem;background:#eee;border-radius:2px}
.fill{height:100%;border-radius:2px}
.num{font-family:ui-monospace,monospace;text-align:right}
.warning{color:#8a4b00;background:#fff4e0;border-left:4px solid #e69500;padding:.3rem .6rem;margin:.4rem 0}
.heatmap th.tok{white-space:pre;font-family:ui-monospace,monospace;font-weight:normal;writing-mode:vertical-rl;transform:rotate(180deg)}
.heatmap td.cell{width:1.4rem;height:1.4rem;padding:0;border:1px solid #fff}
.legend span{display:inline-block;padding:0 .5rem;margin-right:.3rem;border-radius:3px}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem}
dl.summary dt{color:#666}dl.summary dd{margin:0}
.hierarchy tr.fine td.label{padding-left:2rem;color:#444}
.hierarchy tr.refined td.label{font-weight:bold}
.insight{background:#eef5ff;border-left:4px solid #3b7dd8;padding:.5rem .8rem}
.images{display:flex;flex-wrap:wrap;gap:1rem}
.images figure{margin:0;text-align:center;font-size:.9rem}
.images img{width:12rem;height:auto;image-rendering:auto;border:1px solid #ddd}
"""


def _e(text: object) -> str:
    """Escape any user text for HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def _style(value: float, strength: float) -> str:
    r, g, b = mix(value, strength)
    return f"background:rgb({r},{g},{b});color:{ink(value, strength)}"


def _unit_title(coefficient: float, score: float) -> str:
    return f"coefficient {format_coefficient(coefficient)}, score {score:.2f}"


def _highlighted_text(exp: Explanation) -> str:
    """The explained text with each unit in a coloured span and the text between kept as written."""
    text = exp.text or ""
    attributions = exp.attributions()
    pieces: list[str] = []
    cursor = 0
    spans_match = all(
        cursor <= a.start <= a.end <= len(text) and text[a.start : a.end] == a.text
        for a in attributions
    ) and all(x.end <= y.start for x, y in zip(attributions, attributions[1:]))
    for a in attributions:
        if spans_match:
            pieces.append(_e(text[cursor : a.start]))
        elif pieces:
            pieces.append(" ")
        pieces.append(
            f'<span class="unit" style="{_style(a.coefficient, a.score)}" '
            f'title="{_e(_unit_title(a.coefficient, a.score))}">{_e(a.text)}</span>'
        )
        cursor = a.end
    if spans_match:
        pieces.append(_e(text[cursor:]))
    return "".join(pieces)


def _bar_rows(exp: Explanation, attributions=None, classes=None) -> str:
    """One bar row per attribution (default: the explanation's units); ``classes``: a CSS
    class per row."""
    attributions = exp.attributions() if attributions is None else attributions
    rows = []
    for a, cls in zip(attributions, classes or [""] * len(attributions)):
        width = min(max(a.score, 0.0), 1.0) * 100 if math.isfinite(a.score) else 0.0
        r, g, b = mix(a.coefficient, 1.0)
        rows.append(
            f'<tr{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><td class="label">{_e(a.text)}</td>'
            f'<td><div class="track"><div class="fill" style="width:{width:.1f}%;background:rgb({r},{g},{b})">'
            f"</div></div></td>"
            f'<td class="num">{a.score:.2f}</td><td class="num">{_e(format_coefficient(a.coefficient))}</td></tr>'
        )
    return "\n".join(rows)


def _levels(exp: Explanation) -> str:
    """A coarse-to-fine explanation's hierarchy: each coarse unit's bar (level 1), and under
    each refined one the bars of its finer units (level 2)."""
    from .terminal import level_caption

    rows, classes = [], []
    for coarse, children in exp.hierarchy():
        rows.append(coarse)
        classes.append("coarse refined" if children else "coarse")
        rows.extend(children)
        classes.extend(["fine"] * len(children))
    captions = "".join(f"<li>{_e(level_caption(level, n))}</li>" for n, level in enumerate(exp.levels, start=1))
    return (
        "<h2>Levels</h2>\n"
        "<p>Coarse units with their level-1 importance; the refined ones are followed by their finer units "
        "(level-2 importance, indented).</p>\n"
        f'<ul class="levels">{captions}</ul>\n'
        '<table class="bars hierarchy"><thead><tr><th>unit</th><th>importance</th><th class="num">score</th>'
        '<th class="num">coefficient</th></tr></thead>\n<tbody>\n' + _bar_rows(exp, rows, classes) + "\n</tbody></table>"
    )


def _interactions(exp: Explanation) -> str:
    """The strongest pairs of ``extras["interactions"]`` as a table."""
    record = exp.extras["interactions"]

    def label(i: int) -> str:
        return _e(exp.units[i].text) if 0 <= i < len(exp.units) else f"#{i}"

    rows = "\n".join(f'<tr><td class="label">{label(p["a"])}</td><td class="label">{label(p["b"])}</td>'
                     f'<td class="num">{_e(format_coefficient(p["value"]))}</td></tr>'
                     for p in record["pairs"][:INTERACTION_PAIRS])
    return (
        "<h2>Interactions</h2>\n"
        f"<p>Pairs of the top units ({_e(interaction_caption(record))}); positive: the pair does more together "
        "than each alone, negative: either one alone does most of it.</p>\n"
        '<table class="interactions"><thead><tr><th>unit</th><th>unit</th><th class="num">interaction</th></tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody></table>"
    )


def _heatmap(exp: Explanation) -> str:
    matrix = np.atleast_2d(np.asarray(exp.token_coefficients, dtype=float))
    n_rows, n_cols = matrix.shape
    tokens = list(exp.response_tokens or [])
    finite = np.abs(matrix[np.isfinite(matrix)])
    scale = float(finite.max()) if finite.size else 0.0
    header = "".join(
        f'<th class="tok" title="token {j}">{_e(tokens[j]) if j < len(tokens) else f"#{j}"}</th>'
        for j in range(n_cols)
    )
    rows = []
    for i in range(n_rows):
        label = exp.units[i].text if i < len(exp.units) else f"#{i}"
        cells = []
        for j in range(n_cols):
            value = float(matrix[i, j])
            strength = abs(value) / scale if scale > 0 and math.isfinite(value) else 0.0
            token = tokens[j] if j < len(tokens) else f"#{j}"
            title = f"{label} → {token}: {format_coefficient(value)}"
            cells.append(f'<td class="cell" style="{_style(value, strength)}" title="{_e(title)}"></td>')
        rows.append(f'<tr><th class="label">{_e(label)}</th>{"".join(cells)}</tr>')
    return (
        "<h2>Per-token attributions</h2>\n"
        "<p>Rows are input units, columns response tokens; colour is the unit's coefficient for "
        "that token's Δ (hover a cell for its value).</p>\n"
        f'<table class="heatmap"><thead><tr><th></th>{header}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _image(data: object, alt: str) -> str:
    """An <img> of base64 PNG data (nothing when the data is not plain base64)."""
    if not isinstance(data, str) or not _BASE64.fullmatch(data):
        return ""
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _images(exp: Explanation) -> str:
    """The original prompt's images, and the images without each top unit, side by side."""
    images = exp.images or {}
    seeds = images.get("seeds") or []
    figures = [f"<figure>{_image(data, f'original, seed {seed}')}<figcaption>original (seed {_e(seed)})</figcaption></figure>"
               for data, seed in zip(images.get("original") or [], seeds)]
    for w in images.get("without") or []:
        first = (w.get("images") or [None])[0]
        distance = w.get("distance")
        d = f"{float(distance):.3f}" if isinstance(distance, (int, float)) else "n/a"
        figures.append(f"<figure>{_image(first, 'without ' + str(w.get('text', '')))}<figcaption>without "
                       f"<strong>{_e(w.get('text', ''))}</strong>: distance {_e(d)}</figcaption></figure>")
    how = f"{len(seeds)} image{'s' if len(seeds) != 1 else ''} per prompt, compared by {images.get('distance')}"
    if len(seeds) > 1:
        how += " (Wasserstein distance between the sets; the first seed's image is shown)"
    return f"<h2>Images</h2>\n<p>{_e(how)}</p>\n<div class=\"images\">{''.join(figures)}</div>"


def render_html(exp: Explanation) -> str:
    """A standalone HTML5 report: highlighted text, response, bars, fidelity, drivers, summary."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>gsmile explanation: {_e(exp.method)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n{_body(exp)}\n</body>\n</html>\n"
    )


def _scoped_css(scope: str) -> str:
    """The report's CSS with every selector inside ``scope`` (a notebook page keeps its own look)."""
    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", _CSS):
        scoped = ",".join(scope if sel.strip() == "body" else f"{scope} {sel.strip()}" for sel in selectors.split(","))
        rules.append(f"{scoped}{{{body}}}")
    return "\n".join(rules)


def render_html_fragment(exp: Explanation) -> str:
    """The report as one <div> with its own scoped style, for a notebook (``_repr_html_``)."""
    return f'<div class="gsmile-report"><style>{_scoped_css(".gsmile-report")}</style>\n{_body(exp)}\n</div>'


def _body(exp: Explanation) -> str:
    is_context = exp.explained == "context"
    parts: list[str] = []
    parts.append(f"<h1>gsmile explanation <small>({_e(exp.method)})</small></h1>")
    if exp.target == "model_output":  # a scalar model: y is the model's output itself
        plus, minus = "positive: raises the output", "negative: lowers it"
    elif exp.target == "contrast":  # y = the change of log p(response) - log p(contrast)
        plus, minus = "positive: favours the response over the contrast", "negative: favours the contrast"
    elif exp.images is not None:  # y = -distance between images
        plus, minus = "positive: holds the images in place", "negative: pulls them away"
    else:  # a language model: y = -Δ, so a positive unit holds the output in place
        plus, minus = "positive: supports this output", "negative: works against it"
    parts.append(
        f'<p class="legend"><span style="{_style(1.0, 0.8)}">{plus}</span>'
        f'<span style="{_style(-1.0, 0.8)}">{minus}</span> intensity = normalized score</p>'
    )
    if is_context:
        parts.append("<h2>Prompt</h2>")
        parts.append(f'<div class="response">{_e(exp.prompt)}</div>')
        parts.append("<h2>Context</h2>")
    else:
        parts.append("<h2>Prompt</h2>")
    parts.append(f'<div class="text">{_highlighted_text(exp)}</div>')

    if exp.response is not None:
        parts.append("<h2>Response</h2>")
        parts.append(f'<div class="response">{_e(exp.response)}</div>')
    if exp.images is not None:
        parts.append(_images(exp))

    parts.append("<h2>Attributions</h2>")
    if exp.units:
        parts.append(
            '<table class="bars"><thead><tr><th>unit</th><th>importance</th><th class="num">score</th>'
            '<th class="num">coefficient</th></tr></thead>\n<tbody>\n' + _bar_rows(exp) + "\n</tbody></table>"
        )
    else:
        parts.append("<p>No units to attribute.</p>")
    if exp.hierarchy():
        parts.append(_levels(exp))
    if exp.extras.get("interactions"):
        parts.append(_interactions(exp))

    parts.append("<h2>Fidelity</h2>")
    held = f" (held out: <strong>{_e(format_r2(exp.held_out_r2))}</strong>)" if exp.held_out_r2 is not None else ""
    parts.append(f"<p>Surrogate fidelity R²: <strong>{_e(format_r2(exp.fidelity_r2))}</strong>{held}</p>")
    problem = fidelity_warning(exp)
    if problem:
        parts.append(f'<p class="warning">Warning: {_e(problem)}</p>')

    top = [a for a in exp.top(3) if a.score > 0]
    parts.append("<h2>Top drivers</h2>")
    if top:
        items = "".join(
            f"<li><strong>{_e(a.text)}</strong> ({a.score:.2f}, {_e(format_coefficient(a.coefficient))})</li>"
            for a in top
        )
        parts.append(f"<ol>{items}</ol>")
    else:
        parts.append("<p>None: every coefficient is zero.</p>")
    parts.append("<h2>Insight</h2>")
    parts.append(f'<p class="insight">{_e(exp.insights)}</p>')

    parts.append("<h2>Method</h2>")
    summary = "".join(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in summary_items(exp))
    parts.append(f'<dl class="summary">{summary}</dl>')

    notes = extra_warnings(exp)
    if notes:
        parts.append("<h2>Warnings</h2>")
        parts.extend(f'<p class="warning">Warning: {_e(note)}</p>' for note in notes)

    if exp.token_coefficients is not None:
        parts.append(_heatmap(exp))

    return "\n".join(parts)
