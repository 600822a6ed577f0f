"""The audit report (gsmile.audit.report) on hand-built records with real explanations (no model)."""

from __future__ import annotations

import html
import itertools
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from gsmile.audit.report import read_records, render_report, summarize, write_report
from gsmile.errors import InvalidInputError, SchemaError
from gsmile.explanation import Explanation
from gsmile.units import Segmentation, Unit

T_975_2 = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom (tables: 4.303)
TEMPLATE = "{name} applied for the loan today"
NAMES = {"A": ["Anna", "Beth"], "B": ["Cleo", "Dina"]}


def exp_of(texts, coefficients, r2=0.9, **kw) -> Explanation:
    """An explanation whose units are ``texts`` joined by spaces."""
    units, pos = [], 0
    for text in texts:
        units.append(Unit(text, pos, pos + len(text)))
        pos += len(text) + 1
    return Explanation(prompt=" ".join(texts), response=None, units=units, coefficients=np.asarray(coefficients, float),
                       intercept=0.0, fidelity_r2=r2, **kw)


def case(cid, variants, *, group=None, shifts=None, status="ok", error=None, line=1) -> dict:
    return {"schema": "gsmile.audit.case", "version": 1, "id": cid, "line": line, "status": status, "group": group,
            "metadata": {}, "seconds": 0.1, "variants": variants, "shifts": shifts, "error": error}


def plain(cid, exp: Explanation, group=None, **kw) -> dict:
    variant = {"group": group, "values": {}, "prompt": exp.prompt, "term": None, "explanation": exp.to_dict()}
    return case(cid, [variant], group=group, **kw)


def template_case(cid, *, name_matters_for, between, within) -> dict:
    """A "{name} applied for the loan today" family, two names per group; the name is the
    strongest unit in group ``name_matters_for`` and the weakest elsewhere. Every pair across
    groups moves the answer by ``between``, every pair inside one by ``within``."""
    variants = []
    for group, names in NAMES.items():
        for name in names:
            prompt = TEMPLATE.format(name=name)
            exp = Explanation(prompt=prompt, response=None, units=Segmentation.from_text(prompt, "word").units,
                              coefficients=np.array([1.0 if group == name_matters_for else 0.05, 0.2, 0.1, 0.3, 0.6, 0.4]),
                              intercept=0.0, fidelity_r2=0.9)
            variants.append({"group": group, "values": {"name": name}, "prompt": prompt,
                             "term": term_of(exp, [0, len(name)]), "explanation": exp.to_dict()})
    pairs = [{"a": a, "b": b, "shift": between if variants[a]["group"] != variants[b]["group"] else within,
              "between": variants[a]["group"] != variants[b]["group"]}
             for a, b in itertools.combinations(range(len(variants)), 2)]
    return case(cid, variants, shifts={"pairs": pairs, "between": between, "within": within})


def term_of(exp: Explanation, span) -> dict:
    """The term of the units overlapping ``span``, as the audit defines it."""
    units = [i for i, u in enumerate(exp.units) if u.start < span[1] and u.end > span[0]]
    c = exp.coefficients
    rank = {a.index: r for r, a in enumerate(exp.top(len(exp.units)), start=1)}
    return {"slots": ["name"], "spans": [span], "units": units, "coefficient": float(c[units].sum()),
            "share": float(np.abs(c[units]).sum() / np.abs(c).sum()), "rank": min(rank[i] for i in units)}


def name_matters() -> list[dict]:
    return [template_case(f"t{i}", name_matters_for="B", between=b, within=0.0) for i, b in enumerate([0.9, 1.0, 1.1])]


