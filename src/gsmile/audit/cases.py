"""The cases of an audit: read from a JSONL or CSV file, templates expanded into variants.

One input line is one case. Its columns:

- ``prompt`` (required unless ``template`` is given): the prompt to explain;
- ``id``: the case's name (default ``line-N``); ids must be unique;
- ``response``: explain this response instead of the model's greedy one;
- ``context``: explain this context (the prompt stays fixed);
- ``group``: the case's group, compared in the report;
- ``template`` and ``slots``: a prompt with slots, e.g. ``"{name} applied for the loan."``,
  and the values of each slot, per group (``{"name": {"female": ["Emily"], "male":
  ["John"]}}``) or for every group (``{"city": ["Lyon", "Porto"]}``). Each combination of
  values is one variant; the slots whose values depend on the group are the variant's
  *term* (its own importance and the output shift when it is swapped are reported). In a
  CSV file ``slots`` holds that JSON object. Slots shared by every template line can be
  given once (``gsmile audit --slots FILE``); a line's own slots win;
- any other column is kept as the case's metadata.

A line with a mistake is a :class:`BadLine` (its number and the reason); the other lines
are cases all the same.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

#: Columns with a meaning; every other column is metadata.
KNOWN_COLUMNS = ("id", "prompt", "response", "context", "group", "template", "slots")
#: Most variants one template line may expand into.
MAX_VARIANTS = 256


@dataclass(frozen=True)
class Variant:
    """One prompt to explain: a case's prompt, or one filling of its template."""

    prompt: str
    group: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    #: Character spans of the group-dependent slot values in ``prompt`` (the variant's term).
    spans: tuple[tuple[int, int], ...] = ()
    #: Names of the slots whose values depend on the group.
    term_slots: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """One input line."""

    id: str
    line: int
    variants: tuple[Variant, ...]
    response: str | None = None
    context: str | None = None
    group: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, enough to rebuild the case (sent to workers)."""
        return {
            "id": self.id, "line": self.line, "response": self.response, "context": self.context,
            "group": self.group, "metadata": self.metadata,
            "variants": [{"prompt": v.prompt, "group": v.group, "values": v.values,
                          "spans": [list(s) for s in v.spans], "term_slots": list(v.term_slots)} for v in self.variants],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Case":
        variants = tuple(Variant(v["prompt"], v["group"], dict(v["values"]), tuple(tuple(s) for s in v["spans"]),
                                 tuple(v["term_slots"])) for v in data["variants"])
        return cls(data["id"], data["line"], variants, data["response"], data["context"], data["group"], dict(data["metadata"]))


@dataclass(frozen=True)
class BadLine:
    """An input line that cannot be a case: its number, the id it would have had and why."""

    line: int
    id: str
    reason: str


def read_cases(path: str | Path, *, slots: dict[str, Any] | None = None) -> tuple[list[Case], list[BadLine]]:
    """The cases of the JSONL (``.jsonl``, ``.json``, ``.ndjson``) or CSV (``.csv``) file at
    ``path`` and its bad lines (each with its line number and reason; the other lines are
    cases all the same). ``slots`` apply to every template line without its own. A file
    that cannot be read, or holds no line at all, is an InvalidInputError."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or type(exc).__name__)
        raise InvalidInputError(f"cannot read the audit input {str(path)!r}: {reason}", field="input") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(text)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(text)
    else:
        raise InvalidInputError(f"the audit input {path.name!r} must end in .jsonl (one JSON object per line) or .csv",
                                field="input")
    if slots is not None:
        _check_slots(slots, "--slots")
    if not rows:
        raise InvalidInputError(f"the audit input {path.name!r} holds no cases; give one JSON object or CSV row per case",
                                field="input")
    cases: list[Case] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        default_id = f"line-{line}"
        try:
            if isinstance(row, str):
                raise InvalidInputError(row, field="input")
            case = parse_case(row, line, slots)
            if case.id in seen:
                raise InvalidInputError(f"line {line}: id {case.id!r} is already used on line {seen[case.id]}; ids must be unique",
                                        field="input")
        except InvalidInputError as exc:
            given = row.get("id") if isinstance(row, dict) else None
            ident = str(given) if isinstance(given, (str, int)) and str(given).strip() and str(given) not in seen else default_id
            bad.append(BadLine(line, ident, str(exc)))
            seen.setdefault(ident, line)
            continue
        seen[case.id] = line
        cases.append(case)
    return cases, bad


