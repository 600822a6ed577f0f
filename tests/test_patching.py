"""Activation patching (gsmile.whitebox.patching) on the embedded SmolLM2: the shape of the
effect on a France/Italy swap, thread safety of the hooks on the shared model, bad input, the
JSON round trip, the HTML and text heatmaps, and the ``gsmile patch`` command."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

from gsmile.errors import InvalidInputError, SchemaError, UnknownNameError
from gsmile.render.patching import render_patching_html, render_patching_text
from gsmile.whitebox.patching import PatchingResult, activation_patching
from threads import run_together

CLEAN, CORRUPTED = "The capital of France is", "The capital of Italy is"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def france(lm):
    """France vs Italy, answer "Paris", every layer's residual stream."""
    return activation_patching(lm, CLEAN, CORRUPTED, answer="Paris")


def _twin(lm):
    """A second backend over the same torch model that scores through transformers' forward
    (fast_path off), i.e. through the very modules the patching hooks are registered on."""
    from gsmile.backends.local import HFCausalLM

    twin = HFCausalLM(lm.path, model_id=lm.model_id)
    twin._model, twin._tokenizer = lm._model, lm._tokenizer
    twin.fast_path = False
    return twin


# ------------------------------------------------------------------- the effect
@pytest.mark.model
def test_same_token_length_through_the_template(lm):
    a, b = lm.prompt_ids(CLEAN), lm.prompt_ids(CORRUPTED)
    assert len(a) == len(b)
    assert sum(x != y for x, y in zip(a, b)) == 1


@pytest.mark.model
def test_france_italy_shape_of_the_effect(lm, france):
    r = france
    n_layers = lm.model.config.num_hidden_layers
    assert r.layers == list(range(n_layers)) and r.values["resid"].shape == (n_layers, len(r.tokens))
    assert r.answer == "Paris" and r.answer_source == "given" and r.clean_logp > r.corrupted_logp
    word = r.first_patched  # the one position where the prompts differ
    assert r.tokens[word].strip() == "France" and r.corrupted_tokens[word].strip() == "Italy"
    assert r.kinds[word] == "user" and r.kinds[-1] == "template"
    resid = r.values["resid"]
    early, late = range(0, 4), range(n_layers - 4, n_layers)
    # Early layers: the corrupted word's position carries everything, the others nothing.
    others = [j for j in range(len(r.tokens)) if j != word]
    for layer in early:
        assert resid[layer, word] > 0.8
        assert np.max(np.abs(resid[layer, others])) < 0.1
    # Late layers: the information has moved to the final position.
    for layer in late:
        assert resid[layer, -1] > 0.8
        assert resid[layer, -1] == np.max(resid[layer])
        assert abs(resid[layer, word]) < 0.2
    # Patching the last layer's output at the last position gives the clean logits exactly.
    assert resid[-1, -1] == pytest.approx(1.0, abs=1e-3)
    # Positions before the first difference hold the same tokens: exactly 0, not run.
    assert np.all(resid[:, :word] == 0.0)
    assert r.n_patched == n_layers * (len(r.tokens) - word)
    assert r.n_forward < r.n_patched / 10  # batched


@pytest.mark.model
def test_default_answer_is_the_clean_greedy_token_and_components(lm):
    import torch

    r = activation_patching(lm, CLEAN, CORRUPTED, components="attn,mlp", layers=[0, 23, 29])
    with torch.inference_mode():
        logits = lm.model(torch.tensor([lm.prompt_ids(CLEAN)])).logits[0, -1]
    greedy = int(torch.argmax(logits))
    assert r.answer_source == "greedy" and r.answer_ids == [greedy]
    assert r.clean_logp == pytest.approx(float(torch.log_softmax(logits, -1)[greedy]), abs=1e-4)
    assert r.components == ["attn", "mlp"] and r.layers == [0, 23, 29]
    assert r.values["attn"].shape == (3, len(r.tokens))
    # The first MLP at the swapped word carries the word; a mid-late attention moves it to the end.
    assert r.values["mlp"][0, r.first_patched] > 0.5
    assert r.values["attn"][1, -1] > 0.5


