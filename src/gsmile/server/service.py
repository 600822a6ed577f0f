"""What the endpoints compute, independent of HTTP: an explanation (``/v1/explain``) and the
causal analysis of a detection score (``/v1/glad/causal-explainability/analyze``)."""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable

import numpy as np

from ..backends import IMAGE_MODEL_PREFIXES, MODELS, ImageModel, LanguageModel, Loadable, PerExplanation, ScalarModel, for_explanation, is_language_model, resolve_model
from ..errors import GsmileError, ModelError, is_out_of_memory, lookup
from ..explainer import Explainer
from ..length import fit_length
from ..methods import METHODS
from ..methods.mupax import unit_effects
from ..units import Segmentation
from .detection import DetectionScore
from .errors import FieldError, NotSupported

#: analyze method -> (library method, key of its result under "xai")
ANALYZE_METHODS: dict[str, tuple[str, str]] = {
    "gradient_causal": ("occlusion", "gradient_causal"),
    "mupax_causal": ("mupax", "mupax_halluc_causal"),
}
DEFAULT_ANALYZE_SAMPLES = 200
TOP_TOKENS = 10
#: |coef| at or below this share of the largest is "neutral".
NEUTRAL_SHARE = 0.05

Progress = Callable[[float], None]


def model_kind(model, name: str | None = None) -> str:
    """What kind of model a server runs, known without loading it: "image" (a text-to-image
    model: ``diffusers:PATH``, ``openai-images:NAME``, an ImageModel, or a function taking a
    ``seed``), "language" (a model given by another name, or a LanguageModel object),
    "scalar" (a ScalarModel object) or "function" (a plain callable: numbers, text or
    images, known when it is first called)."""
    from ..backends.images import takes_seed

    if model is None:
        return "image" if str(name or "").startswith(IMAGE_MODEL_PREFIXES) else "language"
    if isinstance(model, str):
        return model_kind(None, model)
    if isinstance(model, ImageModel):
        return "image"
    if type(model) is ScalarModel:
        return "image" if takes_seed(model.func) else "function"
    if isinstance(model, ScalarModel):
        return "scalar"
    if isinstance(model, (LanguageModel, PerExplanation)):
        return "language"
    if callable(model):
        return "image" if takes_seed(model) else "function"
    return "unknown"


class ModelHolder:
    """The service's model, resolved (and loaded) once, on first use, under a lock. The
    backend is shared by every request: it holds no request's state (each explanation
    makes its own scoring objects; for a text-to-image model, its own
    :class:`~gsmile.backends.images.ImageDistanceModel` around the shared generator).

    image_options: generation settings of a text-to-image model given by name (steps, size).
    embedder: the image distance (a name, resolved once here and shared: a CLIP model is
    loaded once per process), passed to every explanation of a text-to-image model. A plain
    function without a ``seed`` parameter is known to return images only when called, so it
    gets the library's default distance (pixel); give it as ``ImageFunction(f)`` to use this one.
    """

    def __init__(self, model=None, name: str = "local", device: str | None = None, dtype: str | None = None,
                 max_batch_tokens: int | None = None, image_options: dict[str, Any] | None = None,
                 embedder: str | None = None):
        from ..backends.images import ImageFunction, takes_seed

        if callable(model) and not isinstance(model, (LanguageModel, ScalarModel, PerExplanation, ImageModel)) \
                and takes_seed(model):
            # a function f(prompts, seed) -> images: one shared, stateless ImageFunction
            model = ImageFunction(model, model_id=getattr(model, "model_id", None))
        self._given = model
        self.name = name
        self.kind = model_kind(model, name)
        self.placement = {"device": device, "dtype": dtype, "max_batch_tokens": max_batch_tokens}  # of a model given by name
        if model is None and self.kind == "image" and image_options:
            self.placement["image_options"] = dict(image_options)
        self.embedder = embedder
        self._distance = None
        self._backend = None
        self._lock = threading.Lock()

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def is_local(self) -> bool:
        """A local language model whose activations gsmile reads (activation patching), known
        without loading it: a model given by name (local, smollm2, hf:PATH) or an HFCausalLM."""
        if self._given is None:
            return self.name in MODELS or self.name.startswith("hf:")
        from ..backends.local import HFCausalLM

        return isinstance(self._given, HFCausalLM)

    @property
    def model_id(self) -> str:
        for backend in (self._backend, self._given):
            if backend is not None:
                return str(getattr(backend, "model_id", type(backend).__name__))
        return self.name

    def get(self):
        with self._lock:
            if self._backend is None:
                if self._given is not None:
                    backend = resolve_model(self._given)
                else:
                    backend = resolve_model(self.name, **self.placement)
                if isinstance(backend, Loadable):
                    backend.load()
                self._backend = backend
            return self._backend

    def image_distance(self):
        """The shared image distance (``embedder``), made once."""
        from ..targets.images import make_image_distance

        with self._lock:
            if self._distance is None:
                self._distance = make_image_distance(self.embedder)
            return self._distance