def _jsonl_rows(text: str) -> list[tuple[int, dict | str]]:
    """(line number, object) per non-blank line; a line that is no JSON object gives its
    reason instead of the object."""
    rows: list[tuple[int, dict | str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append((number, f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            rows.append((number, f"line {number}: expected a JSON object with a \"prompt\", got {type(row).__name__}"))
            continue
        rows.append((number, row))
    return rows


def _csv_rows(text: str) -> list[tuple[int, dict | str]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return []
    rows: list[tuple[int, dict | str]] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            rows.append((line, f"line {line}: more values than the header's {len(reader.fieldnames)} columns"))
            continue
        row = {k: v for k, v in row.items() if v not in (None, "")}
        if "slots" in row:
            try:
                row["slots"] = json.loads(row["slots"])
            except json.JSONDecodeError as exc:
                rows.append((line, f"line {line}: the slots column is not valid JSON ({exc.msg})"))
                continue
        if row:
            rows.append((line, row))
    return rows


def parse_case(row: dict[str, Any], line: int, shared_slots: dict[str, Any] | None = None) -> Case:
    """The case of input line ``line``."""

    def text(name: str, required: bool = False) -> str | None:
        value = row.get(name)
        if value is None:
            if required:
                raise InvalidInputError(f"line {line}: missing \"{name}\"; every case needs a prompt (or a template)", field="input")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("id", "group"):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"line {line}: \"{name}\" must be a non-empty text, got {value!r}", field="input")
        return value

    template = text("template")
    if template is not None and "prompt" in row:
        raise InvalidInputError(f"line {line}: give either \"prompt\" or \"template\", not both", field="input")
    group = text("group")
    if template is None:
        if "slots" in row:
            raise InvalidInputError(f"line {line}: \"slots\" needs a \"template\" with those slots", field="input")
        variants = (Variant(text("prompt", required=True), group=group),)
    else:
        slots = row.get("slots", shared_slots)
        if slots is None:
            raise InvalidInputError(f"line {line}: the template has no slot values; add \"slots\" to the line or give --slots FILE",
                                    field="input")
        _check_slots(slots, f"line {line}")
        variants = expand_template(template, slots, where=f"line {line}")
    metadata = {k: v for k, v in row.items() if k not in KNOWN_COLUMNS}
    return Case(id=text("id") or f"line-{line}", line=line, variants=variants, response=text("response"),
                context=text("context"), group=group, metadata=metadata)


def _check_slots(slots: Any, where: str) -> None:
    if not isinstance(slots, dict) or not slots:
        raise InvalidInputError(f"{where}: slots must be a JSON object of slot names to value lists, e.g. "
                                f"{{\"name\": {{\"group A\": [\"Emily\"], \"group B\": [\"John\"]}}}}", field="input")
    for name, values in slots.items():
        lists = values.values() if isinstance(values, dict) else [values]
        for values_list in lists:
            if (not isinstance(values_list, list) or not values_list
                    or not all(isinstance(v, str) and v.strip() for v in values_list)):
                raise InvalidInputError(f"{where}: slot {name!r} needs a non-empty list of non-empty texts "
                                        f"(or one such list per group)", field="input")


def expand_template(template: str, slots: dict[str, Any], *, where: str = "template") -> tuple[Variant, ...]:
    """Every variant of ``template``: per group, every combination of its slots' values."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInputError(f"{where}: the template is malformed ({exc}); write a literal brace as {{{{ or }}}}",
                                field="input") from None
    used = []
    for _, name, spec, conversion in pieces:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise InvalidInputError(f"{where}: template slot {{{name}}} must be a plain name like {{name}}", field="input")
        if name not in slots:
            raise InvalidInputError(f"{where}: unknown template slot {{{name}}}; slots given: {', '.join(sorted(slots))}",
                                    field="input")
        used.append(name)
    if not used:
        raise InvalidInputError(f"{where}: the template has no {{slot}}; use \"prompt\" for a plain case", field="input")
    grouped = [n for n in dict.fromkeys(used) if isinstance(slots[n], dict)]
    groups = list(slots[grouped[0]]) if grouped else [None]
    for name in grouped[1:]:
        if set(slots[name]) != set(groups):
            raise InvalidInputError(f"{where}: slots {grouped[0]!r} and {name!r} name different groups "
                                    f"({', '.join(map(str, groups))} vs {', '.join(slots[name])})", field="input")
    names = list(dict.fromkeys(used))
    variants = []
    for group in groups:
        choices = [slots[n][group] if isinstance(slots[n], dict) else slots[n] for n in names]
        for combo in itertools.product(*choices):
            values = dict(zip(names, combo))
            prompt, spans = _fill(pieces, values, set(grouped))
            variants.append(Variant(prompt, group, values, tuple(spans), tuple(grouped)))
            if len(variants) > MAX_VARIANTS:
                raise InvalidInputError(f"{where}: the template expands into more than {MAX_VARIANTS} variants; "
                                        f"give fewer values per slot", field="input")
    return tuple(variants)


def _fill(pieces, values: dict[str, str], term_slots: set[str]) -> tuple[str, list[tuple[int, int]]]:
    """The template filled with ``values`` and the spans of the term slots' values."""
    out, spans, pos = [], [], 0
    for literal, name, _, _ in pieces:
        out.append(literal)
        pos += len(literal)
        if name is not None:
            value = values[name]
            if name in term_slots:
                spans.append((pos, pos + len(value)))
            out.append(value)
            pos += len(value)
    return "".join(out), spans
