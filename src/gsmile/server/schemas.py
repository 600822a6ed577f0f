"""Request and response bodies of the HTTP API (pydantic models; they make the OpenAPI schema).

The explain request's options are the library's (``gsmile.Explainer``): the schema states
their types for the OpenAPI document but leaves their checking to the library, which the
route runs before anything is queued (422 with the library's message, naming the field), so
ranges and defaults are never copied here. The schema itself checks only what protects the
server (text sizes) and the request's own fields (prompt, response, context, segments,
async). Names (method, unit, target) are checked by the library's registries (400 listing
the valid ones).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SkipValidation

from ..methods import METHODS, option_specs
from ..targets import TARGETS, TEXT_TARGETS
from ..units import SEGMENTERS
from ..whitebox.patching import COMPONENT_LABELS, COMPONENTS

#: gSMILE's options, described once in its factory.
_GSMILE = option_specs("gsmile")
MAX_SAMPLES = 5000
MAX_TEXT = 200_000
MAX_TEMPLATE = 10_000
#: The most characters of a patching prompt or answer: every (layer, position) is one forward
#: pass, so the work grows with the square of the length (the server's GSMILE_MAX_SAMPLES caps
#: the patched runs of one request once the prompts are tokenized).
MAX_PATCH_TEXT = 2_000
#: Request fields that are not Explainer options (the text and how the reply is sent).
REQUEST_FIELDS = ("prompt", "response", "context", "segments", "async_")
#: Explainer options the API does not offer: the progress bar goes to the server's stderr
#: (a job reports its progress instead); the image distance is the server's GSMILE_EMBEDDER
#: (a request must not make the server load a model from a path).
SERVER_ONLY_OPTIONS = ("progress", "embedder")


def _at_most(limit: int):
    """A size limit on a text option, leaving its type to the library."""

    def check(value):
        if isinstance(value, str) and len(value) > limit:
            raise ValueError(f"String should have at most {limit} characters")
        return value

    return BeforeValidator(check)


def Option(tp, *extra):  # noqa: N802 (reads like a type)
    """An Explainer option: typed in the schema, checked by the library."""
    return Annotated[tp | None, SkipValidation, *extra]


class ExplainRequest(BaseModel):
    """The library's options (see ``gsmile.Explainer``) as JSON. An option left out (or
    null) takes the library's default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str = Field(..., min_length=1, max_length=MAX_TEXT, description="the prompt to explain")
    response: str | None = Field(None, max_length=MAX_TEXT, description="explain this response instead of the model's greedy one")
    context: str | None = Field(None, max_length=MAX_TEXT, description="explain this context (its units) instead of the prompt")
    segments: list[str] | None = Field(None, max_length=10_000, description="your own units: strings that tile the explained text")
    method: Option(str) = Field(None, description=f"attribution method: {', '.join(METHODS)}")
    unit: Option(str) = Field(None, description=f"unit of the prompt: {', '.join(SEGMENTERS)}")
    context_unit: Option(str) = Field(None, description="unit of the context")
    target: Option(str) = Field(None, description=f"output shift measured: {', '.join([*TARGETS, *TEXT_TARGETS])}")
    n_samples: Option(int) = Field(None, description="perturbed prompts drawn (at most the server's GSMILE_MAX_SAMPLES)")
    dropout: Option(float) = Field(None, description=f"gsmile: {_GSMILE['dropout'].help}")
    sigma: Option(float) = Field(None, description=f"gsmile: {_GSMILE['sigma'].help}")
    random_state: Option(int) = Field(0, description="seed; the same seed gives the same explanation (null: a fresh one)")
    batch_size: Option(int) = Field(None, description="prompts per forward pass (default: from the sequence length); never changes results")
    max_evals: Option(int) = Field(None, description="budget of model evaluations, the original included (at most the server's GSMILE_MAX_SAMPLES)")
    max_new_tokens: Option(int) = Field(None, description="length of the generated response")
    method_options: Option(dict[str, Any]) = Field(
        None, description='the method\'s own options, e.g. {"threshold_percentile": 0.2} for mupax'
    )
    runs: Option(int) = Field(None, description="repeat with consecutive seeds and report stability")
    top_k: Option(int) = Field(None, description="top units compared across runs or rounds")
    until_stable: Option(bool) = Field(None, description="sample in rounds until the top_k units stop changing")
    max_rounds: Option(int) = Field(None, description="most rounds of until_stable")
    refine: Option(str) = Field(None, description="coarse-to-fine: a unit finer than unit (or context_unit) that the most important coarse units are split into")
    refine_top: Option(int) = Field(None, description="coarse units refined (with refine)")
    refine_share: Option(float) = Field(None, description="share of the budget spent on the coarse level (with refine)")
    surrogate: Option(str) = Field(None, description="least_squares (the method's own fit) or lasso (a sparse fit that keeps few units)")
    max_units: Option(int) = Field(None, description="with surrogate lasso: keep at most this many units")
    interactions: Option(int) = Field(None, description="pairwise interactions (k-SII, with shapiq) among this many top units (2-20; 0: off)")
    interaction_budget: Option(int) = Field(None, description="model evaluations for interactions (default: exact, 2^k, up to 8 units, else 256; at most the server's GSMILE_MAX_SAMPLES)")
    context_template: Option(str, _at_most(MAX_TEMPLATE)) = Field(None, description="user turn built from {context} and {prompt}")
    contrast: str | None = Field(None, min_length=1, max_length=MAX_TEXT, description="why the response rather than this text: explain "
                                 "log p(response) - log p(contrast) (models with log-probabilities; replaces target)")
    image_seeds: Option(int) = Field(None, description="text-to-image models only: images generated per prompt, from seeds 0..K-1 "
                                                      "(default 1; at most the server's GSMILE_MAX_IMAGE_SEEDS); each counts against GSMILE_MAX_SAMPLES")
    max_length: Option(int) = Field(None, description="most tokens of one model input: a longer input is cut from its beginning, context first, and the cut recorded (default: refuse inputs longer than the model's window)")
    async_: bool = Field(False, alias="async", description="return a job id at once instead of waiting")

    def options(self) -> dict[str, Any]:
        """The request as the service's params: every field given (null ones left to the
        library's defaults), ``async`` aside."""
        values = {name: getattr(self, name) for name in type(self).model_fields if name != "async_"}
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def explainer_options(cls) -> set[str]:
        """The fields that are Explainer options."""
        return set(cls.model_fields) - set(REQUEST_FIELDS)


