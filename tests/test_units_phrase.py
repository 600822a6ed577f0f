"""Phrase units (rule-based chunker) and user-given segments."""

import warnings

import numpy as np
import pytest

from gsmile import explain
from gsmile.errors import InvalidInputError
from gsmile.units import SEGMENTERS, Segmentation


def phrases(text):
    return [u.text for u in Segmentation.from_text(text, "phrase").units]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "The tower, which is in Paris, was built in 1889 and painted red.",
            ["The tower,", "which is in Paris,", "was built in 1889", "and painted red."],
        ),
        ("Cats sleep; dogs bark: birds sing!", ["Cats sleep;", "dogs bark:", "birds sing!"]),
        ("Tea or coffee but not juice", ["Tea", "or coffee", "but not juice"]),
        ("He left because it rained, although late.", ["He left", "because it rained,", "although late."]),
        ("Who won? Nobody knows.", ["Who won?", "Nobody knows."]),
        ("Explain the U.S. economy, briefly.", ["Explain the U.S. economy,", "briefly."]),
        ("Paris (the capital) is big", ["Paris", "(the capital)", "is big"]),
        ("first line\nsecond line", ["first line", "second line"]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
    ],
)
def test_phrase_chunker_splits_at_punctuation_and_conjunctions(text, expected):
    assert phrases(text) == expected


def test_phrase_is_a_registered_unit_and_units_match_their_spans():
    assert "phrase" in SEGMENTERS
    text = "Name the capital of France, and explain why it matters."
    seg = Segmentation.from_text(text, "phrase")
    for u in seg.units:
        assert text[u.start : u.end] == u.text
    assert seg.render([True, False]) == "Name the capital of France,"


def test_phrase_units_reach_the_model_through_the_explainer():
    seen = []

    def f(texts):
        seen.extend(texts)
        return [float("capital" in t) for t in texts]

    with pytest.warns(UserWarning, match="only 2 units"):
        exp = explain("Name the capital of France, and explain why.", model=f, unit="phrase", method="occlusion")
    assert exp.unit_type == "phrase" and [u.text for u in exp.units] == ["Name the capital of France,", "and explain why."]
    assert "and explain why." in seen
    np.testing.assert_allclose(exp.coefficients, [1.0, 0.0])


# ---------------------------------------------------------------- segments
def test_segments_tile_the_text_with_whitespace_between_them():
    text = "  What is  the capital\nof France? Answer briefly. "
    seg = Segmentation.from_segments(text, ["What is", "the capital\nof France?", " Answer briefly. "])
    assert [(u.text, u.start, u.end) for u in seg.units] == [
        ("What is", 2, 9),
        ("the capital\nof France?", 11, 33),
        ("Answer briefly.", 34, 49),
    ]
    assert seg.unit_type == "custom"
    # the dropped unit's surrounding whitespace collapses to the longer run ("  ")
    assert seg.render([True, False, True]) == "What is  Answer briefly."


@pytest.mark.parametrize(
    "segments, message",
    [
        (["What is", "a capital"], r"segment 1 \('a capital'\) does not continue the text at character 8"),
        (["What is"], r"the segments stop at character 7 but the text goes on \('the capital'\)"),
        (["the capital", "What is"], "segment 0"),
        (["What is", "", "the capital"], "segment 1 is empty"),
        (["What is", 3], "segment 1 is int"),
        ("What is the capital", "non-empty list of strings"),
        ([], "non-empty list of strings"),
        (["What is the capital", "again"], "the text has ended"),
    ],
)
def test_segments_that_do_not_tile_the_text_are_refused_clearly(segments, message):
    with pytest.raises(InvalidInputError, match=message):
        Segmentation.from_segments("What is the capital", segments)


def test_segments_are_the_units_of_an_explanation():
    def f(texts):
        return [2.0 * ("France" in t) + 1.0 * ("why" in t) for t in texts]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = explain("Name the capital of France and say why.", model=f, method="shapley",
                      segments=["Name the capital", "of France", "and say why."])
    assert exp.unit_type == "custom"
    assert [u.text for u in exp.units] == ["Name the capital", "of France", "and say why."]
    np.testing.assert_allclose(exp.coefficients, [0.0, 2.0, 1.0], atol=1e-12)
