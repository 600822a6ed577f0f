"""The HTTP API through httpx's ASGI transport against create_app(), with small models."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from gsmile import explain  # noqa: E402
from gsmile.explainer import Explainer  # noqa: E402
from gsmile.methods import METHODS  # noqa: E402
from gsmile.server import Settings, create_app  # noqa: E402
from gsmile.server.openapi import SCHEMA_PATH, current_schema, dumps  # noqa: E402
from server_client import Api, AppFactory  # noqa: E402
from serve_models import Additive, ToyLM  # noqa: E402

WEIGHTS = {"alpha": 3.0, "bravo": -1.5, "charlie": 0.0, "delta": 2.25, "echo": 0.5, "foxtrot": -0.75, "golf": 1.0}
PROMPT = "alpha bravo charlie delta echo foxtrot golf"


@pytest.fixture
def make_api(tmp_path):
    factory = AppFactory(tmp_path, lambda: Additive(WEIGHTS, bias=0.5))
    yield factory
    factory.close()


# ------------------------------------------------------------------------- basics
def test_healthz_reports_model_queue_and_methods(make_api):
    r = make_api().get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "additive" and body["model_loaded"] is False
    assert (body["running"], body["queued"], body["max_concurrent"]) == (0, 0, 1)
    assert body["methods"] == sorted(METHODS)
    assert len(r.headers["x-request-id"]) == 32


def test_explain_returns_the_library_explanation(make_api):
    r = make_api().post("/v1/explain", json={"prompt": PROMPT, "n_samples": 200, "random_state": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema"] == "gsmile.explanation" and body["version"] == 1
    # an additive scalar model is recovered exactly: coefficients = word weights
    assert [u["text"] for u in body["units"]] == PROMPT.split()
    np.testing.assert_allclose(body["coefficients"], list(WEIGHTS.values()), atol=1e-9)
    assert body["fidelity_r2"] == pytest.approx(1.0)
    # ... and equal to what the library gives for the same options
    direct = explain(PROMPT, model=Additive(WEIGHTS, bias=0.5), n_samples=200, random_state=3).to_dict()
    assert body["coefficients"] == direct["coefficients"]
    assert body["n_unique"] == direct["n_unique"]


def test_explain_within_a_budget_of_model_evaluations(make_api):
    api = make_api(model=ToyLM())
    payload = {"prompt": "a cat sat on the mat today", "response": "cat mat", "method": "kernelshap",
               "target": "logprob", "max_evals": 20, "random_state": 1}
    r = api.post("/v1/explain", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_unique"] == 20  # the budget and the count both include the original
    direct = explain(payload["prompt"], "cat mat", model=ToyLM(), method="kernelshap", target="logprob",
                     max_evals=20, random_state=1).to_dict()
    assert body["coefficients"] == direct["coefficients"]


def test_explain_with_a_language_model_has_per_token_coefficients(make_api):
    api = make_api(model=ToyLM())
    r = api.post("/v1/explain", json={"prompt": "the cat sat on the mat today", "response": "cat mat",
                                      "target": "logprob", "n_samples": 60})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response_tokens"] == ["cat", "mat"]
    tc = np.array(body["token_coefficients"])
    assert tc.shape == (7, 2)
    # the toy model predicts "cat" from the word "cat" and "mat" from "mat"
    words = [u["text"] for u in body["units"]]
    assert words[int(np.argmax(tc[:, 0]))] == "cat" and words[int(np.argmax(tc[:, 1]))] == "mat"


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "prompt"),
        ({"prompt": PROMPT, "n_samples": 3}, "n_samples"),
        ({"prompt": PROMPT, "n_samples": "many"}, "n_samples"),
        ({"prompt": PROMPT, "dropout": 2}, "dropout"),
        ({"prompt": PROMPT, "frobnicate": 1}, "frobnicate"),
        ({"prompt": 12}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": PROMPT, "max_evals": 1}, "max_evals"),
    ],
)
def test_invalid_fields_get_422_naming_the_field(make_api, payload, field):
    r = make_api().post("/v1/explain", json=payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["fields"][0]["field"] == field
    assert field in body["error"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_malformed_json_is_422(make_api):
    r = make_api().post("/v1/explain", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("field, kind", [("method", "method"), ("unit", "unit"), ("target", "target")])
def test_unknown_names_get_400_listing_the_valid_ones(make_api, field, kind):
    api = make_api(model=ToyLM())
    r = api.post("/v1/explain", json={"prompt": PROMPT, field: "nope", "n_samples": 20})
    assert r.status_code == 400, r.text
    body = r.json()
    assert f"unknown {kind} 'nope'" in body["error"]
    assert body["valid"] and all(name in body["error"] for name in body["valid"])
    if field == "method":
        assert body["valid"] == sorted(METHODS)


def test_library_refusals_are_422_with_the_message(make_api):
    r = make_api().post("/v1/explain", json={"prompt": "alpha"})
    assert r.status_code == 422
    assert "at least 2 are needed" in r.json()["error"]


def test_body_over_the_limit_gets_413(make_api):
    api = make_api(max_body_bytes=2048)
    r = api.post("/v1/explain", json={"prompt": "word " * 1000})
    assert r.status_code == 413
    assert "2048" in r.json()["error"]
    # a body sent without a length (chunked) is counted too
    async def chunks():
        yield json.dumps({"prompt": "word " * 1000}).encode()

    r = api.post("/v1/explain", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20}).status_code == 200


def test_api_key_is_required_on_every_api_call(make_api):
    api = make_api(api_key="s3cret")
    for method, path, kw in [("POST", "/v1/explain", {"json": {"prompt": PROMPT}}),
                             ("POST", "/v1/glad/causal-explainability/analyze", {"json": {"prompt": "p", "response": "r"}}),
                             ("GET", "/v1/jobs/" + "0" * 32, {})]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = api.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "s3cret" not in r.text
    r = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    # the page and the health check carry no data and stay open
    assert api.get("/").status_code == 200 and api.get("/healthz").status_code == 200


class _Broken:
    """A language model whose scoring fails with an unexpected error."""

    def __init__(self):
        self.toy = ToyLM()
        self.model_id = "broken"

    def __getattr__(self, name):
        return getattr(self.toy, name)

    def generate(self, prompt, n):
        return self.toy.generate(prompt, n)

    def encode_response(self, r):
        return self.toy.encode_response(r)

    def decode(self, ids):
        return self.toy.decode(ids)

    def token_strings(self, ids):
        return self.toy.token_strings(ids)

    def token_embeddings(self):
        return self.toy.token_embeddings()

    def token_spans(self, text):
        return self.toy.token_spans(text)

    def logprobs(self, prompts, response_ids):
        raise RuntimeError("secret detail /srv/internal/weights.bin")


def test_unexpected_failures_get_500_with_a_request_id_and_no_internals(make_api, caplog):
    api = make_api(model=_Broken())
    r = api.post("/v1/explain", json={"prompt": PROMPT, "response": "alpha", "n_samples": 20})
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal error"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "secret" not in r.text and "Traceback" not in r.text
    # the details are in the server's log, under the same request id
    assert any(body["request_id"] in rec.getMessage() for rec in caplog.records)


def test_a_failing_scalar_model_is_503_model_error(make_api):
    def boom(texts):
        raise ValueError("no")

    r = make_api(model=boom).post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20})
    assert r.status_code == 503
    assert r.json()["error"].startswith("model error:")


class _Gate:
    """A scalar model that blocks until released (to hold a worker busy)."""

    model_id = "gate"

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, texts):
        self.entered.set()
        assert self.release.wait(30)
        return [float(len(t)) for t in texts]


def test_full_queue_gets_503_with_retry_after(make_api):
    gate = _Gate()
    api = make_api(model=gate, max_concurrent=1, max_queue=1, retry_after_s=7)
    first = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20, "async": True})
    assert first.status_code == 202
    assert gate.entered.wait(10)  # running: the only slot is taken
    second = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20, "async": True})
    assert second.status_code == 202  # queued: the only queue place is taken
    third = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20})
    assert third.status_code == 503
    assert third.headers["retry-after"] == "7"
    assert api.get("/healthz").json()["queued"] == 1
    gate.release.set()
    for job in (first, second):
        assert api.wait_job(job.json()["job_id"])["status"] == "succeeded"
    assert api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20}).status_code == 200


def test_no_cors_unless_an_origin_is_configured(make_api):
    origin = {"Origin": "http://elsewhere.test"}
    r = make_api().post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20}, headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    api = make_api(cors_origins=["http://elsewhere.test"], api_key="k")
    pre = api.request("OPTIONS", "/v1/explain", headers={**origin, "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://elsewhere.test"
    r = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20}, headers={**origin, "Authorization": "Bearer k"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://elsewhere.test"
    other = api.request("OPTIONS", "/v1/explain", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"})
    assert other.headers.get("access-control-allow-origin") != "http://evil.test"


# ------------------------------------------------------------------------- jobs
def test_async_job_gives_progress_and_the_same_result(make_api):
    api = make_api()
    sync = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 100}).json()
    r = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 100, "async": True})
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}" == r.json()["url"]
    job = api.wait_job(job_id)
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["kind"] == "explain"
    assert job["result"]["coefficients"] == sync["coefficients"]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


class _Halfway:
    """Answers the path probe (one call on the prompt) and the first batch, then waits (so a
    running job can be observed mid-way)."""

    model_id = "halfway"

    def __init__(self):
        self.calls = 0
        self.release = threading.Event()
        self.paused = threading.Event()

    def __call__(self, texts):
        self.calls += 1
        if self.calls == 3:
            self.paused.set()
            assert self.release.wait(30)
        return [float(len(t)) for t in texts]


def test_running_job_reports_partial_progress(make_api):
    model = _Halfway()
    api = make_api(model=model)
    job_id = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 100, "batch_size": 8, "async": True}).json()["job_id"]
    assert model.paused.wait(10)
    state = api.get(f"/v1/jobs/{job_id}").json()
    assert state["status"] == "running"
    assert 0 < state["progress"] < 1 and state["result"] is None
    model.release.set()
    assert api.wait_job(job_id)["progress"] == 1.0


def test_failed_job_keeps_the_error(make_api):
    api = make_api()
    job_id = api.post("/v1/explain", json={"prompt": "alpha", "async": True}).json()["job_id"]
    job = api.wait_job(job_id)
    assert job["status"] == "failed" and job["error"]["status"] == 422
    assert "at least 2 are needed" in job["error"]["error"]


def test_finished_jobs_survive_a_restart(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = create_app(Settings(jobs_path=path), model=Additive(WEIGHTS))
    api = Api(first)
    job_id = api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 50, "async": True}).json()["job_id"]
    result = api.wait_job(job_id)
    first.state.manager.shutdown()
    first.state.store.close()
    # a blocked job that never finishes before the "restart"
    gate = _Gate()
    second = create_app(Settings(jobs_path=path), model=gate)
    stuck = Api(second).post("/v1/explain", json={"prompt": PROMPT, "n_samples": 50, "async": True}).json()["job_id"]
    assert gate.entered.wait(10)
    # a new service on the same file: the finished job is there, whole; the stuck one is marked
    third = create_app(Settings(jobs_path=path), model=Additive(WEIGHTS))
    api3 = Api(third)
    again = api3.get(f"/v1/jobs/{job_id}").json()
    assert again == result
    lost = api3.get(f"/v1/jobs/{stuck}").json()
    assert lost["status"] == "failed" and "interrupted" in lost["error"]["error"]
    gate.release.set()
    for app in (second, third):
        app.state.manager.shutdown()
        app.state.store.close()


def test_only_the_newest_finished_jobs_are_kept(make_api):
    api = make_api(jobs_keep=2)
    ids = []
    for _ in range(3):
        ids.append(api.post("/v1/explain", json={"prompt": PROMPT, "n_samples": 20, "async": True}).json()["job_id"])
        api.wait_job(ids[-1])
    assert api.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert all(api.get(f"/v1/jobs/{i}").json()["status"] == "succeeded" for i in ids[1:])


def test_unknown_job_is_404(make_api):
    api = make_api()
    assert api.get("/v1/jobs/" + "a" * 32).status_code == 404
    assert api.get("/v1/jobs/../../etc").status_code == 404


# ------------------------------------------------------------------------- schema & page
def test_openapi_schema_matches_the_checked_in_file():
    served = current_schema()
    checked_in = json.loads(SCHEMA_PATH.read_text())
    assert dumps(served) == dumps(checked_in), "API changed: regenerate with `python -m gsmile.server.openapi`"
    paths = set(served["paths"])
    assert {"/v1/explain", "/v1/glad/causal-explainability/analyze", "/v1/jobs/{job_id}", "/healthz"} <= paths


def test_page_and_static_files_are_served_with_a_strict_policy(make_api):
    api = make_api()
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    for name in ("app.js", "app.css"):
        assert api.get(f"/static/{name}").status_code == 200
    assert api.get("/static/../settings.py").status_code == 404
    # no external resources, no markup injection sinks in the script
    assert "http" not in page.text.replace("http-equiv", "")
    script = api.get("/static/app.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.model
def test_explain_on_the_real_model(tmp_path):
    app = create_app(Settings(jobs_path=tmp_path / "jobs.sqlite3"))
    try:
        r = Api(app).post("/v1/explain", json={"prompt": "What is the capital of France?", "response": "Paris",
                                              "n_samples": 10, "target": "logprob"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_id"] and body["response_tokens"] and len(body["coefficients"]) == 6
        assert np.array(body["token_coefficients"]).shape == (6, len(body["response_tokens"]))
    finally:
        app.state.manager.shutdown()
        app.state.store.close()


SEGMENTS = ["alpha bravo ", "charlie delta ", "echo foxtrot ", "golf"]


def test_runs_segments_and_context_reach_the_library(make_api):
    api = make_api()
    body = {"prompt": PROMPT, "n_samples": 60, "random_state": 1, "runs": 2, "top_k": 2, "segments": SEGMENTS}
    r = api.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    direct = explain(PROMPT, model=Additive(WEIGHTS, bias=0.5), n_samples=60, random_state=1, runs=2, top_k=2,
                     segments=SEGMENTS).to_dict()
    got = r.json()
    assert [u["text"] for u in got["units"]] == [u["text"] for u in direct["units"]]
    assert got["coefficients"] == direct["coefficients"]
    assert got["extras"]["stability"]["runs"] == 2
    ctx = api.post("/v1/explain", json={"prompt": "Which words?", "context": "alpha bravo. delta echo.", "n_samples": 20})
    assert ctx.status_code == 200, ctx.text
    assert ctx.json()["explained"] == "context" and ctx.json()["context"] == "alpha bravo. delta echo."


def test_progress_counts_prompts_scored_through_a_streaming_backend():
    class Streaming(ToyLM):
        def reduced_logprobs(self, prompts, response_ids, reduce):
            return np.concatenate([reduce(self.logprobs([p], response_ids)) for p in prompts])

    for backend in (ToyLM(), Streaming()):
        reports = []
        exp = Explainer(backend, method="occlusion", target="logprob",
                        progress=lambda done, expected: reports.append((done, expected))).explain(PROMPT, "alpha delta")
        done = [d for d, _ in reports]
        assert done == sorted(done) and done[-1] == len(exp.units) + 1  # every occlusion and the original, once
        assert all(d <= e for d, e in reports)
        want = Explainer(backend, method="occlusion", target="logprob", progress=False).explain(PROMPT, "alpha delta")
        np.testing.assert_allclose(exp.coefficients, want.coefficients, atol=1e-12)
