"""Counterfactual prompts: the smallest edits of a prompt that change the model's answer.

An *edit set* changes some units of the prompt: each edited unit is removed, or (with
``replacements``) replaced by one of a few given words. :func:`counterfactuals` looks for
the edit sets with the fewest edits whose edited prompt is *changed* (see "What changes"),
best-first: sizes 1, 2, ... ``max_size`` in turn, and within one size the edit sets in
decreasing order of their summed attribution score (an occlusion explanation of the
prompt, computed first through :class:`~gsmile.explainer.Explainer` unless given).

What changes (the *criterion*):

* a language model without ``threshold`` ("answer"): the greedy answer of the edited
  prompt (``max_new_tokens`` tokens, decoded) differs from the original prompt's.
  ``compare="exact"``: the two texts differ after ``str.strip()``; ``compare="sentence"``:
  their first sentences differ (the text up to the first ``.``, ``!``, ``?`` or line
  break, stripped). Comparing the first k tokens is ``compare="exact"`` with
  ``max_new_tokens=k``.
* a scalar model (a callable ``list[str] -> list[float]``; ``threshold`` required), or a
  language model with ``threshold``, compares the explained value y (a scalar model's own
  output; for a language model y = −Δ, minus the ``target`` shift of the original greedy
  response's next-token distributions, so y = 0 at the original prompt):

  - ``criterion="cross"`` (default for scalar models): y crosses the level ``threshold``:
    if the original value y0 >= threshold the edited value must be < threshold, and if
    y0 < threshold it must be >= threshold;
  - ``criterion="change"`` (default for language models): |y − y0| >= threshold
    (threshold > 0).

Minimality. Sizes are searched in increasing order and every edit set of a size is
examined before any of the next size (examined: evaluated, or skipped because it
contains a counterfactual already found, which would make it non-minimal). So when the
search reports ``exhausted_size = s``, no edit set of at most ``s`` edits changes the
answer other than those reported and their supersets; a counterfactual found at size
``s + 1`` (the search stops within a size once ``k`` are found, or when ``max_calls`` is
spent) therefore has the fewest edits of any (``proven_minimal``), and every reported
counterfactual is subset-minimal: none of its proper sub-edit-sets changes the answer.
When ``max_calls`` stops the search, ``exhausted_size`` says how far the guarantee goes.

The attribution only orders the search (it never prunes), so a misleading attribution
costs calls, never correctness. Calls: each distinct model input is evaluated once (cached
by text, the attribution run's inputs included for scalar models); ``n_calls`` counts
them all: the attribution run's (for a language model: its scored inputs and its one
greedy generation) and the search's (scalar values through a :class:`~gsmile.scoring.Scorer`,
greedy generations for answers).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ._io import check_record, parse_json
from .backends import ImageModel, Loadable, ScalarModel, TextModel, for_explanation, is_language_model, resolve_model
from .errors import InvalidInputError, SchemaError, check_int
from .units import SEGMENTERS, Segmentation, Unit

SCHEMA = "gsmile.counterfactual"
VERSION = 1
COMPARES = ("exact", "sentence")
CRITERIA = ("cross", "change")
DEFAULT_MAX_CALLS = 1000
DEFAULT_MAX_NEW_TOKENS = 24

__all__ = ["CounterfactualResult", "counterfactuals", "edit_text", "enumeration_calls"]


# --------------------------------------------------------------------------- checks
def check_threshold(threshold, criterion: str | None) -> None:
    if threshold is None:
        if criterion is not None:
            raise InvalidInputError("criterion applies with a threshold; give threshold too", field="criterion")
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) or not math.isfinite(threshold):
        raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}", field="threshold")
    if criterion is not None and criterion not in CRITERIA:
        raise InvalidInputError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}", field="criterion")
    if criterion == "change" and threshold <= 0:
        raise InvalidInputError(f"with criterion 'change' the threshold is a size of change and must be > 0, got {threshold!r}",
                                field="threshold")


def check_common(prompt, unit, compare, max_new_tokens, batch_size, max_calls, random_state) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("the prompt is empty; give a prompt with at least two words", field="prompt")
    if unit not in SEGMENTERS:
        raise InvalidInputError(f"unit must be one of {', '.join(SEGMENTERS)}, got {unit!r}", field="unit")
    if compare not in COMPARES:
        raise InvalidInputError(f"compare must be one of {', '.join(COMPARES)}, got {compare!r}", field="compare")
    check_int("max_new_tokens", max_new_tokens, 1, 4096)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1, 4096)
    check_int("max_calls", max_calls, 1)
    if random_state is not None:
        check_int("random_state", random_state, 0)


def check_replacements(replacements) -> list[str]:
    if replacements is None:
        return []
    if isinstance(replacements, str) or not isinstance(replacements, Sequence):
        raise InvalidInputError("replacements must be a list of words, e.g. ['Italy', 'Spain']", field="replacements")
    words = []
    for i, word in enumerate(replacements):
        if not isinstance(word, str) or not word.strip():
            raise InvalidInputError(f"replacement {i} is {'empty' if isinstance(word, str) else type(word).__name__}; "
                                    f"every replacement must be non-blank text", field="replacements")
        if word.strip() not in words:
            words.append(word.strip())
    return words


# --------------------------------------------------------------------------- editing
Edit = tuple[int, "str | None"]  # (unit index, replacement word or None for a removal)


def edit_text(segmentation: Segmentation, edits: Sequence[Edit]) -> str:
    """The text with the edited units removed (replacement None) or replaced by their word;
    everything else as :meth:`Segmentation.render` writes it."""
    ops = dict(edits)
    n = len(segmentation)
    mask = np.array([i not in ops or ops[i] is not None for i in range(n)], dtype=bool)
    if not any(r is not None for r in ops.values()):
        return segmentation.render(mask)
    text, units, pos = [], [], 0
    length = 0
    for i, u in enumerate(segmentation.units):
        gap = segmentation.text[pos : u.start]
        piece = ops[i] if ops.get(i) is not None else u.text
        text += [gap, piece]
        start = length + len(gap)
        units.append(Unit(piece, start, start + len(piece)))
        length = start + len(piece)
        pos = u.end
    text.append(segmentation.text[pos:])
    return Segmentation("".join(text), units).render(mask)


def enumeration_calls(options: Sequence[int], size: int) -> int:
    """Evaluations an exhaustive enumeration of every edit set of at most ``size`` edits makes,
    the original prompt included: 1 + Σ_{j<=size} e_j(options), ``options[i]`` the edits
    unit i allows (1 removal + its replacements); e_j the elementary symmetric polynomial."""
    e = [1] + [0] * size
    for c in options:
        for j in range(size, 0, -1):
            e[j] += e[j - 1] * int(c)
    return int(sum(e))


def ranked_sets(scores: Sequence[float], size: int):
    """Every set of ``size`` unit indices, in non-increasing order of summed score (ties: the
    lexicographic order of their ranks, units ranked by (−score, index)); each exactly once.

    Best-first over rank tuples i1 < ... < is: the successors of a tuple increase one of its
    ranks by one (when that keeps them distinct); every tuple is reached from (0, .., s−1)
    by such steps, each of which lowers the sum or keeps it, so a heap pops them in order."""
    n = len(scores)
    if size > n or size < 0:
        return
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    ranked = [float(scores[i]) for i in order]
    if size == 0:
        yield ()
        return
    start = tuple(range(size))
    heap = [(-math.fsum(ranked[r] for r in start), start)]
    seen = {start}
    while heap:
        _, ranks = heapq.heappop(heap)
        yield tuple(sorted(order[r] for r in ranks))
        for j in range(size):
            nxt = ranks[j] + 1
            limit = ranks[j + 1] if j + 1 < size else n
            if nxt < limit:
                child = ranks[:j] + (nxt,) + ranks[j + 1 :]
                if child not in seen:
                    seen.add(child)
                    heapq.heappush(heap, (-math.fsum(ranked[r] for r in child), child))


# --------------------------------------------------------------------------- the oracle
class _Memo:
    """A scalar model's function, each distinct text sent once (shared by the attribution
    run and the search); ``n_calls``: distinct texts sent."""

    def __init__(self, backend: ScalarModel):
        self.backend = backend
        self.values: dict[str, float] = {}

    @property
    def n_calls(self) -> int:
        return len(self.values)

    def __call__(self, texts):
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self.values))
        if todo:
            for t, v in zip(todo, self.backend(todo)):
                self.values[t] = float(v)
        return [self.values[t] for t in texts]


def _first_sentence(text: str) -> str:
    m = re.match(r"[^.!?\n]*[.!?]*", text.strip())
    return (m.group() if m else text).strip()


class Oracle:
    """Evaluates edited prompts for one search (counterfactuals or anchors): resolves the
    model, runs the attribution, judges whether an input is *changed* (see the module doc),
    caches by text and counts calls."""

    def __init__(self, prompt: str, model, *, unit: str, threshold, criterion, compare: str, max_new_tokens: int,
                 batch_size, attributions, random_state, target: str = "wasserstein"):
        from .scoring import Scorer

        self.prompt, self.compare, self.max_new_tokens = prompt, compare, int(max_new_tokens)
        self.threshold = None if threshold is None else float(threshold)
        backend = resolve_model(model)
        if isinstance(backend, ImageModel):
            raise InvalidInputError("counterfactuals and anchors explain text models; a text-to-image model is not supported")
        lm = for_explanation(backend) if not isinstance(backend, ScalarModel) else backend
        self.is_lm = is_language_model(lm)
        self.model_id = getattr(backend, "model_id", "")
        self.attribution_calls = 0
        self.explanation = None
        if self.is_lm:
            if isinstance(lm, Loadable):
                lm.load()
            self.lm = lm
            self.mode = "answer" if self.threshold is None else "value"
            self.criterion = None if self.threshold is None else (criterion or "change")
            tokenizer = lm.token_spans if unit == "token" else None
        else:
            if isinstance(backend, TextModel) or not isinstance(backend, ScalarModel):
                raise InvalidInputError("model must be a language model or a scalar function list[str] -> list[float]")
            if self.threshold is None:
                raise InvalidInputError("a scalar model needs threshold: the level its value must cross (criterion 'cross') "
                                        "or the change it must make (criterion 'change')", field="threshold")
            self.mode, self.criterion, tokenizer = "value", criterion or "cross", None
            self.memo = _Memo(backend)
        self.segmentation = Segmentation.from_text(prompt, unit, tokenizer=tokenizer)
        self.unit = unit
        n = len(self.segmentation)
        if n < 2:
            raise InvalidInputError(f"the prompt has {n} {unit} unit(s); at least 2 are needed (write a longer prompt or use a finer unit)",
                                    field="prompt")
        scalar = ScalarModel(self.memo, model_id=self.model_id) if not self.is_lm else None
        self.attributions, self.attribution_method = self._attributions(attributions, scalar, backend, unit, target, batch_size,
                                                                        random_state)
        self._answers: dict[str, str] = {}
        self.generations = 0
        self.scorer = None
        if self.mode == "answer":
            if self.explanation is not None:
                self._answers[prompt] = self.explanation.response  # the attribution run's greedy response
            self.original_answer = self.answer(prompt)
            self.original_value = None
        else:
            if self.is_lm:
                from .targets import make_target

                response = self.explanation.response if self.explanation is not None else None
                if response is None:
                    response = lm.decode(lm.generate(prompt, self.max_new_tokens))
                    self.generations += 1
                self.original_answer = response
                self.scorer = Scorer(lm, original=prompt, target=make_target(target), response_ids=lm.encode_response(response),
                                     batch_size=batch_size)
            else:
                self.original_answer = None
                self.scorer = Scorer(scalar, original=prompt, batch_size=batch_size)
            self.original_value = float(self.values([prompt])[0])
        # The direction each unit's attribution counts in the search order.
        coef = np.asarray(self.attributions, dtype=float)
        if self.criterion == "cross":
            self.unit_scores = coef if self.original_value >= self.threshold else -coef
        else:
            self.unit_scores = np.abs(coef)

    def _attributions(self, given, scalar, backend, unit, target, batch_size, random_state):
        from .explanation import Explanation

        n = len(self.segmentation)
        if given is None:
            from .explainer import Explainer, GsmileWarning

            options = dict(method="occlusion", unit=unit, batch_size=batch_size, random_state=random_state,
                           max_new_tokens=self.max_new_tokens)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GsmileWarning)  # few units, fidelity: the ordering needs none of them
                if self.is_lm:
                    exp = Explainer(backend, target=target, **options).explain(self.prompt)
                    self.attribution_calls = int(exp.n_unique) + 1  # its scored inputs and its greedy generation
                else:
                    exp = Explainer(scalar, **options).explain(self.prompt)
                    self.attribution_calls = self.memo.n_calls
            self.explanation = exp
            self._check_units(exp.units)
            return [float(c) for c in exp.coefficients], "occlusion"
        if isinstance(given, Explanation):
            if given.explained != "prompt" or given.prompt != self.prompt:
                raise InvalidInputError("the attributions explain another prompt; explain this prompt, or leave attributions out",
                                        field="attributions")
            self._check_units(given.units)
            return [float(c) for c in given.coefficients], f"given:{given.method}"
        try:
            values = [float(v) for v in given]
        except (TypeError, ValueError):
            raise InvalidInputError("attributions must be an Explanation of this prompt or one number per unit",
                                    field="attributions") from None
        if len(values) != n or not all(math.isfinite(v) for v in values):
            raise InvalidInputError(f"attributions must hold one finite number per unit ({n} {unit} units), got {len(values)}",
                                    field="attributions")
        return values, "given"

    def _check_units(self, units) -> None:
        if [(u.start, u.end) for u in units] != [(u.start, u.end) for u in self.segmentation.units]:
            raise InvalidInputError(f"the attributions' units are not this prompt's {self.unit} units; explain it with unit={self.unit!r}",
                                    field="attributions")

    # -- evaluation
    @property
    def n_calls(self) -> int:
        """Model calls so far, the attribution run's included."""
        if not self.is_lm:
            return self.memo.n_calls
        return self.attribution_calls + self.generations + (self.scorer.n_calls if self.scorer is not None else 0)

    def answer(self, text: str) -> str:
        if text not in self._answers:
            self._answers[text] = self.lm.decode(self.lm.generate(text, self.max_new_tokens))
            self.generations += 1
        return self._answers[text]

    def is_cached(self, text: str) -> bool:
        if self.mode == "answer":
            return text in self._answers
        if not self.is_lm:
            return text in self.memo.values
        return self.scorer.has_scored(text)

    def values(self, texts: Sequence[str]) -> np.ndarray:
        return self.scorer.values(list(texts))

    def outcomes(self, texts: Sequence[str]) -> list[tuple[bool, Any]]:
        """(changed, the answer or value) of each text."""
        if self.mode == "answer":
            return [(self._changed_answer(a), a) for a in (self.answer(t) for t in texts)]
        return [(self._changed_value(float(v)), float(v)) for v in self.values(texts)]

    def _changed_answer(self, answer: str) -> bool:
        if self.compare == "sentence":
            return _first_sentence(answer) != _first_sentence(self.original_answer)
        return answer.strip() != self.original_answer.strip()

    def _changed_value(self, value: float) -> bool:
        if self.criterion == "cross":
            return value < self.threshold if self.original_value >= self.threshold else value >= self.threshold
        return abs(value - self.original_value) >= self.threshold

    def criterion_record(self) -> dict:
        if self.mode == "answer":
            return {"kind": "answer", "compare": self.compare, "max_new_tokens": self.max_new_tokens}
        record = {"kind": self.criterion, "threshold": self.threshold}
        if self.is_lm:
            record["value"] = "-shift of the original greedy response (target)"
        return record

    def units_record(self) -> list[dict]:
        return [{"text": u.text, "start": u.start, "end": u.end} for u in self.segmentation.units]

    def result_fields(self, prompt: str, unit: str) -> dict:
        """The fields every search result (counterfactuals, anchors) takes from its oracle:
        the prompt and its units, the model, the criterion, the original outcome, the calls
        and the attribution that ordered the search."""
        return dict(prompt=prompt, unit=unit, units=self.units_record(), model_id=self.model_id, mode=self.mode,
                    criterion=self.criterion_record(), original={"answer": self.original_answer, "value": self.original_value},
                    n_calls=self.n_calls, calls_attribution=self.attribution_calls, calls_search=self.n_calls - self.attribution_calls,
                    attributions=list(self.attributions), attribution_method=self.attribution_method)


