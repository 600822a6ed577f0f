"""The FastAPI application, built by :func:`create_app`.

Routes: ``GET /`` (the page) and ``/static/*``; ``GET /healthz``; ``POST /v1/explain``;
``POST /v1/glad/causal-explainability/analyze``; ``GET /v1/jobs/{job_id}``.
The HTTP layer is thin: shapes are checked by the schemas, names by the library's
registries, and errors are converted once (:mod:`gsmile.server.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..methods import METHODS
from .errors import FieldError, error_body, new_request_id
from .jobs import JobManager, JobStore, QueueFull
from .schemas import AnalyzeRequest, AnalyzeResponse, ErrorBody, ExplainRequest, Health, Job, JobAccepted
from .service import ModelHolder, check_analyze, lookup_method, run_analyze, run_explain
from .settings import Settings

log = logging.getLogger("gsmile.server")

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ERRORS = {
    400: {"model": ErrorBody, "description": "unknown method, unit or target (the valid names are listed)"},
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    413: {"model": ErrorBody, "description": "request body too large"},
    422: {"model": ErrorBody, "description": "invalid field (named)"},
    500: {"model": ErrorBody, "description": "unexpected failure (request id, no internals)"},
    503: {"model": ErrorBody, "description": "queue full (see Retry-After) or model unavailable"},
}


def _json_bytes(status: int, body: dict, headers: dict[str, str] | None = None):
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return payload, raw


class GuardMiddleware:
    """Request id, body size limit (413), API key (401) and unexpected errors (500), as one
    plain ASGI layer."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if scope["path"] == "/" or scope["path"].startswith("/static/"):
                    headers.append((b"content-security-policy", CSP.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        async def reply(status: int, body: dict, headers: dict[str, str] | None = None):
            payload, raw = _json_bytes(status, {**body, "request_id": request_id}, headers)
            await send_wrapper({"type": "http.response.start", "status": status, "headers": raw})
            await send_wrapper({"type": "http.response.body", "body": payload})

        headers = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", []))
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await reply(413, {"error": f"request body is larger than {limit} bytes"})
        key = self.settings.api_key
        if key and scope["path"].startswith("/v1/") and scope.get("method") != "OPTIONS":
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return await reply(401, {"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                                   {"www-authenticate": "Bearer"})
        # Read the body here, counting it, so a body sent without a length (chunked) is held
        # to the limit too; the app then reads it from memory.
        chunks: list[bytes] = []
        received = 0
        more = scope.get("method") in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if received > limit:
                return await reply(413, {"error": f"request body is larger than {limit} bytes"})
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        try:
            await self.app(scope, replay, send_wrapper)
        except Exception as exc:
            body = error_body(exc, request_id)
            if not started:
                await reply(500, {"error": body["error"]})


def _static(name: str) -> bytes:
    return resources.files("gsmile.server").joinpath("static", name).read_bytes()


def create_app(settings: Settings | None = None, model=None):
    """The service as an ASGI app. ``settings``: a :class:`Settings` (default: from the
    environment); ``model``: a LanguageModel or a scalar callable used instead of
    ``settings.model`` (tests inject small ones)."""
    settings = (settings or Settings.from_env()).checked()
    holder = ModelHolder(model, settings.model)
    store = JobStore(settings.jobs_path, keep=settings.jobs_keep)
    manager = JobManager(store, settings.max_concurrent, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        # Load the model in the background at start-up, so the first request does not wait
        # for it (a failure is logged here and reported to requests as a model error).
        def preload():
            try:
                holder.get()
            except Exception as exc:
                log.warning("the model could not be loaded: %s", exc)

        threading.Thread(target=preload, name="gsmile-preload", daemon=True).start()
        yield
        manager.shutdown()

    app = FastAPI(
        title="gsmile",
        version=__version__,
        description="Explain which parts of a prompt (or context) drive a generative model's output.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings, app.state.manager, app.state.holder, app.state.store = settings, manager, holder, store

    def problem(request: Request, body: dict, headers: dict | None = None) -> JSONResponse:
        status = body.pop("status")
        body["request_id"] = body.get("request_id") or request.scope.get("state", {}).get("request_id")
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        fields = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            fields.append({"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid value"))})
        first = fields[0] if fields else {"field": "body", "message": "invalid request"}
        message = f"invalid field {first['field']!r}: {first['message']}"
        return problem(request, {"status": 422, "error": message, "fields": fields})

    async def execute(request: Request, kind: str, params: dict[str, Any], fn, is_async: bool):
        try:
            job = manager.submit(kind, params, fn, persist=is_async,
                                 request_id=request.scope.get("state", {}).get("request_id"))
        except QueueFull:
            return problem(
                request,
                {"status": 503, "error": "too many explanations queued; retry later"},
                {"Retry-After": str(settings.retry_after_s)},
            )
        if is_async:
            return JSONResponse(
                {"job_id": job.job_id, "status": job.status, "url": f"/v1/jobs/{job.job_id}"},
                status_code=202,
                headers={"Location": f"/v1/jobs/{job.job_id}"},
            )
        done = await asyncio.wrap_future(job.future)
        if done.status == "succeeded":
            return JSONResponse(done.result)
        return problem(request, dict(done.error))

    def guarded(request: Request, check):
        try:
            check()
        except Exception as exc:
            return problem(request, error_body(exc, request.scope.get("state", {}).get("request_id")))
        return None

    @app.post("/v1/explain", responses={200: {"description": "the explanation (gsmile.explanation JSON, version 1)"},
                                         202: {"model": JobAccepted}, **ERRORS})
    async def explain(request: Request, body: ExplainRequest):
        """Explain a prompt (or a context) with the service's model. Returns the explanation's
        JSON, or with ``"async": true`` a job id (202)."""
        params = body.model_dump(exclude={"async_"})
        if not params["prompt"].strip():
            return problem(request, error_body(FieldError("prompt", "the prompt is empty")))
        bad = guarded(request, lambda: lookup_method(params["method"]))
        if bad is not None:
            return bad
        fn = lambda job: run_explain(holder, params, job.set_progress)  # noqa: E731
        return await execute(request, "explain", params, fn, body.async_)

    @app.post("/v1/glad/causal-explainability/analyze", response_model=AnalyzeResponse,
              responses={202: {"model": JobAccepted}, **ERRORS})
    async def analyze(request: Request, body: AnalyzeRequest):
        """Explain a detection score (``halluc_context`` with a context, else
        ``answer_likelihood``) over the context's (or prompt's) units."""
        params = body.model_dump(exclude={"async_"})
        bad = guarded(request, lambda: check_analyze(params))
        if bad is not None:
            return bad
        fn = lambda job: run_analyze(holder, params, settings, job.set_progress)  # noqa: E731
        return await execute(request, "analyze", params, fn, body.async_)

    @app.get("/v1/jobs/{job_id}", response_model=Job, responses={404: {"model": ErrorBody}, **ERRORS})
    async def get_job(request: Request, job_id: str):
        """Status, progress (0-1) and, when finished, the result or the error of a job."""
        found = manager.get(job_id) if len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id) else None
        if found is None:
            return problem(request, {"status": 404, "error": f"no job {job_id!r}"})
        return JSONResponse(found)

    @app.get("/healthz", response_model=Health)
    async def healthz():
        running, queued = manager.counts
        return {"status": "ok", "version": __version__, "model": holder.model_id, "model_loaded": holder.loaded,
                "running": running, "queued": queued, "max_concurrent": settings.max_concurrent,
                "max_queue": settings.max_queue, "methods": sorted(METHODS)}

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str):
        if name not in STATIC_FILES:
            return problem(request, {"status": 404, "error": "not found"})
        return Response(_static(name), media_type=STATIC_FILES[name])

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(GuardMiddleware, settings=settings)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    else:
        app.add_middleware(GuardMiddleware, settings=settings)
    return app
