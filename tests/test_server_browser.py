"""The page in a real browser: Playwright driving the system's Chromium (/usr/bin/chromium,
the Debian package; no browser is downloaded) against uvicorn on 127.0.0.1.

Screenshots are saved under test-artifacts/ (gitignored)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import playwright.sync_api as sync_api  # noqa: E402

from gsmile.server import Settings, create_app  # noqa: E402
from gsmile.units import Segmentation  # noqa: E402
from serve_models import ToyLM  # noqa: E402
from serve_util import running_server  # noqa: E402

CHROMIUM = os.environ.get("GSMILE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (make test installs it)"),
]

PROMPT = "Tell me where the Eiffel Tower stands and <b>who</b> built it?"
RESPONSE = "It stands in Paris and Eiffel built it"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = create_app(Settings(jobs_path=tmp_path_factory.mktemp("jobs") / "jobs.sqlite3", max_concurrent=2), model=ToyLM())
    with running_server(app) as url:
        yield url
    app.state.manager.shutdown()
    app.state.store.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert not errors, errors


def _compute(page, server, **fields):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    for selector, value in fields.items():
        if selector in ("method", "target", "unit", "refine"):
            page.select_option(f"#{selector}", value)
        else:
            page.fill(f"#{selector}", value)
    page.click("#compute")
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])", timeout=30_000)
    assert page.is_hidden("#error"), page.text_content("#error")


def test_compute_switch_views_and_download(page, server, tmp_path):
    _compute(page, server, prompt=PROMPT, response=RESPONSE, samples="120", target="logprob")
    assert page.text_content("#status") == "done"
    words = [u.text for u in Segmentation.from_text(PROMPT, "word").units]
    # outcome view: every unit coloured, one bar per unit, fidelity shown, response shown
    assert page.locator("#text .unit").count() == len(words)
    assert page.locator("#bars tr").count() == len(words)
    assert page.text_content("#summary").startswith("fidelity R²")
    assert page.text_content("#response-text") == RESPONSE
    assert page.locator("#top li").count() == 5
    # user text is shown as text, never as markup
    assert "<b>who</b>" in page.text_content("#text")
    assert page.locator("#text b").count() == 0
    page.screenshot(path=str(ARTIFACTS / "outcome.png"), full_page=True)

    page.click("#tab-tokens")
    assert page.is_visible("#view-tokens") and page.is_hidden("#view-outcome")
    tokens = page.locator("#heatmap th.tok")
    assert tokens.count() == len(RESPONSE.split())
    assert page.locator("#heatmap tr[data-unit]").count() == len(words)
    # hovering the response token "Paris" highlights the unit that drove it: "Paris" is not in
    # the prompt, so no unit is; "Eiffel" is, and the toy model predicts it from that word
    index = RESPONSE.split().index("Eiffel")
    page.hover(f"#token-strip .tok[data-token='{index}']")
    hot = page.locator("#token-text .unit.hot").all_text_contents()
    assert "Eiffel" in hot
    assert page.locator(f"#heatmap th.tok.hot[data-token='{index}']").count() == 1
    page.screenshot(path=str(ARTIFACTS / "token-view.png"), full_page=True)

    with page.expect_download() as info:
        page.click("#download")
    saved = tmp_path / "download.json"
    info.value.save_as(saved)
    data = json.loads(saved.read_text())
    assert data["schema"] == "gsmile.explanation" and data["prompt"] == PROMPT and data["response"] == RESPONSE
    assert len(data["coefficients"]) == len(words) and len(data["token_coefficients"][0]) == len(RESPONSE.split())

    page.click("#tab-outcome")
    assert page.is_visible("#view-outcome") and page.is_hidden("#view-tokens")


def test_errors_are_shown_on_the_page(page, server):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#prompt", "Hello")
    page.click("#compute")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "at least 2 are needed" in page.text_content("#error")
    assert page.is_enabled("#compute")
    page.screenshot(path=str(ARTIFACTS / "error.png"), full_page=True)


def test_method_choices_come_from_the_service(page, server):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    from gsmile.methods import METHODS

    assert page.locator("#method option").all_text_contents() == sorted(METHODS)
    assert page.is_disabled("#threshold") == ("mupax" != page.input_value("#method"))


def test_mupax_over_a_context(page, server, tmp_path):
    context = "Paris is in France. The tower was built by Eiffel. Cheese is good. Rain fell."
    _compute(page, server, prompt="Who built the tower in Paris?", context=context, response="Eiffel built it",
             method="mupax", threshold="0.3", samples="100", target="logprob")
    assert page.text_content("#text-title") == "Context"
    assert page.locator("#text .unit").count() == 4
    assert page.text_content("#text") == context
    summary = page.text_content("#summary")
    assert "explainedcontext (4 sentence units)" in summary and "percentile 0.3" in summary
    assert page.locator("#top li strong").first.text_content() == "The tower was built by Eiffel."
    page.screenshot(path=str(ARTIFACTS / "mupax-context.png"), full_page=True)


def test_coarse_to_fine_levels_on_the_page(page, server):
    context = "Paris is in France. The tower was built by Eiffel. Cheese is good. Rain fell."
    _compute(page, server, prompt="Who built the tower in Paris?", context=context, response="Eiffel built it",
             refine="word", samples="60", target="logprob")
    assert page.is_visible("#levels")
    captions = page.locator("#level-captions li").all_text_contents()
    assert captions[0].startswith("Level 1: 4 sentence units") and captions[1].startswith("Level 2:")
    assert page.locator("#hierarchy tr.coarse").count() == 4
    refined = page.locator("#hierarchy tr.refined td.label").all_text_contents()
    fine = page.locator("#hierarchy tr.fine td.label").all_text_contents()
    assert len(refined) == 3 and fine and all(word in " ".join(refined) for word in fine)
    page.screenshot(path=str(ARTIFACTS / "coarse-to-fine.png"), full_page=True)
    # a plain explanation hides the levels
    _compute(page, server, prompt="Who built the tower in Paris?", response="Eiffel built it", samples="20")
    assert page.is_hidden("#levels")


def test_interactions_on_the_page(page, server):
    context = "Paris is in France. The tower was built by Eiffel. Cheese is good. Rain fell."
    _compute(page, server, prompt="Who built the tower in Paris?", context=context, response="Eiffel built it",
             interactions="3", samples="40", target="logprob")
    assert page.is_visible("#interactions-box")
    assert page.text_content("#interactions-caption").startswith("k-SII, top-3 units, exact, 8 evaluations")
    rows = page.locator("#interactions-table tr")
    assert rows.count() == 4  # a header and the 3 pairs of 3 units
    labels = page.locator("#interactions-table td.label").all_text_contents()
    assert set(labels) <= {"Paris is in France.", "The tower was built by Eiffel.", "Cheese is good.", "Rain fell."}
    page.screenshot(path=str(ARTIFACTS / "interactions.png"), full_page=True)
    # a plain explanation hides them
    _compute(page, server, prompt="Who built the tower in Paris?", response="Eiffel built it", interactions="0", samples="20")
    assert page.is_hidden("#interactions-box")


def test_api_key_entered_on_the_page(browser, tmp_path):
    app = create_app(Settings(jobs_path=tmp_path / "jobs.sqlite3", api_key="pa55"), model=ToyLM())
    context = browser.new_context()
    page = context.new_page()
    try:
        with running_server(app) as url:
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']")
            page.fill("#prompt", PROMPT)
            page.fill("#samples", "30")
            page.click("#compute")
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "API key" in page.text_content("#error")
            assert page.locator("#key-box").get_attribute("open") is not None  # opened for the user
            page.fill("#apikey", "pa55")
            page.click("#compute")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            assert page.is_hidden("#error")
    finally:
        context.close()
        app.state.manager.shutdown()
        app.state.store.close()


IMAGE_PROMPT = "a red circle above a blue square on green grass with a <b>stone</b> bridge"


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    from image_models import shapes

    app = create_app(Settings(jobs_path=tmp_path_factory.mktemp("jobs") / "jobs.sqlite3"), model=shapes)
    with running_server(app) as url:
        yield url
    app.state.manager.shutdown()
    app.state.store.close()


def test_an_image_explanation_shows_its_images_and_insights(page, image_server):
    page.goto(image_server + "/")
    page.wait_for_selector("body[data-ready='1']")
    # a text-to-image service: images per prompt instead of a target and a response
    assert page.is_visible("#image-seeds") and page.is_hidden("#target") and page.is_hidden("#response")
    assert page.get_attribute("#image-seeds", "max") == "4"
    page.fill("#prompt", IMAGE_PROMPT)
    page.select_option("#method", "occlusion")
    page.fill("#image-seeds", "2")
    page.click("#compute")
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])", timeout=30_000)
    assert page.is_hidden("#error"), page.text_content("#error")
    # the original prompt's images (one per seed), as data URLs of the PNGs
    originals = page.locator("#original-images img")
    assert originals.count() == 2
    for n in range(2):
        assert originals.nth(n).get_attribute("src").startswith("data:image/png;base64,")
        assert originals.nth(n).evaluate("img => img.complete && img.naturalWidth") == 64  # it decoded
    # the top units' images without them, with their distances
    without = page.locator("#without-images figure")
    assert without.count() >= 1
    captions = page.locator("#without-images figcaption").all_text_contents()
    assert all(c.startswith("without ") and "distance" in c for c in captions)
    assert page.locator("#without-images img").first.get_attribute("src").startswith("data:image/png;base64,")
    # the per-word bars, as for text; the words as text, never markup
    assert page.locator("#bars tr").count() == len(Segmentation.from_text(IMAGE_PROMPT, "word").units)
    assert "<b>stone</b>" in page.text_content("#text") and page.locator("#text b").count() == 0
    # the insight paragraph, in its own box
    assert page.is_visible("#insights-box")
    insight = page.text_content("#insights")
    assert "ignores" in insight and "bridge" in insight
    assert page.is_hidden("#response-box")
    page.screenshot(path=str(ARTIFACTS / "image-explanation.png"), full_page=True)


def test_a_text_explanation_shows_its_insights(page, server):
    _compute(page, server, prompt=PROMPT, response=RESPONSE, samples="40", target="logprob")
    assert page.is_visible("#insights-box") and page.text_content("#insights").strip()
    assert page.is_hidden("#images-box") and page.is_visible("#response-box")
    assert page.is_visible("#target") and page.is_hidden("#image-seeds")


# ------------------------------------------------------------------ activation patching
PATCH_CLEAN, PATCH_CORRUPTED = "The capital of France is <b>x</b>", "The capital of Italy is <b>x</b>"


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, lm):
    """A service running the real embedded model (activation patching needs a local one), with
    one torch thread while it is up (see tests/test_patching.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    app = create_app(Settings(jobs_path=tmp_path_factory.mktemp("jobs") / "jobs.sqlite3"), model=lm)
    try:
        with running_server(app) as url:
            yield url
    finally:
        app.state.manager.shutdown()
        app.state.store.close()
        torch.set_num_threads(before)


@pytest.mark.model
def test_patching_heatmap_on_the_page(page, local_server, lm):
    page.goto(local_server + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_visible("#modes") and page.is_hidden("#patch-panel")
    page.click("#mode-patch")
    assert page.is_visible("#patch-panel") and page.is_hidden("#explain-panel")
    page.fill("#clean", PATCH_CLEAN)
    page.fill("#corrupted", PATCH_CORRUPTED)
    page.fill("#answer", "Paris")
    page.click("#patch-run")
    page.wait_for_selector("#patch-result:not([hidden]), #patch-error:not([hidden])", timeout=180_000)
    assert page.is_hidden("#patch-error"), page.text_content("#patch-error")
    assert page.text_content("#patch-status") == "done"

    ids_c, ids_k = lm.prompt_ids(PATCH_CLEAN), lm.prompt_ids(PATCH_CORRUPTED)
    first = next(i for i, (a, b) in enumerate(zip(ids_c, ids_k)) if a != b)
    n_layers, n_shown = lm.model.config.num_hidden_layers, len(ids_c) - first
    table = page.locator("#patch-maps table[data-component='resid']")
    assert table.count() == 1 and page.locator("#patch-maps table").count() == 1
    # one row per layer, one column per position from the first difference on, one cell per pair
    assert table.locator("tr[data-layer]").count() == n_layers
    headers = table.locator("th.tok")
    assert headers.count() == n_shown
    assert table.locator("td").count() == n_layers * n_shown
    assert headers.first.text_content() == " France→ Italy" and "changed" in headers.first.get_attribute("class")
    templates = table.locator("th.tok.template")
    assert 0 < templates.count() < n_shown
    assert all(t.startswith("[") and t.endswith("]") for t in templates.all_text_contents())
    title = table.locator("tr[data-layer='0'] td").first.get_attribute("title")
    assert title.startswith(f"layer 0, position {first}  France→ Italy: restored ")
    assert float(title.rsplit(" ", 1)[1]) > 0.8  # the swapped word carries the answer at layer 0
    # the answer and both log p; user text shown as text, never as markup
    assert page.text_content("#patch-answer") == "Paris"
    summary = page.text_content("#patch-summary")
    assert "log p clean" in summary and "log p corrupted" in summary
    assert PATCH_CLEAN in summary and PATCH_CORRUPTED in summary
    assert page.locator("#patch-result b").count() == 0
    page.screenshot(path=str(ARTIFACTS / "patching.png"), full_page=True)

    # prompts of different token lengths: the service's message on the page
    page.fill("#corrupted", "The capital of the Netherlands is <b>x</b>")
    page.click("#patch-run")
    page.wait_for_selector("#patch-error:not([hidden])", timeout=60_000)
    assert "same token length" in page.text_content("#patch-error") and page.is_enabled("#patch-run")


def test_patching_is_offered_only_with_a_local_model(page, server):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_hidden("#modes") and page.is_hidden("#patch-panel") and page.is_visible("#form")
