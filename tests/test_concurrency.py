"""Concurrent explanations on shared components give exactly what the same explanations
give one by one.

Every component that several explanations share (one backend object used by several
threads, the server's model with ``max_concurrent`` > 1) gets a test that runs *different*
explanations at the same moment (threads released together by a barrier, or requests sent
together) and compares each with the same explanation run alone: coefficients equal to
1e-9, the same number of distinct model evaluations (``n_unique``) and, where the backend
counts them, the same calls. The runs are also checked to have really overlapped in time.

Shared components covered: a :class:`~gsmile.backends.ScalarModel`, the toy language model
of ``serve_models.py``, an ``openai:`` backend (:class:`~gsmile.backends.openai.OpenAIBackend`)
against the fake OpenAI-compatible server of ``fake_openai.py``, the embedded local model
(``@pytest.mark.model``), and the HTTP service built by ``create_app`` over each of them.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI  # noqa: E402
from serve_models import ToyLM  # noqa: E402
from threads import TIMEOUT, assert_overlapped, run_together  # noqa: E402

from gsmile import Explainer  # noqa: E402
from gsmile.backends import ScalarModel  # noqa: E402
from gsmile.backends.openai import OpenAIBackend  # noqa: E402

#: (prompt, response) of the different explanations; with 4 threads each is run twice.
JOBS = [
    ("Describe the smell of rain on hot summer pavement", "The smell of rain on hot pavement is earthy and fresh."),
    ("List two reasons why cats sleep so much during the day", "Cats sleep to save energy and because they hunt at night."),
]
SEED = 7
N_SAMPLES = 20
SCALAR_ROUNDS = 25  # repetitions of the (fast) concurrent scalar runs


def jobs_for(n_threads: int) -> list[tuple[str, str]]:
    """The (prompt, response) of each thread: the different jobs, repeated to fill n_threads."""
    return [JOBS[i % len(JOBS)] for i in range(n_threads)]


# ------------------------------------------------------------------ helpers
class Rendezvous:
    """Holds each thread's first model call until every thread has made one (or until a
    timeout), so the explanations' early steps are guaranteed to interleave. Inactive when
    built for one thread (the runs done one by one)."""

    def __init__(self, parties: int):
        self.barrier = threading.Barrier(parties) if parties > 1 else None
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def first_call(self) -> None:
        if self.barrier is None:
            return
        me = threading.get_ident()
        with self.lock:
            if me in self.seen:
                return
            self.seen.add(me)
        try:
            self.barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass


class Words:
    """A deterministic, non-additive scalar black box ``list[str] -> list[float]`` (word
    weights from a hash, plus an interaction of two words). Counts the texts it scores per
    calling thread, i.e. per explanation: a scalar model is called from the thread that
    runs the explanation."""

    model_id = "words"

    def __init__(self, rendezvous: Rendezvous | None = None):
        self.rendezvous = rendezvous
        self.local = threading.local()

    @staticmethod
    def weight(word: str) -> float:
        return (zlib.crc32(word.lower().encode()) % 2001) / 1000.0 - 1.0

    def __call__(self, texts):
        words = [t.split() for t in texts]
        out = [sum(self.weight(w) for w in ws) + (0.75 if "rain" in ws and "hot" in ws else 0.0) for ws in words]
        self.local.calls = self.calls() + len(texts)
        if self.rendezvous is not None:
            self.rendezvous.first_call()
        return out

    def calls(self) -> int:
        return getattr(self.local, "calls", 0)


class CountingToyLM(ToyLM):
    """serve_models.ToyLM, counting the prompts it scores per calling thread."""

    def __init__(self, rendezvous: Rendezvous | None = None):
        super().__init__()
        self.rendezvous = rendezvous
        self.local = threading.local()

    def logprobs(self, prompts, response_ids):
        if self.rendezvous is not None:
            self.rendezvous.first_call()
        self.local.calls = self.calls() + len(prompts)
        return super().logprobs(prompts, response_ids)

    def calls(self) -> int:
        return getattr(self.local, "calls", 0)


class SlowFakeOpenAI(FakeOpenAI):
    """The fake server, answering each /completions request after a short delay so that
    explanations sent together are still running at the same time."""

    delay_s = 0.002

    def completions(self, body):
        time.sleep(self.delay_s)
        return super().completions(body)


def assert_same(alone, together, what: str):
    """One explanation run concurrently is the one run alone."""
    a, b = _as_dict(alone), _as_dict(together)
    assert b["prompt"] == a["prompt"] and b["response"] == a["response"], what
    np.testing.assert_allclose(b["coefficients"], a["coefficients"], rtol=0, atol=1e-9,
                               err_msg=f"{what}: coefficients differ from the run alone")
    assert b["intercept"] == pytest.approx(a["intercept"], abs=1e-9), what
    assert b["n_unique"] == a["n_unique"], f"{what}: n_unique {b['n_unique']} != {a['n_unique']} alone"
    assert b["response_tokens"] == a["response_tokens"], what
    if a["token_coefficients"] is not None:
        np.testing.assert_allclose(b["token_coefficients"], a["token_coefficients"], rtol=0, atol=1e-9,
                                   err_msg=f"{what}: token coefficients differ from the run alone")


def _as_dict(exp) -> dict:
    return exp if isinstance(exp, dict) else exp.to_dict()


def explain(model, prompt, response, target="wasserstein", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer(model, target=target, n_samples=N_SAMPLES, random_state=SEED, **kw).explain(prompt, response)


# ------------------------------------------------- Explainer on one shared backend
@pytest.mark.parametrize("n_threads", [2, 4])
def test_shared_scalar_model(n_threads):
    """One ScalarModel object, used by several explanations at once."""
    jobs = jobs_for(n_threads)
    alone = []
    for prompt, _ in jobs[: len(JOBS)]:
        func = Words()
        exp = explain(ScalarModel(func), prompt, None)
        alone.append((exp, func.calls()))
    for exp, calls in alone:
        assert calls == exp.n_unique  # the probe of the prompt is reused, never repeated

    # A scalar explanation takes milliseconds, so whether two of them interleave at the
    # wrong instant is a matter of luck: the concurrent runs are repeated (a few ms each).
    for round_ in range(SCALAR_ROUNDS):
        func = Words(Rendezvous(n_threads))
        shared = ScalarModel(func, model_id="words")

        def job(prompt):
            def run():
                before = func.calls()
                return explain(shared, prompt, None), func.calls() - before
            return run

        results = run_together([job(p) for p, _ in jobs])
        assert_overlapped([(s, f) for _, s, f in results])
        for i, ((exp, calls), _, _) in enumerate(results):
            ref, ref_calls = alone[i % len(JOBS)]
            assert_same(ref, exp, f"round {round_}, thread {i} of {n_threads}")
            assert calls == ref_calls, (
                f"round {round_}, thread {i} of {n_threads}: the explanation called the model on {calls} texts, "
                f"{ref_calls} when run alone (another explanation's state was used?)"
            )


@pytest.mark.parametrize("n_threads", [2, 4])
def test_shared_toy_language_model(n_threads):
    """One ToyLM object (a LanguageModel), wasserstein target."""
    jobs = jobs_for(n_threads)
    alone = []
    for prompt, response in jobs[: len(JOBS)]:
        lm = CountingToyLM()
        exp = explain(lm, prompt, response)
        alone.append((exp, lm.calls()))

    lm = CountingToyLM(Rendezvous(n_threads))

    def job(prompt, response):
        def run():
            before = lm.calls()
            return explain(lm, prompt, response), lm.calls() - before
        return run

    results = run_together([job(p, r) for p, r in jobs])
    assert_overlapped([(s, f) for _, s, f in results])
    for i, ((exp, calls), _, _) in enumerate(results):
        ref, ref_calls = alone[i % len(JOBS)]
        assert_same(ref, exp, f"thread {i} of {n_threads}")
        assert calls == ref_calls, f"thread {i}: {calls} prompts scored, {ref_calls} alone"


@pytest.mark.parametrize("n_threads", [2, 4])
def test_shared_explainer_object(n_threads):
    """One Explainer object (and one ToyLM) whose explain() is called by several threads:
    the Explainer keeps only its options, so its calls must not see each other."""
    jobs = jobs_for(n_threads)
    alone = [explain(CountingToyLM(), p, r) for p, r in jobs[: len(JOBS)]]
    lm = CountingToyLM(Rendezvous(n_threads))
    explainer = Explainer(lm, target="wasserstein", n_samples=N_SAMPLES, random_state=SEED)

    def job(prompt, response):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return explainer.explain(prompt, response)
        return run

    results = run_together([job(p, r) for p, r in jobs])
    assert_overlapped([(s, f) for _, s, f in results])
    for i, (exp, _, _) in enumerate(results):
        assert_same(alone[i % len(JOBS)], exp, f"thread {i} of {n_threads}")


def _api_backend(srv, cache_dir, **kw):
    return OpenAIBackend("fake", base_url=srv.base_url, cache_dir=cache_dir, backoff=0.01, **kw)


def _requests(exp) -> int:
    """Requests an explanation made (answered by the server or by the cache)."""
    extras = _as_dict(exp)["extras"]
    assert "calls" in extras, "an API backend reports its calls in extras['calls']"
    calls = extras["calls"]
    return calls["calls"] + calls["cache_hits"]


def _check_api_concurrency(tmp_path, n_threads, target, faults=()):
    jobs = jobs_for(n_threads)
    with SlowFakeOpenAI(retry_after="0.05") as srv:
        alone = [explain(_api_backend(srv, tmp_path / f"alone{i}"), p, r, target=target)
                 for i, (p, r) in enumerate(jobs[: len(JOBS)])]
        for exp in alone:
            assert exp.extras["path"] == "logprobs" and exp.extras["calls"]["retries"] == 0

        shared = _api_backend(srv, tmp_path / f"together{n_threads}")  # ONE backend object, one cache
        srv.ok = 0
        srv.faults = list(faults)
        results = run_together([lambda p=p, r=r: explain(shared, p, r, target=target) for p, r in jobs])
        assert not srv.faults, "the injected faults were not all met"

    assert_overlapped([(s, f) for _, s, f in results])
    together = [exp for exp, _, _ in results]
    for i, exp in enumerate(together):
        ref = alone[i % len(JOBS)]
        assert_same(ref, exp, f"thread {i} of {n_threads}")
        assert exp.extras["path"] == "logprobs"
        # calls + cache hits: the requests this explanation made, whoever answered them
        assert _requests(exp) == _requests(ref), (
            f"thread {i} of {n_threads}: extras['calls'] counts {_requests(exp)} requests, {_requests(ref)} alone: "
            f"{exp.extras['calls']} vs {ref.extras['calls']}"
        )
    if n_threads == len(JOBS):
        # different explanations share no request: each made exactly its own calls
        for i, exp in enumerate(together):
            assert exp.extras["calls"]["calls"] == alone[i].extras["calls"]["calls"], (i, exp.extras["calls"])
        assert srv.ok == sum(exp.extras["calls"]["calls"] for exp in alone)
    # every retry is counted once, by the explanation whose request met the fault
    assert sum(exp.extras["calls"]["retries"] for exp in together) == len(faults), [e.extras["calls"] for e in together]


@pytest.mark.parametrize("n_threads", [2, 4])
def test_shared_openai_backend(tmp_path, n_threads):
    """One OpenAIBackend object, used by several explanations at once (kl target: the full
    distributions over the backend's top-k vocabulary; the wasserstein case, which needs
    MiniLM, is in test_shared_openai_backend_wasserstein)."""
    _check_api_concurrency(tmp_path, n_threads, "kl")


def test_shared_openai_backend_with_faults(tmp_path):
    """The same with retried faults (429 with Retry-After, 500, 503, a dropped connection)
    met by whichever explanations' requests come first."""
    _check_api_concurrency(tmp_path, 4, "kl", faults=["429", "500", "drop", "503"])


