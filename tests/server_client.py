"""A small synchronous front to httpx's ASGI transport, for API tests against create_app()."""

from __future__ import annotations

import asyncio

import httpx


class Api:
    def __init__(self, app):
        self.app = app

    async def _request(self, method, path, **kwargs):
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, **kwargs)

    def request(self, method, path, **kwargs) -> httpx.Response:
        return asyncio.run(self._request(method, path, **kwargs))

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def many(self, calls):
        """Send several (method, path, kwargs) requests at once; responses in order."""

        async def run():
            return await asyncio.gather(*(self._request(m, p, **kw) for m, p, kw in calls))

        return asyncio.run(run())

    def wait_job(self, job_id, timeout=30.0, headers=None):
        import time

        deadline = time.monotonic() + timeout
        while True:
            r = self.get(f"/v1/jobs/{job_id}", headers=headers)
            assert r.status_code == 200, r.text
            if r.json()["status"] in ("succeeded", "failed"):
                return r.json()
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not finish: {r.json()}")
            time.sleep(0.02)


class AppFactory:
    """Builds apps on a temporary jobs file with a default test model, and shuts every one
    down afterwards (used by the ``make_api`` fixtures of the server tests)."""

    def __init__(self, tmp_path, default_model):
        self.tmp_path = tmp_path
        self.default_model = default_model
        self.apps = []

    def __call__(self, model=None, **settings):
        from gsmile.server import Settings, create_app

        settings.setdefault("jobs_path", self.tmp_path / "jobs.sqlite3")
        app = create_app(Settings(**settings), model=model if model is not None else self.default_model())
        self.apps.append(app)
        return Api(app)

    def close(self):
        for app in self.apps:
            app.state.manager.shutdown()
            app.state.store.close()