# --------------------------------------------------------------------------- results
def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


class _Record:
    """Versioned plain-JSON (de)serialization of a result dataclass."""

    SCHEMA = ""
    VERSION = 1

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "version": self.VERSION, **_plain(asdict(self))}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any):
        what = cls.SCHEMA.split(".")[-1]
        check_record(data, cls.SCHEMA, cls.VERSION, f"{what} result")
        names = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise SchemaError(f"malformed {what} result: {exc}") from None

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(parse_json(text))


@dataclass(kw_only=True)
class _SearchResult(_Record):
    """The fields every search result (counterfactuals, anchors) has, from
    :meth:`Oracle.result_fields`: the prompt and its units, the model, the criterion, the
    original outcome, the model calls (``n_calls`` = ``calls_attribution`` + ``calls_search``)
    and the attribution that ordered the search; then ``params`` and ``timings``."""

    prompt: str
    unit: str
    units: list[dict]
    model_id: str
    mode: str  # "answer" or "value"
    criterion: dict
    original: dict  # {"answer": ..., "value": ...}
    n_calls: int
    calls_attribution: int
    calls_search: int
    attributions: list[float]
    attribution_method: str
    params: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def original_line(self) -> str:
        """What the unedited prompt gave."""
        if self.mode == "answer":
            return f"Original answer: {self.original['answer']!r}"
        return f"Original value: {self.original['value']:.6g} ({self.criterion['kind']} {self.criterion['threshold']:g})"


