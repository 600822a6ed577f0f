"""The audit's report: statistics over ``explanations.jsonl`` and one HTML page of them.

:func:`read_records` reads what the audit wrote (one JSON record per case),
:func:`summarize` turns the records into plain, JSON-ready statistics,
:func:`render_report` renders those as a self-contained HTML page, and
:func:`write_report` does all three for an audit directory.

Statistics are taken over the cases whose status is ``ok``; failed cases are only listed.
Every interval is a 95% Student-t interval of a mean, mean ± t(0.975, n − 1)·s/√n, which
treats the values (explanations, cases or variant pairs) as independent draws. Fewer than
two values give no interval (None); two or more equal values give [v, v].
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .._io import write_atomic
from ..errors import InvalidInputError, SchemaError
from ..explanation import FIDELITY_THRESHOLD, Explanation
from ..render.palette import NEGATIVE_RGB, POSITIVE_RGB, hex_colour

CASE_SCHEMA = "gsmile.audit.case"
SUMMARY_SCHEMA = "gsmile.audit.summary"
VERSION = 1
RECORDS_FILE = "explanations.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
#: Explanations whose top-k unit sets agree less than this across runs (mean Jaccard) are unstable.
JACCARD_THRESHOLD = 0.5
#: A term ranked this high or better counts as "among the top drivers".
TOP_RANK = 3
LARGEST_SHIFTS = 10
GROUP_TOP_UNITS = 5
NO_GROUP = "(no group)"
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


# ------------------------------------------------------------------ reading
def read_records(path: str | Path) -> list[dict]:
    """The case records of an ``explanations.jsonl``, one per case id (the last line for an
    id wins, in the order ids first appear). A final line that is not valid JSON (one the
    audit was writing when it stopped) is ignored; any other invalid line is an error."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"no audit results at {str(p)!r}: run `gsmile audit` first, "
                                f"or give the directory it wrote its results to")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: dict[Any, dict] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise InvalidInputError(f"{p}: line {number} is not valid JSON; the file is damaged") from None
        if not isinstance(record, dict) or record.get("schema") != CASE_SCHEMA or "id" not in record:
            raise SchemaError(f"{p}: line {number} is not a gsmile audit case (expected schema {CASE_SCHEMA!r})")
        if record.get("version") != VERSION:
            raise SchemaError(f"{p}: line {number} has version {record.get('version')!r}; "
                              f"this gsmile reads version {VERSION}")
        records[record["id"]] = record
    return list(records.values())


