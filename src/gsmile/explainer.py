"""The Explainer wires the pipeline together:

prompt -> units -> masks -> perturbed texts -> backend (batched, each text once)
-> output distributions -> Δ (target) -> kernel weights -> surrogate -> Explanation.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import numpy as np

from .backends import LanguageModel, ScalarModel, prepare_backend, resolve_model
from .errors import InvalidInputError
from .explanation import FIDELITY_THRESHOLD, Explanation
from .methods import make_method
from .samplers import DROPOUT_WARN
from .targets import make_target
from .units import Segmentation

#: Default number of perturbed prompts. Chosen from measurements (see README, "Speed").
DEFAULT_SAMPLES = 200
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 48
SAMPLES_RANGE = (10, 100_000)
#: Warn when the kernel's effective sample size is below this share of the samples.
ESS_WARN_SHARE = 0.3
#: Warn when the prompt has fewer units than this.
FEW_UNITS = 5


class GsmileWarning(UserWarning):
    """Something about an explanation the user should know (low fidelity, few units...)."""


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (lo <= value <= hi):
        raise InvalidInputError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return int(value)


class Explainer:
    """Explain which units of a prompt drive a model's output.

    Parameters are stored as given; they are checked and used by :meth:`explain`.

    model: None or "local" for the embedded SmolLM2, "hf:PATH" for a local Hugging Face
        model directory, "openai:NAME" or an :class:`~gsmile.backends.openai.OpenAIBackend`
        (a model behind an OpenAI-compatible API), a :class:`~gsmile.backends.LanguageModel`,
        or a callable: ``list[str] -> list[float]`` (a scalar black box, explained on its own
        value) or ``list[str] -> list[str]`` (a text model: the text-only path).
    method: attribution method name (see ``gsmile.methods.METHODS``).
    unit: "word", "token" or "sentence".
    target: output shift for language models: "wasserstein", "logprob", "kl", "js", "tv", or
        "embedding" (regenerate each perturbation and compare texts by MiniLM embedding).
    n_samples: perturbed prompts drawn (identical ones are evaluated once).
    dropout: share of units each perturbation drops (0.05-0.5).
    sigma: Gaussian kernel width; default 0.5·sqrt(number of units).
    batch_size: prompts per forward pass; never changes the result.
    max_new_tokens: length of the greedy baseline response.
    random_state: seed; the same seed gives the same explanation.
    progress: show a progress bar on stderr.
    """

    def __init__(
        self,
        model=None,
        *,
        method: str = "gsmile",
        unit: str = "word",
        target: str = "wasserstein",
        n_samples: int = DEFAULT_SAMPLES,
        dropout: float = 0.2,
        sigma: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        random_state: int | None = None,
        progress: bool = False,
    ):
        self.model = model
        self.method = method
        self.unit = unit
        self.target = target
        self.n_samples = n_samples
        self.dropout = dropout
        self.sigma = sigma
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.random_state = random_state
        self.progress = progress

    # ----------------------------------------------------------- checks
    def validate(self):
        """Check the options (no model is loaded); returns (n_samples, batch_size, max_new_tokens, method)."""
        n_samples = _int_in("n_samples", self.n_samples, *SAMPLES_RANGE)
        batch_size = _int_in("batch_size", self.batch_size, 1, 4096)
        max_new_tokens = _int_in("max_new_tokens", self.max_new_tokens, 1, 4096)
        method = make_method(self.method, dropout=self.dropout, sigma=self.sigma, random_state=self.random_state)
        method.validate()
        return n_samples, batch_size, max_new_tokens, method

    # ---------------------------------------------------------- explain
    def explain(self, prompt: str, response: str | None = None) -> Explanation:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        notes: list[str] = []
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("the prompt is empty; give a prompt with at least two words")
        if response is not None and (not isinstance(response, str) or not response.strip()):
            raise InvalidInputError("the response is empty; leave it out to let the model generate one")
        n_samples, batch_size, max_new_tokens, method = self.validate()
        if self.dropout > DROPOUT_WARN:
            notes.append(f"dropout {self.dropout} is above {DROPOUT_WARN}: perturbations far from the prompt make the local surrogate less faithful")

        tic = time.perf_counter()
        backend, response, route = prepare_backend(
            resolve_model(self.model), prompt=prompt, response=response, target=self.target, max_new_tokens=max_new_tokens
        )
        is_lm = isinstance(backend, LanguageModel) and not isinstance(backend, ScalarModel)
        if "note" in route:
            notes.append(route["note"])
        target = make_target(self.target) if is_lm else None
        if is_lm and hasattr(backend, "load"):
            backend.load()
        timings["load"] = time.perf_counter() - tic

        segmentation = Segmentation.from_text(
            prompt, self.unit, tokenizer=backend.token_spans if is_lm and self.unit == "token" else None
        )
        n_units = len(segmentation)
        if n_units < 2:
            raise InvalidInputError(
                f"the prompt has {n_units} {self.unit} unit(s); at least 2 are needed to compare them "
                f"(write a longer prompt or use a finer --unit)"
            )
        if n_units < FEW_UNITS:
            notes.append(f"the prompt has only {n_units} units; attributions over so few units say little")

        masks = np.vstack([segmentation.full_mask[None, :], method.sample(n_units, n_samples)])
        unique_masks, inverse = np.unique(masks, axis=0, return_inverse=True)
        texts = [segmentation.render(m) for m in unique_masks]
        full_row = int(np.flatnonzero(unique_masks.all(axis=1))[0])

        response_ids = response_tokens = None
        if is_lm:
            tic = time.perf_counter()
            response_ids = backend.encode_response(response) if response is not None else backend.generate(prompt, max_new_tokens)
            if not response_ids:
                raise InvalidInputError("the model generated an empty response; pass --response to explain a given one")
            response = backend.decode(response_ids) if response is None else response
            response_tokens = backend.token_strings(response_ids)
            timings["generate"] = time.perf_counter() - tic
            tic = time.perf_counter()
            reference = backend.logprobs([prompt], response_ids)[0]
            embeddings = backend.token_embeddings() if target.name == "wasserstein" else None
            target.prepare(reference, response_ids, embeddings)
            timings["reference"] = time.perf_counter() - tic

        tic = time.perf_counter()
        y_unique, Y_unique, n_calls = self._evaluate(backend, target, texts, full_row, batch_size, is_lm)
        timings["score"] = time.perf_counter() - tic

        tic = time.perf_counter()
        y = y_unique[inverse.ravel()]
        Y = Y_unique[inverse.ravel()] if Y_unique is not None else None
        result = method.fit(masks, y, Y)
        timings["fit"] = time.perf_counter() - tic
        timings["total"] = time.perf_counter() - t_start

        ess = result.effective_sample_size
        if ess < ESS_WARN_SHARE * len(masks):
            notes.append(
                f"effective sample size {ess:.1f} is under {ESS_WARN_SHARE:.0%} of the {len(masks)} samples: "
                f"few perturbations are close to the prompt (raise --sigma or lower --dropout)"
            )
        if not np.isfinite(result.fidelity_r2):
            notes.append("the model's output did not change under any perturbation; there is nothing to attribute")
        elif result.fidelity_r2 < FIDELITY_THRESHOLD:
            notes.append(
                f"surrogate fidelity R² {result.fidelity_r2:.2f} is below {FIDELITY_THRESHOLD}: the linear "
                f"surrogate explains the model poorly; treat these scores with care (try more samples or larger units)"
            )
        extras: dict[str, Any] = dict(route)
        if is_lm and getattr(backend, "embedding_note", None) and target.name == "wasserstein":
            extras["ground_cost"] = backend.embedding_note
        if hasattr(backend, "call_stats") and backend.call_stats() is not None:
            extras["calls"] = backend.call_stats()
        for note in notes:
            warnings.warn(note, GsmileWarning, stacklevel=2)

        return Explanation(
            prompt=prompt,
            response=response,
            units=segmentation.units,
            coefficients=result.coefficients,
            intercept=result.intercept,
            fidelity_r2=result.fidelity_r2,
            method=method.name,
            target=target.name if is_lm else getattr(backend, "target_name", "model_output"),
            unit_type=self.unit,
            n_samples=n_samples,
            n_unique=n_calls,
            sigma=result.sigma,
            effective_sample_size=ess,
            model_id=backend.model_id,
            random_state=self.random_state,
            params={**method.params, "batch_size": batch_size, "max_new_tokens": max_new_tokens if is_lm or route["path"] == "text" else None},
            timings=timings,
            warnings=notes,
            response_tokens=response_tokens,
            token_coefficients=result.token_coefficients,
            extras=extras,
        )

    def _evaluate(self, backend, target, texts: list[str], full_row: int, batch_size: int, is_lm: bool):
        """Explained value y per unique mask (and, for language models, one column per response
        token). Each distinct text is sent to the model once; the original prompt of a language
        model is not re-scored: its Δ is 0 by definition."""
        order: dict[str, int] = {}
        for i, text in enumerate(texts):
            if not (is_lm and i == full_row):
                order.setdefault(text, len(order))
        pending = list(order)
        n_out = len(target.response_ids_) if is_lm else 0
        values = np.zeros(len(pending))
        per_token = np.zeros((len(pending), n_out)) if is_lm else None
        bar = _progress(len(pending), self.progress)
        try:
            for lo in range(0, len(pending), batch_size):
                batch = pending[lo : lo + batch_size]
                if is_lm:
                    shift = target.per_position(backend.logprobs(batch, target.response_ids_))
                    per_token[lo : lo + len(batch)] = -shift
                    values[lo : lo + len(batch)] = -(shift.sum(axis=1) if target.aggregate == "sum" else shift.mean(axis=1))
                else:
                    values[lo : lo + len(batch)] = backend(batch)
                bar.update(len(batch))
        finally:
            bar.close()
        index = np.array([order[t] if t in order else -1 for t in texts])
        y = np.where(index >= 0, values[index], 0.0)
        Y = np.where(index[:, None] >= 0, per_token[index], 0.0) if is_lm else None
        return y, Y, len(pending)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="scoring perturbations", unit="prompt", file=sys.stderr, leave=False)


def explain(prompt: str, response: str | None = None, *, model=None, **options) -> Explanation:
    """Explain ``prompt`` (and the model's response to it) in one call; see :class:`Explainer`."""
    return Explainer(model, **options).explain(prompt, response)
