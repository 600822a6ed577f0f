"""Context attribution: the context's units are attributed, the prompt stays fixed."""

import warnings

import numpy as np
import pytest

from gsmile import Explanation, explain
from gsmile.errors import InvalidInputError
from gsmile.explainer import CONTEXT_TEMPLATE

CONTEXT = (
    "Bananas are a good source of potassium. "
    "The Eiffel Tower was constructed between 1887 and 1889. "
    "The Eiffel Tower is located in Paris, France. "
    "The Great Wall of China is very long."
)
QUESTION = "When was the Eiffel Tower built?"
SENTENCES = [
    "Bananas are a good source of potassium.",
    "The Eiffel Tower was constructed between 1887 and 1889.",
    "The Eiffel Tower is located in Paris, France.",
    "The Great Wall of China is very long.",
]


class Reader:
    """Scalar stand-in: scores how well the user turn supports the dates, records every input."""

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.extend(texts)
        return [3.0 * ("1887" in t) + 1.0 * ("Paris" in t) + 0.5 * ("potassium" in t) for t in texts]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_context_sentences_are_attributed_with_the_prompt_fixed():
    reader = Reader()
    exp = quiet(explain, QUESTION, model=reader, context=CONTEXT, method="shapley")
    assert exp.explained == "context" and exp.context == CONTEXT and exp.prompt == QUESTION
    assert exp.unit_type == "sentence" and [u.text for u in exp.units] == SENTENCES
    assert exp.text == CONTEXT and all(CONTEXT[u.start : u.end] == u.text for u in exp.units)
    np.testing.assert_allclose(exp.coefficients, [0.5, 3.0, 1.0, 0.0], atol=1e-12)
    # Every input is the template with the (perturbed) context and the whole question.
    assert reader.seen and all(t.startswith("Context:\n") and t.endswith(f"\n\nQuestion: {QUESTION}") for t in reader.seen)
    assert CONTEXT_TEMPLATE.format(context=CONTEXT, prompt=QUESTION) in reader.seen
    assert CONTEXT_TEMPLATE.format(context="", prompt=QUESTION) in reader.seen  # the empty coalition
    assert exp.params["context_template"] == CONTEXT_TEMPLATE


def test_context_explanation_round_trips_through_json():
    exp = quiet(explain, QUESTION, model=Reader(), context=CONTEXT, method="occlusion")
    again = Explanation.from_json(exp.to_json())
    assert again.explained == "context" and again.context == CONTEXT
    assert [u.text for u in again.units] == SENTENCES
    np.testing.assert_allclose(again.coefficients, exp.coefficients)


def test_context_unit_and_segments_apply_to_the_context():
    exp = quiet(explain, QUESTION, model=Reader(), context=CONTEXT, context_unit="word", method="occlusion")
    assert exp.unit_type == "word" and exp.units[0].text == "Bananas"
    segs = [SENTENCES[0] + " " + SENTENCES[1], SENTENCES[2] + " " + SENTENCES[3]]
    exp = quiet(explain, QUESTION, model=Reader(), context=CONTEXT, segments=segs, method="occlusion")
    assert [u.text for u in exp.units] == segs
    np.testing.assert_allclose(exp.coefficients, [3.5, 1.0])


def test_custom_context_template():
    reader = Reader()
    template = "{prompt}\nUse only this: {context}"
    quiet(explain, QUESTION, model=reader, context=CONTEXT, method="occlusion", context_template=template)
    assert all(t.startswith(QUESTION + "\nUse only this: ") for t in reader.seen)


@pytest.mark.parametrize("template", ["no placeholders", "{context} only", "{prompt} {context} {other}", 3])
def test_bad_context_template_is_refused(template):
    with pytest.raises(InvalidInputError, match="context_template must be text containing"):
        explain(QUESTION, model=Reader(), context=CONTEXT, context_template=template)


@pytest.mark.parametrize("context, message", [("   ", "the context is empty"), ("One sentence only.", "the context has 1 sentence unit")])
def test_empty_or_single_unit_context_is_refused(context, message):
    with pytest.raises(InvalidInputError, match=message):
        explain(QUESTION, model=Reader(), context=context)


# ---------------------------------------------------------------- real model
@pytest.mark.model
def test_eiffel_dates_sentence_outranks_unrelated_context(lm):
    response = "The Eiffel Tower was built between 1887 and 1889."
    exp = quiet(explain, QUESTION, response, model=lm, context=CONTEXT, method="occlusion", target="logprob")
    assert [u.text for u in exp.units] == SENTENCES
    dates, unrelated = exp.coefficients[1], exp.coefficients[[0, 3]]
    # Removing the dates sentence lowers log p(response) more than removing any unrelated one.
    assert np.all(dates > unrelated) and dates > 0
    ranked = [a.index for a in exp.top(4)]
    assert ranked.index(1) < ranked.index(0) and ranked.index(1) < ranked.index(3)
    assert exp.token_coefficients.shape == (4, len(exp.response_tokens))