# ------------------------------------------------------------------ statistics
def _num(x: Any) -> float | None:
    """``x`` as a plain finite float, else None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def mean_interval(values: Iterable[Any]) -> dict:
    """``{"n", "mean", "ci"}`` of the finite values: the mean with its 95% t-interval."""
    xs = [v for v in map(_num, values) if v is not None]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "ci": None}
    if min(xs) == max(xs):
        return {"n": n, "mean": xs[0], "ci": [xs[0], xs[0]] if n > 1 else None}
    mean = float(np.mean(xs))
    if n < 2:
        return {"n": n, "mean": mean, "ci": None}
    from scipy import stats

    half = float(stats.t.ppf(0.975, n - 1) * np.std(xs, ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "ci": [mean - half, mean + half]}


def _count(k: int, n: int) -> dict:
    return {"n": k, "share": k / n if n else None}


def unit_key(text: str) -> str:
    """The text a unit is pooled under: lowercased, surrounding punctuation and space stripped."""
    return _EDGES.sub("", text).lower() or text.strip().lower()


def _term_label(term: dict) -> str:
    return " ".join("{" + str(slot) + "}" for slot in term.get("slots") or []) or "{slot}"


def _unit_values(exp: Explanation, term: dict | None) -> dict[str, float]:
    """Each unit's signed coefficient / max |coefficient| by pooled text; units of the term
    are pooled under its slot label. A text that occurs twice gets the sum of its values."""
    coefficients = np.nan_to_num(exp.coefficients, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.abs(coefficients).max(initial=0.0))
    values = coefficients / top if top > 0 else np.zeros_like(coefficients)
    term_units = set(term.get("units") or []) if term else set()
    out: dict[str, float] = defaultdict(float)
    for i, (unit, value) in enumerate(zip(exp.units, values)):
        key = _term_label(term) if i in term_units else unit_key(unit.text)
        if key:
            out[key] += float(value)
    return dict(out)


def _top_units(per_explanation: list[dict[str, float]], top_n: int) -> list[dict]:
    """The ``top_n`` pooled units by |mean value|, each with n, mean and interval."""
    pooled: dict[str, list[float]] = defaultdict(list)
    for values in per_explanation:
        for key, value in values.items():
            pooled[key].append(value)
    rows = [{"unit": key, **mean_interval(vals)} for key, vals in pooled.items()]
    rows.sort(key=lambda r: (-abs(r["mean"]), -r["n"], r["unit"]))
    return rows[:top_n]


def _is_unstable(report: dict) -> bool:
    jaccard = _num(report.get("topk_jaccard"))
    return bool(report.get("unstable")) or (jaccard is not None and jaccard < JACCARD_THRESHOLD)


def _reliability(exps: list[Explanation]) -> dict:
    """Unreliable and low-fidelity counts over every explanation; unstable over those with a
    stability report of two or more runs (None when no explanation had one: not measured)."""
    n = len(exps)
    low = sum(not (math.isfinite(e.fidelity_r2) and e.fidelity_r2 >= FIDELITY_THRESHOLD) for e in exps)
    reports = [s for e in exps if isinstance(s := e.extras.get("stability"), dict) and (s.get("runs") or 0) >= 2]
    unstable = None
    if reports:
        unstable = {**_count(sum(map(_is_unstable, reports)), len(reports)), "measured": len(reports)}
    return {"explanations": n, "unreliable": _count(sum(not e.reliable for e in exps), n),
            "low_fidelity": _count(low, n), "unstable": unstable}


def _in_top(term: dict) -> bool:
    rank = term.get("rank")
    return rank is not None and rank <= TOP_RANK


def _groups(items: list[dict]) -> dict:
    """Per group (a template variant's group, or a plain case's group column)."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        if item["group"] is not None:
            by_group[str(item["group"])].append(item)
    out = {}
    for name in sorted(by_group):
        entries = by_group[name]
        terms = [e["term"] for e in entries if e["term"]]
        out[name] = {
            "explanations": len(entries),
            "term_share": mean_interval(t.get("share") for t in terms) if terms else None,
            "term_top3": sum(map(_in_top, terms)) / len(terms) if terms else None,
            "unreliable": sum(not e["exp"].reliable for e in entries) / len(entries),
            "top_units": _top_units([e["values"] for e in entries], GROUP_TOP_UNITS),
        }
    return out


def _shift(cases: list[dict]) -> dict | None:
    """Between- and within-group shifts per case, their difference, and per group pair."""
    cases = [c for c in cases if c.get("shifts")]
    if not cases:
        return None
    rows, pairs = [], defaultdict(list)
    for case in cases:
        shifts, variants = case["shifts"], case.get("variants") or []
        rows.append({"id": case["id"], "between": _num(shifts.get("between")), "within": _num(shifts.get("within"))})
        for pair in shifts.get("pairs") or []:
            names = sorted(str(g) if (g := variants[pair[k]].get("group")) is not None else NO_GROUP for k in "ab")
            pairs["|".join(names)].append(pair.get("shift"))
    both = [r for r in rows if r["between"] is not None and r["within"] is not None]
    return {
        "cases": rows,
        "between": mean_interval(r["between"] for r in rows),
        "within": mean_interval(r["within"] for r in rows),
        "difference": mean_interval(r["between"] - r["within"] for r in both),
        "pairs": {key: mean_interval(pairs[key]) for key in sorted(pairs)},
    }


