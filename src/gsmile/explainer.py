"""The Explainer: parameters, their validation, and the run strategies (one run, repeated
runs, sampling until stable) over the pipeline

prompt -> units -> masks -> model inputs (:mod:`.inputs`) -> :class:`~.scoring.Scorer`
(backend, batched, each input once) -> Δ -> kernel weights -> surrogate -> Explanation.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .backends import ImageModel, KnowsWindow, LanguageModel, Loadable, PerExplanation, ReportsExtras, Route, ScalarModel, SizesBatches, prepare_backend, resolve_model
from .backends.images import check_image_seeds
from .errors import InvalidInputError, check_int, lookup
from .explanation import FIDELITY_THRESHOLD, Explanation, image_record, level_record
from .inputs import CONTEXT_TEMPLATE, ModelInput, check_template, user_turn
from .length import fit_length
from .methods import SurrogateMethod, WhiteBoxMethod, make_method, method_options, option_specs
from .samplers import DROPOUT_WARN, draw_within, make_rng
from .scoring import Scorer
from .stability import DEFAULT_TOP_K, mean_of_runs, runs_report, top_k_units
from .surrogates import SURROGATES
from .targets import make_target
from .targets.images import make_image_distance
from .units import SEGMENTERS, Segmentation, Unit

#: Default number of perturbed prompts. Chosen from measurements (see README, "Speed").
DEFAULT_SAMPLES = 200
#: Most sampling rounds of ``until_stable``.
DEFAULT_MAX_ROUNDS = 8
DEFAULT_MAX_NEW_TOKENS = 48
SAMPLES_RANGE = (10, 100_000)
#: Warn when the kernel's effective sample size is below this share of the samples.
ESS_WARN_SHARE = 0.3
#: Warn when the prompt has fewer units than this.
FEW_UNITS = 5
RUNS_RANGE = (1, 1000)
#: Methods whose fit ``surrogate=`` can replace (occlusion, shapley and kernelshap estimate
#: values defined by their own estimator: leave-one-out differences, Shapley values by
#: enumeration or by a regression constrained to sum to the output change).
SURROGATE_METHODS = ("gsmile", "lime", "banzhaf", "mupax")
#: Built-in units from finest to coarsest: ``refine`` must come before the coarse unit.
UNIT_ORDER = ("token", "word", "phrase", "sentence")
#: Range of ``refine_share``, the first level's share of the budget.
REFINE_SHARE_RANGE = (0.1, 0.9)
#: Options of the Explainer that belong to gSMILE, with their defaults (the method's own);
#: other methods receive them only when their factory takes them.
_GSMILE_OPTIONS = {name: spec.default for name, spec in option_specs("gsmile").items()}

__all__ = ["CONTEXT_TEMPLATE", "DEFAULT_SAMPLES", "Explainer", "GsmileWarning", "explain"]

#: what a white-box method given a model it cannot look inside advises
NOT_LOCAL_ADVICE = ": use a perturbation method"


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
    method: attribution method name (see ``gsmile.methods.METHODS``), or a
        :class:`~gsmile.methods.SurrogateMethod` built from any sampler, kernel and surrogate
        (reseeded per run with ``random_state``; its options are its own).
    unit: "word", "token", "phrase" or "sentence" (units of the prompt).
    target: output shift for language models: "wasserstein", "logprob", "kl", "js", "tv", or
        "embedding" (regenerate each perturbation and compare texts by MiniLM embedding).
    n_samples: perturbed prompts drawn (identical ones are evaluated once). occlusion
        (N - window + 1 masks) and shapley (all 2^N) do not use it; kernelshap enumerates
        every coalition when n_samples + 1 >= 2^N.
    dropout: gsmile: share of units each perturbation drops (0.05-0.5).
    sigma: gsmile: Gaussian kernel width; default max(0.5·sqrt(N), 0.7·dropout·N) for N units
        (gSMILE's 0.5·sqrt(N) up to 12 units, wider beyond so that the effective sample size
        stays near half the samples; see :func:`gsmile.kernels.default_sigma`).
    batch_size: prompts per forward pass; None (default) picks it from the sequence length
        and halves it on out-of-memory. It never changes the result.
    max_new_tokens: length of the greedy baseline response.
    random_state: seed; the same seed gives the same explanation.
    progress: True shows a progress bar on stderr; a callable ``progress(done, expected)``
        is called after each model call with the inputs scored so far and about how many
        the explanation will score.
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
    refine: coarse-to-fine attribution (see docs/long-inputs.md): a unit finer than ``unit``
        (or ``context_unit``, or the ``segments``), e.g. "word" under "sentence". Level 1
        explains the coarse units; level 2 splits the ``refine_top`` most important coarse
        units into ``refine`` units and keeps every other coarse unit whole, and is explained
        with the rest of the budget through the same scorer. The explanation's units are level
        2's; ``Explanation.levels`` holds both, each fine unit with its parent coarse unit.
        None (default): one level.
    refine_top: how many coarse units level 2 refines (the most important ones that have
        more than one finer unit).
    refine_share: share of the budget (``max_evals``, else ``n_samples``) spent on level 1.
    surrogate: "least_squares" (the method's own fit) or "lasso": an L1-penalized fit that
        keeps few units (scikit-learn's Lasso; penalty by 5-fold cross-validation, or the
        smallest that keeps ``max_units``), for inputs with more units than the samples can
        pin down. The kept units are in ``extras["selected_units"]``; the reliability checks
        count them as the surrogate's parameters. For gsmile, lime, banzhaf and mupax (the
        others' values are defined by their own estimator). None (default): least squares,
        unless the budget (``max_evals``, else ``n_samples`` and the original) is smaller than
        the units plus one, where a least-squares fit is underdetermined: then lasso, recorded
        with the reason in ``params["surrogate"]`` and ``params["surrogate_reason"]`` (one
        level only; coarse-to-fine levels keep least squares unless asked).
    max_units: with ``surrogate="lasso"``, keep at most this many units (ContextCite's
        choice); None: the penalty with the best cross-validated error.
    interactions: after the fit, how many of the most important units (by |coefficient|) to
        examine in pairs: which pairs matter together (e.g. two sentences that answer only
        jointly). 0 (default): off; 2 to 20. Computed with shapiq (the ``interactions``
        extra) as k-SII of order 2 on the game "the explained value with the top units
        outside the coalition removed, every other unit kept": a pair's value is positive
        when the two do more together than the sum of each alone, negative when they are
        redundant, 0 when the model is additive in them (see :mod:`gsmile.interactions`).
        Recorded in ``extras["interactions"]``; its inputs are scored by the same scorer
        (counted in ``n_unique``).
    interaction_budget: game evaluations for ``interactions``; None: exact (all 2^k
        coalitions) up to 8 units, else 256 (KernelSHAP-IQ estimate, seeded with
        ``random_state``). A budget of 2^k or more is exact.
    max_length: the most tokens one model input may have, the chat template and the response
        included (language models that report their token counts). A longer input is cut from
        its beginning (the context first, then the prompt; the response to half of it) before
        it is split into units, and the cut is recorded (``extras["truncated"]`` and a
        warning). None (default): an input longer than the model's window is refused with
        its length.
    """

    def __init__(
        self,
        model=None,
        *,
        method: str | SurrogateMethod = "gsmile",
        unit: str = "word",
        target: str = "wasserstein",
        n_samples: int = DEFAULT_SAMPLES,
        dropout: float = _GSMILE_OPTIONS["dropout"],
        sigma: float | None = _GSMILE_OPTIONS["sigma"],
        batch_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        random_state: int | None = None,
        progress: bool | Callable[[int, int], None] = False,
        method_options: dict[str, Any] | None = None,
        runs: int = 1,
        top_k: int = DEFAULT_TOP_K,
        context_unit: str = "sentence",
        context_template: str = CONTEXT_TEMPLATE,
        until_stable: bool = False,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_evals: int | None = None,
        refine: str | None = None,
        refine_top: int = 3,
        refine_share: float = 0.5,
        surrogate: str | None = None,
        max_units: int | None = None,
        interactions: int = 0,
        interaction_budget: int | None = None,
        max_length: int | None = None,
        image_seeds: int | None = None,
        embedder=None,
        contrast: str | None = None,
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
        self.refine = refine
        self.refine_top = refine_top
        self.refine_share = refine_share
        self.surrogate = surrogate
        self.max_units = max_units
        self.interactions = interactions
        self.interaction_budget = interaction_budget
        self.max_length = max_length
        self.image_seeds = image_seeds
        self.embedder = embedder
        self.contrast = contrast

    # ----------------------------------------------------------- checks
    def validate(self) -> SurrogateMethod:
        """Check every option (no model is loaded); returns the method, built and checked.
        Errors are InvalidInputError naming the option (``field``) or UnknownNameError."""
        check_int("n_samples", self.n_samples, *SAMPLES_RANGE)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1, 4096)
        if not isinstance(self.until_stable, bool):
            raise InvalidInputError(f"until_stable must be True or False, got {self.until_stable!r}", field="until_stable")
        check_int("max_rounds", self.max_rounds, 2, 1000)
        if self.until_stable and self.runs != 1:
            raise InvalidInputError("until_stable and runs > 1 cannot be combined; use one of them", field="until_stable")
        if self.max_evals is not None:
            check_int("max_evals", self.max_evals, 2, SAMPLES_RANGE[1])
            if self.until_stable:
                raise InvalidInputError("max_evals and until_stable cannot be combined; until_stable samples in rounds of n_samples",
                                        field="max_evals")
        check_int("max_new_tokens", self.max_new_tokens, 1, 4096)
        if self.max_length is not None:
            check_int("max_length", self.max_length, 16, 10_000_000)
        if self.contrast is not None and (not isinstance(self.contrast, str) or not self.contrast.strip()):
            raise InvalidInputError("contrast must be a non-empty text: the alternative response to compare with", field="contrast")
        if self.image_seeds is not None:
            check_image_seeds(self.image_seeds)
        if self.embedder is not None:
            make_image_distance(self.embedder)  # the name's check (a CLIP model loads on first use)
        check_int("runs", self.runs, *RUNS_RANGE)
        check_int("top_k", self.top_k, 1, 100_000)
        check_template(self.context_template)
        make_rng(self.random_state)  # the samplers' own check: a non-negative integer, a Generator or None
        if not (isinstance(self.progress, bool) or callable(self.progress)):
            raise InvalidInputError(f"progress must be True, False or a callable, got {self.progress!r}", field="progress")
        self._check_refine()
        self._check_interactions()
        method = self._make_method(self.random_state)
        method.validate()
        if isinstance(method, WhiteBoxMethod):
            self._check_white_box_model(method)
        return method

    def _check_white_box_model(self, method: WhiteBoxMethod) -> None:
        """A white-box method with a model that is surely not local: refused before any call."""
        model = self.model
        remote = isinstance(model, str) and model.startswith(("openai:", "openai-images:", "diffusers:"))
        if remote or isinstance(model, (PerExplanation, ScalarModel, ImageModel)) or (callable(model) and not isinstance(model, (str, LanguageModel))):
            from .backends.local import not_local

            raise not_local(f"{method.name} needs", model if isinstance(model, str) else getattr(model, "model_id", type(model).__name__),
                            NOT_LOCAL_ADVICE, field="method")

    def _check_refine(self) -> None:
        """The coarse-to-fine options on their own (their fit to the units is checked by
        :meth:`_refine_over`, which knows whether a prompt or a context is explained)."""
        check_int("refine_top", self.refine_top, 1, 100_000)
        share = self.refine_share
        lo, hi = REFINE_SHARE_RANGE
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not lo <= share <= hi:
            raise InvalidInputError(f"refine_share must be a number from {lo} to {hi} (level 1's share of the budget), "
                                    f"got {share!r}", field="refine_share")
        if self.refine is None:
            return
        lookup(SEGMENTERS, self.refine, "refine unit")
        if self.max_evals is not None and self.max_evals < SAMPLES_RANGE[0]:
            raise InvalidInputError(f"refine splits max_evals between two levels; give at least {SAMPLES_RANGE[0]}, "
                                    f"got {self.max_evals}", field="max_evals")
        if self.until_stable or self.runs != 1:
            raise InvalidInputError("refine cannot be combined with until_stable or runs > 1; explain coarse-to-fine in one run",
                                    field="refine")

    def _check_interactions(self) -> None:
        """``interactions`` and ``interaction_budget`` on their own (their fit to the units is
        checked once the units are known); shapiq is imported only when interactions are asked for."""
        from .interactions import MAX_INTERACTIONS, plan, require_shapiq

        k = check_int("interactions", self.interactions, 0, MAX_INTERACTIONS)
        if k == 1:
            raise InvalidInputError("interactions examines pairs of the top units: give 2 or more (0: off)", field="interactions")
        if self.interaction_budget is not None:
            if k == 0:
                raise InvalidInputError("interaction_budget applies to interactions; set interactions to 2 or more",
                                        field="interaction_budget")
            check_int("interaction_budget", self.interaction_budget, 2, SAMPLES_RANGE[1])
            plan(k, int(self.interaction_budget))  # enough for the values the estimate fits
        if k:
            require_shapiq()

    def _refine_over(self, coarse_unit: str, which: str) -> None:
        """InvalidInputError unless ``refine`` is finer than the coarse unit (custom segments
        may be refined into any built-in unit)."""
        if coarse_unit not in UNIT_ORDER:
            return
        if UNIT_ORDER.index(self.refine) >= UNIT_ORDER.index(coarse_unit):
            finer = UNIT_ORDER[: UNIT_ORDER.index(coarse_unit)]
            raise InvalidInputError(
                f"refine {self.refine!r} is not finer than {which} {coarse_unit!r}: refining splits each important "
                f"{coarse_unit} into smaller units, so refine must be one of: {', '.join(finer) or 'none (token is the finest unit)'}",
                field="refine",
            )

    def _choose_surrogate(self, run: "_Run", method: SurrogateMethod) -> SurrogateMethod:
        """With no surrogate asked for, lasso where the budget cannot pin down a least-squares
        fit of every unit (fewer evaluations than units plus one); the method as it is otherwise."""
        if self.surrogate is not None or run.refine is not None or isinstance(self.method, SurrogateMethod) \
                or method.name not in SURROGATE_METHODS:
            return method
        budget = int(self.max_evals) if self.max_evals is not None else int(self.n_samples) + 1
        n_units = len(run.inputs.segmentation)
        if budget >= n_units + 1:
            return method
        run.surrogate = "lasso"
        method = self._make_method(self.random_state, run.surrogate)
        method.params["surrogate_reason"] = (f"lasso chosen: {budget} evaluations for {n_units} units, fewer than the "
                                             f"{n_units + 1} parameters of a least-squares fit")
        return method

    def _make_method(self, seed, surrogate: str | None = None) -> SurrogateMethod:
        """The method with random_state ``seed``: a user-built SurrogateMethod reseeded, or
        the named method built from its options."""
        if isinstance(self.method, SurrogateMethod):
            given = [n for n, default in _GSMILE_OPTIONS.items() if getattr(self, n) != default]
            if self.method_options or given:
                raise InvalidInputError("options apply to a method given by name; set them on your SurrogateMethod's parts instead",
                                        field="method_options")
            if self.surrogate not in (None, "least_squares") or self.max_units is not None:
                raise InvalidInputError("surrogate and max_units apply to a method given by name; give your SurrogateMethod "
                                        "its own surrogate_factory instead", field="surrogate")
            return self.method.with_random_state(seed)
        return self._with_surrogate(make_method(self.method, **self._method_options(), random_state=seed),
                                    surrogate or self.surrogate or "least_squares")

    def _with_surrogate(self, method: SurrogateMethod, surrogate: str) -> SurrogateMethod:
        """``method`` fitted with ``surrogate`` (its own fit for least_squares)."""
        factory = lookup(SURROGATES, surrogate, "surrogate")
        if self.max_units is not None:
            if surrogate != "lasso":
                raise InvalidInputError("max_units applies to surrogate='lasso' (the units a sparse fit keeps)", field="max_units")
            check_int("max_units", self.max_units, 1, 100_000)
        if factory is None:
            return method
        if method.name not in SURROGATE_METHODS:
            raise InvalidInputError(f"method {method.name!r} estimates values defined by its own estimator, which another "
                                    f"surrogate would change; surrogate={surrogate!r} applies to "
                                    f"{', '.join(SURROGATE_METHODS)}", field="surrogate")
        method.surrogate_factory = functools.partial(factory, max_units=self.max_units)
        method.params.update(surrogate=surrogate, max_units=self.max_units)
        return method

    def _method_options(self) -> dict[str, Any]:
        """The options handed to the method's factory: ``method_options`` plus dropout/sigma
        where the method takes them (an explicitly set one it does not take is an error)."""
        options = self.method_options if self.method_options is not None else {}
        if not isinstance(options, dict):
            raise InvalidInputError(f"method_options must be a dict of option names to values, got {type(options).__name__}",
                                    field="method_options")
        options = dict(options)
        accepted = method_options(self.method)
        for name, default in _GSMILE_OPTIONS.items():
            value = getattr(self, name)
            if name in accepted:
                options.setdefault(name, value)
            elif value != default:
                valid = ", ".join(accepted) if accepted else "no options"
                raise InvalidInputError(f"{name} is an option of gsmile; method {self.method!r} takes {valid}", field=name)
        return options

    # ---------------------------------------------------------- explain
    def explain(self, prompt: str, response: str | None = None, *, context: str | None = None,
                segments: list[str] | None = None) -> Explanation:
        """Explain the prompt, or with ``context`` the context (its units are attributed while
        the prompt stays fixed; the model sees both in the user turn, see
        ``context_template``). ``segments``: user-given units, strings that tile the
        explained text in order (whitespace between them allowed)."""
        t_start = time.perf_counter()
        _check_texts(prompt, response, context)
        method = self.validate()
        if self.refine is not None and segments is None:
            self._refine_over(*((self.context_unit, "context_unit") if context is not None else (self.unit, "unit")))
        run = _Run(prompt=prompt, context=context)
        dropout = method.params.get("dropout")
        if dropout is not None and dropout > DROPOUT_WARN:
            run.notes.append(f"dropout {dropout} is above {DROPOUT_WARN}: perturbations far from the prompt make the local surrogate less faithful")
        self._reach_model(run, response)
        self._fit_length(run, segments)
        self._segment(run, segments)
        method = self._choose_surrogate(run, method)
        self._response(run)
        if isinstance(method, WhiteBoxMethod):
            return self._explain_white_box(run, method, t_start)
        run.scorer = Scorer(run.route.model, original=run.original, target=run.target, response_ids=run.response_ids,
                            batch_size=self.batch_size, known=run.route.known, progress=self.progress is True, contrast_ids=run.contrast_ids,
                            on_scored=self._progress_reporter())
        run.timings["score"] = run.timings["fit"] = 0.0
        if self.until_stable:
            fits, n_rows = self._fit_until_stable(run, method)
        elif run.refine is not None:
            fits, n_rows = self._coarse_to_fine(run, method)
        else:
            fits, n_rows = self._fit_runs(run, method)
        if self.interactions:
            self._interactions(run, fits)
        run.timings["total"] = time.perf_counter() - t_start
        run.timings["peak_rss_mb"] = peak_rss_mb()
        return self._assemble(run, method, fits, n_rows)

    def _explain_white_box(self, run: "_Run", method: WhiteBoxMethod, t_start: float) -> Explanation:
        """A white-box method's explanation: read from inside the local model (no sampling, no
        surrogate; see :mod:`gsmile.methods.whitebox`). With a contrast, the attributions of
        log p(contrast) are subtracted (gradients are linear in the explained function)."""
        from .backends.local import require_local

        given = [name for name, value, default in (("runs", self.runs, 1), ("until_stable", self.until_stable, False),
                                                    ("refine", self.refine, None), ("interactions", self.interactions, 0),
                                                    ("max_evals", self.max_evals, None)) if value != default]
        if given:
            raise InvalidInputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to perturbation methods; "
                                    f"{method.name} samples nothing", field=given[0])
        require_local(run.route.model, f"{method.name} needs", advice=NOT_LOCAL_ADVICE, field="method")
        tic = time.perf_counter()
        spans = self._spans_in_user_turn(run)
        result = method.attribute(run.route.model, run.original, spans, list(run.response_ids))
        coefficients, token_coefficients = np.asarray(result.coefficients, float), result.token_coefficients
        extras = dict(result.extras)
        if run.contrast_ids is not None:
            other = method.attribute(run.route.model, run.original, spans, list(run.contrast_ids))
            coefficients = coefficients - np.asarray(other.coefficients, float)
            token_coefficients = None  # the margin has no per-token column
            extras["contrast_extras"] = dict(other.extras)
        run.timings["attribute"] = time.perf_counter() - tic
        issues = method.issues(result)
        if result.hint:
            extras["hint"] = result.hint
        extras.update(run.route.info, white_box_issues=issues)
        if run.truncated is not None:
            extras["truncated"] = run.truncated
        run.timings["total"] = time.perf_counter() - t_start
        run.timings["peak_rss_mb"] = peak_rss_mb()
        params = {**method.params, "white_box": True, "max_new_tokens": int(self.max_new_tokens)}
        if self.contrast is not None:
            params["contrast"] = self.contrast
        if self.max_length is not None:
            params["max_length"] = int(self.max_length)
        notes = run.notes + [f"{method.name}: {issue}" for issue in issues]
        for note in notes:
            warnings.warn(note, GsmileWarning, stacklevel=3)
        return Explanation(
            prompt=run.prompt, response=run.response, units=run.inputs.segmentation.units, coefficients=coefficients,
            intercept=0.0, fidelity_r2=float("nan"), held_out_r2=None, method=method.name,
            target="contrast" if self.contrast is not None else method.explains, unit_type=run.unit, n_samples=0, n_unique=0,
            model_id=run.route.model.model_id, random_state=None, explained=run.explained, context=run.context, params=params,
            timings=run.timings, warnings=notes, response_tokens=run.response_tokens,
            token_coefficients=None if token_coefficients is None else np.asarray(token_coefficients, float), extras=extras,
        )

    @staticmethod
    def _spans_in_user_turn(run: "_Run") -> list[tuple[int, int]]:
        """The units' character spans in the user turn the model sees (a context sits inside
        the template, after whatever comes before ``{context}``)."""
        offset = 0
        if run.context is not None:
            template = run.inputs.template
            offset = len(template[: template.index("{context}")].format(prompt=run.prompt))
        return [(u.start + offset, u.end + offset) for u in run.inputs.segmentation.units]

    def _reach_model(self, run: "_Run", response: str | None) -> None:
        """The route to the model for this explanation (loaded) and the target."""
        tic = time.perf_counter()
        run.original = user_turn(run.prompt, run.context, self.context_template)
        target = "logprob" if self.contrast is not None else self.target  # a contrast compares log-probabilities
        run.route = prepare_backend(resolve_model(self.model), prompt=run.original, response=response, target=target,
                                    max_new_tokens=int(self.max_new_tokens), image_seeds=self.image_seeds, embedder=self.embedder)
        run.response = run.route.response
        if "note" in run.route.info:
            run.notes.append(run.route.info["note"])
        if self.contrast is not None and not run.route.is_lm:
            raise InvalidInputError(f"contrast needs the model's log-probabilities; {run.route.model.model_id} is explained on the "
                                    f"{run.route.info['path']} path ({run.route.info['path_reason']})", field="contrast")
        if run.route.is_lm:
            run.target = make_target(target)
            if isinstance(run.route.model, Loadable):
                run.route.model.load()
        run.timings["load"] = time.perf_counter() - tic

    def _fit_length(self, run: "_Run", segments: list[str] | None) -> None:
        """Refuse an input longer than the model's window, or cut it from the beginning to
        ``max_length`` tokens (see :mod:`gsmile.length`), before it is split into units."""
        lm = run.route.model
        if not run.route.is_lm or not isinstance(lm, SizesBatches):
            return
        window = lm.max_tokens() if isinstance(lm, KnowsWindow) else None
        limit = self.max_length if self.max_length is not None else window
        if limit is None:
            return
        response_ids = lm.encode_response(run.response) if run.response is not None else None
        n_resp = len(response_ids) if response_ids is not None else int(self.max_new_tokens)
        n = len(lm.prompt_ids(run.original)) + n_resp
        if n <= limit:
            return
        what = "the response" if response_ids is not None else "max_new_tokens"
        if response_ids is None and n_resp > limit // 2 and self.max_length is not None:
            raise InvalidInputError(f"max_new_tokens ({n_resp}) must be at most half of max_length ({limit})", field="max_length")
        if self.max_length is None:
            raise InvalidInputError(
                f"the input is {n} tokens with {what} ({n_resp}), more than the model's window of {window}; shorten it, "
                f"or pass max_length (--max-length N) to cut it from the beginning", field="max_length")
        if segments is not None:
            raise InvalidInputError(f"the input is {n} tokens with {what} ({n_resp}), more than max_length {limit}, and "
                                    f"your own segments cannot be cut; shorten them or raise max_length", field="max_length")
        prompt, context, kept, notes = fit_length(lm, run.prompt, run.context, response_ids or [0] * n_resp, limit,
                                                  template=self.context_template)
        if context is None and run.context is not None:
            raise InvalidInputError(f"max_length {limit} leaves no room for the context (the prompt and {what} take it all); "
                                    f"raise max_length", field="max_length")
        if response_ids is not None and len(kept) < len(response_ids):
            run.response = lm.decode(kept)
        cut = {"max_length": limit, "tokens": n, "prompt_chars_cut": len(run.prompt) - len(prompt),
               "context_chars_cut": len(run.context) - len(context) if run.context is not None else 0,
               "response_tokens_cut": len(response_ids) - len(kept) if response_ids is not None else 0}
        run.prompt, run.context, run.truncated = prompt, context, cut
        run.original = user_turn(prompt, context, self.context_template)
        run.notes.extend(notes)

    def _segment(self, run: "_Run", segments: list[str] | None) -> None:
        """The explained text's units (user segments or ``unit``/``context_unit``)."""
        run.explained = "prompt" if run.context is None else "context"
        text = run.prompt if run.context is None else run.context
        unit = self.unit if run.context is None else self.context_unit
        if segments is not None:
            segmentation, unit = Segmentation.from_segments(text, segments), "custom"
        else:
            segmentation = Segmentation.from_text(text, unit, tokenizer=self._tokenizer(run, unit))
        if self.refine is not None:
            segmentation, unit = self._coarse_level(run, segmentation, unit)
        n_units = len(segmentation)
        if n_units < 2:
            raise InvalidInputError(
                f"the {run.explained} has {n_units} {unit} unit(s); at least 2 are needed to compare them "
                f"(write a longer {run.explained} or use a finer --unit)"
            )
        if n_units < FEW_UNITS:
            run.notes.append(f"the {run.explained} has only {n_units} units; attributions over so few units say little")
        run.unit = unit
        run.inputs = ModelInput(segmentation, run.prompt, run.context, self.context_template)

    @staticmethod
    def _tokenizer(run: "_Run", unit: str):
        return run.route.model.token_spans if run.route.is_lm and unit == "token" else None

    def _coarse_level(self, run: "_Run", coarse: Segmentation, unit: str) -> tuple[Segmentation, str]:
        """The first level's units, with the finer units of each (``run.fine``, used by
        level 2), or, where there is nothing to refine, the plain units with a note
        (``run.refine`` None: one level)."""
        fine = [self._split(run, u) for u in coarse.units]
        what = f"the {run.explained}"
        if len(coarse) < 2:
            run.notes.append(f"coarse-to-fine needs at least 2 {unit} units to choose from, but {what} has {len(coarse)}; "
                             f"explained with plain {self.refine} units instead")
            return Segmentation.from_text(coarse.text, self.refine, tokenizer=self._tokenizer(run, self.refine)), self.refine
        if all(len(f) < 2 for f in fine):
            run.notes.append(f"no {unit} unit of {what} has more than one {self.refine} unit, so there is nothing to refine; "
                             f"explained with plain {unit} units instead")
            return coarse, unit
        run.refine, run.fine = self.refine, fine
        return coarse, unit

    def _split(self, run: "_Run", coarse: Unit) -> list[Unit]:
        """The ``refine`` units inside one coarse unit (segmented on its own text, so none
        crosses its borders)."""
        spans = SEGMENTERS[self.refine](coarse.text, self._tokenizer(run, self.refine))
        return [Unit(coarse.text[s:e], coarse.start + s, coarse.start + e) for s, e in spans]

    def _response(self, run: "_Run") -> None:
        """The response's token ids (generated greedily unless given)."""
        if not run.route.is_lm:
            return
        tic = time.perf_counter()
        lm = run.route.model
        run.response_ids = lm.encode_response(run.response) if run.response is not None else lm.generate(run.original, int(self.max_new_tokens))
        if not run.response_ids:
            raise InvalidInputError("the model generated an empty response; pass --response to explain a given one")
        run.response = lm.decode(run.response_ids) if run.response is None else run.response
        run.response_tokens = lm.token_strings(run.response_ids)
        if self.contrast is not None:
            run.contrast_ids = lm.encode_response(self.contrast)
            if not run.contrast_ids:
                raise InvalidInputError("the contrast has no tokens; give the alternative response as text", field="contrast")
            if run.contrast_ids == list(run.response_ids):
                raise InvalidInputError("the contrast equals the response; give a different alternative (why this response rather than that one)",
                                        field="contrast")
        run.timings["generate"] = time.perf_counter() - tic
        # The original input's output (the target's reference) is scored with the first
        # batch of perturbations, not in a pass of its own (see Scorer.score).

    def _progress_reporter(self) -> Callable[[int], None] | None:
        if not callable(self.progress) or isinstance(self.progress, bool):
            return None
        budget = int(self.max_evals) if self.max_evals is not None else int(self.n_samples) + 1
        rounds = int(self.max_rounds) if self.until_stable else int(self.runs)
        expected = (budget - 1) * rounds + 1
        done = [0]

        def report(n: int) -> None:
            done[0] += n
            self.progress(done[0], max(expected, done[0]))

        return report

    # ------------------------------------------------------- strategies
    def _seeds(self) -> list[int | None]:
        base = self.random_state
        if (self.runs > 1 or self.until_stable) and base is None:
            base = int(make_rng(None).integers(0, 2**31 - 1))
        if self.until_stable:
            return [base] + [_round_seed(base, r) for r in range(1, int(self.max_rounds))]
        return [base] if self.runs == 1 else [base + r for r in range(int(self.runs))]

    def _method_for(self, run: "_Run", method: SurrogateMethod, seed) -> SurrogateMethod:
        return method if seed == self.random_state else self._make_method(seed, run.surrogate)

    def _fit(self, run: "_Run", method: SurrogateMethod, masks: np.ndarray):
        """Score the masks' inputs (each distinct one once per explanation) and fit the method."""
        unique_masks, inverse = np.unique(masks, axis=0, return_inverse=True)
        tic = time.perf_counter()
        y, Y = run.scorer.score(run.inputs.render_all(unique_masks))
        run.timings["score"] += time.perf_counter() - tic
        tic = time.perf_counter()
        inverse = inverse.ravel()
        fitted = method.fit(masks, y[inverse], None if Y is None else Y[inverse])
        run.timings["fit"] += time.perf_counter() - tic
        return fitted

    def _fit_runs(self, run: "_Run", method: SurrogateMethod, n_samples: int | None = None, max_evals: int | None = None):
        """One fit per seed (each distinct input scored once across them). Returns (fits, rows
        of the first run). ``n_samples``/``max_evals``: this call's own (default: the
        Explainer's; given, max_evals wins when not None)."""
        if n_samples is None and max_evals is None:
            n_samples, max_evals = self.n_samples, self.max_evals
        n_units = len(run.inputs.segmentation)
        full = run.inputs.segmentation.full_mask[None, :]
        fits, n_rows = [], 0
        for r, seed in enumerate(self._seeds()):
            run.seeds.append(seed)
            run_method = self._method_for(run, method, seed)
            if max_evals is None:
                drawn = run_method.sample(n_units, int(n_samples))
            else:
                drawn = draw_within(run_method.sample, n_units, int(max_evals) - 1, draw=run_method.draw)
            masks = np.vstack([full, drawn])
            fits.append(self._fit(run, run_method, masks))
            n_rows = len(masks) if r == 0 else n_rows
        return fits, n_rows

    def _fit_until_stable(self, run: "_Run", method: SurrogateMethod):
        """Sample in rounds of n_samples; refit on everything drawn so far; stop when the
        top-k units are the same as after the previous round. Returns ([fit], rows)."""
        n_units = len(run.inputs.segmentation)
        masks = run.inputs.segmentation.full_mask[None, :]
        seeds = self._seeds()
        run.seeds.append(seeds[0])
        previous, history, stable = None, [], False
        for seed in seeds:
            run_method = self._method_for(run, method, seed)
            masks = np.vstack([masks, run_method.sample(n_units, int(self.n_samples))])
            fitted = self._fit(run, run_method, masks)
            top = top_k_units(fitted.coefficients, self.top_k)
            history.append(sorted(top))
            if previous is not None and top == previous:
                stable = True
                break
            previous = top
        run.rounds = {"rounds": len(history), "stable": stable, "max_rounds": int(self.max_rounds),
                      "top_k": int(self.top_k), "top_units": history}
        if not stable:
            run.notes.append(
                f"the top-{self.top_k} units still changed after {self.max_rounds} rounds of {self.n_samples} samples; "
                f"use more samples or larger units"
            )
        return [fitted], len(masks)

    def _coarse_to_fine(self, run: "_Run", method: SurrogateMethod):
        """Level 1 over the coarse units with ``refine_share`` of the budget; level 2 over the
        finer units of the ``refine_top`` most important coarse units (those with more than
        one) and every other coarse unit whole, with the rest, through the same scorer.
        Records both levels in ``run.levels``; returns level 2's (fits, rows)."""
        share = float(self.refine_share)
        coarse = run.inputs.segmentation
        # Level 1
        if self.max_evals is not None:
            budget = int(self.max_evals)
            first = dict(max_evals=max(2, round(share * budget)))
        else:
            budget = int(self.n_samples)
            first = dict(n_samples=max(1, round(share * budget)))
        [level1], rows1 = self._level(run, method, 1, first)
        calls1 = run.scorer.n_calls
        if self.max_evals is not None:
            # The original is scored already; level 2's new inputs fill what is left.
            second = dict(max_evals=budget - calls1 + 1)
        else:
            second = dict(n_samples=max(1, budget - first["n_samples"]))
        # Choose the coarse units to refine: the most important ones that split.
        order = sorted(range(len(coarse)), key=lambda i: (-abs(level1.coefficients[i]), i))
        splittable = [i for i in order if len(run.fine[i]) > 1]
        chosen = sorted(splittable[: int(self.refine_top)])
        last = max(order.index(i) for i in chosen)
        passed = [i for i in order[:last] if len(run.fine[i]) < 2]
        if passed:
            from .render.terminal import one_line, truncate

            names = ", ".join(f"{i + 1} ({truncate(one_line(coarse.units[i].text), 30)!r})" for i in passed)
            run.notes.append(f"{run.unit} unit(s) {names} ranked among the most important but hold a single "
                             f"{run.refine} unit; kept whole")
        if len(chosen) == len(splittable):
            run.notes.append(f"refine_top {self.refine_top} covers every {run.unit} unit that splits: level 2 is a plain "
                             f"{run.refine}-level explanation with {1 - share:.0%} of the budget")
        if np.isfinite(level1.fidelity_r2) and level1.fidelity_r2 < FIDELITY_THRESHOLD:
            run.notes.append(f"level 1 ({run.unit}) fidelity R² {level1.fidelity_r2:.2f} is below {FIDELITY_THRESHOLD}: "
                             f"the {run.unit} units refined may not be the most important ones")
        # Level 2
        units, parents = [], []
        for i, unit in enumerate(coarse.units):
            pieces = run.fine[i] if i in chosen else [unit]
            units.extend(pieces)
            parents.extend([i] * len(pieces))
        run.inputs = ModelInput(Segmentation(coarse.text, units, unit_type=f"{run.unit}>{run.refine}"), run.prompt,
                                run.context, self.context_template)
        run.seeds.clear()  # the same seed again: the one the explanation reports
        fits, rows2 = self._level(run, method, 2, second)
        level2 = fits[0]
        run.levels = [
            level_record(run.unit, coarse.units, [None] * len(coarse), level1.coefficients, intercept=level1.intercept,
                         fidelity_r2=level1.fidelity_r2, held_out_r2=level1.held_out_r2, n_samples=rows1 - 1,
                         n_evals=calls1, refined=chosen),
            level_record(f"{run.unit}>{run.refine}", units, parents, level2.coefficients, intercept=level2.intercept,
                         fidelity_r2=level2.fidelity_r2, held_out_r2=level2.held_out_r2, n_samples=rows2 - 1,
                         n_evals=run.scorer.n_calls - calls1),
        ]
        run.unit = f"{run.unit}>{run.refine}"
        run.drawn = rows1 - 1 + rows2 - 1
        return fits, rows2

    def _level(self, run: "_Run", method: SurrogateMethod, number: int, budget: dict[str, int]):
        """One level of :meth:`_coarse_to_fine`; a budget too small for the method says which level's."""
        try:
            return self._fit_runs(run, method, **budget)
        except InvalidInputError as exc:
            name, value = next(iter(budget.items()))
            raise InvalidInputError(f"level {number} of coarse-to-fine ({len(run.inputs.segmentation)} units, {name} {value} "
                                    f"of the budget): {exc}", field=exc.field or name) from None

    def _interactions(self, run: "_Run", fits) -> None:
        """Pairwise interactions among the top ``interactions`` units of the fit (the runs'
        mean), through the explanation's scorer (see :mod:`gsmile.interactions`)."""
        from .interactions import pairwise_interactions

        k, n_units = int(self.interactions), len(run.inputs.segmentation)
        if k > n_units:
            raise InvalidInputError(f"interactions {k} is more than the {n_units} units of the {run.explained}; "
                                    f"give at most {n_units}", field="interactions")
        coefficients = fits[0].coefficients if len(fits) == 1 else mean_of_runs(fits)["coefficients"]
        top = [int(i) for i in np.argsort(-np.abs(np.asarray(coefficients, dtype=float)), kind="stable")[:k]]
        full = run.inputs.segmentation.full_mask

        def value(coalitions: np.ndarray) -> np.ndarray:
            masks = np.repeat(full[None, :], len(coalitions), axis=0)
            masks[:, top] = coalitions
            return run.scorer.values(run.inputs.render_all(masks))

        seed = run.seeds[0] if run.seeds else self.random_state
        if seed is not None and not isinstance(seed, (int, np.integer)):
            seed = int(make_rng(seed).integers(0, 2**31 - 1))
        before, tic = run.scorer.n_calls, time.perf_counter()
        record = pairwise_interactions(value, top, budget=self.interaction_budget, random_state=seed)
        record["n_new"] = run.scorer.n_calls - before  # inputs the model had not scored yet
        run.timings["interactions"] = time.perf_counter() - tic
        run.interactions = record

    # ---------------------------------------------------------- results
    def _assemble(self, run: "_Run", method: SurrogateMethod, fits, n_rows: int) -> Explanation:
        """The Explanation: the first fit (or the mean of the runs), reports, notes and params."""
        is_lm, runs = run.route.is_lm, int(self.runs)
        result = fits[0]
        coefficients, intercept, fidelity = result.coefficients, result.intercept, result.fidelity_r2
        token_coefficients, ess, extras = result.token_coefficients, result.effective_sample_size, dict(result.extras)
        held_out = result.held_out_r2
        if run.rounds is not None:
            extras["until_stable"] = run.rounds
        if run.interactions is not None:
            extras["interactions"] = run.interactions
        if run.truncated is not None:
            extras["truncated"] = run.truncated
        extras.update(run.route.info)  # how the model was reached (path, and why)
        if isinstance(run.route.model, ReportsExtras):
            extras.update(run.route.model.explanation_extras())
        if runs > 1:
            mean = mean_of_runs(fits)
            coefficients, intercept, fidelity = mean["coefficients"], mean["intercept"], mean["fidelity_r2"]
            held_out = mean["held_out_r2"]
            ess, token_coefficients = mean["effective_sample_size"], mean["token_coefficients"]
            extras["stability"], note = runs_report(fits, [u.text for u in run.inputs.segmentation.units], self.top_k, run.seeds)
            run.notes.extend([note] if note else [])
        run.notes.extend(_quality_notes(fidelity, ess, n_rows, run.explained, method.ess_hint))
        for note in run.notes:
            warnings.warn(note, GsmileWarning, stacklevel=3)

        params = {**method.params, "batch_size": run.scorer.batch_size_,
                  "max_new_tokens": int(self.max_new_tokens) if is_lm or run.route.info["path"] == "text" else None}
        if runs > 1:
            params.update(runs=runs, top_k=int(self.top_k))
        if self.max_evals is not None:
            params["max_evals"] = int(self.max_evals)
        if self.until_stable:
            params.update(until_stable=True, max_rounds=int(self.max_rounds), top_k=int(self.top_k), rounds=run.rounds["rounds"])
        if self.batch_size is None:
            params["batch_size_auto"] = True
        if run.context is not None:
            params["context_template"] = run.inputs.template
        if self.refine is not None:
            params.update(refine=self.refine, refine_top=int(self.refine_top), refine_share=float(self.refine_share))
        if self.interactions:
            params.update(interactions=int(self.interactions), interaction_budget=self.interaction_budget)
        if self.max_length is not None:
            params["max_length"] = int(self.max_length)
        if self.contrast is not None:
            params["contrast"] = self.contrast
        images, n_unique = None, run.scorer.n_calls  # (the images below are not among the evaluations)
        if run.route.info["path"] == "image":
            params.update(image_seeds=len(run.route.model.seeds), embedder=run.route.model.target.describe(), max_new_tokens=None)
            images = _image_record(run, coefficients)
        return Explanation(
            prompt=run.prompt,
            response=run.response,
            units=run.inputs.segmentation.units,
            coefficients=coefficients,
            intercept=intercept,
            fidelity_r2=fidelity,
            held_out_r2=held_out,
            n_parameters=max(fit.n_parameters for fit in fits),
            method=method.name,
            target=("contrast" if self.contrast is not None else run.target.name) if is_lm else run.route.model.target_name,
            unit_type=run.unit,
            n_samples=n_rows - 1 if run.drawn is None else run.drawn,
            n_unique=n_unique,
            sigma=result.sigma,
            effective_sample_size=ess,
            model_id=run.route.model.model_id,
            random_state=run.seeds[0],
            explained=run.explained,
            context=run.context,
            params=params,
            timings=run.timings,
            warnings=run.notes,
            response_tokens=run.response_tokens,
            token_coefficients=token_coefficients,
            extras=extras,
            levels=run.levels,
            images=images,
        )


