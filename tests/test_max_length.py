"""Inputs longer than the model takes: refused with their length, or cut from the beginning
with max_length (recorded), before they are split into units."""


import pytest
from serve_models import WORD, ToyLM

from gsmile import Explainer, Explanation
from gsmile.cli import main
from gsmile.errors import InvalidInputError
from gsmile.inputs import user_turn

CONTEXT = " ".join(f"Room {i} holds box {i}." for i in range(30)) + " The code is 4721."  # 124 words
QUESTION = "What is the code?"


class WindowedLM(ToyLM):
    """The toy bag-of-words model with a token count (a word is a token, the template adds 3)
    and a window."""

    def __init__(self, window: int = 100):
        super().__init__()
        self.window = window

    def prompt_ids(self, prompt):
        return [0, 1, 2] + [self._id(w) for w in WORD.findall(prompt)]

    def suggest_batch_size(self, n_tokens):
        return 8

    def max_tokens(self):
        return self.window


def test_an_input_longer_than_the_window_is_refused_with_its_length():
    lm = WindowedLM()
    n = len(lm.prompt_ids(user_turn(QUESTION, CONTEXT))) + 1
    with pytest.raises(InvalidInputError, match=rf"the input is {n} tokens with the response \(1\), more than the model's "
                                                r"window of 100; .*max_length \(--max-length N\)") as err:
        Explainer(lm, method="occlusion").explain(QUESTION, "4721", context=CONTEXT)
    assert err.value.field == "max_length"


def test_max_length_cuts_the_context_from_its_beginning_and_records_it():
    lm = WindowedLM(window=10_000)
    exp = Explainer(lm, method="occlusion", max_length=60).explain(QUESTION, "the code 4721", context=CONTEXT)
    kept = exp.context
    assert CONTEXT.endswith(kept) and kept.endswith("The code is 4721.") and len(kept) < len(CONTEXT)
    n_resp = len(lm.encode_response(exp.response))
    assert 55 < len(lm.prompt_ids(user_turn(QUESTION, kept))) + n_resp <= 60  # fits, and no more was cut than needed
    truncated = exp.extras["truncated"]
    assert truncated["max_length"] == 60 and truncated["tokens"] > 60
    assert truncated["context_chars_cut"] == len(CONTEXT) - len(kept) and truncated["prompt_chars_cut"] == 0
    assert any("cut from the beginning" in w for w in exp.warnings)
    assert "".join(u.text for u in exp.units).replace(" ", "") == kept.replace(" ", "")  # units only of what was kept
    assert exp.units[-1].text == "The code is 4721." and exp.params["max_length"] == 60
    again = Explanation.from_json(exp.to_json())
    assert again.extras["truncated"] == truncated


def test_an_input_that_fits_is_not_touched():
    exp = Explainer(WindowedLM(window=10_000), method="occlusion", max_length=1000).explain(QUESTION, "4721", context=CONTEXT)
    assert exp.context == CONTEXT and "truncated" not in exp.extras
    import resource

    assert 10 < exp.timings["peak_rss_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak so far


@pytest.mark.parametrize("options, message", [
    ({"max_length": 8}, "max_length must be an integer from 16"),
    ({"max_length": 40, "max_new_tokens": 30}, r"max_new_tokens \(30\) must be at most half of max_length \(40\)"),
])
def test_bad_max_length_is_refused(options, message):
    with pytest.raises(InvalidInputError, match=message):
        Explainer(WindowedLM(window=10_000), method="occlusion", **options).explain(QUESTION, context=CONTEXT)


def test_cli_max_length_too_small_is_one_line(capsys):
    assert main(["explain", QUESTION, "--max-length", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gsmile: error: max_length must be an integer from 16 to 10000000, got 8"]
