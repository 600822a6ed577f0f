"""``openai-images:NAME``: a text-to-image model behind an OpenAI-compatible images API,
against the fake server of tests/fake_openai.py, whose /images/generations draws the prompt
with the procedural model of tests/image_models.py (no real model needed)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from threads import run_together  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402
from image_models import draw  # noqa: E402

from gsmile import Explainer  # noqa: E402
from gsmile.backends import ImageModel, PerExplanation, ReportsExtras, resolve_model  # noqa: E402
from gsmile.backends.cache import CallCache  # noqa: E402
from gsmile.backends.images_api import ImagesAPIBackend  # noqa: E402
from gsmile.errors import InvalidInputError, ModelError  # noqa: E402

PROMPT = "a red circle above a blue square on green grass with a stone bridge"
OTHER = "a yellow triangle under white sky beside an orange circle near a wooden fence"
DRAWN = ("red", "circle", "blue", "square", "green", "grass")


@pytest.fixture
def server():
    with FakeOpenAI(retry_after="0.2", stall_s=1.0) as srv:
        yield srv


def backend(srv, directory, **kw):
    kw.setdefault("cache_dir", directory)
    kw.setdefault("backoff", 0.01)
    return ImagesAPIBackend("fake", base_url=srv.base_url, **kw).validate()


def explain(model, prompt=PROMPT, method="occlusion", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer(model, method=method, random_state=0, **kw).explain(prompt)


def scores(exp) -> dict[str, float]:
    return {a.text: a.score for a in exp.attributions()}


def assert_no_generation_twice(srv):
    assert srv.generations and max(srv.generations.values()) == 1, [k for k, n in srv.generations.items() if n > 1]


# ------------------------------------------------------------ the explanation
def test_words_that_change_the_drawing_rank_above_the_others(server, tmp_path):
    model = resolve_model("openai-images:fake", base_url=server.base_url, cache_dir=tmp_path, backoff=0.01)
    assert isinstance(model, ImagesAPIBackend) and isinstance(model, ImageModel) and isinstance(model, ReportsExtras)
    assert not isinstance(model, PerExplanation)  # shared, no per-explanation state
    exp = explain(model)
    assert exp.extras["path"] == "image" and exp.model_id == "openai-images:fake"
    s = scores(exp)
    drawn = [s[w] for w in DRAWN]
    others = [a.score for a in exp.attributions() if a.text not in DRAWN]
    assert min(drawn) > 0.2 and max(others) < 1e-9
    assert s["stone"] == pytest.approx(0.0, abs=1e-9) and s["bridge"] == pytest.approx(0.0, abs=1e-9)
    assert "largely ignores" in exp.insights and '"stone"' in exp.insights and '"bridge"' in exp.insights
    assert "(stone bridge:1.5)" in exp.insights
    # the extras say how the model was reached, not call counts (the backend is shared)
    assert exp.extras["generation"] == {"model": "fake", "size": None, "steps": None, "guidance_scale": None}
    assert exp.extras["api"] == {"base_url": server.base_url, "endpoint": "/images/generations", "concurrency": 4,
                                 "cache": str(tmp_path / "calls.sqlite3")}
    assert "calls" not in exp.extras
    # one generation per distinct prompt, each body as the API expects
    assert_no_generation_twice(server)
    assert sum(server.generations.values()) == model.call_stats()["calls"] == exp.n_unique
    body = server.bodies[0]
    assert body == {"model": "fake", "prompt": PROMPT, "n": 1, "response_format": "b64_json", "seed": 0}
    # the images are the server's, pixel for pixel (PNG is lossless)
    np.testing.assert_array_equal(np.asarray(model.generate_images([PROMPT], 3)[0]), np.asarray(draw(PROMPT, 3)))


def test_a_rerun_on_the_same_cache_asks_for_nothing(server, tmp_path):
    first = explain(backend(server, tmp_path), image_seeds=2)
    made = sum(server.generations.values())
    again_backend = backend(server, tmp_path)
    again = explain(again_backend, image_seeds=2)
    assert sum(server.generations.values()) == made and again_backend.call_stats()["calls"] == 0
    np.testing.assert_array_equal(again.coefficients, first.coefficients)
    assert {seed for _, seed in server.generations} == {0, 1}


def test_generation_settings_are_sent_and_key_the_cache(server, tmp_path):
    opts = dict(base_url=server.base_url, cache_dir=tmp_path, prompt_template="chatml", top_logprobs=5, batch_prompts=1,
                concurrency=2, max_retries=3, timeout=30.0, use_cache=True, random_state=0, api_key_env=None)
    model = resolve_model("openai-images:fake", **opts, image_options={"steps": 4, "guidance_scale": 7.5, "size": (48, 32), "use_cache": None})
    image = model.generate_images(["a red circle"], 5)[0]
    assert image.size == (48, 32)
    assert server.bodies[-1] == {"model": "fake", "prompt": "a red circle", "n": 1, "response_format": "b64_json", "seed": 5,
                                 "size": "48x32", "steps": 4, "guidance_scale": 7.5}
    assert model.explanation_extras()["generation"] == {"model": "fake", "size": "48x32", "steps": 4, "guidance_scale": 7.5}
    # another setting is another request; the same one comes from the cache
    resolve_model("openai-images:fake", **opts, image_options={"steps": 8, "size": (48, 32)}).generate_images(["a red circle"], 5)
    assert "guidance_scale" not in server.bodies[-1] and server.bodies[-1]["steps"] == 8
    resolve_model("openai-images:fake", **opts, image_options={"steps": 4, "guidance_scale": 7.5, "size": (48, 32)}).generate_images(["a red circle"], 5)
    assert server.generations[("a red circle", 5)] == 2 and len(server.bodies) == 2


def test_without_the_cache_no_request_is_repeated_within_a_run(server, tmp_path):
    model = backend(server, tmp_path / "unused", use_cache=False)
    exp = explain(model)
    assert not (tmp_path / "unused").exists() and exp.extras["api"]["cache"] is None
    assert_no_generation_twice(server)


# ------------------------------------------------------------------ faults
@pytest.mark.parametrize("faults", [["429"], ["500"], ["stall"], ["429", "500", "stall", "drop", "503", "429"]])
def test_faults_are_retried_and_change_nothing(server, tmp_path, faults):
    clean = explain(backend(server, tmp_path / "clean"))
    server.generations.clear()
    server.retry_after = "7"
    server.faults = list(faults)
    slept = []
    model = backend(server, tmp_path / "faulty", timeout=0.3, sleep=slept.append)
    faulty = explain(model)
    np.testing.assert_array_equal(faulty.coefficients, clean.coefficients)
    assert faulty.intercept == clean.intercept
    stats = model.call_stats()
    assert stats["retries"] == len(faults) == server.faulted and stats["calls"] == clean.n_unique
    assert len(slept) == len(faults) and slept.count(7.0) == faults.count("429")
    assert_no_generation_twice(server)


def test_a_failed_run_keeps_its_images_and_the_rerun_makes_only_the_rest(server, tmp_path):
    reference = explain(backend(server, tmp_path / "ref"))
    total = sum(server.generations.values())
    server.generations.clear()
    server.faults = ["ok"] * 5 + ["500"] * 100  # the server fails for good after five images
    with pytest.raises(ModelError, match=r"openai-images:fake at http://127\.0\.0\.1:\d+/v1/images/generations: giving up .*HTTP 500"):
        explain(backend(server, tmp_path / "run", max_retries=1, sleep=lambda s: None))
    assert sum(server.generations.values()) == 5 and len(CallCache(tmp_path / "run")) == 5
    server.faults = []
    model = backend(server, tmp_path / "run")
    again = explain(model)
    assert model.call_stats()["calls"] == total - 5
    assert_no_generation_twice(server)
    np.testing.assert_array_equal(again.coefficients, reference.coefficients)


RUN = """
import json, sys, warnings
warnings.simplefilter("ignore")
from gsmile import Explainer
from gsmile.backends import resolve_model
base_url, cache, out = sys.argv[1:4]
model = resolve_model("openai-images:fake", base_url=base_url, cache_dir=cache, concurrency=2, backoff=0.01)
exp = Explainer(model, method="occlusion", random_state=0, batch_size=2).explain(%r)
open(out, "w").write(exp.to_json())
""" % PROMPT


def _run(srv, cache, out):
    return [sys.executable, "-c", RUN, srv.base_url, str(cache), str(out)], {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_a_killed_run_resumes_without_generating_anything_twice(server, tmp_path):
    cmd, env = _run(server, tmp_path / "full", tmp_path / "full.json")
    subprocess.run(cmd, env=env, check=True, timeout=120)
    full = json.loads((tmp_path / "full.json").read_text())
    total = sum(server.generations.values())
    server.generations.clear()
    server.requests = 0

    cmd, env = _run(server, tmp_path / "run", tmp_path / "run.json")
    done = server.run_until_gate_and_kill(cmd, env, tmp_path / "run", after=total // 2)
    assert done == total // 2 == sum(server.generations.values()) and not (tmp_path / "run.json").exists()

    subprocess.run(cmd, env=env, check=True, timeout=120)
    assert sum(server.generations.values()) == total  # the rest only: no (prompt, seed) twice
    assert_no_generation_twice(server)
    resumed = json.loads((tmp_path / "run.json").read_text())
    assert resumed["coefficients"] == full["coefficients"] and resumed["intercept"] == full["intercept"]


# ---------------------------------------------------------- bad answers, bad input
@pytest.mark.parametrize("answer, message", [
    ("none", r"returned no image for prompt 'a red circle above .*' \(the answer has no data\[0\]\)"),
    ("url", r"returned an image URL instead of image data for prompt .*response_format=b64_json"),
    ("corrupt", r"returned an unreadable image for prompt .*could not be decoded"),
])
def test_an_answer_without_an_image_is_a_one_line_model_error_and_is_not_cached(server, tmp_path, answer, message):
    server.image_answer = answer
    with pytest.raises(ModelError, match=r"^openai-images:fake at http://127\.0\.0\.1:\d+/v1/images/generations " + message) as info:
        explain(backend(server, tmp_path))
    assert "\n" not in str(info.value)
    assert len(CallCache(tmp_path)) == 0  # a rerun asks again
    server.image_answer = "b64"
    assert scores(explain(backend(server, tmp_path)))["circle"] == 1.0


def test_bad_settings_are_refused_before_any_call(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    cases = [
        (dict(model=""), "needs a model name"),
        (dict(base_url="localhost:8080/v1"), "must start with http:// or https://"),
        (dict(base_url="http://"), "name a host"),
        (dict(timeout=0), "timeout must be a positive number"),
        (dict(timeout=float("nan")), "timeout must be a positive number"),
        (dict(backoff=-1), "backoff must be a non-negative number"),
        (dict(concurrency=0), "concurrency must be an integer of at least 1"),
        (dict(max_retries=-1), "max_retries must be an integer of at least 0"),
        (dict(size=(0, 64)), "image size must be"),
        (dict(size="64by64"), "image size must be"),
        (dict(steps=0), "image steps must be an integer of at least 1"),
        (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number"),
    ]
    for kw, message in cases:
        kw = {"model": "m", "base_url": "http://127.0.0.1:9/v1", **kw}
        with pytest.raises(InvalidInputError, match=message):
            ImagesAPIBackend(kw.pop("model"), **kw).validate()
    assert ImagesAPIBackend("m", base_url="http://h/v1", size="512x256").validate().size_text == "512x256"
    with pytest.raises(TypeError, match="top_k"):
        ImagesAPIBackend("m", top_k=3)
    with pytest.raises(InvalidInputError, match="needs a model name"):
        resolve_model("openai-images:")
    with pytest.raises(InvalidInputError, match="device, dtype and max_batch_tokens apply only to local models"):
        resolve_model("openai-images:m", device="cpu")
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://example")
    with pytest.raises(InvalidInputError, match="'ftp://example'"):
        resolve_model("openai-images:m")
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InvalidInputError, match="set OPENAI_API_KEY"):
        resolve_model("openai-images:m").generate_images(["x"], 0)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gsmile.cli", "explain", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_no_image_exits_1_and_a_bad_base_url_exits_2_with_one_line(server, tmp_path):
    env = {"OPENAI_BASE_URL": server.base_url, "GSMILE_CACHE_DIR": str(tmp_path)}
    server.image_answer = "none"
    r = _cli(PROMPT, "--model", "openai-images:fake", "--method", "occlusion", "--quiet", env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("gsmile: model error: openai-images:fake at ") and "returned no image for prompt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli(PROMPT, "--model", "openai-images:fake", "--method", "occlusion", "--quiet", env={**env, "OPENAI_BASE_URL": "localhost:9/v1"})
    assert r.returncode == 2 and "must start with http:// or https://" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    server.image_answer = "b64"
    out = tmp_path / "exp.json"
    r = _cli(PROMPT, "--model", "openai-images:fake", "--method", "occlusion", "--quiet", "--json", str(out), env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["model_id"] == "openai-images:fake" and data["extras"]["path"] == "image"


def test_cli_api_flags_reach_an_images_model(server, tmp_path):
    env = {"GSMILE_CACHE_DIR": str(tmp_path)}
    server.image_answer = "none"
    r = _cli(PROMPT, "--model", "openai-images:fake", "--base-url", server.base_url, "--method", "occlusion", "--quiet", env=env)
    assert r.returncode == 1 and "returned no image for prompt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli(PROMPT, "--model", "openai-images:fake", "--base-url", "localhost:9/v1", "--quiet", env=env)
    assert r.returncode == 2 and "must start with http:// or https://" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    server.image_answer = "b64"
    out, page = tmp_path / "exp.json", tmp_path / "exp.html"
    r = _cli(PROMPT, "--model", "openai-images:fake", "--base-url", server.base_url, "--cache-dir", str(tmp_path / "calls"),
             "--image-seeds", "2", "--image-size", "48x48", "--method", "occlusion", "--json", str(out), "--html", str(page), env=env)
    assert r.returncode == 0, r.stderr
    assert "Insight: " in r.stdout and "Images: 2 images per prompt (seeds 0, 1)" in r.stdout
    data = json.loads(out.read_text())
    assert data["params"]["image_seeds"] == 2 and data["extras"]["generation"]["size"] == "48x48"
    assert page.read_text().count("data:image/png;base64,") == 2 + 3
    assert (tmp_path / "calls" / "calls.sqlite3").is_file()


# ------------------------------------------------------- sharing and batching
def test_one_backend_explains_two_prompts_at_once_as_it_does_one_by_one(server, tmp_path):
    alone = [explain(backend(server, tmp_path / "alone"), p, method="gsmile", n_samples=24) for p in (PROMPT, OTHER)]
    server.delay_s = 0.01  # requests of the two explanations overlap
    server.max_in_flight = 0
    shared = backend(server, tmp_path / "shared")
    results = [r for r, _, _ in run_together([lambda p=p: explain(shared, p, method="gsmile", n_samples=24) for p in (PROMPT, OTHER)])]
    assert server.max_in_flight > 1
    for got, want in zip(results, alone):
        np.testing.assert_array_equal(got.coefficients, want.coefficients)
        assert got.intercept == want.intercept and got.extras == {**want.extras, "api": {**want.extras["api"], "cache": got.extras["api"]["cache"]}}


def test_batch_size_does_not_change_results(server, tmp_path):
    runs = [explain(backend(server, tmp_path / f"b{b}", concurrency=3), method="gsmile", n_samples=30, batch_size=b) for b in (1, 5, None)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.coefficients, runs[0].coefficients)
        assert other.intercept == runs[0].intercept
