"""Text-to-image prompts: the image path end to end with the procedural model of
tests/image_models.py (it draws the colours and shapes named in the prompt and ignores every
other word, by construction)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from image_models import draw, shapes, shapes_unseeded
from threads import run_together  # noqa: E402

from gsmile import Explainer
from gsmile.backends.images import ImageDistanceModel, ImageFunction, decode_png, encode_png
from gsmile.errors import InvalidInputError, ModelError, SchemaError
from gsmile.explanation import Explanation
from gsmile.faithfulness import evaluate
from gsmile.render import render_html, render_terminal
from gsmile.targets.images import ImageTarget, PixelDistance, make_image_distance, wasserstein_between_sets

PROMPT = "a red circle above a blue square on green grass with a stone bridge"
DRAWN = {"red", "circle", "blue", "square", "green", "grass"}


def scores_by_word(exp) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in exp.attributions():
        out[a.text] = max(out.get(a.text, 0.0), a.score)
    return out


@pytest.fixture(scope="module")
def occlusion():
    return Explainer(shapes, method="occlusion").explain(PROMPT)


def test_drawn_words_rank_above_ignored_ones_and_the_insight_names_them(occlusion):
    scores = scores_by_word(occlusion)
    lowest_drawn = min(scores[w] for w in DRAWN)
    assert all(scores[w] < lowest_drawn for w in scores if w not in DRAWN)
    # Words the renderer never reads change nothing: exactly zero with common random numbers.
    assert scores["stone"] == 0.0 and scores["bridge"] == 0.0
    text = occlusion.insights
    assert '"stone" (0.00)' in text and '"bridge" (0.00)' in text and "largely ignores" in text
    assert '"(stone bridge:1.5)"' in text  # the recommendation for the ignored phrase
    assert occlusion.target == "image-pixel" and occlusion.response is None
    assert occlusion.extras["path"] == "image" and occlusion.params["image_seeds"] == 1
    assert occlusion.params["embedder"] == "pixel"


def test_gsmile_with_a_budget_finds_the_drawn_words():
    exp = Explainer(shapes, method="gsmile", max_evals=80, random_state=0).explain(PROMPT)
    assert exp.reliable, exp.reliability_issues
    top = {a.text for a in exp.top(4)}
    assert top <= DRAWN
    scores = scores_by_word(exp)
    assert scores["stone"] < 0.1 and scores["bridge"] < 0.1


def test_common_random_numbers_the_original_scores_zero_and_removing_an_ignored_word_too():
    model = ImageDistanceModel(ImageFunction(shapes), ImageTarget(PixelDistance()), seeds=[0, 1, 2]).with_reference(PROMPT)
    values = model([PROMPT, PROMPT.replace(" stone", ""), PROMPT.replace(" red", "")])
    assert values[0] == 0.0 and values[1] == 0.0
    assert values[2] < -0.05
    # Without common seeds the same prompt would move: images from other seeds differ.
    other = ImageTarget(PixelDistance()).prepare([draw(PROMPT, 7)])
    assert other.shift([[draw(PROMPT, 0)]])[0] > 0.01


def test_k_seeds_compare_sets_of_images_by_exact_wasserstein():
    target = ImageTarget(PixelDistance()).prepare([draw(PROMPT, s) for s in (0, 1)])
    moved = [draw(PROMPT.replace("red", "yellow"), s) for s in (0, 1)]
    feats = PixelDistance().features(moved)
    cost = PixelDistance().cost(feats, target.reference_)
    # Two points each: the optimum is the better of the two matchings.
    best = min((cost[0, 0] + cost[1, 1]) / 2, (cost[0, 1] + cost[1, 0]) / 2)
    assert target.shift([moved])[0] == pytest.approx(best, abs=1e-12)
    assert wasserstein_between_sets(np.array([[0.3]])) == 0.3
    exp = Explainer(shapes, method="occlusion", image_seeds=3).explain(PROMPT)
    assert exp.params["image_seeds"] == 3 and exp.images["seeds"] == [0, 1, 2]
    assert "Wasserstein-1 distance between the two sets of 3 images" in exp.extras["path_reason"]
    assert len(exp.images["original"]) == 3


def test_batch_size_does_not_change_results():
    runs = [Explainer(shapes, method="lime", n_samples=40, random_state=3, batch_size=b).explain(PROMPT) for b in (1, 3, 64)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.coefficients, runs[0].coefficients)


class CountingImages:
    """A shared image model that counts its generations (and holds nothing else)."""

    def __init__(self):
        self.model_id = "counting-shapes"
        self.lock = threading.Lock()
        self.calls = 0

    def generate_images(self, prompts, seed):
        with self.lock:
            self.calls += len(prompts)
        return shapes(prompts, seed)


def test_one_shared_image_model_serves_different_explanations_at_once():
    model = CountingImages()
    jobs = [("a red circle above a blue square", 0), ("green grass under a yellow triangle with a stone bridge", 1),
            (PROMPT, 2)]

    def run(prompt, seed):
        return Explainer(model, method="gsmile", n_samples=30, random_state=seed, image_seeds=2).explain(prompt)

    alone = [run(*job) for job in jobs]
    together = [result for result, _, _ in run_together([lambda job=job: run(*job) for job in jobs])]
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a.coefficients, b.coefficients)
        assert a.images["original"] == b.images["original"]


def test_json_round_trip_keeps_images_and_insights(occlusion):
    data = json.loads(occlusion.to_json())
    assert data["insights"] == occlusion.insights
    assert data["images"]["distance"] == "pixel" and len(data["images"]["without"]) == 3
    back = Explanation.from_json(occlusion.to_json())
    assert back.images == occlusion.images and back.insights == occlusion.insights
    image = decode_png(back.images["original"][0])
    assert np.array_equal(np.asarray(image), np.asarray(draw(PROMPT, 0)))  # lossless
    top = back.images["without"][0]
    assert top["text"] == "circle" and top["distance"] == pytest.approx(-float(occlusion.coefficients[2]) * -1, rel=1e-9)
    data["images"] = {"original": "not a list"}
    with pytest.raises(SchemaError):
        Explanation.from_dict(data)


def test_renderers_show_the_images_and_the_insight(occlusion):
    html = render_html(occlusion)
    assert html.count('src="data:image/png;base64,') == 1 + 3
    assert "Insight" in html and "largely ignores" in html
    fragment = occlusion._repr_html_()
    assert fragment.startswith('<div class="gsmile-report">') and "<html" not in fragment
    assert fragment.count("data:image/png;base64,") == 4 and ".gsmile-report h2{" in fragment
    text = render_terminal(occlusion)
    assert "Insight: " in text and "Images: 1 image per prompt (seed 0), compared by pixel" in text
    assert "without circle: 0.214" in text


def test_html_never_emits_image_data_that_is_not_base64(occlusion):
    bad = Explanation.from_dict({**occlusion.to_dict(), "images": {**occlusion.images, "original": ['x" onerror="alert(1)']}})
    html = render_html(bad)
    assert "onerror" not in html and html.count("data:image/png;base64,") == 3


def test_evaluate_scores_an_image_explanation_with_its_seeds_and_distance(occlusion):
    metrics = evaluate(occlusion, shapes, random_state=0)
    assert metrics["deletion_aopc"] > metrics["random_deletion_aopc"]
    with pytest.raises(ModelError, match="must return PIL images; got float"):
        evaluate(occlusion, lambda texts: [1.0] * len(texts))
    with pytest.raises(InvalidInputError, match="made for a text-to-image model"):
        evaluate(occlusion, "local")


def test_unseeded_function_gives_one_image_per_prompt_only():
    exp = Explainer(shapes_unseeded, method="occlusion").explain(PROMPT)
    assert scores_by_word(exp)["circle"] == 1.0
    with pytest.raises(InvalidInputError, match="takes a seed"):
        Explainer(shapes_unseeded, method="occlusion", image_seeds=2).explain(PROMPT)


@pytest.mark.parametrize("options, message", [
    ({"image_seeds": 0}, "image_seeds must be an integer from 1"),
    ({"image_seeds": 1.5}, "image_seeds must be an integer"),
    ({"embedder": "jpeg"}, "unknown embedder 'jpeg'"),
    ({"embedder": "pixel:x"}, "takes no argument"),
    ({"embedder": "clip"}, "clip:PATH"),
])
def test_bad_image_options_are_refused_before_any_generation(options, message):
    model = CountingImages()
    with pytest.raises(InvalidInputError, match=message):
        Explainer(model, **options).explain(PROMPT)
    assert model.calls == 0


def test_image_options_with_a_text_model_and_a_response_with_an_image_model_are_refused():
    with pytest.raises(InvalidInputError, match="image_seeds applies only to text-to-image models"):
        Explainer(lambda texts: [float(len(t)) for t in texts], image_seeds=2).explain("two words")
    with pytest.raises(InvalidInputError, match="no text response"):
        Explainer(shapes).explain(PROMPT, response="a picture")


@pytest.mark.parametrize("func, message", [
    (lambda prompts, seed: [draw(p, seed) for p in prompts][:-1], "returned 0 images for 1 prompts|returned .* images for .* prompts"),
    (lambda prompts, seed: ["not an image"] * len(prompts), "must return PIL images"),
    (lambda prompts, seed: 1 / 0, "raised ZeroDivisionError"),
])
def test_an_image_function_that_misbehaves_gives_one_clear_model_error(func, message):
    with pytest.raises(ModelError, match=message):
        Explainer(func, method="occlusion").explain(PROMPT)


def test_png_round_trip_and_thumbnails():
    image = draw(PROMPT, 0, size=300)
    assert np.array_equal(np.asarray(decode_png(encode_png(image))), np.asarray(image))
    assert decode_png(encode_png(image, max_side=100)).size == (100, 100)
    with pytest.raises(ModelError, match="could not be decoded"):
        decode_png("bm90IGFuIGltYWdl")


def test_pixel_distance_is_zero_exactly_for_the_same_image_and_bounded():
    d = make_image_distance("pixel")
    white = draw("white", 0)
    from PIL import Image

    a, b = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))
    fa, fb = d.features([a, white]), d.features([b])
    assert d.cost(fa[:1], fa[:1])[0, 0] == 0.0
    assert d.cost(fa[:1], fb)[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["gsmile", "occlusion", "lime", "kernelshap", "shapley", "mupax", "banzhaf"])
def test_every_method_explains_an_image_prompt(method):
    prompt = "a red circle on green grass with a bridge"  # 8 words: exact Shapley stays small
    exp = Explainer(shapes, method=method, n_samples=60, random_state=0).explain(prompt)
    top = exp.top(1)[0].text
    assert top in DRAWN, (method, top)
    assert exp.images is not None
    if method == "shapley":  # a word the model never reads is a null player: exactly 0
        assert scores_by_word(exp)["bridge"] == pytest.approx(0.0, abs=1e-12)
    if method in ("gsmile", "occlusion", "kernelshap"):
        assert exp.reliable, exp.reliability_issues
    if exp.reliable:
        assert scores_by_word(exp)["bridge"] < 0.15, method
        assert "largely ignores" in exp.insights and "bridge" in exp.insights
    else:  # colours need their shapes: a linear surrogate can miss that, and the insight then gives no advice
        assert exp.insights.startswith("This explanation is not reliable enough to act on") and "prompt-weighting" not in exp.insights


def test_stability_runs_and_until_stable_work_on_images():
    exp = Explainer(shapes, method="gsmile", n_samples=40, runs=3, random_state=0).explain(PROMPT)
    assert exp.extras["stability"]["runs"] == 3
    exp = Explainer(shapes, method="gsmile", n_samples=30, until_stable=True, max_rounds=4, random_state=0).explain(PROMPT)
    assert exp.extras["until_stable"]["rounds"] >= 2