@dataclass
class CounterfactualResult(_SearchResult):
    """What :func:`counterfactuals` found.

    counterfactuals: in the order found (fewest edits first), each
        ``{"edits": [{"unit", "text", "op": "remove"|"replace", "replacement"}], "size",
        "prompt" (the edited prompt), "answer" (language model, answer mode) or "value",
        "score" (summed attribution score: the search order)}``.
    minimal_size: edits of the smallest counterfactual found (None: none found).
    exhausted_size: every edit set of at most this many edits was examined (evaluated, or
        skipped as a superset of a counterfactual found); 0 when not even size 1 was finished.
    proven_minimal: a counterfactual was found and no edit set with fewer edits changes the
        answer (exhausted_size >= minimal_size − 1).
    stopped: "k_found", "max_size" (every size up to max_size examined) or "max_calls".
    searched_size: the largest size the search reached (exhausted_size, or one more when it
        stopped within a size).
    n_calls: model calls, ``calls_attribution`` + ``calls_search``; ``enumeration_calls``:
        what enumerating every edit set of at most ``searched_size`` edits would cost, the
        original included (the reference the search's calls compare with).
    """

    SCHEMA = SCHEMA
    VERSION = VERSION

    counterfactuals: list[dict]
    minimal_size: int | None
    exhausted_size: int
    proven_minimal: bool
    stopped: str
    n_examined: int
    n_skipped_supersets: int
    searched_size: int
    enumeration_calls: int

    def lines(self) -> list[str]:
        """The result as text lines (what the command line prints)."""
        out = [self.original_line()]
        if not self.counterfactuals:
            out.append(f"No counterfactual with at most {self.exhausted_size} edit(s) "
                       f"(search stopped: {self.stopped}).")
        for i, cf in enumerate(self.counterfactuals, 1):
            edits = ", ".join(f"remove {e['text']!r}" if e["op"] == "remove" else f"replace {e['text']!r} by {e['replacement']!r}"
                              for e in cf["edits"])
            outcome = f"answer: {cf['answer']!r}" if self.mode == "answer" else f"value: {cf['value']:.6g}"
            out.append(f"{i}. {edits}\n   prompt: {cf['prompt']!r}\n   {outcome}")
        proof = ("minimal: no edit set with fewer edits changes it" if self.proven_minimal else
                 f"every edit set of at most {self.exhausted_size} edit(s) was examined")
        out.append(f"{proof}; stopped: {self.stopped}")
        out.append(f"Model calls: {self.n_calls} ({self.calls_attribution} attribution, {self.calls_search} search); "
                   f"enumerating every edit set of at most "
                   f"{self.searched_size} edit(s) would take {self.enumeration_calls}")
        return out


