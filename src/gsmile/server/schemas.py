"""Request and response bodies of the HTTP API (pydantic models; they make the OpenAPI schema).

Shapes are checked here (types, ranges, required fields: 422 naming the field); names
(method, unit, target) are checked by the library's registries (400 listing the valid ones).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SAMPLES = 5000
MAX_TEXT = 200_000


class ExplainRequest(BaseModel):
    """The library's options (see ``gsmile.Explainer``) as JSON."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str = Field(..., min_length=1, max_length=MAX_TEXT, description="the prompt to explain")
    response: str | None = Field(None, max_length=MAX_TEXT, description="explain this response instead of the model's greedy one")
    context: str | None = Field(None, max_length=MAX_TEXT, description="explain this context (its units) instead of the prompt")
    method: str = Field("gsmile", description="attribution method (gsmile, occlusion, lime, kernelshap, shapley, mupax, banzhaf)")
    unit: str = Field("word", description="unit of the prompt: word, token or sentence")
    context_unit: str | None = Field(None, description="unit of the context (default: sentence)")
    target: str = Field("wasserstein", description="output shift measured: wasserstein, logprob, kl, js, tv")
    n_samples: int = Field(200, ge=10, le=MAX_SAMPLES, description="perturbed prompts drawn")
    dropout: float = Field(0.2, gt=0, lt=1, description="share of units each perturbation drops (0.05-0.5)")
    sigma: float | None = Field(None, gt=0, description="kernel width (default 0.5*sqrt(units))")
    random_state: int | None = Field(0, description="seed; the same seed gives the same explanation")
    batch_size: int | None = Field(None, ge=1, le=256, description="prompts per forward pass (default: from the sequence length); never changes results")
    max_evals: int | None = Field(None, ge=2, le=MAX_SAMPLES, description="budget of model evaluations, the original included (default: n_samples draws)")
    max_new_tokens: int = Field(48, ge=1, le=512, description="length of the generated response")
    method_options: dict[str, float | int | str | bool | None] | None = Field(
        None, description='the method\'s own options, e.g. {"threshold_percentile": 0.2} for mupax'
    )
    runs: int | None = Field(None, ge=1, le=20, description="repeat with consecutive seeds and report stability")
    top_k: int | None = Field(None, ge=1, le=1000, description="top units compared across runs")
    context_template: str | None = Field(None, max_length=10_000, description="user turn built from {context} and {prompt}")
    segments: list[str] | None = Field(None, max_length=10_000, description="your own units: strings that tile the explained text")
    async_: bool = Field(False, alias="async", description="return a job id at once instead of waiting")


class AnalyzeRequest(BaseModel):
    """Request of the causal-explainability analyze API. Unknown fields are ignored, so
    existing clients work unchanged."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    prompt: str = Field(..., min_length=1, max_length=MAX_TEXT)
    response: str | None = Field(None, max_length=MAX_TEXT, description="the answer to analyze (or full_response)")
    full_response: str | None = Field(None, max_length=MAX_TEXT, description="alias of response")
    context: str | None = Field(None, max_length=MAX_TEXT, description="when given, attribution is over the context")
    method: str = Field("gradient_causal", description="gradient_causal (occlusion) or mupax_causal")
    mupax_n_samples: int | None = Field(None, ge=10, le=MAX_SAMPLES, description="samples (default 200)")
    mupax_samples: int | None = Field(None, ge=10, le=MAX_SAMPLES, description="alias of mupax_n_samples")
    mc_samples: int | None = Field(None, ge=10, le=MAX_SAMPLES, description="alias of mupax_n_samples")
    mupax_threshold_percentile: float = Field(0.2, ge=0, le=1, description="share of samples accepted, closest first")
    unit: str | None = Field(None, description="unit of the explained text (default: sentence for a context, word for a prompt)")
    seed: int | None = Field(0, description="random seed")
    async_: bool = Field(False, alias="async", description="return a job id at once instead of waiting")


class AnalyzeUnit(BaseModel):
    text: str
    importance: float = Field(..., ge=0, le=1)
    effect: Literal["positive", "negative", "neutral"]


class TopToken(BaseModel):
    token: str
    position: int
    importance: float = Field(..., ge=0, le=1)
    retention_frequency: float | None = None
    conditional_goodness: float | None = None


class CausalResult(BaseModel):
    detection_type: Literal["halluc_context", "answer_likelihood"]
    base_score: float = Field(..., ge=0, le=1)
    units: list[AnalyzeUnit]
    top_tokens: list[TopToken]
    threshold_W: float | None = None
    n_accepted: int | None = None
    n_total: int | None = None


class Xai(BaseModel):
    model_config = ConfigDict(extra="allow")

    method: Literal["gradient_causal", "mupax_causal"]
    gradient_causal: CausalResult | None = None
    mupax_halluc_causal: CausalResult | None = None


class AnalyzeResponse(BaseModel):
    prompt: str
    full_response: str
    detection_type: Literal["halluc_context", "answer_likelihood"]
    base_score: float = Field(..., ge=0, le=1)
    xai: Xai
    warnings: list[str] = []


class JobAccepted(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    url: str


class JobError(BaseModel):
    status: int
    error: str
    request_id: str | None = None
    valid: list[str] | None = None


class Job(BaseModel):
    job_id: str
    kind: Literal["explain", "analyze"]
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(..., ge=0, le=1)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None


class ErrorBody(BaseModel):
    error: str
    request_id: str | None = None
    fields: list[dict[str, str]] | None = None
    valid: list[str] | None = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    model: str
    model_loaded: bool
    running: int
    queued: int
    max_concurrent: int
    max_queue: int
    methods: list[str]
