"""The explain endpoint with a text-to-image model (tests/image_models.py: a procedural model
that draws the shapes and colours named in the prompt and nothing else), through httpx's
ASGI transport against create_app()."""

from __future__ import annotations

import base64
import concurrent.futures
import io

import pytest
from image_models import shapes, shapes_unseeded
from PIL import Image
from serve_models import Additive, ToyLM
from server_client import AppFactory

from gsmile import Explainer
from gsmile.errors import InvalidInputError
from gsmile.server import Settings
from gsmile.server.service import ModelHolder, model_kind
from gsmile.server.settings import parse_size

PROMPT = "a red circle above a blue square on green grass with a stone bridge"
OTHER = "a yellow triangle under a white circle in the sky near an old stone wall"
DRAWN = ("red", "circle", "blue", "square", "green", "grass")


@pytest.fixture
def make_api(tmp_path):
    factory = AppFactory(tmp_path, lambda: shapes)
    yield factory
    factory.close()


def _scores(body) -> dict[str, float]:
    return {u["text"]: body["coefficients"][i] for i, u in enumerate(body["units"])}


def _png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    assert image.format == "PNG"
    return image


def test_an_image_model_is_explained_with_its_images_and_insights(make_api):
    api = make_api()
    health = api.get("/healthz").json()
    assert health["model_kind"] == "image" and health["max_image_seeds"] == 4 and health["embedder"] == "pixel"
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] == "image-pixel" and body["response"] is None
    images = body["images"]
    assert images["seeds"] == [0] and images["distance"] == "pixel" and len(images["original"]) == 1
    assert _png(images["original"][0]).size == (64, 64)
    assert images["without"], "the top units' images are given"
    for row in images["without"]:
        assert row["text"] in DRAWN and row["distance"] > 0 and len(row["images"]) == 1
        _png(row["images"][0])
    scores = _scores(body)
    for word in DRAWN:
        assert scores[word] > max(scores["stone"], scores["bridge"]) + 1e-6, (word, scores)
    insight = body["insights"]
    assert "ignores" in insight and '"stone"' in insight and '"bridge"' in insight
    ignored = insight[insight.index("ignores"):]
    assert "stone" in ignored and "bridge" in ignored
    # the same as the library's own explanation
    direct = Explainer(shapes, method="occlusion", random_state=0).explain(PROMPT).to_dict()
    assert body["coefficients"] == direct["coefficients"] and body["images"] == direct["images"]


def test_two_images_per_prompt(make_api):
    api = make_api()
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion", "image_seeds": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["images"]["seeds"] == [0, 1] and len(body["images"]["original"]) == 2
    assert body["params"]["image_seeds"] == 2
    assert all(len(row["images"]) == 2 for row in body["images"]["without"])
    scores = _scores(body)
    assert min(scores[w] for w in DRAWN) > max(scores["stone"], scores["bridge"])


def test_the_embedder_is_the_servers_setting_not_a_request_field(make_api):
    api = make_api()
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion", "embedder": "clip:/etc"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "embedder", r.text
    with pytest.raises(InvalidInputError, match="GSMILE_EMBEDDER"):
        Settings.from_env({"GSMILE_EMBEDDER": "nope"}, jobs_path="/tmp/unused.sqlite3")


def test_image_seeds_is_refused_for_a_text_model(make_api):
    api = make_api(model=ToyLM())
    for is_async in (False, True):  # refused before anything is queued
        r = api.post("/v1/explain", json={"prompt": "alpha bravo", "image_seeds": 2, "async": is_async})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["fields"] == [{"field": "image_seeds", "message": "image_seeds applies only to a text-to-image model; "
                                                                      "this service runs a language model (toy-lm)"}]


def test_image_seeds_is_refused_for_a_function_returning_numbers(make_api):
    # what a plain function returns is known when it is called: the library refuses it then
    api = make_api(model=Additive({"alpha": 1.0}))
    r = api.post("/v1/explain", json={"prompt": "alpha bravo", "image_seeds": 2})
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "image_seeds"
    assert "image_seeds applies only to text-to-image models" in r.json()["error"]


