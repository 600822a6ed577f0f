"""Plain-language insights: a short paragraph read off an explanation's numbers.

:func:`insights` says which units dominate (and what share of the total attribution they
carry), which units the model largely ignores (with their scores), and gives a
recommendation where one follows from them:

* a text-to-image prompt: move the ignored words earlier or raise their weight with the
  pipeline's prompt-weighting syntax, e.g. ``(stone bridge:1.5)``;
* a grounding context: the answer rests on the dominant passages; the ignored ones can be
  dropped without changing it much;
* a prompt: the ignored words can go without changing the response much; to change the
  response, change the dominant ones.

When the explanation is unreliable (see :attr:`Explanation.reliability_issues`) it says so
and gives no advice. Everything here is computed from the explanation; nothing is stored
that the numbers do not already say.
"""

from __future__ import annotations

#: A unit at or above this score (|coef| / max |coef|) dominates.
DOMINANT = 0.5
#: A unit below this score is largely ignored by the model.
IGNORED = 0.1
#: Most units named in one list.
MAX_LISTED = 6
#: Words too common to recommend anything about (the recommendation skips them; they are
#: still listed as ignored).
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and or but with by for from as is are was were be been it its this that these those "
    "into onto over under than then there here very above below beside behind near next between".split())


def _is_content(text: str) -> bool:
    return text.strip().lower().strip(".,;:!?") not in FUNCTION_WORDS


def _quote(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return f'"{text if len(text) <= limit else text[: limit - 1] + "…"}"'


def _names(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _phrases(attributions, indices: set[int]) -> list[str]:
    """Runs of adjacent ignored content units, as phrases in prompt order ("stone bridge")."""
    runs, current, last = [], [], None
    for a in attributions:
        keep = a.index in indices and _is_content(a.text)
        if keep and last is not None and a.index == last + 1 and current:
            current.append(a.text.strip())
        elif keep:
            if current:
                runs.append(" ".join(current))
            current = [a.text.strip()]
        last = a.index if keep else None
        if not keep and current:
            runs.append(" ".join(current))
            current = []
    if current:
        runs.append(" ".join(current))
    return runs


def insights(exp) -> str:
    """The paragraph for ``exp`` (an :class:`~gsmile.explanation.Explanation`)."""
    attributions = exp.attributions()
    if not attributions:
        return "There are no units to explain."
    issues = exp.reliability_issues
    if issues:
        return ("This explanation is not reliable enough to act on: " + "; ".join(issues) + ". "
                "No advice is given; explain again with a larger budget (max_evals or n_samples), fewer or coarser units, "
                "or until_stable, and check that the reliability issues are gone.")
    noun = {"sentence": "sentence", "phrase": "phrase", "token": "token", "word": "word"}.get(exp.unit_type, "unit")
    total = float(sum(abs(a.coefficient) for a in attributions))
    ranked = sorted(attributions, key=lambda a: (-a.score, a.index))
    dominant = [a for a in ranked if a.score >= DOMINANT][:3]
    share = sum(abs(a.coefficient) for a in dominant) / total if total > 0 else 0.0
    is_image = exp.images is not None or str(exp.target).startswith("image-")
    moves = "the images" if is_image else ("the answer" if exp.explained == "context" else "the response")
    if exp.target == "contrast":
        moves = f"the preference for the response over {_quote(str(exp.params.get('contrast', 'the contrast')))}"
    parts = []
    if len(dominant) == 1:
        parts.append(f"{_quote(dominant[0].text)} dominates: removing it moves {moves} most ({share:.0%} of the total attribution).")
    else:
        parts.append(f"{_names([_quote(a.text) for a in dominant])} dominate: together {share:.0%} of the total attribution.")
    pushes = [a for a in ranked if a.coefficient < 0 and a.score >= DOMINANT]
    if pushes:
        names, one = _names([_quote(a.text) for a in pushes[:3]]), len(pushes) == 1
        if exp.target == "contrast":
            parts.append(f"{names} favour{'s' if one else ''} the contrast instead (negative coefficient{'' if one else 's'}).")
        else:
            parts.append(f"{names} push{'es' if one else ''} {moves} the other way (negative coefficient{'' if one else 's'}).")
    ignored = [a for a in attributions if a.score < IGNORED]
    if not ignored:
        parts.append(f"Every {noun} matters to some degree (each scores at least {IGNORED:.1f} of the top).")
        return " ".join(parts)
    # Content words first: "bridge" ignored says more than "a" ignored.
    listed = sorted(ignored, key=lambda a: (not _is_content(a.text), a.score, a.index))[:MAX_LISTED]
    more = len(ignored) - len(listed)
    parts.append(f"The model largely ignores {_names([f'{_quote(a.text)} ({a.score:.2f})' for a in listed])}"
                 f"{f' and {more} more' if more > 0 else ''} (scores relative to the top {noun}).")
    phrases = _phrases(attributions, {a.index for a in ignored})
    if is_image and phrases:
        first = phrases[0]
        parts.append(f"To make the image show {_names([_quote(p) for p in phrases[:3]])}, move "
                     f"{'it' if len(phrases) == 1 else 'them'} to the beginning of the prompt or raise "
                     f"{'its' if len(phrases) == 1 else 'their'} weight with your pipeline's prompt-weighting syntax, "
                     f"e.g. \"({first}:1.5)\".")
    elif exp.explained == "context":
        parts.append(f"The answer rests on the dominant {noun}s; the ignored ones could be dropped from the context without changing it much.")
    elif exp.target == "contrast":
        parts.append(f"The ignored {noun}s do not decide between the two; the dominant ones do.")
    elif not is_image:
        parts.append(f"Removing the ignored {noun}s barely changes {moves}; to change it, change the dominant ones.")
    return " ".join(parts)
