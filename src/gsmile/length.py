"""Length limits: an input longer than the model can take is cut from its beginning, as the
causal-explainability service does (``GSMILE_XAI_MAXLEN``), and only when asked
(``max_length``); otherwise it is refused with its length. The cut is made on the original
input before it is split into units, so every perturbation is of the same, cut, text."""

from __future__ import annotations

from typing import Sequence

from .backends import SizesBatches
from .errors import InvalidInputError
from .inputs import CONTEXT_TEMPLATE, user_turn


def n_tokens(backend, text: str) -> int:
    """Tokens of the chat-formatted user turn (the template's markup counted when the
    backend can say so)."""
    if isinstance(backend, SizesBatches):
        return len(backend.prompt_ids(text))
    return len(backend.token_spans(text))


def cut_front_tokens(backend, text: str, n: int) -> str:
    """``text`` without its first ``n`` tokens (empty when it has no more)."""
    spans = backend.token_spans(text)
    if n <= 0:
        return text
    if n >= len(spans):
        return ""
    return text[spans[n][0]:].lstrip()


def cut_front_chars(text: str, keep: int) -> str:
    """The last ``keep`` characters of ``text``, starting at a word boundary when possible."""
    if len(text) <= keep:
        return text
    tail = text[len(text) - keep:]
    space = next((i for i, ch in enumerate(tail) if ch.isspace()), None)
    if space is not None and space < len(tail) - 1 and space < 40:
        tail = tail[space:]
    return tail.lstrip()


def fit_length(backend, prompt: str, context: str | None, response_ids: Sequence[int], maxlen: int, *,
               src_chars: int | None = None, template: str = CONTEXT_TEMPLATE, setting: str = "max_length"):
    """Apply the limits: context + prompt cut from the beginning to ``src_chars`` characters
    (when given), then the response to at most half of ``maxlen`` tokens and the user turn
    (context first, then prompt) from the beginning so that turn + response fit in ``maxlen``
    tokens. Returns (prompt, context, response_ids, notes); ``setting`` is named when even
    the cut prompt cannot fit."""
    notes: list[str] = []
    response_ids = list(response_ids)
    ctx_len = len(context) if context else 0
    if src_chars is not None and ctx_len + len(prompt) > src_chars:
        if len(prompt) >= src_chars:
            prompt, context = cut_front_chars(prompt, src_chars), None
        else:
            context = cut_front_chars(context, src_chars - len(prompt))
        notes.append(f"context and prompt were longer than {src_chars} characters; their beginning was cut")
    if len(response_ids) > maxlen // 2:
        response_ids = response_ids[: maxlen // 2]
        notes.append(f"the response was cut to its first {maxlen // 2} tokens")
    budget = maxlen - len(response_ids)
    for _ in range(4):  # re-tokenizing after a cut can shift a token; a few rounds settle it
        excess = n_tokens(backend, user_turn(prompt, context, template)) - budget
        if excess <= 0:
            break
        if context:
            n_ctx = len(backend.token_spans(context))
            context = cut_front_tokens(backend, context, excess) if excess < n_ctx else None
        else:
            prompt = cut_front_tokens(backend, prompt, excess)
        msg = f"the input was cut from the beginning to fit {maxlen} tokens per scoring pass"
        if msg not in notes:
            notes.append(msg)
    if not prompt.strip():
        raise InvalidInputError(f"the prompt does not fit in {maxlen} tokens with the response; raise {setting}", field="max_length")
    return prompt, context or None, response_ids, notes
