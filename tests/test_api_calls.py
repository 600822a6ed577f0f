"""Calls to models behind an API: cache, retries, resumable runs, both paths; against the
deterministic fake OpenAI-compatible server in tests/fake_openai.py (no model needed)."""

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI, next_logprobs, tokenize  # noqa: E402

from gsmile import Explainer  # noqa: E402
from gsmile.backends import ScalarModel, resolve_model  # noqa: E402
from gsmile.backends.cache import CallCache, _setup, call_key  # noqa: E402
from gsmile.backends.http import JSONClient, retry_after_seconds  # noqa: E402
from gsmile.backends.openai import REST, OpenAIBackend  # noqa: E402
from gsmile.errors import InvalidInputError, ModelError  # noqa: E402
from gsmile.targets import LogProbTarget  # noqa: E402

PROMPT = "Why is Paris the capital of France and not Lyon?"
RESPONSE = " Paris is the capital."


@pytest.fixture
def server():
    with FakeOpenAI(retry_after="0.2", stall_s=1.0) as srv:
        yield srv


def backend(srv, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("backoff", 0.01)
    return OpenAIBackend("fake", base_url=srv.base_url, **kw)


def explain(model, target="logprob", n=20, response=RESPONSE, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer(model, target=target, n_samples=n, random_state=3, **kw).explain(PROMPT, response)


# ---------------------------------------------------------------- cache
def test_call_key_covers_every_field():
    base = {"backend": "openai:m", "path": "/completions", "body": {"prompt": "a b", "temperature": 0.0, "max_tokens": 1}}
    assert call_key(base) == call_key(json.loads(json.dumps(base)))
    variants = [
        {**base, "backend": "openai:n"},
        {**base, "path": "/chat/completions"},
        {**base, "body": {**base["body"], "prompt": "a b "}},
        {**base, "body": {**base["body"], "temperature": 0.5}},
        {**base, "body": {**base["body"], "max_tokens": 2}},
    ]
    assert len({call_key(v) for v in variants} | {call_key(base)}) == len(variants) + 1


def _writer(directory, start, barrier):
    # Every process opens the new cache file at the same moment: that is the race in
    # which switching to WAL answers "database is locked" without waiting. The barrier
    # releases them together once all have started (no busy-waiting on the clock).
    barrier.wait(timeout=60)
    cache = CallCache(directory)
    for i in range(start, start + 20):
        cache.put(f"k{i}", {"i": i})


def test_cache_is_safe_under_concurrent_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    starts = range(0, 120, 20)
    barrier = ctx.Barrier(len(starts))
    procs = [ctx.Process(target=_writer, args=(tmp_path, s, barrier)) for s in starts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = CallCache(tmp_path)
    assert len(cache) == 120
    assert all(cache.get(f"k{i}") == {"i": i} for i in range(120))
    assert cache.get("missing") is None
    mode = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


class _LockedAtFirst:
    """A connection whose first ``n`` statements answer "database is locked" at once, as
    SQLite does when two processes switch a new file to WAL together."""

    def __init__(self, conn, n):
        self.conn, self.n, self.seen = conn, n, []

    def execute(self, sql):
        self.seen.append(sql)
        if self.n > 0:
            self.n -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql)


def test_cache_setup_retries_an_immediate_lock(tmp_path):
    conn = _LockedAtFirst(sqlite3.connect(tmp_path / "c.sqlite3", isolation_level=None), n=3)
    _setup(conn)
    assert conn.seen[:4] == ["PRAGMA journal_mode=WAL"] * 4
    assert conn.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0
    # Past the deadline, the lock is reported, not retried forever.
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _setup(_LockedAtFirst(sqlite3.connect(tmp_path / "d.sqlite3"), n=10**9), deadline_s=0.05)
    # Other errors are not retried.
    bad = _LockedAtFirst(sqlite3.connect(tmp_path / "e.sqlite3"), n=0)
    bad.conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        _setup(bad)


# -------------------------------------------------------------- retries
def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_client_retries_429_5xx_stalls_and_drops(server):
    server.retry_after = "7"
    server.faults = ["429", "500", "stall", "drop", "503"]
    slept = []
    client = JSONClient(server.base_url, label="openai:fake", timeout=0.3, backoff=0.5, max_backoff=60, max_retries=5, sleep=slept.append)
    answer = client.post("/chat/completions", {"model": "fake", "messages": [{"role": "user", "content": "hello Paris"}]})
    assert answer["choices"][0]["message"]["content"].startswith("The answer involves")
    assert client.stats.as_dict()["retries"] == 5 and client.stats.as_dict()["calls"] == 1
    assert server.ok == 1 and server.faulted == 5
    # Retry-After is honoured exactly; the other waits are exponential with jitter in [0.5, 1].
    assert slept[0] == 7.0
    for n, delay in enumerate(slept[1:], start=1):
        assert 0.5 * 0.5 * 2**n <= delay <= 0.5 * 2**n


def test_client_gives_up_with_a_clear_error(server):
    server.faults = ["500"] * 3
    client = JSONClient(server.base_url, label="openai:fake", max_retries=2, sleep=lambda s: None)
    with pytest.raises(ModelError, match=r"openai:fake at http://127\.0\.0\.1:\d+/v1/chat/completions: giving up after 2 retries; last attempt: HTTP 500"):
        client.post("/chat/completions", {"model": "fake", "messages": [{"role": "user", "content": "x"}]})


def test_explanation_survives_faults_with_the_right_number_of_calls(server, tmp_path):
    clean = explain(backend(server, tmp_path / "a"))
    n_calls = clean.extras["calls"]["calls"]
    ok_before = server.ok
    assert ok_before == n_calls
    server.faults = ["429", "500", "stall", "drop", "500", "429"]
    faulty = explain(backend(server, tmp_path / "b", timeout=0.5))
    calls = faulty.extras["calls"]
    assert calls["calls"] == n_calls and calls["retries"] == 6
    assert server.ok - ok_before == n_calls  # every successful answer was used once
    np.testing.assert_array_equal(faulty.coefficients, clean.coefficients)


def test_failure_keeps_answers_in_the_cache_and_resume_makes_only_the_rest(server, tmp_path):
    total = explain(backend(server, tmp_path / "ref")).extras["calls"]["calls"]
    server.ok = 0
    server.faults = ["ok"] * 5 + ["500"] * 40
    with pytest.raises(ModelError, match="openai:fake .*HTTP 500"):
        explain(backend(server, tmp_path / "run", max_retries=1))
    assert server.ok == 5
    assert len(CallCache(tmp_path / "run" / "cache")) == 5
    server.faults = []
    again = explain(backend(server, tmp_path / "run"))
    assert again.extras["calls"]["calls"] == total - 5
    assert again.extras["calls"]["cache_hits"] >= 5


# ------------------------------------------------------------ log-probs
def test_logprob_path_is_exact(server, tmp_path):
    b = backend(server, tmp_path)
    exp = explain(b)
    assert exp.extras["path"] == "logprobs" and "echo" in exp.extras["path_reason"]
    assert exp.target == "logprob" and exp.response == RESPONSE
    # Score one perturbation through the backend and recompute log p(response) from the toy model.
    lm = b.for_explanation()  # one explanation's view: its vocabulary and call counts
    ids = lm.encode_response(RESPONSE)
    tokens = [t for t, _ in tokenize(RESPONSE)]
    assert lm.token_strings(ids) == tokens
    target = LogProbTarget().prepare(lm.logprobs([PROMPT], ids)[0], ids)
    perturbed = "Why is Paris the of France not Lyon?"
    got = target(lm.logprobs([perturbed], ids))[0]
    def logp(prompt):
        head = b.format_prompt(prompt)
        text = head + RESPONSE
        return sum(next_logprobs(text[: len(head) + off], tok)[tok] for tok, off in tokenize(RESPONSE))

    assert got == pytest.approx(logp(PROMPT) - logp(perturbed), abs=1e-9)


def test_api_rows_are_distributions_over_a_fixed_vocabulary(server, tmp_path):
    b = backend(server, tmp_path, top_logprobs=3)
    lm = b.for_explanation()
    ids = lm.encode_response(RESPONSE)
    ref = lm.logprobs([PROMPT], ids)
    rows = lm.logprobs(["Paris France", "capital Lyon of"], ids)
    assert ref.shape[2] == rows.shape[2] == len(lm._strings) and lm._strings[-1] == REST
    np.testing.assert_allclose(np.exp(rows).sum(-1), 1.0, atol=1e-9)
    # a known probability is exact; an unlisted vocabulary token gets at most the row's k-th probability
    tok = lm.token_strings(ids)[1]
    head = b.format_prompt("Paris France")
    off = tokenize(RESPONSE)[1][1]
    exact = next_logprobs((head + RESPONSE)[: len(head) + off], tok)
    assert rows[0, 1, ids[1]] == pytest.approx(exact[tok], abs=1e-9)
    kth = sorted(exact.values())[-3]
    listed = {lm._ids[s] for s in sorted(exact, key=exact.get)[-3:] if s in lm._ids} | {ids[1], lm._ids[REST]}
    others = [i for i in range(rows.shape[2]) if i not in listed]
    assert np.all(rows[0, 1, others] <= kth + 1e-9)
    # batch composition never changes a row
    np.testing.assert_array_equal(lm.logprobs(["capital Lyon of"], ids)[0], rows[1])


def test_misaligned_echo_is_detected(tmp_path):
    with FakeOpenAI(misaligned=True) as srv:
        ok, reason = backend(srv, tmp_path).supports_logprobs(PROMPT)
    assert not ok and "not aligned" in reason


def test_no_cache_still_never_repeats_a_request_in_one_run(server, tmp_path):
    exp = explain(backend(server, tmp_path, use_cache=False), response=None)
    assert not (tmp_path / "cache").exists()
    assert server.ok == exp.extras["calls"]["calls"] == exp.n_unique + 2  # + the probe and the generation
    assert exp.extras["calls"]["cache"] is None


@pytest.mark.parametrize("target", ["kl", "tv"])
def test_distribution_targets_on_the_api(server, tmp_path, target):
    exp = explain(backend(server, tmp_path), target=target)
    assert exp.target == target and np.all(np.isfinite(exp.coefficients)) and np.any(exp.coefficients != 0)


@pytest.mark.model
def test_wasserstein_on_the_api_uses_minilm_token_embeddings(server, tmp_path):
    exp = explain(backend(server, tmp_path), target="wasserstein")
    assert exp.target == "wasserstein" and "MiniLM" in exp.extras["ground_cost"]
    assert np.all(np.isfinite(exp.coefficients)) and np.any(exp.coefficients != 0)
    # same seed, same cache: the same explanation without a single call
    again = explain(backend(server, tmp_path), target="wasserstein")
    assert again.extras["calls"]["calls"] == 0
    np.testing.assert_array_equal(again.coefficients, exp.coefficients)


# ------------------------------------------------------------ text path
@pytest.mark.model
def test_text_path_when_the_server_has_no_logprobs(tmp_path):
    with FakeOpenAI(logprobs=False) as srv:
        exp = explain(backend(srv, tmp_path), target="wasserstein", response=None, n=12)
        assert exp.extras["path"] == "text" and "refused" in exp.extras["path_reason"]
        assert "embedding target is used" in exp.extras["path_reason"]
        assert any("text-only path" in w for w in exp.warnings)
        assert exp.target == "embedding" and exp.response.startswith("The answer involves")
        assert all(b.get("temperature") == 0.0 for b in srv.bodies if "messages" in b)
        first = exp.extras["calls"]["calls"]
        again = explain(backend(srv, tmp_path), target="wasserstein", response=None, n=12)
        assert again.extras["calls"]["calls"] == 0 and again.extras["calls"]["cache_hits"] >= first
        np.testing.assert_array_equal(again.coefficients, exp.coefficients)


@pytest.mark.model
def test_text_path_falls_back_to_completions_without_a_chat_endpoint(tmp_path):
    with FakeOpenAI(logprobs=False, chat=False) as srv:
        exp = explain(backend(srv, tmp_path), target="embedding", response=None, n=10)
        assert exp.extras["path"] == "text" and exp.extras["endpoint"] == "/completions"
        assert exp.response.startswith(" The answer involves")
        assert exp.extras["calls"]["calls"] == exp.n_unique


@pytest.mark.model
def test_text_callable_is_explained_by_embedding_distance():
    from gsmile.targets import EmbeddingTarget

    def model(texts):
        return ["Paris is the capital." if "France" in t.split() else "I do not know." for t in texts]

    exp = explain(model, target="wasserstein", response=None, n=40)
    assert exp.extras["path"] == "text" and exp.target == "embedding"
    assert exp.response == "Paris is the capital."
    d = EmbeddingTarget().prepare_text("Paris is the capital.").distance(["I do not know."])[0]
    assert d > 0.2
    france = [u.text for u in exp.units].index("France")
    assert exp.coefficients[france] == pytest.approx(d, abs=1e-6)
    others = np.delete(exp.coefficients, france)
    assert np.all(np.abs(others) < 1e-6)


def test_number_callable_stays_scalar_and_is_called_once_per_text(additive):
    exp = Explainer(additive, n_samples=30, random_state=0).explain("alpha bravo charlie delta echo")
    assert exp.extras["path"] == "scalar" and exp.target == "model_output"
    assert additive.calls == exp.n_unique  # the first (probe) call is reused, not repeated
    np.testing.assert_allclose(exp.coefficients, [3.0, -1.5, 0.0, 2.25, 0.5], atol=1e-9)


def test_embedding_target_with_numbers_is_refused(additive):
    with pytest.raises(InvalidInputError, match="embedding target needs a model that returns text"):
        Explainer(additive, target="embedding", n_samples=20).explain("alpha bravo charlie delta")


def test_api_options_are_checked():
    with pytest.raises(InvalidInputError, match="concurrency"):
        resolve_model("openai:m", concurrency=0)
    with pytest.raises(InvalidInputError, match="template"):
        resolve_model("openai:m", prompt_template="no placeholder")
    with pytest.raises(InvalidInputError, match="apply only to --model openai"):
        resolve_model("local", base_url="http://x")
    assert isinstance(resolve_model(lambda t: [0.0] * len(t)), ScalarModel)


# -------------------------------------------------------- kill and resume
def _cli(srv, cache, out, seed="0"):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [
        sys.executable, "-m", "gsmile.cli", "explain", PROMPT, "--response", RESPONSE,
        "--model", "openai:fake", "--base-url", srv.base_url, "--cache-dir", str(cache),
        "--target", "logprob", "--samples", "40", "--seed", seed, "--batch-size", "4",
        "--concurrency", "2", "--json", str(out), "--quiet",
    ], env


def test_killed_run_resumes_with_only_the_remaining_calls(server, tmp_path):
    cmd, env = _cli(server, tmp_path / "full", tmp_path / "full.json")
    subprocess.run(cmd, env=env, check=True, timeout=120)
    total = server.ok
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["extras"]["calls"]["calls"] == total

    server.ok, server.requests = 0, 0
    cmd, env = _cli(server, tmp_path / "run", tmp_path / "run.json")
    done = server.run_until_gate_and_kill(cmd, env, tmp_path / "run", after=total // 2)
    assert done == total // 2 and not (tmp_path / "run.json").exists()

    server.ok = 0
    subprocess.run(cmd, env=env, check=True, timeout=120)
    assert server.ok == total - done
    resumed = json.loads((tmp_path / "run.json").read_text())
    assert resumed["extras"]["calls"]["calls"] == total - done
    assert resumed["coefficients"] == full["coefficients"]
    assert resumed["intercept"] == full["intercept"] and resumed["response"] == full["response"]


def test_cli_api_flag_errors(tmp_path):
    env = {**os.environ, "GSMILE_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "gsmile.cli", "explain", PROMPT, "--base-url", "http://x"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--base-url applies only to --model openai:NAME" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "gsmile.cli", "explain", PROMPT, "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "GSMILE_NO_SUCH_KEY"],
        capture_output=True, text=True, env=env,
    )
    assert r.returncode == 2 and "GSMILE_NO_SUCH_KEY" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.model
def test_embedding_target_on_the_local_model_regenerates_greedily(lm):
    exp = Explainer(lm, target="embedding", n_samples=10, max_new_tokens=4, random_state=0).explain(PROMPT)
    assert exp.extras["path"] == "text" and exp.target == "embedding"
    assert exp.response == lm.decode(lm.generate(PROMPT, 4))
    assert np.all(np.isfinite(exp.coefficients)) and np.any(exp.coefficients != 0)


def test_a_base_url_without_a_scheme_is_refused_before_any_call(monkeypatch):
    from gsmile.backends.openai import OpenAIBackend
    from gsmile.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="must start with http:// or https:// and name a host, got 'localhost:8080/v1'"):
        OpenAIBackend("m", base_url="localhost:8080/v1").validate()
    # The same connection checks as the images API (one place, APIClient._validate_connection).
    for kwargs, field in ((dict(base_url="http://"), "base_url"), (dict(base_url="http://a b/v1"), "base_url"),
                          (dict(backoff=-1), "backoff"), (dict(max_backoff=float("nan")), "max_backoff"), (dict(timeout=0), "timeout")):
        with pytest.raises(InvalidInputError) as err:
            OpenAIBackend("m", **kwargs).validate()
        assert err.value.field == field, kwargs
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://example")
    with pytest.raises(InvalidInputError, match="'ftp://example'"):
        OpenAIBackend("m").validate()
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIBackend("m").validate().effective_base_url.startswith("https://")


# -------------------------------------------------------------- batching
def test_batched_prompts_give_the_same_explanation_in_fewer_requests(server, tmp_path):
    single = explain(backend(server, tmp_path / "one"), n=30)
    server.requests = 0
    batched = explain(backend(server, tmp_path / "batch", batch_prompts=4), n=30)
    np.testing.assert_array_equal(batched.coefficients, single.coefficients)
    assert batched.extras["calls"]["batch_prompts"] == 4
    assert server.batch_sizes and max(server.batch_sizes) == 4
    # Scoring n texts takes ceil(n / 4) requests instead of n.
    scored = sum(server.batch_sizes)
    assert batched.extras["calls"]["calls"] < single.extras["calls"]["calls"] - scored // 2
    # Each prompt is cached on its own: an unbatched rerun on the same cache makes no call.
    rerun = explain(backend(server, tmp_path / "batch"), n=30)
    assert rerun.extras["calls"]["calls"] == 0
    np.testing.assert_array_equal(rerun.coefficients, single.coefficients)


def test_a_server_that_does_not_batch_gets_a_clear_error(tmp_path):
    with FakeOpenAI(batches=False) as srv:
        with pytest.raises(ModelError, match="prompt must be a string"):
            explain(backend(srv, tmp_path, batch_prompts=4), n=20)
