import numpy as np
import pytest


@pytest.fixture(scope="session")
def lm():
    """The embedded SmolLM2, loaded once for the whole session."""
    from gsmile.backends import resolve_model

    return resolve_model("local").load()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny Llama trained in code whose answer depends on one word (tests/tiny_trained_llama.py),
    built once for the whole session and loaded as a local model."""
    import tiny_trained_llama as tiny

    from gsmile.backends.local import HFCausalLM

    return HFCausalLM.from_path(str(tiny.build(tmp_path_factory.mktemp("tiny_llama")))).load()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (restored after): small models gain nothing from
    intra-op threads, and on a shared 2-core machine two OpenMP threads only wait for each
    other (the France/Italy patching run took 35-70 s with 2 threads, 5.9 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
