"""The text-to-image path end to end on a tiny Stable Diffusion pipeline built in code
(random weights, 32 × 32 images, 2 DDIM steps: tests/tiny_diffusion.py) and a tiny CLIP
model for ``embedder="clip:PATH"``; nothing is downloaded."""

from __future__ import annotations

import itertools
import json
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("PIL")

from threads import run_together  # noqa: E402
from image_models import shapes  # noqa: E402
from tiny_diffusion import IMAGE_SIDE, save_tiny_clip, save_tiny_pipeline  # noqa: E402

from gsmile import Explainer  # noqa: E402
from gsmile.backends import resolve_model  # noqa: E402
from gsmile.backends.diffusion import DiffusersModel  # noqa: E402
from gsmile.errors import InvalidInputError  # noqa: E402
from gsmile.targets.images import ImageTarget, make_image_distance, wasserstein_between_sets  # noqa: E402

PROMPT = "a red circle on green grass"
OTHER = "a blue square under the sky"
SIZE = (IMAGE_SIDE, IMAGE_SIDE)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


def tiny(pipe_dir, **options):
    """The tiny pipeline through resolve_model, on the CPU, 2 steps, 32 × 32, no disk cache
    unless options say otherwise (one shared object per settings, as for the CLI)."""
    options = {"steps": 2, "size": SIZE, "use_cache": False, **options}
    return resolve_model("diffusers:" + pipe_dir, device="cpu", image_options=options)


def pixels(images):
    return [np.asarray(im) for im in images]


def count_generations(monkeypatch, model) -> list[int]:
    """Prompts the pipeline is actually run on (what the disk cache did not have)."""
    calls: list[int] = []
    real = model._generate

    def counted(prompts, seed):
        calls.append(len(prompts))
        return real(prompts, seed)

    monkeypatch.setattr(model, "_generate", counted)
    return calls


# ------------------------------------------------------------------ the pipeline itself
def test_same_seed_same_image(pipe_dir):
    model = tiny(pipe_dir)
    first = model.generate_images([PROMPT, OTHER], seed=0)
    again = model.generate_images([PROMPT, OTHER], seed=0)
    assert [im.size for im in first] == [SIZE, SIZE]
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first), pixels(again)))
    other_seed = model.generate_images([PROMPT], seed=1)
    assert not np.array_equal(pixels(other_seed)[0], pixels(first)[0])
    # a prompt's image does not depend on the other prompts of the call (exactly)
    alone = model.generate_images([OTHER], seed=0)
    assert np.array_equal(pixels(alone)[0], pixels(first)[1])


def test_explanation_runs_and_is_reproducible(pipe_dir):
    model = tiny(pipe_dir)
    e1 = Explainer(model, method="occlusion").explain(PROMPT)
    e2 = Explainer(model, method="occlusion").explain(PROMPT)
    assert e1.extras["path"] == "image"
    assert e1.model_id == "diffusers:" + pipe_dir
    assert len(e1.coefficients) == len(PROMPT.split())
    assert np.all(np.isfinite(e1.coefficients)) and np.any(e1.coefficients != 0)
    assert np.array_equal(e1.coefficients, e2.coefficients)
    assert e1.images["generation"] == {"steps": 2, "guidance_scale": None, "size": list(SIZE), "dtype": "float32"}
    assert len(e1.images["original"]) == 1 and all(w["distance"] >= 0 for w in e1.images["without"])


def test_sampled_method_is_reproducible(pipe_dir):
    model = tiny(pipe_dir)
    runs = [Explainer(model, method="gsmile", n_samples=12, random_state=3).explain(PROMPT) for _ in range(2)]
    assert np.array_equal(runs[0].coefficients, runs[1].coefficients)


def test_batch_size_never_changes_coefficients(pipe_dir):
    model = tiny(pipe_dir)
    runs = {b: Explainer(model, method="occlusion", batch_size=b).explain(PROMPT) for b in (1, 4, 8)}
    assert [e.params["batch_size"] for e in runs.values()] == [1, 4, 8]
    for e in runs.values():  # exactly, not to a tolerance
        assert np.array_equal(e.coefficients, runs[1].coefficients)


def test_an_image_never_depends_on_its_batch(pipe_dir):
    """A batched pipeline call rounds a prompt's latents differently with other batch sizes
    (with two torch threads, one pixel of "a red on green grass" moved by one level in a
    batch of 7); DiffusersModel generates each prompt alone."""
    import torch

    model = tiny(pipe_dir)
    words = PROMPT.split()
    prompts = [PROMPT] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = pixels(model.generate_images(prompts, 0))
        alone = [pixels(model.generate_images([prompt], 0))[0] for prompt in prompts]
    finally:
        torch.set_num_threads(threads)
    for prompt, a, b in zip(prompts, alone, together):
        assert np.array_equal(a, b), prompt