@dataclass
class _Run:
    """One call of :meth:`Explainer.explain`: what it works on and what it notes."""

    prompt: str
    context: str | None
    original: str = ""  # the model's input for the unperturbed text
    route: Route | None = None
    target: Any = None
    explained: str = "prompt"
    unit: str = ""
    inputs: ModelInput | None = None
    response: str | None = None
    response_ids: list[int] | None = None
    response_tokens: list[str] | None = None
    scorer: Scorer | None = None
    seeds: list = field(default_factory=list)
    rounds: dict | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    refine: str | None = None  # the finer unit when explained coarse-to-fine (None: one level)
    fine: list[list[Unit]] | None = None  # the finer units inside each coarse unit
    levels: list[dict] | None = None  # level records (see explanation.level_record)
    drawn: int | None = None  # masks drawn over every level (None: the one level's rows)
    interactions: dict | None = None  # extras["interactions"] (see gsmile.interactions)
    truncated: dict | None = None  # extras["truncated"]: what max_length cut
    contrast_ids: list[int] | None = None  # the contrast response's token ids (contrast=)
    surrogate: str | None = None  # the surrogate chosen when none was asked for (None: the asked one)


#: Units whose removal is shown as images (the top ones by |coefficient|).
IMAGE_TOP_UNITS = 3
#: Longest side of the images kept in an explanation (base64 PNG in its JSON).
IMAGE_THUMBNAIL = 256


