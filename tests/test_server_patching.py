"""POST /v1/patch: activation patching on the server's model, through httpx's ASGI transport.

The real embedded SmolLM2 (the ``lm`` fixture) is injected with ``create_app(model=lm)``; the
France/Italy checks reuse tests/test_patching.py's thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_models import Additive, ToyLM  # noqa: E402
from server_client import AppFactory  # noqa: E402

from gsmile.server.openapi import SCHEMA_PATH, current_schema, dumps  # noqa: E402

CLEAN, CORRUPTED = "The capital of France is", "The capital of Italy is"
FRANCE = {"clean": CLEAN, "corrupted": CORRUPTED, "answer": "Paris"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make_api(tmp_path):
    factory = AppFactory(tmp_path, ToyLM)
    yield factory
    factory.close()


def _no_internals(r):
    assert "Traceback" not in r.text and 'File "' not in r.text and "site-packages" not in r.text, r.text


def _check_france(body, n_layers):
    assert body["schema"] == "gsmile.patching" and body["version"] == 1
    assert body["clean"] == CLEAN and body["corrupted"] == CORRUPTED
    assert body["answer"]["text"] == "Paris" and body["answer"]["source"] == "given"
    assert body["answer"]["clean_logp"] > body["answer"]["corrupted_logp"]
    assert body["layers"] == list(range(n_layers)) and list(body["restored"]) == ["resid"]
    resid = np.array(body["restored"]["resid"])
    assert resid.shape == (n_layers, len(body["positions"]))  # layers × positions
    word = body["first_patched"]
    assert body["positions"][word]["clean"].strip() == "France" and body["positions"][word]["corrupted"].strip() == "Italy"
    assert body["positions"][word]["kind"] == "user" and body["positions"][-1]["kind"] == "template"
    # early layers: the swapped word carries everything; late layers: the last position
    for layer in range(0, 4):
        assert resid[layer, word] > 0.8
    for layer in range(n_layers - 4, n_layers):
        assert resid[layer, -1] > 0.8
    assert resid[-1, -1] == pytest.approx(1.0, abs=1e-3)
    assert np.all(resid[:, :word] == 0.0)
    return resid


@pytest.mark.model
def test_patch_france_italy_sync_and_async(make_api, lm):
    api = make_api(model=lm)
    health = api.get("/healthz").json()
    assert health["model_kind"] == "language" and health["local_model"] is True
    n_layers = lm.model.config.num_hidden_layers

    r = api.post("/v1/patch", json=FRANCE)
    assert r.status_code == 200, r.text
    body = r.json()
    resid = _check_france(body, n_layers)
    assert body["n_patched"] == n_layers * (len(body["positions"]) - body["first_patched"])

    # the same request as a job: 202, then the same result from /v1/jobs/ID
    r = api.post("/v1/patch", json={**FRANCE, "async": True})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert r.headers["location"] == accepted["url"] == f"/v1/jobs/{accepted['job_id']}"
    job = api.wait_job(accepted["job_id"], timeout=300)
    assert job["kind"] == "patch" and job["status"] == "succeeded" and job["progress"] == 1.0, job
    _check_france(job["result"], n_layers)
    np.testing.assert_allclose(np.array(job["result"]["restored"]["resid"]), resid, rtol=0, atol=1e-4)


@pytest.mark.model
def test_patch_components_and_the_greedy_answer(make_api, lm):
    api = make_api(model=lm)
    r = api.post("/v1/patch", json={"clean": CLEAN, "corrupted": CORRUPTED, "components": ["mlp", "attn"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["restored"]) == ["mlp", "attn"] and body["answer"]["source"] == "greedy"
    mlp = np.array(body["restored"]["mlp"])
    assert mlp.shape == (lm.model.config.num_hidden_layers, len(body["positions"]))
    assert mlp[0, body["first_patched"]] > 0.5  # as in tests/test_patching.py


@pytest.mark.model
def test_patch_refusals_are_422_naming_the_field(make_api, lm):
    api = make_api(model=lm)
    cases = [
        ({"clean": CLEAN, "corrupted": "The capital of the Netherlands is"}, "corrupted", "same token length: clean has"),
        ({"clean": CLEAN, "corrupted": CLEAN}, "corrupted", "the same"),
        ({"clean": "  ", "corrupted": CORRUPTED}, "clean", "empty"),
        ({**FRANCE, "answer": " "}, "answer", "answer is empty"),
        ({**FRANCE, "components": ["resid", "resid"]}, "components", "twice"),
        ({**FRANCE, "components": ["embed"]}, "components.0", "resid"),
        ({**FRANCE, "components": []}, "components", "at least 1"),
        ({**FRANCE, "clean": "x" * 2001}, "clean", "2000"),
        ({**FRANCE, "layers": [0]}, "layers", "Extra inputs"),
    ]
    for payload, field, needle in cases:
        r = api.post("/v1/patch", json=payload)
        assert r.status_code == 422, (payload, r.text)
        body = r.json()
        assert body["fields"][0]["field"] == field and needle in body["error"], (payload, body)
        _no_internals(r)
    # an async request with prompts of different lengths: the job fails with the same 422
    r = api.post("/v1/patch", json={"clean": CLEAN, "corrupted": "The capital of the Netherlands is", "async": True})
    assert r.status_code == 202
    job = api.wait_job(r.json()["job_id"], timeout=60)
    assert job["status"] == "failed" and job["error"]["status"] == 422
    assert job["error"]["fields"][0]["field"] == "corrupted" and "same token length" in job["error"]["error"]


@pytest.mark.model
def test_patch_within_the_servers_budget(make_api, lm):
    api = make_api(model=lm, max_samples=100)
    r = api.post("/v1/patch", json=FRANCE)
    assert r.status_code == 422, r.text
    body = r.json()
    n_layers = lm.model.config.num_hidden_layers
    assert body["fields"][0]["field"] == "clean" and "at most 100 patched passes" in body["error"]
    assert f"× {n_layers} layers ×" in body["error"] and "GSMILE_MAX_SAMPLES" in body["error"]


@pytest.mark.parametrize("model", [ToyLM, lambda: Additive({"a": 1.0})], ids=["api-like-language-model", "scalar"])
def test_patch_needs_a_local_model(make_api, model):
    api = make_api(model=model())
    assert api.get("/healthz").json()["local_model"] is False
    r = api.post("/v1/patch", json=FRANCE)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"].startswith("invalid field 'model': activation patching needs a local model")
    assert body["fields"][0]["field"] == "model"
    _no_internals(r)
    # refused before anything is queued: no job, even asked asynchronously
    r = api.post("/v1/patch", json={**FRANCE, "async": True})
    assert r.status_code == 422 and "job_id" not in r.json()


def test_a_model_given_by_name_is_local_without_loading_it(make_api):
    from gsmile.server.service import ModelHolder

    assert ModelHolder(None, "local").is_local and ModelHolder(None, "hf:/models/x").is_local
    assert not ModelHolder(None, "openai:gpt-4o-mini").is_local and not ModelHolder(None, "diffusers:/m").is_local
    assert not ModelHolder(ToyLM()).is_local


def test_openapi_schema_has_the_patch_endpoint():
    checked_in = json.loads(SCHEMA_PATH.read_text())
    assert dumps(current_schema()) == dumps(checked_in), "API changed: regenerate with `python -m gsmile.server.openapi`"
    post = checked_in["paths"]["/v1/patch"]["post"]
    assert {"200", "202", "422"} <= set(post["responses"])
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    request = checked_in["components"]["schemas"][ref]
    assert set(request["properties"]) == {"clean", "corrupted", "answer", "components", "async"}
    assert request["required"] == ["clean", "corrupted"]
    assert "patch" in checked_in["components"]["schemas"]["Job"]["properties"]["kind"]["enum"]
    assert "local_model" in checked_in["components"]["schemas"]["Health"]["properties"]
