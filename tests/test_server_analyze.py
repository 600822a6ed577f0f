"""The causal-explainability analyze endpoint: the detection score, length limits, the
response shape, and the Eiffel Tower example from the API's documentation."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from serve_models import Additive, ToyLM  # noqa: E402
from server_client import Api, AppFactory  # noqa: E402

from gsmile.errors import is_out_of_memory  # noqa: E402
from gsmile.inputs import CONTEXT_TEMPLATE  # noqa: E402
from gsmile.length import cut_front_chars, fit_length  # noqa: E402
from gsmile.server import Settings, create_app, service  # noqa: E402
from gsmile.server.detection import DetectionScore, halluc_from_pmi  # noqa: E402
from gsmile.server.schemas import AnalyzeResponse  # noqa: E402

URL = "/v1/glad/causal-explainability/analyze"
DATES = "The Eiffel Tower was constructed between 1887 and 1889."
CONTEXT = f"Paris is the capital of France. {DATES} It is made of wrought iron. Millions of people visit it every year."
PROMPT = "When was the Eiffel Tower built?"
RESPONSE = "The Eiffel Tower was built between 1887 and 1889."
EIFFEL = {"prompt": PROMPT, "context": CONTEXT, "response": RESPONSE, "method": "mupax_causal", "mupax_n_samples": 200}



@pytest.fixture
def make_api(tmp_path):
    factory = AppFactory(tmp_path, ToyLM)
    yield factory
    factory.close()


@pytest.fixture
def any_method(monkeypatch):
    """For tests of the machinery around the attribution (score, limits, retries), which
    does not depend on the method: map gradient_causal to gsmile."""
    monkeypatch.setitem(service.ANALYZE_METHODS, "gradient_causal", ("gsmile", "gradient_causal"))


# --------------------------------------------------------------------- the score
def _toy_mean_logprob(turn: str, response: str, vocab=4096, boost=3.0) -> float:
    """ℓ for ToyLM, derived by hand: p(r) = e^(boost·[r in turn]) / (V − |S| + |S|·e^boost)."""
    ids = {zlib.crc32(w.strip(".,?!").lower().encode()) % vocab for w in turn.split()}
    resp = [zlib.crc32(w.strip(".,?!").lower().encode()) % vocab for w in response.split()]
    log_norm = math.log(vocab - len(ids) + len(ids) * math.exp(boost))
    return float(np.mean([boost * (r in ids) - log_norm for r in resp]))


def test_halluc_from_pmi_is_a_decreasing_logistic():
    assert halluc_from_pmi(0.0) == 0.5
    assert halluc_from_pmi(0.5) == pytest.approx(1 / (1 + math.e))
    assert halluc_from_pmi(-0.5) == pytest.approx(math.e / (1 + math.e))
    assert halluc_from_pmi(1e6) == 0.0 and halluc_from_pmi(-1e6) == 1.0  # no overflow


def test_detection_scores_match_their_definitions():
    lm = ToyLM()
    ids = lm.encode_response(RESPONSE)
    lp_prompt = _toy_mean_logprob(PROMPT, RESPONSE)
    lp_ctx = _toy_mean_logprob(CONTEXT_TEMPLATE.format(context=CONTEXT, prompt=PROMPT), RESPONSE)
    likelihood = DetectionScore(lm, PROMPT, None, ids, "prompt")
    assert likelihood.detection_type == "answer_likelihood"
    assert likelihood.score() == pytest.approx(math.exp(lp_prompt))
    halluc = DetectionScore(lm, PROMPT, CONTEXT, ids, "context")
    assert halluc.detection_type == "halluc_context"
    assert halluc.score() == pytest.approx(1 / (1 + math.exp((lp_ctx - lp_prompt) / 0.5)))
    # removing the sentence with the dates makes the response less supported
    without = CONTEXT.replace(DATES, "")
    assert halluc([without])[0] > halluc.score()
    assert halluc([""])[0] == 0.5  # no context: PMI 0


def test_characters_are_cut_from_the_beginning():
    prompt, context, ids, notes = fit_length(ToyLM(), "short question?", "word " * 40 + "last words here.", [1, 2], 512, src_chars=40)
    assert prompt == "short question?"
    assert context.endswith("last words here.") and len(context) + len(prompt) <= 40
    assert notes and "characters" in notes[0]
    prompt, context, _, _ = fit_length(ToyLM(), "a " * 30 + "end?", "context text", [1], 512, src_chars=20)
    assert context is None and prompt.endswith("end?") and len(prompt) <= 20
    assert cut_front_chars("alpha bravo charlie", 9) == "charlie"


def test_tokens_are_cut_to_the_max_length():
    lm = ToyLM()
    context = " ".join(f"w{i}" for i in range(60))
    ids = lm.encode_response("one two three four")
    prompt, cut, kept, notes = fit_length(lm, PROMPT, context, ids, 24, src_chars=10_000)
    assert kept == ids
    turn = CONTEXT_TEMPLATE.format(context=cut, prompt=prompt)
    assert len(lm.token_spans(turn)) + len(ids) <= 24
    assert context.endswith(cut) and len(cut) < len(context) and prompt == PROMPT
    _, _, kept, notes = fit_length(lm, PROMPT, None, list(range(30)), 40, src_chars=10_000)
    assert kept == list(range(20)) and any("response" in n for n in notes)


def test_out_of_memory_is_recognised_through_causes():
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)
    assert not is_out_of_memory(ValueError("bad value"))


class _SmallMemoryLM(ToyLM):
    """Runs out of memory on any user turn longer than ``words`` words."""

    def __init__(self, words):
        super().__init__()
        self.limit = words

    def logprobs(self, prompts, response_ids):
        if any(len(p.split()) > self.limit for p in prompts):
            raise MemoryError("CUDA out of memory")
        return super().logprobs(prompts, response_ids)


def test_out_of_memory_halves_the_length_down_to_the_minimum(make_api, any_method):
    long_context = " ".join(f"Sentence {i} is here." for i in range(15)) + " " + DATES
    body = {"prompt": PROMPT, "context": long_context, "response": "between 1887 and 1889", "mc_samples": 20}
    api = make_api(model=_SmallMemoryLM(words=26), xai_maxlen=64, analyze_min_maxlen=16)
    r = api.post(URL, json=body)
    assert r.status_code == 200, r.text
    warnings = r.json()["warnings"]
    assert any("retried with 32" in w for w in warnings) and any("retried with 16" in w for w in warnings)
    assert r.json()["xai"]["gradient_causal"]["units"][-1]["text"].rstrip(".") == "1889"  # the end is kept
    api = make_api(model=_SmallMemoryLM(words=26), xai_maxlen=64, analyze_min_maxlen=32)
    r = api.post(URL, json=body)
    assert r.status_code == 503 and "out of memory at 32" in r.json()["error"]


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GSMILE_XAI_MAXLEN", "1024")
    monkeypatch.setenv("GSMILE_XAI_SRC_CHARS", "3000")
    monkeypatch.setenv("GSMILE_ANALYZE_MIN_MAXLEN", "256")
    s = Settings.from_env()
    assert (s.xai_maxlen, s.xai_src_chars, s.analyze_min_maxlen) == (1024, 3000, 256)
    monkeypatch.delenv("GSMILE_XAI_MAXLEN")
    monkeypatch.delenv("GSMILE_XAI_SRC_CHARS")
    monkeypatch.delenv("GSMILE_ANALYZE_MIN_MAXLEN")
    s = Settings.from_env()
    assert (s.xai_maxlen, s.xai_src_chars, s.analyze_min_maxlen) == (512, 2400, 512)
    monkeypatch.setenv("GSMILE_XAI_MAXLEN", "lots")
    with pytest.raises(ValueError, match="GSMILE_XAI_MAXLEN must be an integer"):
        Settings.from_env()


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "payload, field",
    [
        ({"prompt": PROMPT}, "response"),
        ({"prompt": PROMPT, "response": "  "}, "response"),
        ({"response": RESPONSE}, "prompt"),
        ({"prompt": PROMPT, "response": RESPONSE, "mupax_threshold_percentile": 1.5}, "mupax_threshold_percentile"),
        ({"prompt": PROMPT, "response": RESPONSE, "mupax_n_samples": 5}, "mupax_n_samples"),
        ({"prompt": PROMPT, "response": RESPONSE, "mc_samples": "x"}, "mc_samples"),
        ({"prompt": PROMPT, "response": RESPONSE, "context": " "}, "context"),
    ],
)
def test_analyze_invalid_fields_get_422_naming_the_field(make_api, payload, field):
    r = make_api().post(URL, json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == field


def test_analyze_unknown_method_gets_400_listing_the_valid_ones(make_api):
    r = make_api().post(URL, json={"prompt": PROMPT, "response": RESPONSE, "method": "integrated_gradients"})
    assert r.status_code == 400
    assert r.json()["valid"] == ["gradient_causal", "mupax_causal"]
    assert "gradient_causal, mupax_causal" in r.json()["error"]


def test_analyze_needs_a_language_model(make_api):
    r = make_api(model=Additive({"a": 1.0})).post(URL, json={"prompt": PROMPT, "response": RESPONSE})
    assert r.status_code == 501 and "language model" in r.json()["error"]


# --------------------------------------------------------------------- results
def _check_shape(body, key, detection_type, n_units):
    AnalyzeResponse.model_validate(body)  # the documented shape
    assert set(body) >= {"prompt", "full_response", "detection_type", "base_score", "xai"}
    assert body["detection_type"] == detection_type
    block = body["xai"][key]
    assert block["detection_type"] == detection_type and block["base_score"] == body["base_score"]
    assert 0 <= body["base_score"] <= 1
    assert len(block["units"]) == n_units
    for unit in block["units"]:
        assert set(unit) == {"text", "importance", "effect"}
        assert 0 <= unit["importance"] <= 1 and unit["effect"] in ("positive", "negative", "neutral")
    assert sum(u["importance"] for u in block["units"]) == pytest.approx(1.0)
    importances = [t["importance"] for t in block["top_tokens"]]
    assert importances == sorted(importances, reverse=True)
    for tok in block["top_tokens"]:
        assert set(tok) == {"token", "position", "importance", "retention_frequency", "conditional_goodness"}
        assert block["units"][tok["position"]]["text"] == tok["token"]
    return block


def test_eiffel_example_with_mupax_on_a_toy_model(make_api):
    r = make_api().post(URL, json=EIFFEL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["xai"]["method"] == "mupax_causal" and body["full_response"] == RESPONSE
    block = _check_shape(body, "mupax_halluc_causal", "halluc_context", 4)
    assert [u["text"] for u in block["units"]][1] == DATES
    # the sentence holding the dates supports the response: it lowers the hallucination score most
    top = block["top_tokens"][0]
    assert top["token"] == DATES and block["units"][1]["effect"] == "negative"
    assert body["base_score"] < 0.5
    assert block["n_total"] == 200 and 1 <= block["n_accepted"] <= 200 and block["threshold_W"] >= 0
    for tok in block["top_tokens"]:
        assert 0 <= tok["retention_frequency"] <= 1
        assert tok["conditional_goodness"] is None or 0 <= tok["conditional_goodness"] <= 1


def test_gradient_causal_is_the_default_and_explains_the_prompt_without_context(make_api):
    api = make_api()
    r = api.post(URL, json={"prompt": PROMPT, "full_response": "The Eiffel Tower"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["xai"]["method"] == "gradient_causal" and body["full_response"] == "The Eiffel Tower"
    block = _check_shape(body, "gradient_causal", "answer_likelihood", len(PROMPT.split()))
    # the response's words come from "the", "Eiffel", "Tower": leaving them out lowers the likelihood
    drivers = {t["token"] for t in block["top_tokens"][:3]}
    assert drivers == {"the", "Eiffel", "Tower"}
    assert all(block["units"][t["position"]]["effect"] == "positive" for t in block["top_tokens"][:3])
    ctx = api.post(URL, json={**EIFFEL, "method": "gradient_causal"}).json()
    assert _check_shape(ctx, "gradient_causal", "halluc_context", 4)["top_tokens"][0]["token"] == DATES


def test_async_analyze_job(make_api):
    api = make_api()
    r = api.post(URL, json={**EIFFEL, "mupax_n_samples": 50, "async": True})
    assert r.status_code == 202
    job = api.wait_job(r.json()["job_id"])
    assert job["status"] == "succeeded" and job["kind"] == "analyze"
    _check_shape(job["result"], "mupax_halluc_causal", "halluc_context", 4)


def test_unknown_fields_from_existing_clients_are_ignored(make_api, any_method):
    r = make_api().post(URL, json={"prompt": PROMPT, "response": RESPONSE, "detection_type": "x", "model": "y",
                                   "mc_samples": 20})
    assert r.status_code == 200, r.text


@pytest.mark.model
def test_eiffel_example_on_the_real_model(tmp_path):
    app = create_app(Settings(jobs_path=tmp_path / "jobs.sqlite3"))
    try:
        r = Api(app).post(URL, json=EIFFEL)
        assert r.status_code == 200, r.text
        body = r.json()
        block = _check_shape(body, "mupax_halluc_causal", "halluc_context", 4)
        assert body["detection_type"] == "halluc_context" and body["xai"]["method"] == "mupax_causal"
        assert block["n_total"] == 200
        assert block["units"][1]["text"] == DATES
        # the sentence that states the dates is what makes the response supported
        assert block["top_tokens"][0]["token"] == DATES and block["units"][1]["effect"] == "negative"
        assert body["base_score"] < 0.5
        print("base_score", body["base_score"], [(u["text"][:30], round(u["importance"], 3), u["effect"]) for u in block["units"]])
    finally:
        app.state.manager.shutdown()
        app.state.store.close()
