"""The HTTP routes, as FastAPI routers; :func:`gsmile.server.create_app` includes them.

What a route needs comes from dependencies reading ``app.state`` (set by ``create_app``,
the one injection point): :func:`get_settings`, :func:`get_holder` and :func:`get_manager`.
Routes raise the library's errors (and :class:`~gsmile.server.errors.FieldError`); the
app's exception handlers turn them into responses once (:func:`~gsmile.server.errors.error_body`).
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..explainer import DEFAULT_MAX_ROUNDS, DEFAULT_SAMPLES
from ..methods import METHODS
from ..render.palette import inject
from .errors import FieldError
from .jobs import JobManager, QueueFull
from .schemas import AnalyzeRequest, AnalyzeResponse, ErrorBody, ExplainRequest, Health, Job, JobAccepted, PatchRequest
from .service import ModelHolder, check_analyze, check_patch, run_analyze, run_explain, run_patch, validate_explain
from .settings import Settings

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
ERRORS = {
    400: {"model": ErrorBody, "description": "unknown method, unit or target (the valid names are listed)"},
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    413: {"model": ErrorBody, "description": "request body too large"},
    422: {"model": ErrorBody, "description": "invalid field (named), with the library's message"},
    500: {"model": ErrorBody, "description": "unexpected failure (request id, no internals)"},
    503: {"model": ErrorBody, "description": "queue full (see Retry-After) or model unavailable"},
}


# --------------------------------------------------------------------------- dependencies
def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


def get_manager(request: Request) -> JobManager:
    return request.app.state.manager


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
ManagerDep = Annotated[JobManager, Depends(get_manager)]


def request_id(request: Request) -> str | None:
    """The id GuardMiddleware gave this request."""
    return request.scope.get("state", {}).get("request_id")


def problem(request: Request, body: dict, headers: dict | None = None) -> JSONResponse:
    """An error response from an ``error_body``-shaped dict (its ``status`` is the code)."""
    body = dict(body)
    status = body.pop("status")
    body["request_id"] = body.get("request_id") or request_id(request)
    return JSONResponse(body, status_code=status, headers=headers)


async def execute(request: Request, manager: JobManager, settings: Settings, kind: str, params: dict[str, Any],
                  fn, is_async: bool) -> JSONResponse:
    """Queue ``fn`` as a job: 202 with its id when ``is_async``, else wait and return its result."""
    try:
        job = manager.submit(kind, params, fn, persist=is_async, request_id=request_id(request))
    except QueueFull:
        return problem(request, {"status": 503, "error": "too many explanations queued; retry later"},
                       {"Retry-After": str(settings.retry_after_s)})
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


def check_budget(params: dict[str, Any], settings: Settings, images_per_prompt: int = 1) -> None:
    """The server's own cap (after the library accepted the values): the perturbed prompts a
    request may draw in all, ``n_samples`` (or ``max_evals``) times ``runs`` (or
    ``max_rounds`` with ``until_stable``), at most GSMILE_MAX_SAMPLES. A text-to-image model
    evaluates a prompt by generating ``images_per_prompt`` (``image_seeds``) images, each
    counted as one evaluation."""
    name = "max_evals" if params.get("max_evals") is not None else "n_samples"
    per_run = params.get(name) or DEFAULT_SAMPLES
    if params.get("until_stable"):
        repeats, times = params.get("max_rounds") or DEFAULT_MAX_ROUNDS, "max_rounds"
    else:
        repeats, times = params.get("runs") or 1, "runs"
    k = max(int(images_per_prompt), 1)
    if per_run * repeats * k > settings.max_samples:
        if per_run * repeats <= settings.max_samples:
            field = "image_seeds"
        else:
            field = name if per_run > settings.max_samples or repeats == 1 else times
        asks = f"{name} {per_run} × {times} {repeats}" + (f" × image_seeds {k}" if k > 1 else "")
        raise FieldError(field, f"this server draws at most {settings.max_samples} perturbed prompts per request "
                                f"(GSMILE_MAX_SAMPLES{', each image counted' if k > 1 else ''}); {asks} asks for {per_run * repeats * k}")
    if params.get("interactions"):
        from ..interactions import plan

        _, evaluations = plan(int(params["interactions"]), params.get("interaction_budget"))
        if evaluations * k > settings.max_samples:
            field = "interaction_budget" if params.get("interaction_budget") is not None else "interactions"
            if evaluations <= settings.max_samples:
                field = "image_seeds"
            raise FieldError(field, f"this server scores at most {settings.max_samples} inputs for interactions per request "
                                    f"(GSMILE_MAX_SAMPLES); interactions {params['interactions']} asks for {evaluations * k}"
                                    + (f" ({evaluations} prompts × image_seeds {k})" if k > 1 else ""))


# --------------------------------------------------------------------------- explain
explain_router = APIRouter(tags=["explain"])


@explain_router.post("/v1/explain", responses={200: {"description": "the explanation (gsmile.explanation JSON, version 1)"},
                                               202: {"model": JobAccepted}, **ERRORS})
async def explain(request: Request, body: ExplainRequest, holder: HolderDep, manager: ManagerDep,
                  settings: SettingsDep):
    """Explain a prompt (or a context) with the service's model. Returns the explanation's
    JSON, or with ``"async": true`` a job id (202). The options are checked by the library
    before anything is queued."""
    params = body.options()
    if not params["prompt"].strip():
        raise FieldError("prompt", "the prompt is empty")
    validate_explain(params, holder, settings.max_image_seeds)
    images = (params.get("image_seeds") or 1) if holder.kind not in ("language", "scalar") else 1
    check_budget(params, settings, images)
    fn = lambda job: run_explain(holder, params, job.set_progress)  # noqa: E731
    return await execute(request, manager, settings, "explain", params, fn, body.async_)


# --------------------------------------------------------------------------- analyze
analyze_router = APIRouter(tags=["analyze"])


@analyze_router.post("/v1/glad/causal-explainability/analyze", response_model=AnalyzeResponse,
                     responses={202: {"model": JobAccepted}, **ERRORS})
async def analyze(request: Request, body: AnalyzeRequest, holder: HolderDep, manager: ManagerDep,
                  settings: SettingsDep):
    """Explain a detection score (``halluc_context`` with a context, else
    ``answer_likelihood``) over the context's (or prompt's) units."""
    params = body.model_dump(exclude={"async_"})
    check_analyze(params)
    fn = lambda job: run_analyze(holder, params, settings, job.set_progress)  # noqa: E731
    return await execute(request, manager, settings, "analyze", params, fn, body.async_)


# --------------------------------------------------------------------------- patch
patch_router = APIRouter(tags=["patch"])


@patch_router.post("/v1/patch", responses={200: {"description": "the patching result (gsmile.patching JSON, version 1)"},
                                           202: {"model": JobAccepted}, **ERRORS})
async def patch(request: Request, body: PatchRequest, holder: HolderDep, manager: ManagerDep, settings: SettingsDep):
    """Activation patching: patch each layer's activations at each position from the clean
    prompt's run into the corrupted one's and report the share of the answer's log p restored
    (``restored[component][layer][position]``). Needs a local model (422 otherwise); the
    prompts must have the same token length (422 naming ``corrupted`` otherwise). Runs in the
    same queue as explanations; ``"async": true`` returns a job id (202)."""
    params = body.options()
    check_patch(params, holder)
    fn = lambda job: run_patch(holder, params, settings, job.set_progress)  # noqa: E731
    return await execute(request, manager, settings, "patch", params, fn, body.async_)


# --------------------------------------------------------------------------- jobs
jobs_router = APIRouter(tags=["jobs"])


@jobs_router.get("/v1/jobs/{job_id}", response_model=Job, responses={404: {"model": ErrorBody}, **ERRORS})
async def get_job(request: Request, job_id: str, manager: ManagerDep):
    """Status, progress (0-1) and, when finished, the result or the error of a job."""
    found = manager.get(job_id) if len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id) else None
    if found is None:
        return problem(request, {"status": 404, "error": f"no job {job_id!r}"})
    return JSONResponse(found)


# --------------------------------------------------------------------------- health
health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", response_model=Health)
async def healthz(holder: HolderDep, manager: ManagerDep, settings: SettingsDep):
    running, queued = manager.counts
    return {"status": "ok", "version": __version__, "model": holder.model_id, "model_loaded": holder.loaded,
            "model_kind": holder.kind, "local_model": holder.is_local, "running": running, "queued": queued, "max_concurrent": settings.max_concurrent,
            "max_queue": settings.max_queue, "methods": sorted(METHODS),
            "max_image_seeds": settings.max_image_seeds if holder.is_image else None,
            "embedder": settings.embedder if holder.is_image else None}


# --------------------------------------------------------------------------- page
page_router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=None)
def static_file(name: str) -> bytes:
    """A file of ``static/``, with the colour scale put in place (see gsmile.render.palette)."""
    raw = resources.files("gsmile.server").joinpath("static", name).read_bytes()
    return inject(name, raw.decode()).encode() if name in STATIC_FILES else raw


@page_router.get("/")
async def page():
    return Response(static_file("index.html"), media_type="text/html; charset=utf-8")


@page_router.get("/favicon.ico")
async def favicon():
    return Response(status_code=204)


@page_router.get("/static/{name}")
async def static(request: Request, name: str):
    if name not in STATIC_FILES:
        return problem(request, {"status": 404, "error": "not found"})
    return Response(static_file(name), media_type=STATIC_FILES[name])


ROUTERS = (explain_router, analyze_router, patch_router, jobs_router, health_router, page_router)
