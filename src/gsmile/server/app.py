"""The FastAPI application, built by :func:`create_app`.

Routes (:mod:`gsmile.server.routes`): ``GET /`` (the page) and ``/static/*``; ``GET /healthz``;
``POST /v1/explain``; ``POST /v1/glad/causal-explainability/analyze``; ``POST /v1/patch``;
``GET /v1/jobs/{job_id}``.
The HTTP layer is thin: shapes are checked by the schemas, options and names by the library
(before a job is queued), and errors are converted once (:mod:`gsmile.server.errors`).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from .. import __version__
from ..errors import GsmileError
from .errors import FieldError, NotSupported, error_body, new_request_id
from .jobs import JobManager, JobStore
from .routes import ROUTERS, problem, request_id
from .service import ModelHolder
from .settings import Settings

log = logging.getLogger("gsmile.server")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


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


async def _invalid(request: Request, exc: RequestValidationError):
    """A request the schema refused: 422 naming each field."""
    fields = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        fields.append({"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid value"))})
    first = fields[0] if fields else {"field": "body", "message": "invalid request"}
    message = f"invalid field {first['field']!r}: {first['message']}"
    return problem(request, {"status": 422, "error": message, "fields": fields})


async def _refused(request: Request, exc: Exception):
    """A library error (or FieldError, NotSupported) raised by a route, converted once."""
    return problem(request, error_body(exc, request_id(request)))


def create_app(settings: Settings | None = None, model=None):
    """The service as an ASGI app. ``settings``: a :class:`Settings` (default: from the
    environment); ``model``: a LanguageModel, a scalar callable, or a text-to-image model (an
    ImageModel, or a function ``f(prompts, seed) -> PIL images``) used instead of
    ``settings.model`` (tests inject small ones). The routes get both from ``app.state``
    through dependencies (:mod:`gsmile.server.routes`)."""
    settings = (settings or Settings.from_env()).checked()
    holder = ModelHolder(model, settings.model, settings.device, settings.dtype, settings.max_batch_tokens,
                         image_options=settings.image_options(), embedder=settings.embedder)
    if settings.image_options() and not (model is None and holder.is_image):
        log.warning("GSMILE_IMAGE_STEPS and GSMILE_IMAGE_SIZE apply only to a text-to-image model given by name "
                    "(diffusers:PATH, openai-images:NAME); ignored for %s", holder.model_id)
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
    app.add_exception_handler(RequestValidationError, _invalid)
    for kind in (GsmileError, FieldError, NotSupported):
        app.add_exception_handler(kind, _refused)
    for router in ROUTERS:
        app.include_router(router)

    app.add_middleware(GuardMiddleware, settings=settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
