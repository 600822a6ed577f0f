"""The plain-language insight is read off the numbers: each sentence follows from them, and an
unreliable explanation gets no advice."""

from __future__ import annotations

import json

import numpy as np

from gsmile.explanation import Explanation
from gsmile.units import Unit


def made(coefs, words=None, *, fidelity=0.95, held_out=0.9, explained="prompt", target="wasserstein", images=None, n=200):
    words = words or [f"w{i}" for i in range(len(coefs))]
    units, pos = [], 0
    for w in words:
        units.append(Unit(w, pos, pos + len(w)))
        pos += len(w) + 1
    return Explanation(prompt=" ".join(words), response="r", units=units, coefficients=np.array(coefs, float), intercept=0.0,
                       fidelity_r2=fidelity, held_out_r2=held_out, explained=explained, target=target, images=images,
                       n_samples=n, n_unique=n, effective_sample_size=float(n), context=" ".join(words) if explained == "context" else None)


def test_dominant_and_ignored_units_with_their_scores_and_share():
    exp = made([0.8, 0.02, 0.5, 0.0, 0.1], ["capital", "the", "France", "of", "why"])
    text = exp.insights
    assert text.startswith('"capital" and "France" dominate: together 92% of the total attribution.')
    assert '"of" (0.00)' in text and '"the" (0.02)' in text and '"why"' not in text.split("largely ignores")[1]
    assert "Removing the ignored words barely changes the response" in text


def test_a_negative_dominant_unit_is_said_to_push_the_other_way():
    assert '"b" pushes the response the other way (negative coefficient).' in made([1.0, -0.9, 0.3], ["a", "b", "c"]).insights


def test_context_advice_and_every_unit_mattering():
    text = made([0.5, 0.01, 0.4], ["S1.", "S2.", "S3."], explained="context").insights
    assert "The answer rests on the dominant" in text and "could be dropped from the context" in text
    assert "Every word matters to some degree" in made([1.0, 0.5, 0.3]).insights


def test_an_unreliable_explanation_gets_no_advice():
    for exp in (made([1.0, 0.0, 0.2], fidelity=0.3), made([1.0, 0.0, 0.2], held_out=0.1), made([1.0, 0.0, 0.2], n=2)):
        text = exp.insights
        assert text.startswith("This explanation is not reliable enough to act on: ")
        assert "dominate" not in text and "prompt-weighting" not in text and "barely changes" not in text


def test_image_prompts_get_the_prompt_weighting_recommendation_for_ignored_phrases():
    images = {"seeds": [0], "distance": "pixel", "original": [], "without": []}
    exp = made([0.5, 0.0, 0.01, 0.02, 0.4], ["garden", "a", "stone", "bridge", "sunset"], target="image-pixel", images=images)
    assert 'To make the image show "stone bridge", move it to the beginning of the prompt' in exp.insights
    assert '"(stone bridge:1.5)"' in exp.insights


def test_the_json_carries_the_insight_and_a_loaded_file_recomputes_it():
    exp = made([0.8, 0.02, 0.5])
    data = json.loads(exp.to_json())
    assert data["insights"] == exp.insights
    data["insights"] = "edited"
    assert Explanation.from_dict(data).insights == exp.insights  # read off the numbers, not the file