def summarize(records: list[dict], *, top_n: int = 20) -> dict:
    """Plain JSON-ready statistics of the records (see the module docstring for the method)."""
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    items = []
    for record in ok:
        for variant in record.get("variants") or []:
            if variant.get("explanation") is None:
                continue
            try:
                exp = Explanation.from_dict(variant["explanation"])
            except SchemaError as exc:
                raise SchemaError(f"case {record['id']!r}: {exc}") from None
            term = variant.get("term")
            items.append({"case": record, "group": variant.get("group"), "term": term, "exp": exp,
                          "values": _unit_values(exp, term)})
    terms = [i["term"] for i in items if i["term"]]
    slots = [s for s, _ in Counter(str(s) for t in terms for s in t.get("slots") or []).most_common()]
    shift = _shift(ok)
    largest = sorted((r for r in shift["cases"] if r["between"] is not None), key=lambda r: -r["between"]) if shift else []
    prompts = {r["id"]: (r.get("variants") or [{}])[0].get("prompt") for r in ok}
    summary = {
        "schema": SUMMARY_SCHEMA,
        "version": VERSION,
        "cases": {"total": len(records), "ok": len(ok), "failed": len(failed), "explanations": len(items)},
        "reliability": _reliability([i["exp"] for i in items]),
        "units": _top_units([i["values"] for i in items], top_n),
        "terms": {"slots": slots, "variants": len(terms),
                  "share": mean_interval(t.get("share") for t in terms),
                  "top3": sum(map(_in_top, terms)) / len(terms) if terms else None},
        "groups": _groups(items),
        "shift": shift,
        "largest_shifts": [{**r, "prompt": prompts.get(r["id"])} for r in largest[:LARGEST_SHIFTS]],
        "failures": [{"id": r["id"], "line": r.get("line"), "type": (r.get("error") or {}).get("type"),
                      "message": (r.get("error") or {}).get("message")} for r in failed],
    }
    summary["headline"] = headline(summary)
    return summary


# ------------------------------------------------------------------ sentences
def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2g}"


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def _interval(ci: list | None) -> str:
    return "–" if ci is None else f"{_fmt(ci[0])} to {_fmt(ci[1])}"


def _slot_phrase(slots: list[str]) -> str:
    names = [f"the {s.replace('_', ' ')}" for s in slots] or ["the slot values"]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _group(name: str) -> str:
    """``group B`` for a group named B; a name that already says group stays as it is."""
    return name if name.lower().startswith("group") else f"group {name}"


def headline(summary: dict) -> list[str]:
    """Short plain-language sentences about the summary's main findings."""
    out = []
    slot = _slot_phrase(summary["terms"]["slots"])
    shift = summary["shift"]
    if shift:
        between, within, diff = shift["between"], shift["within"], shift["difference"]
        if between["n"]:
            sentence = (f"Swapping {slot} moves the answer by {_fmt(between['mean'])} on average"
                        + (f" (95% interval {_interval(between['ci'])})" if between["ci"] else ""))
            if within["n"]:
                sentence += f"; within a group it moves by {_fmt(within['mean'])}"
            out.append(sentence + ".")
        elif within["n"]:
            out.append(f"Swapping {slot} within a group moves the answer by {_fmt(within['mean'])} on average.")
        ci = diff["ci"]
        if ci is None and diff["n"]:
            out.append(f"Too few cases ({diff['n']}) to tell whether shifts differ between and within groups.")
        elif ci is not None and ci[0] <= 0 <= ci[1]:
            out.append(f"No difference between groups: the 95% interval of the shift difference "
                       f"({_interval(ci)}) holds 0.")
        elif ci is not None:
            more = "more" if ci[0] > 0 else "less"
            out.append(f"Swapping {slot} between groups moves the answer {more} than within a group: by "
                       f"{_fmt(abs(diff['mean']))} on average (95% interval {_interval(ci)}, which excludes 0).")
    terms = summary["terms"]
    if terms["variants"]:
        out.append(f"In {_pct(terms['top3'])} of explained variants {slot} is among the top-{TOP_RANK} drivers.")
        shares = {g: v["term_top3"] for g, v in summary["groups"].items() if v["term_top3"] is not None}
        if len(shares) > 1 and max(shares.values()) > min(shares.values()):
            hi, lo = max(shares, key=shares.get), min(shares, key=shares.get)
            out.append(f"{slot[0].upper()}{slot[1:]} is among the top-{TOP_RANK} drivers in {_pct(shares[hi])} of the "
                       f"variants of {_group(hi)} and {_pct(shares[lo])} of those of {_group(lo)}.")
    rel = summary["reliability"]
    n = rel["explanations"]
    if n == 0:
        out.append("No explanations to summarize.")
    elif rel["unreliable"]["n"]:
        out.append(f"{rel['unreliable']['n']} of {n} explanations ({_pct(rel['unreliable']['share'])}) "
                   f"are flagged unreliable.")
    else:
        out.append(f"All {n} explanations pass the reliability checks.")
    if rel["unstable"] and rel["unstable"]["n"]:
        u = rel["unstable"]
        out.append(f"{u['n']} of {u['measured']} explanations run more than once ({_pct(u['share'])}) are unstable.")
    cases = summary["cases"]
    if cases["failed"]:
        out.append(f"{cases['failed']} of {cases['total']} cases failed (see Failures).")
    return out