def _image_record(run: "_Run", coefficients) -> dict:
    """The images of an image explanation: the original prompt's, and the prompt's without
    each of the top units (generated again: from the backend's disk cache when it has one)."""
    from .backends.images import encode_png

    model = run.route.model
    top = [int(i) for i in np.argsort(-np.abs(np.asarray(coefficients)), kind="stable")[:IMAGE_TOP_UNITS]]
    units = run.inputs.segmentation.units
    prompts = []
    for i in top:
        mask = np.ones(len(units), dtype=bool)
        mask[i] = False
        prompts.append(run.inputs.render(mask))
    sets = model.images(prompts) if prompts else []
    distances = model.target.shift(sets) if prompts else []
    without = [{"unit": i, "text": units[i].text, "prompt": p, "distance": float(d), "images": [encode_png(im, IMAGE_THUMBNAIL) for im in ims]}
               for i, p, d, ims in zip(top, prompts, distances, sets)]
    extras = model.explanation_extras()
    return image_record(seeds=model.seeds, distance=model.target.describe(),
                        original=[encode_png(im, IMAGE_THUMBNAIL) for im in model.reference_images_],
                        without=without, generation=extras.get("generation"))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (its high-water mark: the model and
    everything else the process holds included; NaN where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB on Linux


def _check_texts(prompt, response, context) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("the prompt is empty; give a prompt with at least two words", field="prompt")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise InvalidInputError("the response is empty; leave it out to let the model generate one", field="response")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise InvalidInputError("the context is empty; give a context text or leave it out to explain the prompt", field="context")


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


def explain(prompt: str, response: str | None = None, *, model=None, context: str | None = None,
            segments: list[str] | None = None, **options) -> Explanation:
    """Explain ``prompt`` (or, with ``context``, the context) and the model's response in one
    call; see :class:`Explainer` and :meth:`Explainer.explain`."""
    return Explainer(model, **options).explain(prompt, response, context=context, segments=segments)
