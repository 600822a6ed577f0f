"""Activation patching results (:class:`~gsmile.whitebox.patching.PatchingResult`) as a
standalone HTML document and as a compact text heatmap for a terminal.

One heatmap per patched component: layers as rows, positions of the formatted prompt as
columns, each cell coloured by the share of the clean answer's log p it restores on the
house diverging scale (:mod:`.palette`: blue restores, red pushes further away; full colour
at a share of 1 or -1). Every piece of user text (prompts, tokens, answer, model id) is escaped.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from .palette import ink, mix

if TYPE_CHECKING:
    from ..whitebox.patching import PatchingResult

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.5}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.8rem;border-bottom:1px solid #ddd}
.text{white-space:pre-wrap;padding:.4rem .8rem;background:#fafafa;border:1px solid #e3e3e3;border-radius:4px}
.scroll{overflow-x:auto}
table{border-collapse:collapse}
.patching th{font-weight:normal;font-family:ui-monospace,monospace;font-size:.8rem}
.patching th.tok{white-space:pre;writing-mode:vertical-rl;transform:rotate(180deg);padding:2px 0;vertical-align:bottom}
.patching th.tok.template{color:#999}
.patching th.tok.changed{font-weight:bold}
.patching th.layer{text-align:right;padding-right:.4rem}
.patching td.cell{width:1.3rem;min-width:1.3rem;height:1.1rem;padding:0;border:1px solid #fff;font-size:.55rem;text-align:center;font-family:ui-monospace,monospace}
.legend span{display:inline-block;padding:0 .5rem;margin-right:.3rem;border-radius:3px}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem}
dl.summary dt{color:#666}dl.summary dd{margin:0}
.warning{color:#8a4b00;background:#fff4e0;border-left:4px solid #e69500;padding:.3rem .6rem;margin:.4rem 0}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _style(value: float) -> str:
    strength = min(abs(value), 1.0) if math.isfinite(value) else 0.0
    r, g, b = mix(value, strength)
    return f"background:rgb({r},{g},{b});color:{ink(value, strength)}"


def _visible(token: str) -> str:
    """A token with its line breaks and tabs shown as escapes (a header cell is one line)."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _heatmap(result: PatchingResult, component: str) -> str:
    from ..whitebox.patching import COMPONENT_LABELS

    matrix = result.values[component]
    n = len(result.tokens)
    header = []
    for j in range(n):
        classes = ["tok", result.kinds[j]]
        if result.tokens[j] != result.corrupted_tokens[j]:
            classes.append("changed")
        title = f"position {j} ({result.kinds[j]}): {result.label(j)!r}"
        header.append(f'<th class="{" ".join(classes)}" title="{_e(title)}">{_e(_visible(result.label(j)))}</th>')
    rows = []
    for i, layer in enumerate(result.layers):
        cells = []
        for j in range(n):
            value = float(matrix[i, j])
            shown = f"{value:.2f}" if math.isfinite(value) else "nan"
            note = "" if j >= result.first_patched else " (same tokens before here: not run)"
            title = f"layer {layer}, position {j} {result.label(j)!r}: restored {shown}{note}"
            cells.append(f'<td class="cell" style="{_style(value)}" title="{_e(title)}"></td>')
        rows.append(f'<tr><th class="layer">{layer}</th>{"".join(cells)}</tr>')
    top = "".join(f"<li>layer {layer}, position {j} <code>{_e(_visible(result.label(j)))}</code>: {value:.2f}</li>"
                  for layer, j, value in result.top(component, 5))
    return (
        f"<h2>{_e(component)}: {_e(COMPONENT_LABELS.get(component, component))}</h2>\n"
        f'<div class="scroll"><table class="patching" data-component="{_e(component)}"><thead><tr><th></th>{"".join(header)}</tr></thead>\n'
        "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>\n"
        f"<p>Largest shares:</p><ol>{top}</ol>"
    )