@pytest.mark.model
def test_shared_openai_backend_wasserstein(tmp_path):
    _check_api_concurrency(tmp_path, 2, "wasserstein")


@pytest.mark.model
@pytest.mark.parametrize("n_threads", [2, 4])
def test_shared_local_model(lm, n_threads):
    """The embedded model (model="local": one object shared by every explanation)."""
    jobs = jobs_for(n_threads)
    alone = [explain("local", p, r) for p, r in jobs[: len(JOBS)]]
    results = run_together([lambda p=p, r=r: explain("local", p, r) for p, r in jobs])
    assert_overlapped([(s, f) for _, s, f in results])
    for i, (exp, _, _) in enumerate(results):
        assert_same(alone[i % len(JOBS)], exp, f"thread {i} of {n_threads}")


# ------------------------------------------------------------------ the server
def _server_modules():
    from server_client import Api

    from gsmile.server import Settings, create_app

    return Settings, create_app, Api


def _payload(prompt, response, target):
    body = {"prompt": prompt, "n_samples": N_SAMPLES, "random_state": SEED, "target": target, "max_new_tokens": 8}
    if response is not None:
        body["response"] = response
    return body


def _serve(tmp_path, name, model, max_concurrent, jobs, target):
    """Send the jobs' explain requests to a new app at once (async jobs) and wait for all;
    returns the finished jobs (``GET /v1/jobs/{id}``). The app is shut down afterwards."""
    Settings, create_app, Api = _server_modules()
    app = create_app(Settings(max_concurrent=max_concurrent, jobs_path=tmp_path / f"{name}.sqlite3"), model=model)
    api = Api(app)
    try:
        if len(jobs) == 1:
            replies = [api.post("/v1/explain", json={**_payload(*jobs[0], target), "async": True})]
        else:
            replies = api.many([("POST", "/v1/explain", {"json": {**_payload(p, r, target), "async": True}}) for p, r in jobs])
        for reply in replies:
            assert reply.status_code == 202, reply.text
        done = [api.wait_job(reply.json()["job_id"], timeout=TIMEOUT) for reply in replies]
    finally:
        app.state.manager.shutdown()
        app.state.store.close()
    for job in done:
        assert job["status"] == "succeeded", job["error"]
    return done


