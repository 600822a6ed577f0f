"""A bounded load test on loopback: 32 concurrent small requests against a scalar test model,
through a real uvicorn server. Every request must be answered, correctly; p50/p95 latency
is printed (run with -s to see it). Not a timed test: no latency is asserted."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from gsmile.server import Settings, create_app  # noqa: E402
from serve_models import Additive  # noqa: E402
from serve_util import running_server  # noqa: E402

N_REQUESTS = 32
N_WORDS = 8


def _words(i: int) -> list[str]:
    """Request i's own words, so a mixed-up answer is detected."""
    return [f"w{i}x{k}" for k in range(N_WORDS)]


def _weights(i: int) -> list[float]:
    return [float(x) for x in np.round(np.random.default_rng(i).normal(size=N_WORDS), 3)]


def _model() -> Additive:
    """One additive scalar model over every request's words."""
    weights = {w: x for i in range(N_REQUESTS) for w, x in zip(_words(i), _weights(i))}
    return Additive(weights, bias=1.0)


def test_32_concurrent_requests_are_all_answered_correctly(tmp_path):
    app = create_app(Settings(jobs_path=tmp_path / "jobs.sqlite3", max_concurrent=4, max_queue=N_REQUESTS),
                     model=_model())

    async def one(client, i):
        body = {"prompt": " ".join(_words(i)), "n_samples": 100, "random_state": i}
        start = time.perf_counter()
        r = await client.post("/v1/explain", json=body)
        return i, r, time.perf_counter() - start

    async def run(url):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(N_REQUESTS)))

    with running_server(app) as url:
        results = asyncio.run(run(url))
    app.state.manager.shutdown()
    app.state.store.close()

    assert len(results) == N_REQUESTS
    request_ids = set()
    for i, r, _ in results:
        assert r.status_code == 200, (i, r.text)
        body = r.json()
        assert body["prompt"] == " ".join(_words(i))
        np.testing.assert_allclose(body["coefficients"], _weights(i), atol=1e-8)
        request_ids.add(r.headers["x-request-id"])
    assert len(request_ids) == N_REQUESTS
    latency = np.array([t for _, _, t in results]) * 1000
    p50, p95 = np.percentile(latency, [50, 95])
    print(f"\nload test: {N_REQUESTS} concurrent requests, all answered correctly; "
          f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {latency.max():.0f} ms")
