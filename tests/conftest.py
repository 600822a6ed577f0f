import numpy as np
import pytest


@pytest.fixture(scope="session")
def lm():
    """The embedded SmolLM2, loaded once for the whole session."""
    from gsmile.backends import resolve_model

    return resolve_model("local").load()


class Additive:
    """f(text) = b + Σ w_i · [word i of the prompt is present], a scalar black box."""

    def __init__(self, words, weights, bias=0.0):
        self.words = list(words)
        self.weights = np.asarray(weights, dtype=float)
        self.bias = bias
        self.calls = 0

    def __call__(self, texts):
        self.calls += len(texts)
        out = []
        for t in texts:
            present = set(t.replace("?", " ").replace(",", " ").split())
            out.append(self.bias + sum(w for word, w in zip(self.words, self.weights) if word in present))
        return out


@pytest.fixture
def additive():
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
    return Additive(words, [3.0, -1.5, 0.0, 2.25, 0.5, -0.75, 1.0], bias=0.25)
