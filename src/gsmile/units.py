"""Segmentation of a text into interpretable units, and mask <-> text.

A :class:`Segmentation` owns the mapping between a binary mask over units and the
text the model sees: ``mask[i]`` is True when unit ``i`` is kept. Dropping a unit
removes its characters; everything that is not a unit (spaces, punctuation between
words) stays as written, except that the whitespace on both sides of a dropped unit
collapses to one run, so "the capital of France" without "of" reads "the capital France".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInputError, lookup

#: A tokenizer hook for ``unit="token"``: text -> character spans of its tokens.
TokenSpans = Callable[[str], list[tuple[int, int]]]


@dataclass(frozen=True)
class Unit:
    """A unit of the input: its text and its character span ``[start, end)``."""

    text: str
    start: int
    end: int


_WORD = re.compile(r"\w+(?:['’.\-]\w+)*", re.UNICODE)
_TOKEN_FALLBACK = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")


def _regex_spans(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text) if m.end() > m.start()]


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def word_spans(text: str, tokenizer: TokenSpans | None = None) -> list[tuple[int, int]]:
    """Words: runs of letters/digits, with inner apostrophes, hyphens and dots (e.g. "U.S", "don't")."""
    return _regex_spans(_WORD, text)


def token_spans(text: str, tokenizer: TokenSpans | None = None) -> list[tuple[int, int]]:
    """The model tokenizer's tokens (whitespace trimmed); words and punctuation without one."""
    raw = tokenizer(text) if tokenizer is not None else _regex_spans(_TOKEN_FALLBACK, text)
    spans = [_strip_span(text, s, e) for s, e in raw]
    return [(s, e) for s, e in spans if e > s]


def sentence_spans(text: str, tokenizer: TokenSpans | None = None) -> list[tuple[int, int]]:
    """Sentences: text up to ., ! or ? (runs of them) or a line break."""
    spans = [_strip_span(text, s, e) for s, e in _regex_spans(_SENTENCE, text)]
    return [(s, e) for s, e in spans if e > s]


#: Words that open a new phrase: coordinating conjunctions, relative and subordinating words.
PHRASE_OPENERS = frozenset(
    """and but or nor yet which who whom whose where when while whereas because although though
    unless if that""".split()
)
#: Punctuation that closes a phrase (kept at the end of it).
_PHRASE_CLOSERS = frozenset(",;:.!?)]}…—–")
_PHRASE_PIECE = re.compile(r"\w+(?:['’.\-]\w+)*|[^\w\s]", re.UNICODE)


def phrase_spans(text: str, tokenizer: TokenSpans | None = None) -> list[tuple[int, int]]:
    """Phrases from a rule-based chunker (no model): a phrase ends after , ; : . ! ? ) — …
    or at a line break, and a new one starts at an opening bracket and before a
    conjunction or relative word (:data:`PHRASE_OPENERS`); closing punctuation stays with
    the phrase it ends. "The tower, which is in Paris, was built in 1889 and painted" gives
    "The tower," / "which is in Paris," / "was built in 1889" / "and painted"."""
    spans: list[tuple[int, int]] = []
    start = end = None
    previous = ""
    for m in _PHRASE_PIECE.finditer(text):
        piece, (s, e) = m.group(), m.span()
        after_abbreviation = piece == "." and "." in previous  # "U.S." / "e.g." go on
        previous = piece
        opens = piece.lower() in PHRASE_OPENERS or piece in "([{"
        if start is not None and (opens or "\n" in text[end:s]):
            spans.append((start, end))
            start = None
        if start is None:
            start = s
        end = e
        if piece in _PHRASE_CLOSERS and not after_abbreviation:
            # A run of closers ("?!", ".)") stays together: close only before the next word.
            nxt = text[e : e + 1]
            if not nxt or nxt.isspace() or nxt.isalnum():
                spans.append((start, end))
                start = None
    if start is not None:
        spans.append((start, end))
    return spans


#: unit name -> segmenter. CLI choices come from this dict.
SEGMENTERS: dict[str, Callable[..., list[tuple[int, int]]]] = {
    "word": word_spans,
    "token": token_spans,
    "phrase": phrase_spans,
    "sentence": sentence_spans,
}