# --------------------------------------------------------------------------- search
def counterfactuals(prompt: str, model=None, *, unit: str = "word", max_size: int = 3, threshold: float | None = None,
                    criterion: str | None = None, replacements: Sequence[str] | None = None, max_calls: int = DEFAULT_MAX_CALLS,
                    k: int = 3, attributions=None, compare: str = "exact", target: str = "wasserstein",
                    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int | None = None,
                    random_state: int | None = 0) -> CounterfactualResult:
    """The smallest edit sets of ``prompt`` that change the model's answer (see the module doc).

    model: what the Explainer accepts: None/"local", "hf:PATH", a LanguageModel, or a scalar
        callable ``list[str] -> list[float]`` (needs ``threshold``).
    max_size: most edits in one set. k: stop after this many counterfactuals.
    threshold, criterion: the value criterion ("cross" or "change"); without threshold a
        language model's greedy answer is compared (``compare``: "exact" or "sentence").
    replacements: words a unit may be replaced by (besides being removed), e.g. ["Italy"].
    max_calls: budget of model calls, the attribution run's included (checked before each
        new evaluation). attributions: None (occlusion through the Explainer, its calls
        counted), an Explanation of this prompt with these units, or one number per unit.
    target: the language model's shift with ``threshold`` (and the attribution run's).
    batch_size: inputs per model call (attribution run, scalar scoring); never changes
        the result. random_state: passed to the attribution run (occlusion is
        deterministic; the search is too).
    """
    tic = time.perf_counter()
    check_common(prompt, unit, compare, max_new_tokens, batch_size, max_calls, random_state)
    max_size = check_int("max_size", max_size, 1, 1000)
    k = check_int("k", k, 1, 100_000)
    check_threshold(threshold, criterion)
    words = check_replacements(replacements)
    oracle = Oracle(prompt, model, unit=unit, threshold=threshold, criterion=criterion, compare=compare,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, attributions=attributions,
                    random_state=random_state, target=target)
    seg = oracle.segmentation
    n = len(seg)
    t_search = time.perf_counter()
    options = [[None] + [w for w in words if w != u.text] for u in seg.units]
    scores = oracle.unit_scores
    found: list[dict] = []
    found_sets: list[frozenset] = []
    examined = skipped = 0
    exhausted, reached, stopped = 0, 0, "max_size"
    for size in range(1, min(max_size, n) + 1):
        complete, reached = True, size
        for units in ranked_sets(scores, size):
            for ops in itertools.product(*(options[i] for i in units)):
                edits = tuple(zip(units, ops))
                pairs = frozenset(edits)
                if any(f <= pairs for f in found_sets):
                    skipped += 1
                    continue
                text = edit_text(seg, edits)
                if not oracle.is_cached(text) and oracle.n_calls >= max_calls:
                    stopped, complete = "max_calls", False
                    break
                examined += 1
                [(changed, outcome)] = oracle.outcomes([text])
                if changed:
                    found_sets.append(pairs)
                    found.append(_counterfactual_record(seg, edits, text, outcome, oracle.mode, scores))
                    if len(found) >= k:
                        stopped, complete = "k_found", False
                        break
            if not complete:
                break
        if not complete:
            break
        exhausted = size
    minimal = found[0]["size"] if found else None
    counted = [len(o) for o in options]
    return CounterfactualResult(
        **oracle.result_fields(prompt, unit),
        counterfactuals=found, minimal_size=minimal, exhausted_size=exhausted,
        proven_minimal=minimal is not None and exhausted >= minimal - 1, stopped=stopped,
        n_examined=examined, n_skipped_supersets=skipped,
        searched_size=reached, enumeration_calls=enumeration_calls(counted, reached),
        params={"max_size": max_size, "k": k, "max_calls": int(max_calls), "replacements": words, "compare": compare,
                "target": target if oracle.is_lm else None, "max_new_tokens": int(max_new_tokens) if oracle.is_lm else None,
                "random_state": random_state},
        timings={"attribution_and_setup": t_search - tic, "search": time.perf_counter() - t_search},
    )


def _counterfactual_record(seg: Segmentation, edits, text: str, outcome, mode: str, scores) -> dict:
    record = {
        "edits": [{"unit": int(i), "text": seg.units[i].text, "op": "remove" if r is None else "replace", "replacement": r}
                  for i, r in edits],
        "size": len(edits),
        "prompt": text,
        "score": math.fsum(float(scores[i]) for i, _ in edits),
    }
    record["answer" if mode == "answer" else "value"] = outcome
    return record
