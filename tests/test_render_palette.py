"""One colour scale (gsmile.render.palette) for the HTML export and the web page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources

import pytest

from gsmile.render import palette
from gsmile.render.html import render_html

VALUES = [(v, s) for v in (-2.0, -0.3, 0.0, 0.4, 1.0, float("nan")) for s in (0.0, 0.1, 0.25, 0.5, 0.55, 0.56, 0.75, 1.0, 1.7, -0.2)]


def _source(name: str) -> str:
    return resources.files("gsmile.server").joinpath("static", name).read_text()


def test_the_page_sources_hold_no_copy_of_the_scale():
    for name, marker in (("app.js", palette.JS_MARKER), ("app.css", palette.CSS_MARKER)):
        text = _source(name)
        assert text.count(marker) == 1
        for rgb in (palette.POSITIVE_RGB, palette.NEGATIVE_RGB):
            assert not re.search(r"\b" + r"\s*,\s*".join(map(str, rgb)) + r"\b", text), (name, rgb)


def test_the_served_page_gets_the_scale_injected(tmp_path):
    from server_client import AppFactory

    factory = AppFactory(tmp_path, lambda: (lambda texts: [0.0] * len(texts)))
    try:
        api = factory()
        script = api.get("/static/app.js").text
        style = api.get("/static/app.css").text
    finally:
        factory.close()
    line = next(l for l in script.splitlines() if l.startswith("const SCALE ="))
    assert json.loads(line[len("const SCALE ="):].strip().rstrip(";")) == palette.scale()
    assert palette.JS_MARKER not in script and palette.scale_css() in style


def test_the_export_uses_the_scale(monkeypatch):
    from gsmile import explain

    exp = explain("alpha bravo charlie delta", model=lambda texts: [float("alpha" in t) - float("bravo" in t) for t in texts],
                  n_samples=50, random_state=0)
    blue = "rgb({},{},{})".format(*palette.POSITIVE_RGB)
    assert blue in render_html(exp)
    monkeypatch.setattr(palette, "POSITIVE_RGB", (1, 2, 3))
    monkeypatch.setattr(palette, "DARK_INK", "#012345")
    after = render_html(exp)
    assert "rgb(1,2,3)" in after and "#012345" in after and blue not in after


def test_halves_round_up_as_in_javascript():
    assert palette.mix(1.0, 1.0) == palette.POSITIVE_RGB and palette.mix(-1.0, 1.0) == palette.NEGATIVE_RGB
    assert palette.mix(0.0, 1.0) == palette.NEUTRAL_RGB == palette.mix(float("nan"), 1.0)
    assert palette.mix(1.0, 0.75) == (89, 140, 193)  # 88.5 -> 89 (Python's round would give 88)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_page_computes_the_same_colours_as_the_export():
    script = palette.inject("app.js", _source("app.js"))
    scale_line = next(l for l in script.splitlines() if l.startswith("const SCALE ="))
    colour_fn = re.search(r"^function colour\(value, strength\) \{.*?^\}", script, re.S | re.M).group(0)
    cases = [[v if v == v else None, s] for v, s in VALUES]
    program = (f"{scale_line}\n{colour_fn}\nconst cases = {json.dumps(cases)};\n"
               "console.log(JSON.stringify(cases.map(([v, s]) => colour(v === null ? NaN : v, s))));")
    out = subprocess.run(["node", "-e", program], capture_output=True, text=True, timeout=30, check=True).stdout
    want = [[f"rgb({','.join(map(str, palette.mix(v, s)))})", palette.ink(v, s)] for v, s in VALUES]
    assert json.loads(out) == want