def test_disk_cache_generates_nothing_twice(pipe_dir, tmp_path, monkeypatch):
    cache = str(tmp_path / "images")
    first = tiny(pipe_dir, use_cache=True, cache_dir=cache)
    made = count_generations(monkeypatch, first)
    e1 = Explainer(first, method="occlusion").explain(PROMPT)
    assert sum(made) >= len(PROMPT.split()) + 1  # the original and each unit removed
    # a fresh backend (as in a new process) on the same cache directory
    second = DiffusersModel(pipe_dir, device="cpu", steps=2, size=SIZE, cache_dir=cache).validate()
    assert second is not first
    made_again = count_generations(monkeypatch, second)
    e2 = Explainer(second, method="occlusion").explain(PROMPT)
    assert made_again == []
    assert np.array_equal(e1.coefficients, e2.coefficients)
    # other generation settings are other images
    third = DiffusersModel(pipe_dir, device="cpu", steps=3, size=SIZE, cache_dir=cache).validate()
    made_third = count_generations(monkeypatch, third)
    third.generate_images([PROMPT], 0)
    assert made_third == [1]


def test_two_seeds_compare_sets_of_images(pipe_dir):
    model = tiny(pipe_dir)
    e = Explainer(model, method="occlusion", image_seeds=2).explain(PROMPT)
    assert "Wasserstein-1 distance between the two sets of 2 images" in e.extras["path_reason"]
    assert "seeds 0..1" in e.extras["path_reason"]
    assert e.params["image_seeds"] == 2 and e.images["seeds"] == [0, 1]
    assert len(e.images["original"]) == 2 and all(len(w["images"]) == 2 for w in e.images["without"])
    assert np.all(np.isfinite(e.coefficients))


# ------------------------------------------------------------------------------- CLIP
def test_clip_embedder_on_the_procedural_model(clip_dir):
    e = Explainer(shapes, method="occlusion", embedder="clip:" + clip_dir).explain(PROMPT)
    assert e.params["embedder"] == "clip:" + clip_dir
    assert np.all(np.isfinite(e.coefficients))
    distances = [w["distance"] for w in e.images["without"]]
    assert all(np.isfinite(d) and 0 <= d <= 2 for d in distances)
    # words the procedural model ignores change nothing: their distance is exactly 0
    units = [u.text for u in e.units]
    assert e.coefficients[units.index("on")] == 0.0 and e.coefficients[units.index("a")] == 0.0


def test_clip_embedder_on_the_tiny_pipeline(pipe_dir, clip_dir):
    e = Explainer(tiny(pipe_dir), method="occlusion", embedder="clip:" + clip_dir, image_seeds=2).explain(PROMPT)
    assert np.all(np.isfinite(e.coefficients))
    assert all(np.isfinite(w["distance"]) and w["distance"] >= 0 for w in e.images["without"])


@pytest.mark.parametrize("embedder", ["pixel", "clip"])
def test_identical_images_are_at_distance_zero(pipe_dir, clip_dir, embedder):
    spec = "clip:" + clip_dir if embedder == "clip" else embedder
    images = tiny(pipe_dir).generate_images([PROMPT, OTHER], 0)
    distance = make_image_distance(spec)
    assert ImageTarget(distance).prepare(images).shift([images]).tolist() == [0.0]
    for im in images:  # one image per set, each in a batch of its own or with others
        assert ImageTarget(distance).prepare([im]).shift([[im]]).tolist() == [0.0]
    target = ImageTarget(distance).prepare([images[1]])
    shifts = target.shift([[images[0]], [images[1]]])
    assert shifts[1] == 0.0 and shifts[0] > 0


def test_clip_features_do_not_depend_on_the_batch(clip_dir):
    distance = make_image_distance("clip:" + clip_dir)
    images = shapes([PROMPT, OTHER, "yellow triangle", "white sky"], seed=0)
    together = distance.features(images)
    for i, im in enumerate(images):
        assert np.array_equal(distance.features([im])[0], together[i])


def test_clip_path_missing_is_one_clear_line(tmp_path):
    for path in ("/nonexistent/clip-model", str(tmp_path)):  # no directory; a directory with no model
        with pytest.raises(InvalidInputError) as info:
            Explainer(shapes, method="occlusion", embedder="clip:" + path).explain(PROMPT)
        message = str(info.value)
        assert "\n" not in message and f"clip:{path}" in message


