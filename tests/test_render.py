"""Renderers: terminal text, standalone HTML and PNG, on hand-built explanations (no model)."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys

import numpy as np
import pytest

from gsmile.explanation import Explanation
from gsmile.render import RENDERERS, render_html, render_png, render_terminal
from gsmile.units import Segmentation

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BAR = re.compile(r"([█░]+) (\d\.\d\d|nan) \(")
XSS = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make(prompt="The capital of France is historically Paris", coefficients=None, r2=0.87, **kw):
    units = Segmentation.from_text(prompt, "word").units
    if coefficients is None:
        coefficients = np.linspace(1.0, -0.5, len(units))
    kw.setdefault("response", "Paris.")
    kw.setdefault("model_id", "test-model")
    return Explanation(
        prompt=prompt,
        units=units,
        coefficients=np.asarray(coefficients, dtype=float),
        intercept=0.0,
        fidelity_r2=r2,
        n_samples=200,
        n_unique=57,
        sigma=1.5,
        effective_sample_size=42.3,
        timings={"total": 3.25},
        **kw,
    )


def bar_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if BAR.search(line)]


# ------------------------------------------------------------------ terminal
def test_terminal_one_bar_line_per_unit_in_input_order():
    exp = make(coefficients=[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, -0.7])
    out = render_terminal(exp)
    lines = bar_lines(out)
    assert [line.split()[0] for line in lines] == [u.text for u in exp.units]
    assert out.splitlines()[0] == "Response: Paris."


def test_terminal_bar_fill_matches_score():
    # scores |c| / max|c|: 1.0, 0.5, 0.0, 0.25 (rounded half up -> 3), 0.74 -> 7
    exp = make("alpha beta gamma delta epsilon", coefficients=[1.0, -0.5, 0.0, 0.25, 0.74])
    lines = bar_lines(render_terminal(exp, bar_width=10))
    fills = [line.count("█") for line in lines]
    assert fills == [10, 5, 0, 3, 7]
    assert all(line.count("█") + line.count("░") == 10 for line in lines)
    assert [BAR.search(line).group(2) for line in lines] == ["1.00", "0.50", "0.00", "0.25", "0.74"]
    assert "(+1)" in lines[0] and "(-0.5)" in lines[1]
    wide = bar_lines(render_terminal(exp, bar_width=20))
    assert [line.count("█") for line in wide] == [20, 10, 0, 5, 15]


def test_terminal_labels_are_padded_and_truncated():
    long_word = "a" * 40
    exp = make(f"short {long_word} mid")
    lines = bar_lines(render_terminal(exp))
    starts = {line.index(BAR.search(line).group(1)) for line in lines}
    assert len(starts) == 1  # bars aligned
    assert ("a" * 23 + "…") in lines[1] and long_word not in lines[1]


def test_terminal_fidelity_line_and_warning_only_when_unreliable():
    good = render_terminal(make(r2=0.87))
    assert "Surrogate fidelity R²: 0.87" in good
    assert not any(line.startswith("Warning:") for line in good.splitlines())

    bad = render_terminal(make(r2=0.42))
    assert "Surrogate fidelity R²: 0.42" in bad
    warnings = [line for line in bad.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "0.7" in warnings[0] and "unreliable" in warnings[0]

    edge = render_terminal(make(r2=0.7))
    assert not any(line.startswith("Warning:") for line in edge.splitlines())


def test_terminal_nan_fidelity_says_output_did_not_change():
    out = render_terminal(make(r2=float("nan")))
    assert "Surrogate fidelity R²: undefined" in out
    warnings = [line for line in out.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "did not change" in warnings[0]


def test_terminal_top_drivers_in_score_order():
    exp = make("capital France historically of", coefficients=[1.0, -0.95, 0.63, 0.1])
    out = render_terminal(exp)
    assert "Top 3 drivers: capital (1.00), France (0.95), historically (0.63)" in out.splitlines()
    assert "Top 2 drivers: capital (1.00), France (0.95)" in render_terminal(exp, top_k=2)


def test_terminal_summary_and_extra_warnings():
    exp = make(warnings=["effective sample size 3.0 is low"])
    lines = render_terminal(exp).splitlines()
    summary = [line for line in lines if line.startswith("method: gsmile")]
    assert len(summary) == 1
    for piece in ("target: wasserstein", "samples: 200 (57 evaluated)", "σ: 1.5",
                  "effective sample size: 42.3", "time: 3.2 s", "model: test-model"):
        assert piece in summary[0]
    assert lines[-1] == "Warning: effective sample size 3.0 is low"


def test_terminal_fidelity_note_from_explainer_is_not_repeated():
    note = "surrogate fidelity R² 0.42 is below 0.7: the linear surrogate explains the model poorly"
    out = render_terminal(make(r2=0.42, warnings=[note]))
    assert sum(line.startswith("Warning:") for line in out.splitlines()) == 1


def test_terminal_color_codes_only_when_asked():
    exp = make(coefficients=[1.0, -1.0, 0.5, 0.2, -0.1, 0.3, 0.0], r2=0.3, warnings=["note"])
    plain = render_terminal(exp, color=False)
    assert "\x1b" not in plain
    colored = render_terminal(exp, color=True)
    codes = set(ANSI.findall(colored))
    assert "\x1b[94m" in codes and "\x1b[91m" in codes  # positive and negative differ
    assert ANSI.sub("", colored) == plain


def test_terminal_neutralizes_escape_sequences_in_user_text():
    exp = make("hello \x1b[31mred world", response="bye \x1b[2J")
    out = render_terminal(exp, color=False)
    assert "\x1b" not in out and "\\x1b" in out


def test_terminal_context_mode_shows_prompt():
    context = "Paris is in France. Berlin is in Germany."
    units = Segmentation.from_text(context, "sentence").units
    exp = Explanation(
        prompt="Where is Paris?", response="France.", units=units, coefficients=[0.9, 0.1],
        intercept=0.0, fidelity_r2=0.9, explained="context", context=context, unit_type="sentence",
    )
    lines = render_terminal(exp).splitlines()
    assert lines[0] == "Prompt: Where is Paris?" and lines[1] == "Response: France."
    assert len(bar_lines("\n".join(lines))) == 2


# ---------------------------------------------------------------------- html
def test_html_is_standalone_document():
    doc = render_html(make())
    assert doc.startswith("<!DOCTYPE html>")
    assert "</html>" in doc
    assert "<script" not in doc and "http://" not in doc and "https://" not in doc
    assert "Surrogate fidelity R²" in doc and "0.87" in doc


def test_html_escapes_every_user_text():
    from gsmile.units import Unit

    prompt = f"Say {XSS} now & then"
    start = prompt.index(XSS)
    units = [Unit("Say", 0, 3), Unit(XSS, start, start + len(XSS)), Unit("now", prompt.index("now"), prompt.index("now") + 3)]
    exp = Explanation(
        prompt=prompt, response=f"reply {XSS}", units=units, coefficients=[0.2, 1.0, -0.4],
        intercept=0.0, fidelity_r2=0.3, response_tokens=["ok", XSS, 'q"uote'],
        token_coefficients=np.ones((3, 3)), warnings=[f"warn {XSS}"], model_id=f'm"{XSS}',
    )
    doc = render_html(exp)
    assert XSS not in doc
    assert "<script" not in doc
    escaped = html.escape(XSS)
    # prompt span, bar table, top drivers, heatmap row and column, response, warning, model id
    assert doc.count(escaped) >= 8
    assert f'title="coefficient +1, score 1.00">{escaped}</span>' in doc
    assert 'q"uote' not in doc and "q&quot;uote" in doc
    assert "now</span> &amp; then" in doc
    assert f"reply {escaped}" in doc and f"warn {escaped}" in doc and f"m&quot;{escaped}" in doc


def test_html_units_are_spans_and_text_between_is_kept():
    prompt = "The capital,  of France?"
    exp = make(prompt, coefficients=[0.5, 1.0, -0.2, 0.0])
    doc = render_html(exp)
    text_div = re.search(r'<div class="text">(.*?)</div>', doc, re.S).group(1)
    spans = re.findall(r'<span class="unit" style="([^"]*)" title="([^"]*)">([^<]*)</span>', text_div)
    assert [s[2] for s in spans] == ["The", "capital", "of", "France"]
    assert re.sub(r"<[^>]+>", "", text_div) == prompt  # the gaps are kept exactly
    assert "coefficient +1, score 1.00" in spans[1][1]
    assert "coefficient -0.2, score 0.20" in spans[2][1]
    # diverging: positive and negative units get different hues; zero is white
    assert spans[1][0] != spans[2][0] and "rgb(255,255,255)" in spans[3][0]


def test_html_bar_table_in_input_order():
    exp = make(coefficients=[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, -0.7])
    doc = render_html(exp)
    labels = re.findall(r'<td class="label">([^<]*)</td>', doc)
    assert labels == [u.text for u in exp.units]


def test_html_warning_and_heatmap_presence():
    assert "Warning:" not in render_html(make(r2=0.9))
    assert "Warning:" in render_html(make(r2=0.5))
    assert "did not change" in render_html(make(r2=float("nan")))

    assert 'class="heatmap"' not in render_html(make())
    n = len(make().units)
    exp = make(response_tokens=["Par", "is", "."], token_coefficients=np.arange(n * 3).reshape(n, 3) - 4.0)
    doc = render_html(exp)
    assert 'class="heatmap"' in doc
    heat = doc[doc.index('class="heatmap"'):]
    assert heat.count('class="cell"') == n * 3
    assert heat.count('<th class="tok"') == 3


# ----------------------------------------------------------------------- png
def decode_png(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def test_png_bytes_decode_to_plausible_image():
    data = render_png(make())
    assert data.startswith(PNG_MAGIC)
    image = decode_png(data)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert 200 <= width <= 2000 and 200 <= height <= 2000


def test_png_dpi_scales_image_and_height_grows_with_units():
    small = decode_png(render_png(make(), dpi=50)).shape
    large = decode_png(render_png(make(), dpi=100)).shape
    assert large[1] == pytest.approx(2 * small[1], abs=2)
    many = make(" ".join(f"w{i}" for i in range(30)))
    assert decode_png(render_png(many)).shape[0] > large[0]


def test_png_labels_with_dollar_signs_do_not_break_mathtext():
    text = "It costs $5. Or $10 today. A $x$ here."
    units = Segmentation.from_text(text, "sentence").units
    assert [u.text for u in units] == ["It costs $5.", "Or $10 today.", "A $x$ here."]
    exp = Explanation(text, None, units, [1.0, -0.5, 0.2], 0.0, 0.9)
    assert decode_png(render_png(exp)).shape[0] > 0


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this gsmile; return its stdout."""
    import os

    import gsmile

    src = os.path.dirname(os.path.dirname(gsmile.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_render_png_uses_no_pyplot():
    code = (
        "import sys\n"
        "from gsmile.explanation import Explanation\n"
        "from gsmile.units import Segmentation\n"
        "from gsmile.render import render_png\n"
        "units = Segmentation.from_text('a b c').units\n"
        "render_png(Explanation('a b c', None, units, [1.0, -1.0, 0.5], 0.0, 0.9))\n"
        "print('matplotlib.pyplot' in sys.modules, 'matplotlib.figure' in sys.modules)"
    )
    assert run_python(code) == "False True"


def test_importing_render_does_not_load_matplotlib():
    assert run_python("import sys, gsmile.render; print('matplotlib' in sys.modules)") == "False"


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("name", sorted(RENDERERS))
@pytest.mark.parametrize(
    "exp_kwargs",
    [dict(r2=float("nan")), dict(coefficients=np.zeros(7), r2=float("nan")), dict(coefficients=np.zeros(7))],
    ids=["nan-r2", "zeros-nan", "zeros"],
)
def test_every_renderer_handles_nan_fidelity_and_zero_coefficients(name, exp_kwargs):
    exp = make(**exp_kwargs)
    out = RENDERERS[name](exp)
    assert isinstance(out, bytes if name == "png" else str) and len(out) > 0
    if name == "terminal":
        assert len(bar_lines(out)) == 7
        if not exp.coefficients.any():
            assert all(line.count("█") == 0 for line in bar_lines(out))
            assert "Top drivers: none" in out
    if name == "png":
        assert out.startswith(PNG_MAGIC)


def test_registry_is_explicit():
    assert RENDERERS == {"terminal": render_terminal, "html": render_html, "png": render_png}