def test_image_seeds_above_the_limit_is_refused(make_api):
    api = make_api(max_image_seeds=2)
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion", "image_seeds": 3})
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "image_seeds" and "GSMILE_MAX_IMAGE_SEEDS" in r.json()["error"]
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion", "image_seeds": 0})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "image_seeds"
    with pytest.raises(InvalidInputError, match="GSMILE_MAX_IMAGE_SEEDS"):
        Settings.from_env({"GSMILE_MAX_IMAGE_SEEDS": "0"}, jobs_path="/tmp/unused.sqlite3")


def test_each_image_counts_against_the_sample_limit(make_api):
    api = make_api(max_samples=100)
    ok = {"prompt": PROMPT, "method": "occlusion", "n_samples": 50}
    r = api.post("/v1/explain", json={**ok, "image_seeds": 3})
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "image_seeds" and "GSMILE_MAX_SAMPLES" in r.json()["error"]
    assert "150" in r.json()["error"]
    assert api.post("/v1/explain", json={**ok, "image_seeds": 2}).status_code == 200


def test_a_function_without_a_seed_gives_one_image_per_prompt(make_api):
    api = make_api(model=shapes_unseeded)
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion"})
    assert r.status_code == 200, r.text
    assert r.json()["images"]["seeds"] == [0]
    r = api.post("/v1/explain", json={"prompt": PROMPT, "method": "occlusion", "image_seeds": 2})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "image_seeds", r.text


def test_concurrent_prompts_give_what_each_gives_alone(make_api):
    api = make_api(max_concurrent=2)
    bodies = [{"prompt": p, "method": "occlusion", "image_seeds": 2} for p in (PROMPT, OTHER)]
    alone = [api.post("/v1/explain", json=b).json() for b in bodies]
    together = api.many([("POST", "/v1/explain", {"json": b}) for b in bodies * 2])
    for r, expected in zip(together, alone * 2):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["coefficients"] == expected["coefficients"] and got["images"] == expected["images"]
        assert got["insights"] == expected["insights"]
    # and through the async job endpoint, two at once
    jobs = [api.post("/v1/explain", json={**b, "async": True}).json()["job_id"] for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = list(pool.map(api.wait_job, jobs))
    for job, expected in zip(done, alone):
        assert job["status"] == "succeeded", job
        assert job["result"]["coefficients"] == expected["coefficients"] and job["result"]["images"] == expected["images"]


def test_a_text_explanation_has_insights(tmp_path):
    factory = AppFactory(tmp_path, lambda: Additive({"alpha": 3.0, "bravo": -1.5, "charlie": 0.0}))
    try:
        api = factory()
        assert api.get("/healthz").json()["model_kind"] == "function"
        r = api.post("/v1/explain", json={"prompt": "alpha bravo charlie", "n_samples": 40})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["images"] is None
        assert isinstance(body["insights"], str) and '"alpha"' in body["insights"]
    finally:
        factory.close()


def test_model_kinds_and_image_settings():
    assert model_kind(None, "diffusers:/models/sd") == "image" and model_kind(None, "openai-images:gpt-image-1") == "image"
    assert model_kind(None, "local") == "language" and model_kind(ToyLM()) == "language"
    assert model_kind(shapes) == "image" and model_kind(shapes_unseeded) == "function"
    assert parse_size("512x384") == (512, 384)
    with pytest.raises(InvalidInputError, match="GSMILE_IMAGE_SIZE"):
        Settings.from_env({"GSMILE_IMAGE_SIZE": "big"}, jobs_path="/tmp/unused.sqlite3")
    settings = Settings.from_env({"GSMILE_IMAGE_STEPS": "4", "GSMILE_IMAGE_SIZE": "64x32", "GSMILE_MODEL": "diffusers:/nowhere"},
                                 jobs_path="/tmp/unused.sqlite3")
    assert settings.image_options() == {"steps": 4, "size": (64, 32)}
    holder = ModelHolder(None, settings.model, image_options=settings.image_options(), embedder=settings.embedder)
    assert holder.is_image and holder.placement["image_options"] == {"steps": 4, "size": (64, 32)}
    # a text model given by name gets no image options
    assert "image_options" not in ModelHolder(None, "local", image_options={"steps": 4}).placement