class PatchRequest(BaseModel):
    """Activation patching (``gsmile.whitebox.patching.activation_patching``) on the service's
    model, which must be a local language model (local, hf:PATH)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    clean: str = Field(..., min_length=1, max_length=MAX_PATCH_TEXT, description="the prompt whose answer is explained")
    corrupted: str = Field(..., min_length=1, max_length=MAX_PATCH_TEXT,
                           description="the same prompt with a word swapped; the same number of tokens as clean")
    answer: str | None = Field(None, min_length=1, max_length=MAX_PATCH_TEXT,
                               description="the answer whose log p is restored (all its tokens, teacher-forced); "
                                           "null: the clean prompt's greedy next token")
    components: list[Literal[COMPONENTS]] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, max_length=len(COMPONENTS),
        description="what is patched at each layer: " + "; ".join(f"{k}: {v}" for k, v in COMPONENT_LABELS.items())
                    + " (default: resid)")
    async_: bool = Field(False, alias="async", description="return a job id at once instead of waiting")

    def options(self) -> dict[str, Any]:
        """The request as the service's params (``async`` aside, null fields left out)."""
        return self.model_dump(exclude={"async_"}, exclude_none=True)


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
    fields: list[dict[str, str]] | None = None
    valid: list[str] | None = None


class Job(BaseModel):
    job_id: str
    kind: Literal["explain", "analyze", "patch"]
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
    model_kind: Literal["image", "language", "scalar", "function", "unknown"] = Field(
        ..., description="image: a text-to-image model (explanations carry images); function: a callable, known when first called")
    model_loaded: bool
    local_model: bool = Field(False, description="a local language model (local, hf:PATH) whose activations gsmile reads: "
                                                 "POST /v1/patch is available")
    running: int
    queued: int
    max_concurrent: int
    max_queue: int
    methods: list[str]
    max_image_seeds: int | None = Field(None, description="text-to-image models: the most image_seeds a request may ask for")
    embedder: str | None = Field(None, description="text-to-image models: how images are compared (GSMILE_EMBEDDER)")
