"""The Explainer wires the pipeline together:

prompt -> units -> masks -> perturbed texts -> backend (batched, each text once)
-> output distributions -> Δ (target) -> kernel weights -> surrogate -> Explanation.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import is_language_model, prepare_backend, reduced_logprobs, resolve_model
from .errors import InvalidInputError, check_int, is_out_of_memory
from .explanation import FIDELITY_THRESHOLD, Explanation
from .methods import make_method, method_options
from .metrics import DEFAULT_TOP_K, stability, top_k_units
from .samplers import DROPOUT_WARN, draw_within, make_rng
from .targets import make_target
from .units import Segmentation

#: Default number of perturbed prompts. Chosen from measurements (see README, "Speed").
DEFAULT_SAMPLES = 200
DEFAULT_BATCH_SIZE = 8
#: Texts per call to a scalar black box when batch_size is left to gsmile.
SCALAR_BATCH_SIZE = 64
#: Most sampling rounds of ``until_stable``.
DEFAULT_MAX_ROUNDS = 8
DEFAULT_MAX_NEW_TOKENS = 48
SAMPLES_RANGE = (10, 100_000)
#: Warn when the kernel's effective sample size is below this share of the samples.
ESS_WARN_SHARE = 0.3
#: Warn when the prompt has fewer units than this.
FEW_UNITS = 5
RUNS_RANGE = (1, 1000)
#: How a context and the prompt share the user turn when the context is explained.
CONTEXT_TEMPLATE = "Context:\n{context}\n\nQuestion: {prompt}"
#: Options of the Explainer that belong to gSMILE, with their defaults; other methods
#: receive them only when their factory takes them.
_GSMILE_OPTIONS = {"dropout": 0.2, "sigma": None}


class GsmileWarning(UserWarning):
    """Something about an explanation the user should know (low fidelity, few units...)."""


class Explainer:
    """Explain which units of a prompt drive a model's output.

    Parameters are stored as given; they are checked and used by :meth:`explain`.

    model: None or "local" for the embedded SmolLM2, "hf:PATH" for a local Hugging Face
        model directory, "openai:NAME" or an :class:`~gsmile.backends.openai.OpenAIBackend`
        (a model behind an OpenAI-compatible API), a :class:`~gsmile.backends.LanguageModel`,
        or a callable: ``list[str] -> list[float]`` (a scalar black box, explained on its own
        value) or ``list[str] -> list[str]`` (a text model: the text-only path).
    method: attribution method name (see ``gsmile.methods.METHODS``).
    unit: "word", "token", "phrase" or "sentence" (units of the prompt).
    target: output shift for language models: "wasserstein", "logprob", "kl", "js", "tv", or
        "embedding" (regenerate each perturbation and compare texts by MiniLM embedding).
    n_samples: perturbed prompts drawn (identical ones are evaluated once). occlusion
        (N - window + 1 masks) and shapley (all 2^N) do not use it; kernelshap enumerates
        every coalition when n_samples + 1 >= 2^N.
    dropout: gsmile: share of units each perturbation drops (0.05-0.5).
    sigma: gsmile: Gaussian kernel width; default 0.5·sqrt(number of units).
    batch_size: prompts per forward pass; None (default) picks it from the sequence length
        and halves it on out-of-memory. It never changes the result.
    max_new_tokens: length of the greedy baseline response.
    random_state: seed; the same seed gives the same explanation.
    progress: show a progress bar on stderr.
    method_options: the method's own options, e.g. ``{"kernel_width": 0.25}`` for lime,
        ``{"window": 2}`` for occlusion (see ``gsmile.methods.method_options(name)``).
    runs: repeat the explanation with seeds random_state .. random_state+runs-1 and report
        how stable it is (``extras["stability"]``); the coefficients are the runs' mean.
    top_k: how many top units the stability report compares across runs.
    context_unit: unit of a context explained with ``explain(..., context=...)``.
    context_template: the user turn built from the context and the prompt; it must contain
        ``{context}`` and ``{prompt}``.
    max_evals: a budget of model evaluations (the original input's included): masks are drawn
        until their distinct ones fill it, and ``n_samples`` is not used. Identical masks are
        evaluated once, so this draws more masks than ``n_samples = max_evals`` would. For
        methods with a fixed number of masks (occlusion, shapley) it is only a cap.
    until_stable: sample in rounds of ``n_samples`` (refitting on all samples so far) until
        the ``top_k`` units are the same after two consecutive rounds, at most ``max_rounds``
        rounds; the rounds used are in ``params["rounds"]`` and ``extras["until_stable"]``.
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
        batch_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        random_state: int | None = None,
        progress: bool = False,
        method_options: dict[str, Any] | None = None,
        runs: int = 1,
        top_k: int = DEFAULT_TOP_K,
        context_unit: str = "sentence",
        context_template: str = CONTEXT_TEMPLATE,
        until_stable: bool = False,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_evals: int | None = None,
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
        self.method_options = method_options
        self.runs = runs
        self.top_k = top_k
        self.context_unit = context_unit
        self.context_template = context_template
        self.until_stable = until_stable
        self.max_rounds = max_rounds
        self.max_evals = max_evals

    # ----------------------------------------------------------- checks
    def _method_options(self) -> dict[str, Any]:
        """The options handed to the method's factory: ``method_options`` plus dropout/sigma
        where the method takes them (an explicitly set one it does not take is an error)."""
        options = self.method_options if self.method_options is not None else {}
        if not isinstance(options, dict):
            raise InvalidInputError(f"method_options must be a dict of option names to values, got {type(options).__name__}")
        options = dict(options)
        accepted = method_options(self.method)
        for name, default in _GSMILE_OPTIONS.items():
            value = getattr(self, name)
            if name in accepted:
                options.setdefault(name, value)
            elif value != default:
                valid = ", ".join(accepted) if accepted else "no options"
                raise InvalidInputError(f"{name} is an option of gsmile; method {self.method!r} takes {valid}")
        return options

    def validate(self):
        """Check the options (no model is loaded); returns (n_samples, batch_size, max_new_tokens, method)."""
        n_samples = check_int("n_samples", self.n_samples, *SAMPLES_RANGE)
        batch_size = None if self.batch_size is None else check_int("batch_size", self.batch_size, 1, 4096)
        if not isinstance(self.until_stable, bool):
            raise InvalidInputError(f"until_stable must be True or False, got {self.until_stable!r}")
        check_int("max_rounds", self.max_rounds, 2, 1000)
        if self.until_stable and self.runs != 1:
            raise InvalidInputError("until_stable and runs > 1 cannot be combined; use one of them")
        if self.max_evals is not None:
            check_int("max_evals", self.max_evals, 2, SAMPLES_RANGE[1])
            if self.until_stable:
                raise InvalidInputError("max_evals and until_stable cannot be combined; until_stable samples in rounds of n_samples")
        max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 1, 4096)
        check_int("runs", self.runs, *RUNS_RANGE)
        check_int("top_k", self.top_k, 1, 100_000)
        self._check_template()
        method = self._make_method(self.random_state)
        method.validate()
        return n_samples, batch_size, max_new_tokens, method

    def _make_method(self, seed):
        return make_method(self.method, **self._method_options(), random_state=seed)

    def _check_template(self) -> str:
        template = self.context_template
        try:
            ok = isinstance(template, str) and "{context}" in template and "{prompt}" in template
            ok = ok and template.format(context="", prompt="") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise InvalidInputError(
                "context_template must be text containing {context} and {prompt} (write other braces as {{ and }})"
            )
        return template

    # ---------------------------------------------------------- explain
    def explain(
        self,
        prompt: str,
        response: str | None = None,
        *,
        context: str | None = None,
        segments: list[str] | None = None,
    ) -> Explanation:
        """Explain the prompt, or with ``context`` the context (its units are attributed while
        the prompt stays fixed; the model sees both in the user turn, see
        ``context_template``). ``segments``: user-given units, strings that tile the
        explained text in order (whitespace between them allowed)."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        notes: list[str] = []
        _check_texts(prompt, response, context)
        n_samples, batch_size, max_new_tokens, method = self.validate()
        dropout = method.params.get("dropout")
        if dropout is not None and dropout > DROPOUT_WARN:
            notes.append(f"dropout {dropout} is above {DROPOUT_WARN}: perturbations far from the prompt make the local surrogate less faithful")
        setup = self._set_up(prompt, response, context, segments, max_new_tokens, notes, timings)
        if batch_size is None:
            batch_size = self._auto_batch_size(setup.backend, setup.original, setup.response_ids, setup.is_lm)
        evaluate = _Evaluator(self, setup, batch_size, timings)

        runs = int(self.runs)
        base_seed = self.random_state
        if (runs > 1 or self.until_stable) and base_seed is None:
            base_seed = int(make_rng(None).integers(0, 2**31 - 1))
        seeds = [base_seed] if runs == 1 else [base_seed + r for r in range(runs)]
        if self.until_stable:
            results, n_rows, rounds_report = self._fit_until_stable(method, evaluate, setup, n_samples, base_seed, notes)
        else:
            (results, n_rows), rounds_report = self._fit_runs(method, evaluate, setup, n_samples, seeds), None
        timings["total"] = time.perf_counter() - t_start
        return self._assemble(setup, method, results, n_rows, rounds_report, seeds, base_seed, evaluate,
                              max_new_tokens, notes, timings)

    def _set_up(self, prompt, response, context, segments, max_new_tokens, notes, timings) -> "_Setup":
        """The backend (loaded), the units and the response: everything before masks are drawn."""
        template = self._check_template() if context is not None else None
        tic = time.perf_counter()
        # The model's input for the unperturbed text (what model_input(full mask) gives).
        original = prompt if context is None else template.format(context=context, prompt=prompt)
        backend, response, route = prepare_backend(
            resolve_model(self.model), prompt=original, response=response, target=self.target, max_new_tokens=max_new_tokens
        )
        is_lm = is_language_model(backend)
        if "note" in route:
            notes.append(route["note"])
        target = make_target(self.target) if is_lm else None
        if is_lm and hasattr(backend, "load"):
            backend.load()
        timings["load"] = time.perf_counter() - tic

        explained = "prompt" if context is None else "context"
        segmentation, unit = self._segment(prompt if context is None else context, explained, segments, backend, is_lm, notes)
        response_ids = response_tokens = None
        if is_lm:
            tic = time.perf_counter()
            response_ids = backend.encode_response(response) if response is not None else backend.generate(original, max_new_tokens)
            if not response_ids:
                raise InvalidInputError("the model generated an empty response; pass --response to explain a given one")
            response = backend.decode(response_ids) if response is None else response
            response_tokens = backend.token_strings(response_ids)
            timings["generate"] = time.perf_counter() - tic
            # The original input's output (the target's reference) is scored with the first
            # batch of perturbations, not in a pass of its own (see _evaluate).
        return _Setup(prompt, context, template, original, backend, route, is_lm, target, segmentation, unit,
                      explained, response, response_ids, response_tokens)

    def _fit_until_stable(self, method, evaluate, setup, n_samples, base_seed, notes):
        """Sample in rounds of n_samples; refit on everything drawn so far; stop when the
        top-k units are the same as after the previous round. Returns ([fit], rows, report)."""
        max_rounds = int(self.max_rounds)
        n_units = len(setup.segmentation)
        masks = setup.segmentation.full_mask[None, :]
        previous, history, stable = None, [], False
        for r in range(max_rounds):
            seed = base_seed if r == 0 else _round_seed(base_seed, r)
            run_method = method if seed == self.random_state else self._make_method(seed)
            masks = np.vstack([masks, run_method.sample(n_units, n_samples)])
            fitted = evaluate(run_method, masks)
            top = top_k_units(fitted.coefficients, self.top_k)
            history.append(sorted(top))
            if previous is not None and top == previous:
                stable = True
                break
            previous = top
        report = {"rounds": len(history), "stable": stable, "max_rounds": max_rounds,
                  "top_k": int(self.top_k), "top_units": history}
        if not stable:
            notes.append(
                f"the top-{self.top_k} units still changed after {max_rounds} rounds of {n_samples} samples; "
                f"use more samples or larger units"
            )
        return [fitted], len(masks), report

    def _fit_runs(self, method, evaluate, setup, n_samples, seeds):
        """One fit per seed (each distinct text scored once across them). Returns (fits, rows
        of the first run)."""
        n_units = len(setup.segmentation)
        results, n_rows = [], 0
        for r, seed in enumerate(seeds):
            run_method = method if r == 0 and seed == self.random_state else self._make_method(seed)
            if self.max_evals is None:
                drawn = run_method.sample(n_units, n_samples)
            else:
                drawn = draw_within(run_method.sample, n_units, int(self.max_evals) - 1,
                                    draw=run_method.draw)
            masks = np.vstack([setup.segmentation.full_mask[None, :], drawn])
            results.append(evaluate(run_method, masks))
            n_rows = len(masks) if r == 0 else n_rows
        return results, n_rows

    def _assemble(self, setup, method, results, n_rows, rounds_report, seeds, base_seed, evaluate,
                  max_new_tokens, notes, timings) -> Explanation:
        """The Explanation: the first fit (or the mean of the runs), reports, notes and params."""
        backend, is_lm, runs = setup.backend, setup.is_lm, int(self.runs)
        result = results[0]
        coefficients, intercept, fidelity = result.coefficients, result.intercept, result.fidelity_r2
        token_coefficients, ess, extras = result.token_coefficients, result.effective_sample_size, dict(result.extras)
        if rounds_report is not None:
            extras["until_stable"] = rounds_report
        extras.update(setup.route)  # how the model was reached (path, and why)
        if is_lm and getattr(backend, "embedding_note", None) and setup.target.name == "wasserstein":
            extras["ground_cost"] = backend.embedding_note
        if hasattr(backend, "call_stats") and backend.call_stats() is not None:
            extras["calls"] = backend.call_stats()
        if runs > 1:
            coefficients, intercept, fidelity, ess, token_coefficients = _mean_of_runs(results)
            extras["stability"] = self._stability_report(results, seeds, setup.segmentation, notes)
        notes.extend(_quality_notes(fidelity, ess, n_rows, setup.explained, method.ess_hint))
        for note in notes:
            warnings.warn(note, GsmileWarning, stacklevel=3)

        params = {**method.params, "batch_size": evaluate.batch_size,
                  "max_new_tokens": max_new_tokens if is_lm or setup.route["path"] == "text" else None}
        if runs > 1:
            params.update(runs=runs, top_k=int(self.top_k))
        if self.max_evals is not None:
            params["max_evals"] = int(self.max_evals)
        if self.until_stable:
            params.update(until_stable=True, max_rounds=int(self.max_rounds), top_k=int(self.top_k),
                          rounds=rounds_report["rounds"])
        if self.batch_size is None:
            params["batch_size_auto"] = True
        if setup.context is not None:
            params["context_template"] = setup.template
        return Explanation(
            prompt=setup.prompt,
            response=setup.response,
            units=setup.segmentation.units,
            coefficients=coefficients,
            intercept=intercept,
            fidelity_r2=fidelity,
            method=method.name,
            target=setup.target.name if is_lm else getattr(backend, "target_name", "model_output"),
            unit_type=setup.unit,
            n_samples=n_rows - 1,
            n_unique=evaluate.n_calls,
            sigma=result.sigma,
            effective_sample_size=ess,
            model_id=backend.model_id,
            random_state=base_seed,
            explained=setup.explained,
            context=setup.context,
            params=params,
            timings=timings,
            warnings=notes,
            response_tokens=setup.response_tokens,
            token_coefficients=token_coefficients,
            extras=extras,
        )

    def _segment(self, text, explained, segments, backend, is_lm, notes):
        """The explained text's units (user segments or ``unit``/``context_unit``) and their type."""
        unit = self.unit if explained == "prompt" else self.context_unit
        if segments is not None:
            segmentation, unit = Segmentation.from_segments(text, segments), "custom"
        else:
            tokenizer = backend.token_spans if is_lm and unit == "token" else None
            segmentation = Segmentation.from_text(text, unit, tokenizer=tokenizer)
        n_units = len(segmentation)
        if n_units < 2:
            raise InvalidInputError(
                f"the {explained} has {n_units} {unit} unit(s); at least 2 are needed to compare them "
                f"(write a longer {explained} or use a finer --unit)"
            )
        if n_units < FEW_UNITS:
            notes.append(f"the {explained} has only {n_units} units; attributions over so few units say little")
        return segmentation, unit

    def _stability_report(self, results, seeds, segmentation, notes) -> dict:
        """How the runs' coefficients agree (``extras["stability"]``); a note on unstable units."""
        report = stability([res.coefficients for res in results], k=self.top_k, seeds=seeds)
        report["fidelity_r2"] = [None if not np.isfinite(r.fidelity_r2) else float(r.fidelity_r2) for r in results]
        if report["unstable"]:
            listed = ", ".join(repr(segmentation.units[i].text) for i in report["unstable"][:5])
            more = "..." if len(report["unstable"]) > 5 else ""
            notes.append(
                f"{len(report['unstable'])} unit(s) are unstable across the {len(results)} runs (sign flips or std above "
                f"|mean|): {listed}{more}; use more samples or larger units"
            )
        return report

    def _evaluate(self, backend, target, texts: list[str], batch_size: int, is_lm: bool, cache: dict,
                  response_ids=None, original: str | None = None):
        """Explained value y per text (and, for language models, one column per response
        token). Each distinct text is sent to the model once; ``cache`` (text -> values)
        keeps them across runs. Texts are sent in sorted order, so a batch's texts tend to share
        their start (a backend can reuse that work, see HFCausalLM._tree_hidden); a batch
        that runs out of memory is retried at half the size. Returns (y, Y or None, number of
        texts scored (the original included when it was scored here), the batch size that
        worked).

        For a language model, the ``original`` input rides in the first batch when it has not
        been scored yet: its log-probs prepare ``target`` (the reference every shift is measured
        from), which saves a forward pass of its own. Its shift is 0 by definition."""
        needs_reference = is_lm and original not in cache
        n_scored = int(needs_reference)
        pending = sorted(t for t in dict.fromkeys(texts) if t not in cache and not (needs_reference and t == original))
        bar = _progress(len(pending), self.progress)
        try:
            lo = 0
            while lo < len(pending) or needs_reference:
                batch = pending[lo : lo + batch_size - needs_reference]
                try:
                    if is_lm:
                        shift = reduced_logprobs(backend, [original] * needs_reference + batch, response_ids,
                                                 _ShiftFromReference(target, backend, response_ids, needs_reference))
                        if needs_reference:
                            cache[original] = (0.0, np.zeros(len(response_ids)))
                            shift = shift[1:]
                        values = -(shift.sum(axis=1) if target.aggregate == "sum" else shift.mean(axis=1))
                        rows = -shift
                    else:
                        values, rows = backend(batch), [None] * len(batch)
                except Exception as exc:
                    if batch_size > 1 and is_out_of_memory(exc):
                        batch_size = max(1, batch_size // 2)
                        continue
                    raise
                needs_reference = False
                for text, value, row in zip(batch, values, rows):
                    cache[text] = (float(value), row)
                lo += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()
        y = np.array([cache[t][0] for t in texts], dtype=float)
        Y = np.vstack([cache[t][1] for t in texts]) if is_lm else None
        return y, Y, n_scored + len(pending), batch_size

    @staticmethod
    def _auto_batch_size(backend, original: str, response_ids, is_lm: bool) -> int:
        """Batch size from the sequence length when the backend can suggest one."""
        if is_lm and hasattr(backend, "suggest_batch_size") and hasattr(backend, "prompt_ids"):
            return int(backend.suggest_batch_size(len(backend.prompt_ids(original)) + len(response_ids)))
        return DEFAULT_BATCH_SIZE if is_lm else SCALAR_BATCH_SIZE


def _check_texts(prompt, response, context) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("the prompt is empty; give a prompt with at least two words")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise InvalidInputError("the response is empty; leave it out to let the model generate one")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise InvalidInputError("the context is empty; give a context text or leave it out to explain the prompt")


@dataclass
class _Setup:
    """What one explanation works on once the model is reached and the units are known."""

    prompt: str
    context: str | None
    template: str | None
    original: str  # the model's input for the unperturbed text
    backend: Any
    route: dict
    is_lm: bool
    target: Any
    segmentation: Segmentation
    unit: str
    explained: str
    response: str | None
    response_ids: list[int] | None
    response_tokens: list[str] | None

    def model_input(self, mask) -> str:
        """The model's input with the units of ``mask`` kept."""
        text = self.segmentation.render(mask)
        return text if self.context is None else self.template.format(context=text, prompt=self.prompt)


class _Evaluator:
    """Scores a method's masks (each distinct text once per explanation, across runs and
    rounds) and fits the method on them; counts the texts scored and keeps the batch size
    that worked."""

    def __init__(self, explainer: "Explainer", setup: _Setup, batch_size: int, timings: dict):
        self.explainer = explainer
        self.setup = setup
        self.batch_size = batch_size
        self.timings = timings
        self.timings["score"] = self.timings["fit"] = 0.0
        self.cache: dict[str, tuple[float, np.ndarray | None]] = {}
        self.n_calls = 0

    def __call__(self, method, masks: np.ndarray):
        s = self.setup
        unique_masks, inverse = np.unique(masks, axis=0, return_inverse=True)
        texts = [s.model_input(m) for m in unique_masks]
        tic = time.perf_counter()
        y_unique, Y_unique, calls, self.batch_size = self.explainer._evaluate(
            s.backend, s.target, texts, self.batch_size, s.is_lm, self.cache, s.response_ids, s.original
        )
        self.n_calls += calls
        self.timings["score"] += time.perf_counter() - tic
        tic = time.perf_counter()
        y = y_unique[inverse.ravel()]
        Y = Y_unique[inverse.ravel()] if Y_unique is not None else None
        fitted = method.fit(masks, y, Y)
        self.timings["fit"] += time.perf_counter() - tic
        return fitted


class _ShiftFromReference:
    """Per-position output shifts ``target.per_position`` of log-prob rows, given to the
    backend as its ``reduce``. With ``first_is_reference``, the first row seen is the original
    input's: it prepares ``target`` (the reference every shift is measured from; the target
    keeps a copy) and its own shift is 0."""

    def __init__(self, target, backend, response_ids, first_is_reference: bool):
        self.target, self.backend, self.response_ids = target, backend, response_ids
        self.pending = first_is_reference

    def __call__(self, logprobs: np.ndarray) -> np.ndarray:
        out = np.zeros((len(logprobs), len(self.response_ids)))
        start = 0
        if self.pending and len(logprobs):
            embeddings = self.backend.token_embeddings() if self.target.name == "wasserstein" else None
            self.target.prepare(logprobs[0], self.response_ids, embeddings)
            self.pending, start = False, 1
        if start < len(logprobs):
            out[start:] = self.target.per_position(logprobs[start:])
        return out


def _mean_of_runs(results):
    """Coefficients, intercept, fidelity (NaN-aware), effective sample size and token matrix
    averaged over repeated runs."""
    r2s = np.array([res.fidelity_r2 for res in results], dtype=float)
    token = results[0].token_coefficients
    return (
        np.mean([res.coefficients for res in results], axis=0),
        float(np.mean([res.intercept for res in results])),
        float(np.nanmean(r2s)) if np.isfinite(r2s).any() else float("nan"),
        float(np.mean([res.effective_sample_size for res in results])),
        None if token is None else np.mean([res.token_coefficients for res in results], axis=0),
    )


def _quality_notes(fidelity: float, ess: float, n_rows: int, explained: str, ess_hint: str | None) -> list[str]:
    """Warnings about how far the explanation can be trusted."""
    notes = []
    if ess_hint is not None and ess < ESS_WARN_SHARE * n_rows:
        notes.append(
            f"effective sample size {ess:.1f} is under {ESS_WARN_SHARE:.0%} of the {n_rows} samples: "
            f"few perturbations are close to the {explained} ({ess_hint})"
        )
    if not np.isfinite(fidelity):
        notes.append("the model's output did not change under any perturbation; there is nothing to attribute")
    elif fidelity < FIDELITY_THRESHOLD:
        notes.append(
            f"surrogate fidelity R² {fidelity:.2f} is below {FIDELITY_THRESHOLD}: the linear "
            f"surrogate explains the model poorly; treat these scores with care (try more samples or larger units)"
        )
    return notes


def _round_seed(base_seed: int, round_index: int) -> int:
    """The seed of round ``round_index`` > 0 of ``until_stable`` (derived, reproducible)."""
    return int(np.random.SeedSequence([int(base_seed), int(round_index)]).generate_state(1)[0])


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


def explain(
    prompt: str,
    response: str | None = None,
    *,
    model=None,
    context: str | None = None,
    segments: list[str] | None = None,
    **options,
) -> Explanation:
    """Explain ``prompt`` (or, with ``context``, the context) and the model's response in one
    call; see :class:`Explainer` and :meth:`Explainer.explain`."""
    return Explainer(model, **options).explain(prompt, response, context=context, segments=segments)