def _fraction(progress: Progress, expected: int | None = None) -> Callable[[int, int], None]:
    """An Explainer ``progress(done, expected)`` callback reporting a fraction to a job."""
    return lambda done, total: progress(done / max(expected or total, done, 1))


# --------------------------------------------------------------------------- explain
#: Request fields that are Explainer options (every one of them: the schema is checked
#: against this list) and the texts passed to ``explain``.
EXPLAIN_FIELDS = tuple(p for p in inspect.signature(Explainer.__init__).parameters if p not in ("self", "model", "progress"))
TEXT_FIELDS = ("context", "segments")


def explain_options(params: dict[str, Any]) -> dict[str, Any]:
    """The Explainer options of a request (fields left out or null take the library's default)."""
    return {name: params[name] for name in EXPLAIN_FIELDS if params.get(name) is not None}


def run_explain(holder: ModelHolder, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Explain ``params["prompt"]`` with the service's model; returns ``Explanation.to_dict()``
    (for a text-to-image model with ``images``: base64 PNG, and ``insights``)."""
    options = explain_options(params)
    if holder.is_image:
        options["embedder"] = holder.image_distance()  # the server's setting, never the request's
    explainer = Explainer(holder.get(), **options, progress=_fraction(progress))
    texts = {name: params[name] for name in TEXT_FIELDS if params.get(name) is not None}
    return explainer.explain(params["prompt"], params.get("response"), **texts).to_dict()


def validate_explain(params: dict[str, Any], holder: ModelHolder | None = None, max_image_seeds: int | None = None) -> None:
    """Check an explain request's options with the library's own validation (no model is
    loaded): raises InvalidInputError naming the field, or UnknownNameError; then what
    applies to the server's model: ``image_seeds`` only to a text-to-image model, at most
    ``max_image_seeds`` (GSMILE_MAX_IMAGE_SEEDS)."""
    lookup(METHODS, params.get("method", "gsmile"), "method")  # an unknown method first, as a 400
    Explainer(None, **explain_options(params)).validate()
    seeds = params.get("image_seeds")
    if seeds is None or holder is None:
        return
    if holder.kind in ("language", "scalar"):
        raise FieldError("image_seeds", f"image_seeds applies only to a text-to-image model; this service runs a {holder.kind} "
                                        f"model ({holder.model_id})")
    if max_image_seeds is not None and int(seeds) > max_image_seeds:
        raise FieldError("image_seeds", f"this server generates at most {max_image_seeds} images per prompt "
                                        f"(GSMILE_MAX_IMAGE_SEEDS); image_seeds {seeds} asks for more")


# --------------------------------------------------------------------------- patch
def check_patch(params: dict[str, Any], holder: ModelHolder) -> None:
    """What a patching request needs before it is queued: a local model, and components the
    library accepts (each at most once). The prompts are checked by the library, on the model."""
    from ..whitebox.patching import check_components

    if not holder.is_local:
        from ..backends.local import not_local

        raise FieldError("model", str(not_local("activation patching needs", f"this service's {holder.model_id}",
                                            f" (a {holder.kind} model it only calls)")))
    if params.get("components") is not None:
        check_components(params["components"])


def patch_size(lm, clean: str, corrupted: str) -> tuple[int, int] | None:
    """(layers, positions) that ``activation_patching`` patches for these prompts on all
    layers: the positions run from the first token where the prompts differ (None when their
    token lengths differ or they do not differ: the library says why)."""
    a, b = lm.prompt_ids(clean), lm.prompt_ids(corrupted)
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if len(a) != len(b) or first is None:
        return None
    return int(lm.model.config.num_hidden_layers), len(a) - first


def run_patch(holder: ModelHolder, params: dict[str, Any], settings, progress: Progress) -> dict[str, Any]:
    """Activation patching on the service's model; returns ``PatchingResult.to_dict()`` and
    reports the share of patched runs done to the job. The server's cap: at most
    GSMILE_MAX_SAMPLES patched runs (components × layers × positions) per request, each one
    row of a forward pass."""
    from ..whitebox.patching import activation_patching

    lm = holder.get()
    components = tuple(params.get("components") or ("resid",))
    size = patch_size(lm, params["clean"], params["corrupted"])
    if size is not None and len(components) * size[0] * size[1] > settings.max_samples:
        layers, positions = size
        raise FieldError("clean", f"this server runs at most {settings.max_samples} patched passes per request "
                                  f"(GSMILE_MAX_SAMPLES); these prompts need {len(components) * layers * positions} "
                                  f"({len(components)} component{'s' if len(components) > 1 else ''} × {layers} layers × "
                                  f"{positions} positions from the first difference on): swap a word nearer the end, "
                                  "or patch fewer components")
    result = activation_patching(lm, params["clean"], params["corrupted"], answer=params.get("answer"),
                                 components=components, progress=_fraction(progress))
    return result.to_dict()


# --------------------------------------------------------------------------- analyze
def analyze_samples(params: dict[str, Any]) -> int:
    for name in ("mupax_n_samples", "mupax_samples", "mc_samples"):
        if params.get(name) is not None:
            return int(params[name])
    return DEFAULT_ANALYZE_SAMPLES


def check_analyze(params: dict[str, Any]) -> tuple[str, str, str]:
    """Check what the schema cannot: returns (response text, library method, xai key)."""
    library_method, key = lookup(ANALYZE_METHODS, params.get("method") or "gradient_causal", "method")
    response = params.get("response")
    if response is None:
        response = params.get("full_response")
    if response is None or not str(response).strip():
        raise FieldError("response", "give the answer to analyze in response (or full_response)")
    if not params["prompt"].strip():
        raise FieldError("prompt", "the prompt is empty")
    context = params.get("context")
    if context is not None and not context.strip():
        raise FieldError("context", "the context is empty; leave it out to analyze the prompt")
    return response, library_method, key


def run_analyze(holder: ModelHolder, params: dict[str, Any], settings, progress: Progress) -> dict[str, Any]:
    """The analyze endpoint's result (see :mod:`gsmile.server.detection` for the score)."""
    response, library_method, key = check_analyze(params)
    backend = for_explanation(holder.get())  # this request's own view of the shared model
    if not is_language_model(backend):
        raise NotSupported("the analyze endpoint needs a language model (log-probabilities); this service runs a scalar model")
    prompt, context = params["prompt"], params.get("context")
    response_ids = list(backend.encode_response(response))
    if not response_ids:
        raise FieldError("response", "the response has no tokens")
    explained = "context" if context is not None else "prompt"
    n_samples = analyze_samples(params)
    seed = params.get("seed", 0)
    options = {"threshold_percentile": float(params.get("mupax_threshold_percentile", 0.2))} if library_method == "mupax" else None

    maxlen = settings.xai_maxlen
    retry_notes: list[str] = []
    while True:
        p, c, rids, notes = fit_length(backend, prompt, context, response_ids, maxlen, src_chars=settings.xai_src_chars,
                                       setting="GSMILE_XAI_MAXLEN")
        text = c if explained == "context" else p
        unit = params.get("unit") or ("sentence" if explained == "context" else "word")
        if not params.get("unit") and unit == "sentence" and len(Segmentation.from_text(text, "sentence")) < 2:
            unit = "word"  # one sentence: explain its words instead
        n_units = len(Segmentation.from_text(text, unit)) if unit != "token" else len(backend.token_spans(text))
        expected = n_units + 1 if library_method == "occlusion" else min(n_samples, 2 ** min(n_units, 30)) + 1
        score = DetectionScore(backend, p, c, rids, explained)
        try:
            base = score.score()
            exp = Explainer(ScalarModel(score, model_id=score.model_id), method=library_method, unit=unit, n_samples=n_samples,
                            random_state=seed, method_options=options, progress=_fraction(progress, expected)).explain(text)
            break
        except GsmileError as exc:
            if not is_out_of_memory(exc):
                raise
            oom = exc
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom = exc
        if maxlen // 2 < settings.analyze_min_maxlen:
            raise ModelError(f"out of memory at {maxlen} tokens per scoring pass (GSMILE_ANALYZE_MIN_MAXLEN is {settings.analyze_min_maxlen})") from oom
        maxlen //= 2
        retry_notes.append(f"out of memory; retried with {maxlen} tokens per scoring pass")

    response_text = backend.decode(rids) if len(rids) < len(response_ids) else response
    causal = causal_result(exp, score.detection_type, base)
    return {
        "prompt": params["prompt"],
        "full_response": response_text,
        "detection_type": score.detection_type,
        "base_score": base,
        "xai": {"method": params.get("method") or "gradient_causal", key: causal},
        "warnings": retry_notes + notes + [w.replace("the prompt has", f"the {explained} has") for w in exp.warnings],
    }


def causal_result(exp, detection_type: str, base: float) -> dict[str, Any]:
    """units, top_tokens and MuPAX statistics of an explanation of a detection score.

    importance: the unit's share of the total |coefficient| (MuPAX's χ), in [0, 1];
    effect: positive when keeping the unit raises the score, negative when it lowers it,
    neutral when |coef| is at most 5 % of the largest."""
    coef = np.asarray(exp.coefficients, dtype=float)
    importance, effects = unit_effects(np.where(np.isfinite(coef), coef, 0.0), NEUTRAL_SHARE)
    report = (exp.extras or {}).get("mupax")  # MuPAX's own statistics, when the method was mupax
    stats: dict[int, dict[str, Any]] = {}
    if report is not None:
        for row in report["units"]:
            stats[int(row["position"])] = row
    units = [
        {"text": u.text, "importance": float(importance[i]), "effect": stats.get(i, {}).get("effect", effects[i])}
        for i, u in enumerate(exp.units)
    ]
    ranked = sorted(range(len(exp.units)), key=lambda i: (-importance[i], i))[:TOP_TOKENS]
    top_tokens = [
        {
            "token": exp.units[i].text,
            "position": i,
            "importance": float(importance[i]),
            "retention_frequency": _opt(stats.get(i, {}).get("retention_frequency")),
            "conditional_goodness": _opt(stats.get(i, {}).get("conditional_goodness")),
        }
        for i in ranked
    ]
    return {
        "detection_type": detection_type,
        "base_score": float(base),
        "units": units,
        "top_tokens": top_tokens,
        "threshold_W": _opt(report.get("threshold_W")) if report else None,
        "n_accepted": int(report["n_accepted"]) if report and report.get("n_accepted") is not None else None,
        "n_total": int(report["n_total"]) if report and report.get("n_total") is not None else int(exp.n_unique),
    }


def _opt(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