@pytest.mark.model
def test_progress_reports_every_pass_up_to_the_patched_runs(lm, capsys):
    calls = []
    r = activation_patching(lm, CLEAN, CORRUPTED, answer="Paris", layers=[0, 29], batch_size=5,
                            progress=lambda done, total: calls.append((done, total)))
    assert [t for _, t in calls] == [r.n_patched] * len(calls) and calls[-1][0] == r.n_patched
    assert [d for d, _ in calls] == sorted({d for d, _ in calls}) and len(calls) == -(-r.n_patched // 5)
    same = activation_patching(lm, CLEAN, CORRUPTED, answer="Paris", layers=[0, 29])  # one pass, no progress
    np.testing.assert_allclose(same.values["resid"], r.values["resid"], atol=1e-4)
    activation_patching(lm, CLEAN, CORRUPTED, answer="Paris", layers=[29], progress=True)
    assert "patching" in capsys.readouterr().err


# ------------------------------------------------------------------ thread safety
@pytest.mark.model
def test_plain_scoring_in_another_thread_is_untouched(lm):
    """A plain scoring call running while patching hooks sit on the shared modules gives what
    it gives alone, through transformers' forward (the twin) and the lean body (lm)."""
    twin = _twin(lm)
    prompts = ["Name a large city in Europe.", "Which river runs through Rome?"]
    response = lm.encode_response("The Tiber is a river.")
    alone_twin, alone_lm = twin.logprobs(prompts, response), lm.logprobs(prompts, response)
    # The twin does go through the hooked modules: an ungated hook changes its result.
    handle = lm.model.model.layers[3].register_forward_hook(lambda m, a, out: out + 1.0)
    try:
        assert np.max(np.abs(twin.logprobs(prompts, response) - alone_twin)) > 1e-2
    finally:
        handle.remove()

    done, seen_hooks, results, spans = threading.Event(), [], [], []
    out: dict = {}

    def patch():
        out["start"] = time.perf_counter()
        out["result"] = activation_patching(lm, CLEAN, CORRUPTED, answer="Paris", components=("resid", "attn"),
                                            layers=range(0, 30, 5), batch_size=8)
        out["end"] = time.perf_counter()
        done.set()

    thread = threading.Thread(target=patch)
    thread.start()
    while not done.is_set():
        seen_hooks.append(sum(len(layer._forward_hooks) + len(layer.self_attn._forward_hooks) for layer in lm.model.model.layers))
        t0 = time.perf_counter()
        results.append((twin.logprobs(prompts, response), lm.logprobs(prompts, response)))
        spans.append((t0, time.perf_counter()))
    thread.join()
    assert "result" in out
    inside = [i for i, (a, b) in enumerate(spans) if out["start"] <= a and b <= out["end"]]
    assert inside, "no plain call ran while the patching did"
    assert max(seen_hooks) > 0, "the plain calls never ran with patching hooks registered"
    for got_twin, got_lm in results:
        np.testing.assert_allclose(got_twin, alone_twin, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_lm, alone_lm, rtol=0, atol=1e-5)
    assert all(not layer._forward_hooks and not layer.self_attn._forward_hooks for layer in lm.model.model.layers)


@pytest.mark.model
def test_two_patching_runs_at_once_equal_their_runs_alone(lm):
    jobs = {
        "a": dict(clean=CLEAN, corrupted=CORRUPTED, answer="Paris", components=("resid",), layers=[0, 10, 20, 23, 29]),
        "b": dict(clean="The capital of Spain is", corrupted="The capital of Japan is", answer="Madrid",
                  components=("mlp", "attn"), layers=[1, 12, 23]),
    }
    alone = {k: activation_patching(lm, **kw) for k, kw in jobs.items()}
    runs = run_together([lambda kw=kw: activation_patching(lm, **kw) for kw in jobs.values()])
    together = {key: result for key, (result, _, _) in zip(jobs, runs)}
    for key in jobs:
        assert together[key].components == alone[key].components
        for c in alone[key].components:
            np.testing.assert_allclose(together[key].values[c], alone[key].values[c], rtol=0, atol=1e-4)
        assert together[key].clean_logp == pytest.approx(alone[key].clean_logp, abs=1e-5)


# --------------------------------------------------------------------- bad input
@pytest.mark.model
def test_bad_input(lm):
    with pytest.raises(InvalidInputError, match=r"^patching needs prompts of the same token length: clean has \d+ tokens, "
                                                r"corrupted \d+; swap words that are one token each$"):
        activation_patching(lm, CLEAN, "The capital of the Netherlands is")
    with pytest.raises(InvalidInputError, match="same"):
        activation_patching(lm, CLEAN, CLEAN)
    with pytest.raises(InvalidInputError, match="empty"):
        activation_patching(lm, "  ", CORRUPTED)
    with pytest.raises(InvalidInputError, match="answer"):
        activation_patching(lm, CLEAN, CORRUPTED, answer=" ")
    with pytest.raises(UnknownNameError, match="resid"):
        activation_patching(lm, CLEAN, CORRUPTED, components=("embed",))
    with pytest.raises(InvalidInputError, match="layers"):
        activation_patching(lm, CLEAN, CORRUPTED, layers=[99])
    with pytest.raises(InvalidInputError, match="local model"):
        activation_patching(lambda texts: [0.0] * len(texts), CLEAN, CORRUPTED)
    with pytest.raises(InvalidInputError, match="local model"):
        activation_patching("openai:gpt-4o-mini", CLEAN, CORRUPTED)


@pytest.mark.model
def test_cli_user_mistakes_are_one_line_exit_2(lm, capsys):
    from gsmile.cli import main

    for argv, needle in [
        (["patch", CLEAN, "The capital of the Netherlands is"], "clean has"),
        (["patch", CLEAN, CLEAN], "same"),
        (["patch", CLEAN, CORRUPTED, "--components", "resid,embed"], "unknown component"),
        (["patch", CLEAN, CORRUPTED, "--model", "openai:gpt-4o-mini"], "local model"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gsmile: error: ") and needle in err and err.count("\n") == 1, err


@pytest.mark.model
def test_cli_prints_the_heatmap_and_writes_json_and_html(lm, tmp_path, capsys):
    from gsmile.cli import main

    j, h = tmp_path / "p.json", tmp_path / "p.html"
    assert main(["patch", CLEAN, CORRUPTED, "--answer", "Paris", "--json", str(j), "--html", str(h), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Answer: 'Paris' (given)" in out and "France→ Italy" in out and "[<|im_end|>]" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert len(rows) == lm.model.config.num_hidden_layers
    result = PatchingResult.from_json(j.read_text())
    assert result.answer == "Paris" and h.read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------- serialization, render
def test_json_round_trip(france):
    data = json.loads(json.dumps(france.to_dict()))
    assert data["schema"] == "gsmile.patching" and data["version"] == 1
    back = PatchingResult.from_dict(data)
    assert back.to_dict() == france.to_dict()
    np.testing.assert_array_equal(back.values["resid"], france.values["resid"])
    with pytest.raises(SchemaError):
        PatchingResult.from_dict({**data, "schema": "gsmile.explanation"})
    with pytest.raises(SchemaError):
        PatchingResult.from_dict({**data, "version": 99})
    with pytest.raises(SchemaError):
        PatchingResult.from_dict({k: v for k, v in data.items() if k != "positions"})


def _synthetic(clean="<b>x</b> & \"y\"", token="<script>alert(1)</script>"):
    tokens = ["<|im_start|>", "user", token, " is", "<|im_end|>"]
    values = np.arange(2 * len(tokens), dtype=float).reshape(2, -1) / 10 - 0.3
    return PatchingResult(clean=clean, corrupted="<i>z</i>", model_id="m<odel>", answer="<A&B>", answer_ids=[1, 2],
                          answer_source="given", clean_logp=-1.0, corrupted_logp=-3.0, layers=[0, 1], tokens=tokens,
                          corrupted_tokens=tokens[:2] + ["<z>"] + tokens[3:], kinds=["template", "template", "user", "user", "template"],
                          first_patched=2, values={"resid": values, "mlp": -values}, n_forward=3, n_patched=6)


def test_html_escapes_user_text_and_has_one_cell_per_layer_and_position():
    result = _synthetic()
    page = render_patching_html(result)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<script" not in page
    for raw in ("<b>x</b>", "<script>", "<i>z</i>", "m<odel>", "<A&B>", "<z>"):
        assert raw not in page
    assert "&lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    tables = re.findall(r'<table class="patching" data-component="(\w+)">(.*?)</table>', page, re.S)
    assert [name for name, _ in tables] == ["resid", "mlp"]
    for _, body in tables:
        assert body.count('<td class="cell"') == len(result.layers) * len(result.tokens)
        assert body.count('<th class="tok') == len(result.tokens)
    assert "rgb(255,255,255)" in page  # zero is white on the diverging scale


def test_text_heatmap_shows_user_positions_and_marks_template():
    text = render_patching_text(_synthetic(token="Fr\x1b[31mance"))
    assert "\x1b" not in text  # control characters never reach the terminal
    header = next(line for line in text.splitlines() if line.startswith("layer"))
    assert "[<|im_end|>]" in header and "<|im_start|>" not in header  # leading template hidden, trailing marked
    assert "Positions 0-1" in text and "-0.10" in text