def plain_values(value):
    """Every leaf of a JSON-like value."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in plain_values(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in plain_values(v)]
    return [value]


# ------------------------------------------------------------------ group effects
def test_name_matters_for_one_group_shows_in_shift_terms_and_headline():
    s = summarize(name_matters())
    half = T_975_2 * 0.1 / math.sqrt(3)
    diff = s["shift"]["difference"]
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(1.0)
    assert diff["ci"] == pytest.approx([1.0 - half, 1.0 + half])  # excludes 0
    assert s["shift"]["within"] == {"n": 3, "mean": 0.0, "ci": [0.0, 0.0]}
    assert s["shift"]["pairs"]["A|B"]["n"] == 12 and s["shift"]["pairs"]["A|B"]["mean"] == pytest.approx(1.0)
    assert s["shift"]["pairs"]["A|A"]["mean"] == 0.0
    assert [r["id"] for r in s["largest_shifts"]] == ["t2", "t1", "t0"]
    assert s["largest_shifts"][0]["prompt"] == "Anna applied for the loan today"

    b, a = s["groups"]["B"], s["groups"]["A"]
    assert b["top_units"][0]["unit"] == "{name}" and b["top_units"][0]["mean"] == 1.0
    assert a["top_units"][0]["unit"] == "loan"
    assert b["term_top3"] == 1.0 and a["term_top3"] == 0.0
    assert b["explanations"] == a["explanations"] == 6
    assert b["term_share"]["mean"] == pytest.approx(1.0 / 2.6) and b["term_share"]["ci"] == pytest.approx([1 / 2.6] * 2)
    assert s["terms"]["top3"] == 0.5 and s["terms"]["slots"] == ["name"]

    text = " ".join(s["headline"])
    assert "Swapping the name moves the answer by 1.00 on average" in text
    assert "within a group it moves by 0.00" in text
    assert "excludes 0" in text and "No difference" not in text
    assert "In 50% of explained variants the name is among the top-3 drivers." in s["headline"]
    assert "The name is among the top-3 drivers in 100% of the variants of group B and 0% of those of group A." in s["headline"]


@pytest.mark.parametrize("shifts", [[(0.0, 0.0)] * 3, [(0.02, 0.01), (0.0, 0.01), (0.01, 0.0)]])
def test_name_does_not_matter_interval_holds_zero(shifts):
    s = summarize([template_case(f"t{i}", name_matters_for=None, between=b, within=w) for i, (b, w) in enumerate(shifts)])
    lo, hi = s["shift"]["difference"]["ci"]
    assert lo <= 0 <= hi
    assert any(h.startswith("No difference between groups") for h in s["headline"])
    assert not any("excludes 0" in h for h in s["headline"])
    assert s["terms"]["top3"] == 0.0


def test_one_case_gives_no_interval_and_says_too_few():
    s = summarize(name_matters()[:1])
    assert s["shift"]["difference"] == {"n": 1, "mean": pytest.approx(0.9), "ci": None}
    assert any("Too few cases" in h for h in s["headline"])


# ------------------------------------------------------------------ units
def test_unit_means_intervals_and_pooling_by_text():
    records = [
        plain("p1", exp_of(["Loan,", "now"], [2.0, 1.0])),      # loan 1.0, now 0.5
        plain("p2", exp_of(["the", "LOAN."], [1.0, 0.5])),      # the 1.0, loan 0.5
        plain("p3", exp_of(["(loan)", "yes"], [0.0, -4.0])),    # loan 0.0, yes -1.0
    ]
    units = summarize(records, top_n=3)["units"]
    assert [u["unit"] for u in units] == ["the", "yes", "loan"]  # by |mean|, then n, then text
    loan = units[2]
    half = T_975_2 * 0.5 / math.sqrt(3)
    assert loan["n"] == 3 and loan["mean"] == pytest.approx(0.5)
    assert loan["ci"] == pytest.approx([0.5 - half, 0.5 + half])
    assert units[1] == {"unit": "yes", "n": 1, "mean": -1.0, "ci": None}


def test_all_zero_coefficients_count_as_zero_and_repeats_sum():
    records = [plain("p1", exp_of(["a", "b"], [0.0, 0.0])), plain("p2", exp_of(["a", "A!", "b"], [1.0, 1.0, -2.0]))]
    units = {u["unit"]: u for u in summarize(records)["units"]}
    assert units["a"]["n"] == 2 and units["a"]["mean"] == pytest.approx(0.5)  # (0 + (0.5 + 0.5)) / 2
    assert units["b"]["mean"] == pytest.approx(-0.5)


def test_plain_case_groups_have_top_units_without_terms():
    records = [plain("p1", exp_of(["loan", "denied"], [0.2, 1.0]), group="X"),
               plain("p2", exp_of(["loan", "approved"], [1.0, 0.5]), group="Y")]
    groups = summarize(records)["groups"]
    assert groups["X"]["top_units"][0]["unit"] == "denied" and groups["Y"]["top_units"][0]["unit"] == "loan"
    assert groups["X"]["term_share"] is None and groups["X"]["term_top3"] is None


# ------------------------------------------------------------------ reliability and failures
def test_reliability_counts_and_unstable_not_measured():
    records = [plain("ok", exp_of(["a", "b"], [1.0, 0.5])),
               plain("low", exp_of(["a", "b"], [1.0, 0.5], r2=0.5)),
               plain("nan", exp_of(["a", "b"], [0.0, 0.0], r2=float("nan"))),
               plain("few", exp_of(["a", "b"], [1.0, 0.5], effective_sample_size=1.5))]
    s = summarize(records)
    rel = s["reliability"]
    assert rel["explanations"] == 4
    assert rel["unreliable"] == {"n": 3, "share": 0.75}
    assert rel["low_fidelity"] == {"n": 2, "share": 0.5}
    assert rel["unstable"] is None
    assert "3 of 4 explanations (75%) are flagged unreliable." in s["headline"]
    assert all(v is None or isinstance(v, (str, int, float)) for v in plain_values(s))
    json.dumps(s, allow_nan=False)


def test_unstable_from_stability_reports():
    stab = [{"runs": 3, "unstable": [1], "topk_jaccard": 1.0}, {"runs": 3, "unstable": [], "topk_jaccard": 0.4},
            {"runs": 3, "unstable": [], "topk_jaccard": 0.9}, {"runs": 1, "unstable": [0], "topk_jaccard": None}]
    records = [plain(f"p{i}", exp_of(["a", "b"], [1.0, 0.5], extras={"stability": st})) for i, st in enumerate(stab)]
    unstable = summarize(records)["reliability"]["unstable"]
    assert unstable["n"] == 2 and unstable["measured"] == 3 and unstable["share"] == pytest.approx(2 / 3)


def test_failures_are_listed_and_not_counted_as_explanations():
    records = [plain("p1", exp_of(["a"], [1.0])),
               case("bad", [], status="failed", line=7, error={"type": "ModelError", "message": "model went away"})]
    s = summarize(records)
    assert s["cases"] == {"total": 2, "ok": 1, "failed": 1, "explanations": 1}
    assert s["failures"] == [{"id": "bad", "line": 7, "type": "ModelError", "message": "model went away"}]
    assert "1 of 2 cases failed (see Failures)." in s["headline"]
    assert s["shift"] is None and s["largest_shifts"] == []


# ------------------------------------------------------------------ reading
def write_lines(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def test_read_records_last_line_wins_and_partial_last_line_ignored(tmp_path):
    first = plain("c1", exp_of(["a"], [1.0]))
    again = case("c1", [], status="failed", error={"type": "ModelError", "message": "x"})
    path = tmp_path / "explanations.jsonl"
    write_lines(path, [first, plain("c2", exp_of(["b"], [1.0])), again], tail='{"schema": "gsmile.audit.case", "id": "c3", "sta')
    records = read_records(path)
    assert [r["id"] for r in records] == ["c1", "c2"]
    assert records[0]["status"] == "failed"


def test_read_records_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="gsmile audit"):
        read_records(tmp_path / "missing.jsonl")
    path = tmp_path / "explanations.jsonl"
    path.write_text('{"broken\n' + json.dumps(plain("c1", exp_of(["a"], [1.0]))) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="line 1"):
        read_records(path)
    write_lines(path, [{**plain("c1", exp_of(["a"], [1.0])), "version": 2}])
    with pytest.raises(SchemaError, match="version 2"):
        read_records(path)


# ------------------------------------------------------------------ HTML and files
def test_report_html_is_self_contained_and_escaped():
    records = name_matters() + [
        plain("p1", exp_of(["x<b>y", "loan"], [5.0, 1.0]), group="A"),
        case("bad", [], status="failed", error={"type": "ModelError", "message": "<script>alert(1)</script>"}),
    ]
    summary = summarize(records)
    page = render_report(summary)
    assert page.startswith("<!DOCTYPE html>")
    for sentence in summary["headline"]:
        assert html.escape(sentence) in page
    assert page.count("<svg") == 3  # units, group term share, shift
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "<!DOCTYPE svg" not in page
    assert "x&lt;b&gt;y" in page and "x<b>y" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    ids = re.findall(r'\bid="([^"]*)"', page)
    assert len(ids) == len(set(ids))  # the plots' ids do not clash


def test_report_without_shifts_or_terms_has_one_plot():
    page = render_report(summarize([plain("p1", exp_of(["a", "b"], [1.0, 0.5]))]))
    assert page.count("<svg") == 1 and "Largest shifts" not in page and "not measured" in page


def test_write_report_writes_both_files(tmp_path):
    write_lines(tmp_path / "explanations.jsonl", name_matters())
    summary = write_report(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8")) == summary
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert summary["schema"] == "gsmile.audit.summary" and html.escape(summary["headline"][0]) in page
    with pytest.raises(InvalidInputError):
        write_report(tmp_path / "nowhere")


def test_import_does_not_load_matplotlib():
    code = "import sys, gsmile.audit.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