def render_patching_html(result: PatchingResult) -> str:
    """A standalone HTML5 document: the prompts, the answer and its log p's, one heatmap per
    component (hover a cell for its value), how it was computed."""
    legend = (f'<p class="legend"><span style="{_style(1.0)}">1: restores the clean answer</span>'
              f'<span style="{_style(0.0)}">0: no effect</span>'
              f'<span style="{_style(-1.0)}">-1: pushes further away</span> '
              "Grey column headers are template tokens (system prompt, chat markup); bold ones differ between the prompts.</p>")
    answer = f"{result.answer!r} ({'the clean prompt’s greedy next token' if result.answer_source == 'greedy' else 'given'}"
    answer += f", {len(result.answer_ids)} token{'s' if len(result.answer_ids) != 1 else ''})"
    summary = [
        ("model", result.model_id),
        ("answer", answer),
        ("log p clean", f"{result.clean_logp:.4f}"),
        ("log p corrupted", f"{result.corrupted_logp:.4f}"),
        ("layers", f"{len(result.layers)} ({result.layers[0]}–{result.layers[-1]})" if result.layers else "0"),
        ("positions", f"{len(result.tokens)}; runs start at position {result.first_patched} (the first that differs)"),
        ("patched runs", f"{result.n_patched} in {result.n_forward} forward passes, {result.seconds:.1f} s"),
    ]
    parts = [
        "<h1>gsmile activation patching</h1>",
        "<p>Each cell: the share of the clean answer’s log p restored when the corrupted run gets the clean run’s "
        "activation at that layer and position: (log p patched − log p corrupted) / (log p clean − log p corrupted).</p>",
        "<h2>Clean prompt</h2>", f'<div class="text">{_e(result.clean)}</div>',
        "<h2>Corrupted prompt</h2>", f'<div class="text">{_e(result.corrupted)}</div>',
        f'<dl class="summary">{"".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in summary)}</dl>',
    ]
    parts.extend(f'<p class="warning">Warning: {_e(w)}</p>' for w in result.warnings)
    parts.append(legend)
    parts.extend(_heatmap(result, c) for c in result.components)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>gsmile activation patching</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def render_patching_text(result: PatchingResult, width: int = 6) -> str:
    """A compact text heatmap per component: layers as rows, the positions from the user's text
    on as columns (template tokens in [brackets]), shares with two decimals."""
    from ..whitebox.patching import COMPONENT_LABELS
    from .terminal import sanitize

    cols = result.shown_positions()
    answer = sanitize(_visible(result.answer))
    source = "greedy next token of the clean prompt" if result.answer_source == "greedy" else "given"
    lines = [
        f"Answer: {answer!r} ({source}); log p clean {result.clean_logp:.3f}, corrupted {result.corrupted_logp:.3f} "
        f"(difference {result.difference:.3f})",
    ]
    for w in result.warnings:
        lines.append(f"Warning: {w}")
    hidden = cols[0] if cols else 0
    if hidden:
        lines.append(f"Positions 0-{hidden - 1} (template before the user's text) are the same in both prompts: nothing to "
                     "restore there, not shown.")

    def label(j: int) -> str:
        text = sanitize(_visible(result.label(j)).strip() or _visible(result.label(j)))
        return f"[{text}]" if result.kinds[j] == "template" else text

    labels = [label(j) for j in cols]
    widths = [max(width, len(t) + 1) for t in labels]
    for component in result.components:
        matrix = result.values[component]
        lines.append("")
        lines.append(f"{component}: {COMPONENT_LABELS.get(component, component)} (share of the answer's log p restored)")
        lines.append("layer" + "".join(t.rjust(w) for t, w in zip(labels, widths)))
        for i, layer in enumerate(result.layers):
            cells = []
            for j, w in zip(cols, widths):
                value = float(matrix[i, j])
                cells.append((f"{value:.2f}" if math.isfinite(value) else "nan").rjust(w))
            lines.append(str(layer).rjust(5) + "".join(cells))
    lines.append("")
    lines.append(f"{result.n_patched} patched runs in {result.n_forward} forward passes ({result.seconds:.1f} s)")
    return "\n".join(lines)