class Segmentation:
    """A text split into units; turns masks over units into texts."""

    def __init__(self, text: str, units: Sequence[Unit], unit_type: str = "custom"):
        self.text = text
        self.units = list(units)
        self.unit_type = unit_type
        last = 0
        for u in self.units:
            if not (last <= u.start < u.end <= len(text)) or text[u.start : u.end] != u.text:
                raise InvalidInputError(f"unit {u!r} does not match the text at its span")
            last = u.end
        # gaps[i] is the text before unit i; gaps[n] the text after the last unit.
        bounds = [0] + [p for u in self.units for p in (u.start, u.end)] + [len(text)]
        self._gaps = [text[bounds[2 * i] : bounds[2 * i + 1]] for i in range(len(self.units) + 1)]

    @classmethod
    def from_text(cls, text: str, unit: str = "word", tokenizer: TokenSpans | None = None) -> "Segmentation":
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("the text to explain is empty; give a prompt with at least two words")
        segment = lookup(SEGMENTERS, unit, "unit")
        spans = segment(text, tokenizer)
        return cls(text, [Unit(text[s:e], s, e) for s, e in spans], unit_type=unit)

    @classmethod
    def from_segments(cls, text: str, segments: Sequence[str]) -> "Segmentation":
        """Units given by the user: ``segments`` must tile ``text`` in order, each one
        continuing where the previous ended, with only whitespace between them (and around
        them; whitespace at a segment's own ends is not part of the unit)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("the text to explain is empty; give a prompt with at least two words")
        if isinstance(segments, str) or not isinstance(segments, Sequence) or not segments:
            raise InvalidInputError("segments must be a non-empty list of strings that together make up the text")
        units: list[Unit] = []
        pos = 0
        for i, segment in enumerate(segments):
            if not isinstance(segment, str) or not segment.strip():
                raise InvalidInputError(f"segment {i} is {'empty' if isinstance(segment, str) else type(segment).__name__}; every segment must be non-blank text")
            piece = segment.strip()
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if not text.startswith(piece, pos):
                found = text[pos : pos + len(piece) + 10]
                raise InvalidInputError(
                    f"segment {i} ({_short(piece)}) does not continue the text at character {pos} "
                    f"(the text there reads {_short(found) if found else 'nothing: the text has ended'}); "
                    f"segments must tile the text in order, with only whitespace between them"
                )
            units.append(Unit(piece, pos, pos + len(piece)))
            pos += len(piece)
        rest = text[pos:]
        if rest.strip():
            raise InvalidInputError(
                f"the segments stop at character {pos} but the text goes on ({_short(rest.strip())}); "
                f"segments must cover the whole text"
            )
        return cls(text, units, unit_type="custom")

    def __len__(self) -> int:
        return len(self.units)

    @property
    def full_mask(self) -> np.ndarray:
        return np.ones(len(self.units), dtype=bool)

    def render(self, mask: Sequence[bool] | np.ndarray) -> str:
        """The text with the units where ``mask`` is False removed."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self.units),):
            raise InvalidInputError(f"mask has shape {mask.shape}, expected ({len(self.units)},)")
        out: list[str] = []
        pending = self._gaps[0]
        for unit, gap_after, keep in zip(self.units, self._gaps[1:], mask):
            if keep:
                out.append(pending)
                out.append(unit.text)
                pending = gap_after
            else:
                pending = _join_gaps(pending, gap_after)
        out.append(pending)
        text = "".join(out)
        return text.strip() if not mask.all() else text


def _join_gaps(left: str, right: str) -> str:
    """Join the gaps around a dropped unit: two whitespace runs become one."""
    if left.isspace() and right.isspace():
        return left if len(left) >= len(right) else right
    if left == "" or right == "":
        return left + right
    if left.isspace():  # "word ?" -> "?" : no space before punctuation
        return right
    # Punctuation on one side: keep it, and one whitespace run between pieces.
    if left.endswith((" ", "\n", "\t")) and right.startswith((" ", "\n", "\t")):
        return left.rstrip() + right if right.strip() else left
    return left + right


def _short(text: str, limit: int = 30) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
