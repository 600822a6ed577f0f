"""The scoring engine: model inputs -> the explained value of each, for one explanation.

A :class:`Scorer` is made for one explanation and holds everything that belongs to it: the
per-explanation model object (see :func:`gsmile.backends.prepare_backend`), the target
prepared on the original input's output, the response ids, the values already scored
(each distinct input is sent to the model once), the batch size that works, and the count
of inputs scored. The backend behind it is shared and holds none of this, so any number of
scorers may run at once on one backend.

The explainer, ``gsmile evaluate`` (:mod:`gsmile.faithfulness`), the server and the
benchmarks all score through it.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import numpy as np

from .backends import MODELS, ImageModel, Loadable, ScalarModel, SizesBatches, for_explanation, is_language_model, reduced_logprobs, resolve_model
from .errors import InvalidInputError, is_out_of_memory
from .inputs import ModelInput
from .targets import LogProbTarget, make_target

#: Prompts per forward pass of a language model that cannot suggest a batch size.
DEFAULT_BATCH_SIZE = 8


class Scorer:
    """Scores model inputs for one explanation.

    model: the explanation's model object (a LanguageModel or a ScalarModel), as
        :func:`~gsmile.backends.prepare_backend` made it.
    original: the unperturbed input. For a language model it rides in the first batch
        scored, and its output prepares ``target`` (the reference every shift is measured
        from; its own shift is 0).
    target: a :class:`~gsmile.targets.Target` (language models only; this object is prepared,
        so give each scorer its own).
    response_ids: the response's token ids (language models only).
    batch_size: inputs per model call; None picks it from the sequence length. Halved on
        out-of-memory. It never changes the result.
    known: values already computed by input text (counted as scored when first used, not sent).
    progress: show a progress bar on stderr.
    contrast_ids: a contrast response's token ids: the value explained is then
        ``[log p(response|x) − log p(contrast|x)] − [the same for the original]`` (why this
        response rather than that one; ``target`` must be the logprob target), and there is
        no per-token column (None).
    on_scored: called with the number of inputs scored after each model call (progress
        reports, e.g. the server's jobs).
    """

    def __init__(self, model, *, original: str, target=None, response_ids: Sequence[int] | None = None,
                 batch_size: int | None = None, known: dict[str, float] | None = None, progress: bool = False,
                 on_scored: Callable[[int], None] | None = None, contrast_ids: Sequence[int] | None = None):
        self.model = model
        self.original = original
        self.target = target
        self.response_ids = None if response_ids is None else [int(i) for i in response_ids]
        self.batch_size = batch_size
        self.known = dict(known or {})
        self.progress = progress
        self.on_scored = on_scored
        self.is_lm = is_language_model(model)
        if self.is_lm and (target is None or not self.response_ids):
            raise InvalidInputError("a language model is scored with a target and the response's token ids")
        self.contrast_ids = None if contrast_ids is None else [int(i) for i in contrast_ids]
        if self.contrast_ids is not None:
            if not self.is_lm:
                raise InvalidInputError("a contrast needs a model's log-probabilities (a local model, or an API on its log-prob path)",
                                        field="contrast")
            if not isinstance(target, LogProbTarget):
                raise InvalidInputError("a contrast is explained on log-probabilities: its scorer's target must be logprob", field="contrast")
            self.contrast_target = make_target("logprob")
        self._cache: dict[str, tuple[float, np.ndarray | None]] = {}
        self.n_calls = 0

    @property
    def batch_size_(self) -> int:
        """The batch size in use (picked on first use when not given; halved on out-of-memory)."""
        if self.batch_size is None:
            self.batch_size = self._auto_batch_size()
        return int(self.batch_size)

    def _auto_batch_size(self) -> int:
        if not self.is_lm:
            return int(self.model.default_batch_size)  # ScalarModel: 64 texts; an image model: 4 prompts
        if isinstance(self.model, SizesBatches):
            n_tokens = len(self.model.prompt_ids(self.original)) + len(self.response_ids)
            return int(self.model.suggest_batch_size(n_tokens))
        return DEFAULT_BATCH_SIZE

    # ------------------------------------------------------------- scoring
    def has_scored(self, text: str) -> bool:
        """Whether ``text`` is already scored (scoring it again costs no model call)."""
        return text in self._cache

    def values(self, texts: Sequence[str]) -> np.ndarray:
        """The explained value y of each input (−Δ for a language model, the model's own
        output for a scalar one)."""
        return self.score(texts)[0]

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(y, Y)``: the explained value of each input and, for a language model, one column
        per response token (−Δ at that position; None for scalar models).

        Each distinct input is sent once per scorer. Inputs are sent in sorted order, so a
        batch's inputs tend to share their start (a backend can reuse that work, see
        ``HFCausalLM._tree_hidden``)."""
        texts = list(texts)
        cache = self._cache
        needs_reference = self.is_lm and self.original not in cache
        pending = sorted(t for t in dict.fromkeys(texts) if t not in cache and not (needs_reference and t == self.original))
        from tqdm import tqdm

        per = 1 if self.is_lm else int(self.model.outputs_per_input)  # images generated per prompt
        unit = "prompt" if self.is_lm else self.model.progress_unit
        with tqdm(total=len(pending) * per, desc="generating images" if unit == "image" else "scoring perturbations", unit=unit,
                  file=sys.stderr, leave=False, disable=not self.progress) as bar:
            lo = 0
            while lo < len(pending) or needs_reference:
                batch = pending[lo : lo + self.batch_size_ - needs_reference]
                try:
                    values, rows = self._call(batch, needs_reference)
                except Exception as exc:
                    if self.batch_size_ > 1 and is_out_of_memory(exc):
                        self.batch_size = max(1, self.batch_size_ // 2)
                        continue
                    raise
                scored = len(batch) + int(needs_reference)
                if needs_reference:
                    cache[self.original] = (0.0, None if self.contrast_ids is not None else np.zeros(len(self.response_ids)))
                    needs_reference = False
                for text, value, row in zip(batch, values, rows):
                    cache[text] = (float(value), row)
                lo += len(batch)
                self.n_calls += scored
                bar.update(len(batch) * per)
                if self.on_scored is not None:
                    self.on_scored(scored)
        y = np.array([cache[t][0] for t in texts], dtype=float)
        Y = np.vstack([cache[t][1] for t in texts]) if self.is_lm and self.contrast_ids is None else None
        return y, Y

    def _call(self, batch: list[str], with_reference: bool):
        """Values and per-token rows of ``batch`` (the original first when ``with_reference``)."""
        if not self.is_lm:
            todo = [t for t in batch if t not in self.known]
            got = dict(zip(todo, self.model(todo))) if todo else {}
            return [self.known[t] if t in self.known else got[t] for t in batch], [None] * len(batch)
        reduce = _ShiftFromReference(self.target, self.model, self.response_ids, with_reference)
        shift = reduced_logprobs(self.model, [self.original] * with_reference + batch, self.response_ids, reduce)
        shift = shift[1:] if with_reference else shift
        values = -(shift.sum(axis=1) if self.target.aggregate == "sum" else shift.mean(axis=1))
        if self.contrast_ids is not None:  # minus the contrast's own change: the margin's change
            reduce = _ShiftFromReference(self.contrast_target, self.model, self.contrast_ids, with_reference)
            other = reduced_logprobs(self.model, [self.original] * with_reference + batch, self.contrast_ids, reduce)
            values = values + (other[1:] if with_reference else other).sum(axis=1)
            return values, [None] * len(batch)
        return values, -shift


def _image_scorer(explanation, backend, original: str, **options) -> Scorer:
    """A scorer of an image explanation's prompts: the same seeds and distance as it was made with."""
    from .backends.images import ImageFunction, image_route_model

    if type(backend) is ScalarModel:  # a plain function: it must return images
        backend = ImageFunction(backend.func, model_id=backend.model_id)
    if not isinstance(backend, ImageModel):
        raise InvalidInputError("this explanation was made for a text-to-image model; pass that model (diffusers:PATH, "
                                "openai-images:NAME or your image function) to evaluate it")
    params = explanation.params
    model = image_route_model(backend, original, image_seeds=int(params.get("image_seeds") or 1), embedder=params.get("embedder"))
    return Scorer(model, original=original, known={original: 0.0}, **options)


class _ShiftFromReference:
    """Per-position output shifts ``target.per_position`` of log-prob rows, given to the
    backend as its ``reduce``. With ``first_is_reference``, the first row seen is the original
    input's: it prepares ``target`` (the target keeps a copy) and its own shift is 0."""

    def __init__(self, target, model, response_ids, first_is_reference: bool):
        self.target, self.model, self.response_ids = target, model, response_ids
        self.pending = first_is_reference

    def __call__(self, logprobs: np.ndarray) -> np.ndarray:
        out = np.zeros((len(logprobs), len(self.response_ids)))
        start = 0
        if self.pending and len(logprobs):
            embeddings = self.model.token_embeddings() if self.target.needs_embeddings else None
            self.target.prepare(logprobs[0], self.response_ids, embeddings)
            self.pending, start = False, 1
        if start < len(logprobs):
            out[start:] = self.target.per_position(logprobs[start:])
        return out


def explanation_model(explanation) -> str:
    """The model name an explanation is scored with by default: its own ``model_id`` when it
    names a built-in model or hf:PATH, else "local" (the embedded SmolLM2)."""
    name = explanation.model_id
    return name if name in MODELS or name.startswith(("hf:", "diffusers:")) else "local"


def explanation_scorer(explanation, model=None, *, batch_size: int | None = None, progress: bool = False,
                       on_scored: Callable[[int], None] | None = None) -> Scorer:
    """A scorer for the inputs of ``explanation``: its model (``model``, what the Explainer
    accepts; None: the explanation's own ``model_id`` when it names a built-in model, else
    the embedded SmolLM2), its target and its response."""
    backend = for_explanation(resolve_model(explanation_model(explanation) if model is None else model))
    original = ModelInput.of(explanation).original
    if explanation.images is not None or str(explanation.target).startswith("image-"):
        return _image_scorer(explanation, backend, original, batch_size=batch_size, progress=progress, on_scored=on_scored)
    if isinstance(backend, ImageModel):
        raise InvalidInputError("this explanation was made for a text model; a text-to-image model cannot score it")
    if not is_language_model(backend):
        return Scorer(backend, original=original, batch_size=batch_size, progress=progress, on_scored=on_scored)
    if explanation.target == "model_output":
        raise InvalidInputError("this explanation was made for a scalar model; pass that model to evaluate it")
    if not explanation.response:
        raise InvalidInputError("the explanation has no response to score")
    if isinstance(backend, Loadable):
        backend.load()
    contrast = explanation.params.get("contrast") if explanation.target == "contrast" else None
    # A contrast is rescored as its margin; an explanation of logits (attnlrp) on log p, its closest target.
    target = "logprob" if contrast is not None or explanation.target == "logit" else explanation.target
    return Scorer(backend, original=original, target=make_target(target),
                  response_ids=backend.encode_response(explanation.response), batch_size=batch_size,
                  progress=progress, on_scored=on_scored,
                  contrast_ids=None if contrast is None else backend.encode_response(contrast))
