"""A real OpenAI-compatible server: llama-cpp-python's, serving the embedded SmolLM2 GGUF on
127.0.0.1. Explains through it on both paths and compares the log-prob path with the local
backend. Skipped when llama_cpp is not installed (`make setup-server` installs it)."""

import importlib.util
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

pytestmark = [
    pytest.mark.server,
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed (run `make setup-server`; it compiles for ~6 minutes)",
    ),
]

PROMPT = "Name the capital city of France and its famous tower."
N_SAMPLES = 14


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    import httpx

    from gsmile.backends.embedded import embedded_gguf

    port = _free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "512", "--n_threads", "2", "--model_alias", "smollm2", "--seed", "0"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(base_url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"llama-cpp-python's server did not start:\n{log.read()[-2000:]}")
        time.sleep(0.5)
    yield base_url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _api(base_url, tmp_path):
    from gsmile.backends.openai import OpenAIBackend

    # The local backend's exact chat text (SmolLM2's template with its default system prompt).
    return OpenAIBackend("smollm2", base_url=base_url, prompt_template="smollm2", top_logprobs=10,
                         concurrency=2, cache_dir=tmp_path / "calls", timeout=300)


def _explain(model, target, response=None, **kw):
    from gsmile import Explainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer(model, target=target, n_samples=N_SAMPLES, random_state=0, max_new_tokens=8, **kw).explain(PROMPT, response)


def test_logprob_path_ranks_units_like_the_local_model(llama_server, tmp_path, lm):
    from scipy.stats import spearmanr

    local = _explain(lm, "logprob")
    api = _explain(_api(llama_server, tmp_path), "logprob", response=local.response)
    assert api.extras["path"] == "logprobs" and "echo" in api.extras["path_reason"]
    assert api.response == local.response and api.target == "logprob"
    # Same response tokens (same tokenizer, read from the GGUF by both).
    assert api.response_tokens == local.response_tokens
    rho = spearmanr(api.coefficients, local.coefficients).statistic
    print(f"Spearman(api, local) = {rho:.3f}")
    assert rho >= 0.8, (rho, api.coefficients, local.coefficients)
    calls = api.extras["calls"]
    assert calls["calls"] == api.n_unique + 2  # + the probe and the response's tokenization
    assert calls["tokens"] > 0

    again = _explain(_api(llama_server, tmp_path), "logprob", response=local.response)
    assert again.extras["calls"]["calls"] == 0
    np.testing.assert_array_equal(again.coefficients, api.coefficients)

    # Greedy generation through the server: Q4 kernels and the dequantized fp32 model agree on
    # the first tokens (they diverge after ~40).
    lm_api = _api(llama_server, tmp_path).for_explanation()  # one explanation's view of the API
    ids = lm_api.generate(PROMPT, 8)
    assert lm_api.decode(ids) == local.response


def test_text_path_through_the_chat_endpoint(llama_server, tmp_path):
    exp = _explain(_api(llama_server, tmp_path), "embedding")
    assert exp.extras["path"] == "text" and exp.extras["endpoint"] == "/chat/completions"
    assert exp.target == "embedding" and exp.response.strip()
    assert exp.extras["calls"]["calls"] == exp.n_unique  # the original prompt's answer is reused
    assert np.all(np.isfinite(exp.coefficients)) and np.any(exp.coefficients != 0)