def test_lpips_missing_names_the_alternatives(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # as if not installed
    with pytest.raises(InvalidInputError) as info:
        Explainer(shapes, method="occlusion", embedder="lpips").explain(PROMPT)
    message = str(info.value)
    assert "--embedder pixel" in message and "--embedder clip:PATH" in message and "\n" not in message


# -------------------------------------------------------------------------- bad input
def test_directory_without_pipeline(tmp_path):
    with pytest.raises(InvalidInputError, match="model_index.json"):
        resolve_model("diffusers:" + str(tmp_path), device="cpu")
    with pytest.raises(InvalidInputError, match="no such directory"):
        resolve_model("diffusers:" + str(tmp_path / "missing"), device="cpu")
    with pytest.raises(InvalidInputError, match="no such directory"):
        Explainer("diffusers:" + str(tmp_path / "missing"), method="occlusion").explain(PROMPT)


# --------------------------------------------------------------------------- exact OT
def test_wasserstein_is_the_optimal_permutation():
    rng = np.random.default_rng(0)
    k, perm = 4, [2, 0, 3, 1]
    cost = 1.0 + rng.uniform(0, 1, size=(k, k))  # every entry off the permutation is >= 1
    small = rng.uniform(0.1, 0.4, size=k)
    cost[np.arange(k), perm] = small  # any other matching uses two entries >= 1: sum >= 2 > 1.6
    assert wasserstein_between_sets(cost) == pytest.approx(small.mean(), abs=1e-12)
    # greedy row by row would take 0 then 10 (mean 5); the optimum crosses over (mean 0.5)
    assert wasserstein_between_sets(np.array([[0.0, 1.0], [0.0, 10.0]])) == pytest.approx(0.5, abs=1e-12)
    # uniform K × K: the optimum is a permutation (Birkhoff); check against all of them
    cost = rng.uniform(0, 1, size=(5, 5))
    best = min(cost[np.arange(5), list(p)].mean() for p in itertools.permutations(range(5)))
    assert wasserstein_between_sets(cost) == pytest.approx(best, abs=1e-12)


def test_wasserstein_of_one_image_is_its_cost():
    assert wasserstein_between_sets(np.array([[0.3721]])) == 0.3721
    assert wasserstein_between_sets(np.zeros((3, 3))) == 0.0


# ------------------------------------------------------------------------ concurrency
def stateful_scheduler_copy(pipe_dir, tmp_path) -> str:
    """The tiny pipeline with EulerDiscreteScheduler, whose step() counts steps on the
    scheduler itself (``_step_index``): two calls at once on one scheduler would mix them."""
    folder = tmp_path / "euler"
    shutil.copytree(pipe_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["_class_name"] = "EulerDiscreteScheduler"
    config_file.write_text(json.dumps(config))
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    index_file.write_text(json.dumps(index))
    return str(folder)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_two_prompts_at_once_on_one_pipeline(pipe_dir, tmp_path, scheduler):
    path = pipe_dir if scheduler == "ddim" else stateful_scheduler_copy(pipe_dir, tmp_path)
    model = DiffusersModel(path, device="cpu", steps=4, size=SIZE, use_cache=False).validate()
    prompts = [PROMPT, OTHER]

    def explain(prompt):
        return Explainer(model, method="occlusion", batch_size=1).explain(prompt).coefficients

    alone = [explain(p) for p in prompts]
    results = [r for r, _, _ in run_together([lambda p=p: explain(p) for p in prompts])]
    for i in range(len(prompts)):
        assert np.array_equal(results[i], alone[i]), (prompts[i], results[i], alone[i])


def test_the_command_line_explains_a_diffusers_prompt_and_resumes_from_its_cache(pipe_dir, clip_dir, tmp_path):
    """As the README runs it: gsmile explain --model diffusers:PATH ... with every output; the
    rerun generates nothing (every image comes from the disk cache) and gives the same JSON."""
    import json
    import os
    import subprocess
    import sys

    out = {k: tmp_path / f"exp.{k}" for k in ("json", "html", "png")}
    argv = [sys.executable, "-m", "gsmile.cli", "explain", "a red circle on green grass", "--model", f"diffusers:{pipe_dir}",
            "--image-steps", "2", "--image-size", "32x32", "--image-seeds", "2", "--embedder", f"clip:{clip_dir}",
            "--method", "occlusion", "--cache-dir", str(tmp_path / "calls"), "--quiet",
            "--json", str(out["json"]), "--html", str(out["html"]), "--png", str(out["png"])]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "Insight: " in first.stdout and "compared by clip:" in first.stdout
    data = json.loads(out["json"].read_text())
    assert data["target"] == "image-clip" and data["params"]["image_seeds"] == 2
    assert data["extras"]["generation"]["steps"] == 2 and data["extras"]["generation"]["size"] == [32, 32]
    assert out["html"].read_text().count("data:image/png;base64,") == 2 + 3  # both originals; the first seed's image without each top unit
    assert out["png"].read_bytes().startswith(b"\x89PNG")
    import sqlite3

    def rows():  # every stored image with the time it was written (a regenerated one is written again)
        with sqlite3.connect(tmp_path / "calls" / "calls.sqlite3") as db:
            return sorted(db.execute("SELECT key, created FROM calls").fetchall())

    stored = rows()
    assert len(stored) >= 2 * 5  # 2 seeds × (the original and at least 4 prompts without a word)
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert rows() == stored  # nothing generated again
    assert json.loads(out["json"].read_text())["coefficients"] == data["coefficients"]