# ------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.5}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.8rem;border-bottom:1px solid #ddd}
ul.headline{font-size:1.05rem;background:#f6f8fa;border:1px solid #e3e3e3;border-radius:4px;padding:.6rem 2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:2px 10px;text-align:left;vertical-align:top}
th{border-bottom:1px solid #ccc}.num{font-family:ui-monospace,monospace;text-align:right;white-space:nowrap}
.plot svg{max-width:100%;height:auto}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(header: list[str], rows: list[list[Any]], numeric: Iterable[int] = ()) -> str:
    """An HTML table of escaped cells; columns in ``numeric`` are right-aligned."""
    cls = lambda j: ' class="num"' if j in numeric else ""  # noqa: E731
    head = "".join(f"<th{cls(j)}>{_e(h)}</th>" for j, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(f"<td{cls(j)}>{_e(c)}</td>" for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _svg(fig: Any, prefix: str) -> str:
    """The figure as inline SVG: no XML prolog, no namespace URLs, ids prefixed so several
    plots can share a page."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "gsmile", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)
    svg = re.sub(r'\bid="', f'id="{prefix}-', svg)
    return re.sub(r'(href="#|url\(#)', rf"\g<1>{prefix}-", svg)


def _bars(rows: list[tuple[str, dict]], xlabel: str, prefix: str, signed: bool) -> str:
    """Horizontal bars of means (first row on top) with their 95% intervals as error bars."""
    from matplotlib.figure import Figure

    labels = [label.replace("$", r"\$") for label, _ in rows]
    means = np.array([stat["mean"] or 0.0 for _, stat in rows])
    err = np.array([[m - s["ci"][0], s["ci"][1] - m] if s["ci"] else [0.0, 0.0] for m, (_, s) in zip(means, rows)]).T
    fig = Figure(figsize=(7.5, min(1.2 + 0.32 * len(rows), 12.0)))
    ax = fig.add_subplot(1, 1, 1)
    colours = [hex_colour(NEGATIVE_RGB if signed and m < 0 else POSITIVE_RGB) for m in means]
    ax.barh(np.arange(len(rows)), means, xerr=err, color=colours, height=0.6, ecolor="#444444", capsize=3)
    ax.set_yticks(np.arange(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.axvline(0.0, color="#444444", linewidth=0.8)
    ax.set_xlabel(xlabel)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return f'<div class="plot">{_svg(fig, prefix)}</div>'


def render_report(summary: dict) -> str:
    """A self-contained HTML5 page of a :func:`summarize` summary (inline CSS and SVG, no
    scripts, no external resources; every text escaped)."""
    parts = ["<h1>gsmile audit report</h1>"]
    parts.append('<ul class="headline">' + "".join(f"<li>{_e(s)}</li>" for s in summary["headline"]) + "</ul>")
    c = summary["cases"]
    parts.append(f"<p>{c['total']} cases: {c['ok']} explained, {c['failed']} failed; "
                 f"{c['explanations']} explanations.</p>")

    units = summary["units"]
    parts.append("<h2>Most important units</h2>")
    parts.append("<p>Mean signed importance per unit text (coefficient / largest |coefficient| of its "
                 "explanation), with a 95% interval; {slot} labels pool the filled-in template values.</p>")
    if units:
        parts.append(_bars([(u["unit"], u) for u in units], "mean normalized coefficient", "units", signed=True))
        parts.append(_table(["unit", "n", "mean", "95% interval"],
                            [[u["unit"], u["n"], _fmt(u["mean"]), _interval(u["ci"])] for u in units], {1, 2, 3}))

    groups = summary["groups"]
    if groups:
        parts.append("<h2>Groups</h2>")
        with_terms = [(g, v["term_share"]) for g, v in groups.items() if v["term_share"]]
        if with_terms:
            parts.append(_bars(with_terms, "term share of total |coefficient|", "groups", signed=False))
        parts.append(_table(
            ["group", "explanations", "term share", "95% interval", f"term in top {TOP_RANK}", "unreliable", "top units"],
            [[g, v["explanations"], _fmt((v["term_share"] or {}).get("mean")), _interval((v["term_share"] or {}).get("ci")),
              _pct(v["term_top3"]), _pct(v["unreliable"]),
              ", ".join(f"{u['unit']} ({_fmt(u['mean'])})" for u in v["top_units"])] for g, v in groups.items()],
            {1, 2, 3, 4, 5}))

    shift = summary["shift"]
    if shift:
        parts.append("<h2>Shift when the slot values are swapped</h2>")
        stats = [(name, shift[name]) for name in ("between", "within") if shift[name]["n"]]
        if stats:
            parts.append(_bars(stats, "mean shift of the answer", "shift", signed=False))
        rows = [[name, shift[name]["n"], _fmt(shift[name]["mean"]), _interval(shift[name]["ci"])]
                for name in ("between", "within", "difference")]
        rows += [[f"pair {pair}", s["n"], _fmt(s["mean"]), _interval(s["ci"])] for pair, s in shift["pairs"].items()]
        parts.append(_table(["", "n", "mean", "95% interval"], rows, {1, 2, 3}))
        parts.append("<h2>Largest shifts</h2>")
        parts.append(_table(["case", "between", "within", "prompt"],
                            [[r["id"], _fmt(r["between"]), _fmt(r["within"]), r["prompt"] or ""]
                             for r in summary["largest_shifts"]], {1, 2}))

    rel = summary["reliability"]
    parts.append("<h2>Reliability</h2>")
    unstable = rel["unstable"]
    parts.append(_table(["check", "explanations", "share"], [
        ["flagged unreliable", rel["unreliable"]["n"], _pct(rel["unreliable"]["share"])],
        [f"fidelity R² below {FIDELITY_THRESHOLD} or undefined", rel["low_fidelity"]["n"], _pct(rel["low_fidelity"]["share"])],
        ["unstable across runs", f"{unstable['n']} of {unstable['measured']}" if unstable else "not measured",
         _pct(unstable["share"]) if unstable else "–"],
    ], {1, 2}))

    parts.append("<h2>Failures</h2>")
    failures = summary["failures"]
    parts.append(_table(["case", "line", "error", "message"],
                        [[f["id"], f["line"], f["type"] or "", f["message"] or ""] for f in failures], {1})
                 if failures else "<p>None.</p>")
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>gsmile audit report</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_report(directory: str | Path, *, top_n: int = 20) -> dict:
    """Read ``directory/explanations.jsonl``; write ``summary.json`` and ``report.html``
    beside it (atomically); return the summary."""
    d = Path(directory).expanduser()
    summary = summarize(read_records(d / RECORDS_FILE), top_n=top_n)
    write_atomic(d / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    write_atomic(d / REPORT_FILE, render_report(summary))
    return summary