def _check_server(tmp_path, make_model, max_concurrent, target, respond=True):
    """The same explain requests, one by one (each alone on a fresh app and model) and all
    at once on one app with ``max_concurrent`` slots (one model shared by the requests)."""
    jobs = [(p, r if respond else None) for p, r in jobs_for(max_concurrent)]
    alone = [_serve(tmp_path, f"alone{i}", make_model(f"alone{i}", 1), max_concurrent, [job], target)[0]
             for i, job in enumerate(jobs[: len(JOBS)])]
    together = _serve(tmp_path, "together", make_model("together", max_concurrent), max_concurrent, jobs, target)
    assert_overlapped([(job["started_at"], job["finished_at"]) for job in together])
    for i, job in enumerate(together):
        ref = alone[i % len(JOBS)]["result"]
        assert_same(ref, job["result"], f"request {i} of {max_concurrent} (max_concurrent {max_concurrent})")
    return [a["result"] for a in alone], [t["result"] for t in together]


@pytest.mark.parametrize("max_concurrent", [2, 4])
def test_server_scalar_model(tmp_path, max_concurrent):
    _check_server(tmp_path, lambda name, parties: Words(Rendezvous(parties)), max_concurrent, "wasserstein", respond=False)


@pytest.mark.parametrize("max_concurrent", [2, 4])
def test_server_toy_language_model(tmp_path, max_concurrent):
    _check_server(tmp_path, lambda name, parties: CountingToyLM(Rendezvous(parties)), max_concurrent, "wasserstein")


@pytest.mark.parametrize("max_concurrent", [2, 4])
def test_server_openai_backend(tmp_path, max_concurrent):
    with SlowFakeOpenAI() as srv:
        alone, together = _check_server(
            tmp_path, lambda name, parties: _api_backend(srv, tmp_path / f"cache-{name}"), max_concurrent, "kl")
    for i, exp in enumerate(together):
        ref = alone[i % len(JOBS)]
        assert exp["extras"]["path"] == "logprobs"
        assert _requests(exp) == _requests(ref), (
            f"request {i}: extras['calls'] counts {_requests(exp)} requests, {_requests(ref)} alone: "
            f"{exp['extras']['calls']} vs {ref['extras']['calls']}"
        )


@pytest.mark.model
@pytest.mark.parametrize("max_concurrent", [2, 4])
def test_server_local_model(tmp_path, lm, max_concurrent):
    _check_server(tmp_path, lambda name, parties: lm, max_concurrent, "wasserstein")
