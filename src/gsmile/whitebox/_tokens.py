"""Shared by the white-box methods: the model check, the chat-formatted row fed to the model, and
which of its tokens belong to which unit.

A row is what gsmile's teacher-forced log-prob target feeds: the chat-formatted prompt (up to
the assistant header) followed by every response token but the last; the response's tokens are
predicted at the row's last ``T`` positions (``T = len(response_ids)``).

Token -> unit: the user's ``text`` is located in the formatted prompt string, and every token of
the formatted prompt gets its character offsets from the tokenizer. A token is a *text token*
when its characters overlap ``text``; a text token belongs to the unit whose span it overlaps
most (ties: the earlier unit), or to no unit (whitespace or punctuation between units). Template
tokens (system prompt, role markup, special tokens) and the fed response tokens never belong to
a unit; the methods report how much of their result falls outside the units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ComputationError, InvalidInputError


@dataclass
class Row:
    ids: list[int]  # prompt ids + response ids but the last
    n_prompt: int
    n_response: int
    text_mask: np.ndarray  # (len(ids),) bool: token of the user's text (replaced by a baseline)
    unit_of: np.ndarray  # (len(ids),) int: unit index, -1 for none
    tokens: list[str]  # the row's tokens as strings

    @property
    def predicting(self) -> slice:
        """Positions whose next-token distributions predict the response tokens."""
        return slice(len(self.ids) - self.n_response, len(self.ids))


def build_row(lm, text: str, spans, response_ids) -> Row:
    if not isinstance(text, str) or not text:
        raise InvalidInputError("the text is empty", field="prompt")
    spans = [(int(a), int(b)) for a, b in spans]
    if not spans:
        raise InvalidInputError("no units to attribute to: spans is empty", field="units")
    for a, b in spans:
        if not 0 <= a < b <= len(text):
            raise InvalidInputError(f"unit span ({a}, {b}) is not inside the text (length {len(text)})", field="units")
    response = [int(t) for t in response_ids]
    if not response:
        raise InvalidInputError("the response is empty: nothing to attribute", field="response")
    tok = lm.tokenizer
    messages = [{"role": "user", "content": text}]
    empty = [{"role": "user", "content": ""}]
    if lm.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": lm.system_prompt})
        empty.insert(0, messages[0])
    formatted = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    without = tok.apply_chat_template(empty, tokenize=False, add_generation_prompt=True)
    # Where the text sits: the occurrence whose removal leaves the template with an empty turn
    # (the system prompt could contain the same words); else the last one (the user turn is last).
    starts = [i for i in range(len(formatted)) if formatted.startswith(text, i)]
    if not starts:
        raise ComputationError("the chat template changed the user's text: its units cannot be located in the formatted prompt")
    start = next((i for i in starts if formatted[:i] + formatted[i + len(text):] == without), starts[-1])
    enc = tok(formatted, add_special_tokens=False, return_offsets_mapping=True)
    prompt = list(enc["input_ids"])
    if prompt != lm.prompt_ids(text):
        raise ComputationError("the formatted prompt tokenizes differently from the model's prompt_ids")
    n = len(prompt) + len(response) - 1
    text_mask = np.zeros(n, dtype=bool)
    unit_of = np.full(n, -1, dtype=int)
    lo, hi = start, start + len(text)
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if b <= a or b <= lo or a >= hi:  # empty (special tokens) or outside the text
            continue
        text_mask[j] = True
        overlaps = [min(b, start + sb) - max(a, start + sa) for sa, sb in spans]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            unit_of[j] = best
    ids = prompt + response[:-1]
    return Row(ids, len(prompt), len(response), text_mask, unit_of, lm.token_strings(ids))


def to_units(values: np.ndarray, row: Row, n_units: int) -> np.ndarray:
    """``values`` (..., positions) summed over each unit's tokens: (..., n_units)."""
    out = np.zeros(values.shape[:-1] + (n_units,), dtype=float)
    for k in range(n_units):
        out[..., k] = values[..., row.unit_of == k].sum(axis=-1)
    return out


def outside_units(values: np.ndarray, row: Row) -> dict:
    """How much of a per-position result (for the whole response) falls outside the units:
    the text's own tokens that belong to no unit (whitespace, punctuation between units) and the
    rest (template markup, system prompt, special tokens, the fed response tokens). Shares are
    of the total absolute value."""
    total = float(np.abs(values).sum()) or 1.0
    in_text = row.text_mask & (row.unit_of < 0)
    rest = ~row.text_mask
    return {
        "text_tokens": [row.tokens[j] for j in np.flatnonzero(in_text)],
        "text_share": float(np.abs(values[in_text]).sum()) / total,
        "template_tokens": int(rest.sum()),
        "template_share": float(np.abs(values[rest]).sum()) / total,
        "note": ("tokens of the text overlapping no unit, and the template's tokens (system prompt, role "
                 "markup, special tokens, fed response tokens), belong to no unit; a share is of the total |value|"),
    }


def token_table(row: Row) -> list[dict]:
    """The text's tokens and their units, for extras."""
    return [{"token": row.tokens[j], "position": int(j), "unit": (int(row.unit_of[j]) if row.unit_of[j] >= 0 else None)}
            for j in np.flatnonzero(row.text_mask)]
