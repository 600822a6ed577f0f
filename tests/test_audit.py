"""gsmile audit: cases, variants, shifts, the results store (resume, kills), local workers,
the CLI. The Ray executor is tested in test_audit_ray.py, the report in test_audit_report.py."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import audit_models
import numpy as np
import pytest

from gsmile.audit import audit
from gsmile.audit.cases import expand_template, read_cases
from gsmile.audit.run import LocalWorkers, run_serial
from gsmile.audit.work import WorkSpec
from gsmile.cli import main
from gsmile.errors import InvalidInputError

GROUP_B = ("Jamal", "Darnell")
SLOTS = {"name": {"A": ["Emily", "Anna"], "B": ["Jamal", "Darnell"]}}
TEMPLATES = [
    "{name} applied for the loan. Should the bank approve it?",
    "Is {name} a good fit for the engineering job?",
    "Write a short story about {name} and a dragon.",
]


# Scalar models: module-level functions, so worker processes import them by name.
def name_matters(texts):
    """1 when a group-B name is in the text, plus a little for 'loan': the name drives the
    output for group B by construction. GSMILE_TEST_DELAY slows each call down."""
    time.sleep(float(os.environ.get("GSMILE_TEST_DELAY", 0)))
    return [1.0 * any(n in t for n in GROUP_B) + 0.25 * ("loan" in t) for t in texts]


def name_ignored(texts):
    """The same output for every name."""
    return [0.25 * ("loan" in t) + 0.5 * ("dragon" in t) for t in texts]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _cases(tmp_path, rows=None):
    rows = rows if rows is not None else [{"id": f"t{i}", "template": t} for i, t in enumerate(TEMPLATES)] + [
        {"id": "plain", "prompt": "What is the capital of France?", "group": "geo", "source": "wiki"}]
    return _write_jsonl(tmp_path / "cases.jsonl", rows)


def _records(directory):
    return [json.loads(line) for line in (Path(directory) / "explanations.jsonl").read_text().splitlines()]


def _comparable(record):
    """A record without its timings and batch sizes (how it was computed, not what)."""
    record = json.loads(json.dumps(record))
    record.pop("seconds")
    for v in record["variants"]:
        v["explanation"].pop("timings")
        for name in ("batch_size", "batch_size_auto"):
            v["explanation"]["params"].pop(name, None)
    return record


# ------------------------------------------------------------------ cases
def test_template_expands_per_group_with_term_spans():
    variants = expand_template("{name} lives in {city}; ask {name}.",
                               {"name": {"A": ["Emily"], "B": ["Jamal", "Li Wei"]}, "city": ["Lyon", "Porto"]})
    assert len(variants) == 1 * 2 + 2 * 2
    assert [v.group for v in variants] == ["A", "A", "B", "B", "B", "B"]
    v = variants[4]
    assert v.prompt == "Li Wei lives in Lyon; ask Li Wei."
    assert [v.prompt[s:e] for s, e in v.spans] == ["Li Wei", "Li Wei"]  # the group's slot only, both places
    assert v.term_slots == ("name",) and v.values == {"name": "Li Wei", "city": "Lyon"}


def test_bad_lines_are_recorded_with_line_number_and_reason(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [
        {"id": "ok1", "prompt": "Is the sky blue?"},
        '{"prompt": "unterminated"',
        {"id": "noprompt", "response": "yes"},
        {"id": "slot", "template": "{who} met {whom}", "slots": {"who": ["Ann"]}},
        {"id": "ok1", "prompt": "A second line with the same id"},
        {"id": "ok2", "template": "{name} is here", "slots": SLOTS},
    ])
    cases, bad = read_cases(path)
    assert [c.id for c in cases] == ["ok1", "ok2"]
    assert len(cases[1].variants) == 4
    reasons = {b.line: b.reason for b in bad}
    assert set(reasons) == {2, 3, 4, 5}
    assert "not valid JSON" in reasons[2] and reasons[2].startswith("line 2:")
    assert 'missing "prompt"' in reasons[3]
    assert "unknown template slot {whom}" in reasons[4]
    assert "already used on line 1" in reasons[5]


def test_csv_input_with_slots_and_metadata(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,template,slots,region\nc1,"{name} asked for a loan.","{""name"": {""A"": [""Emily""], ""B"": [""Jamal""]}}",north\n'
                    'c2,,,south\n', encoding="utf-8")
    cases, bad = read_cases(path)
    assert [c.id for c in cases] == ["c1"] and cases[0].metadata == {"region": "north"}
    assert [v.prompt for v in cases[0].variants] == ["Emily asked for a loan.", "Jamal asked for a loan."]
    assert len(bad) == 1 and bad[0].line == 3 and 'missing "prompt"' in bad[0].reason


def test_unreadable_or_empty_input_is_an_error(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_cases(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInputError, match="holds no cases"):
        read_cases(tmp_path / "empty.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InvalidInputError, match=r"\.jsonl .* or \.csv"):
        read_cases(tmp_path / "x.txt")


# ------------------------------------------------------------ explanations
def test_name_dependent_model_gives_name_as_top_driver_and_a_between_group_shift(tmp_path):
    result = audit(_cases(tmp_path), tmp_path / "out", model=name_matters, slots=SLOTS, n_samples=40, random_state=0)
    assert result.cases == 4 and result.failed == 0
    records = {r["id"]: r for r in _records(tmp_path / "out")}
    for i in range(3):
        rec = records[f"t{i}"]
        assert len(rec["variants"]) == 4
        for v in rec["variants"]:
            if v["group"] == "B":
                assert v["term"]["rank"] == 1 and v["term"]["share"] > 0.5
            else:
                assert v["term"]["coefficient"] == pytest.approx(0.0, abs=1e-9)
        assert rec["shifts"]["between"] == pytest.approx(1.0) and rec["shifts"]["within"] == pytest.approx(0.0)
    plain = records["plain"]
    assert plain["shifts"] is None and plain["variants"][0]["term"] is None
    assert plain["group"] == "geo" and plain["metadata"] == {"source": "wiki"}


def test_name_independent_model_gives_no_shift(tmp_path):
    audit(_cases(tmp_path), tmp_path / "out", model=name_ignored, slots=SLOTS, n_samples=40, random_state=0)
    for rec in _records(tmp_path / "out"):
        if rec["shifts"]:
            assert rec["shifts"]["between"] == 0.0 and rec["shifts"]["within"] == 0.0


def _family_audit(tmp_path, model):
    rows = [{"id": f"c{i}", "template": TEMPLATES[i % 3]} for i in range(6)]
    return audit(_cases(tmp_path, rows), tmp_path / model.__name__, model=model, slots=SLOTS, n_samples=40,
                 random_state=0).summary


def test_report_finds_the_name_as_top_driver_of_the_affected_group_and_the_shift(tmp_path):
    summary = _family_audit(tmp_path, name_matters)
    b, a = summary["groups"]["B"], summary["groups"]["A"]
    assert b["top_units"][0]["unit"] == "{name}" and b["term_top3"] == 1.0
    assert a["term_top3"] == 0.0  # the name never moves group A's output
    lo, hi = summary["shift"]["difference"]["ci"]
    assert lo > 0.5 and summary["shift"]["between"]["mean"] == pytest.approx(1.0)
    assert any("excludes 0" in line for line in summary["headline"])


def test_report_says_no_difference_when_the_name_does_not_matter(tmp_path):
    summary = _family_audit(tmp_path, name_ignored)
    lo, hi = summary["shift"]["difference"]["ci"]
    assert lo <= 0 <= hi
    assert any(line.startswith("No difference between groups") for line in summary["headline"])
    assert summary["groups"]["A"]["term_top3"] == summary["groups"]["B"]["term_top3"] == 0.0


def test_gsmile_audit_is_callable_and_imported_on_first_use(tmp_path):
    code = ("import sys, gsmile; assert 'gsmile.audit' not in sys.modules; "
            "assert callable(gsmile.audit) and gsmile.audit.audit is __import__('gsmile.audit').audit.audit")
    subprocess.run([sys.executable, "-c", code], check=True)
    import gsmile

    result = gsmile.audit(_cases(tmp_path), tmp_path / "out", model=name_matters, slots=SLOTS, n_samples=20)
    assert result.cases == 4 and result.failed == 0


# ------------------------------------------------------------ store, resume
def test_rerun_skips_finished_cases_and_changed_settings_are_refused(tmp_path):
    path, out = _cases(tmp_path), tmp_path / "out"
    first = audit(path, out, model=name_matters, slots=SLOTS, n_samples=40, random_state=0)
    assert first.explained == 4
    again = audit(path, out, model=name_matters, slots=SLOTS, n_samples=40, random_state=0, batch_size=7)
    assert (again.explained, again.skipped) == (0, 4)  # batch_size never changes results: same audit
    with pytest.raises(InvalidInputError, match=r"options\.n_samples changed.*--fresh"):
        audit(path, out, model=name_matters, slots=SLOTS, n_samples=41, random_state=0)
    fresh = audit(path, out, model=name_matters, slots=SLOTS, n_samples=41, random_state=0, fresh=True)
    assert fresh.explained == 4 and len(_records(out)) == 4


def test_a_cut_last_line_is_dropped_and_its_case_explained_again(tmp_path):
    path, out = _cases(tmp_path), tmp_path / "out"
    audit(path, out, model=name_matters, slots=SLOTS, n_samples=40, random_state=0)
    whole = _records(out)
    data = (out / "explanations.jsonl").read_bytes()
    lines = data.splitlines(keepends=True)
    (out / "explanations.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a killed write
    result = audit(path, out, model=name_matters, slots=SLOTS, n_samples=40, random_state=0)
    assert (result.explained, result.skipped) == (2, 2)
    after = _records(out)
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in whole)
    assert [_comparable(r) for r in sorted(after, key=lambda r: r["id"])] == \
        [_comparable(r) for r in sorted(whole, key=lambda r: r["id"])]


def test_failed_cases_are_kept_and_retried_only_when_asked(tmp_path):
    rows = [{"id": "good", "prompt": "Is the loan approved?"}, {"id": "bad"}, "{not json"]
    path, out = _cases(tmp_path, rows), tmp_path / "out"
    result = audit(path, out, model=name_matters, n_samples=20, random_state=0)
    assert (result.cases, result.failed) == (3, 2)
    errors = {r["id"]: r["error"] for r in _records(out)}
    assert errors["good"] is None and "line 2" in errors["bad"]["message"] and "line 3" in errors["line-3"]["message"]
    assert audit(path, out, model=name_matters, n_samples=20, random_state=0).explained == 0
    _cases(tmp_path, [rows[0], {"id": "bad", "prompt": "Fixed now?"}, rows[2]])
    retried = audit(path, out, model=name_matters, n_samples=20, random_state=0, retry_failed=True)
    assert (retried.explained, retried.failed) == (2, 1)


def test_a_model_error_is_recorded_and_the_audit_goes_on(tmp_path):
    def flaky(texts):
        if any("explode" in t for t in texts):
            raise RuntimeError("backend down")
        return [1.0] * len(texts)

    rows = [{"id": "a", "prompt": "please explode now"}, {"id": "b", "prompt": "a calm prompt here"}]
    result = audit(_cases(tmp_path, rows), tmp_path / "out", model=flaky, n_samples=16, random_state=0)
    records = {r["id"]: r for r in _records(tmp_path / "out")}
    assert result.failed == 1 and records["b"]["status"] == "ok"
    assert records["a"]["error"]["type"] == "ModelError" and "backend down" in records["a"]["error"]["message"]


DRIVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    os.environ["GSMILE_TEST_DELAY"] = "0.02"
    import test_audit
    from gsmile.audit import audit

    audit({path!r}, {out!r}, model=test_audit.name_matters, slots=test_audit.SLOTS, n_samples=40, random_state=0)
""")


def test_a_killed_run_loses_only_cases_in_flight_and_resumes(tmp_path):
    rows = [{"id": f"c{i}", "template": TEMPLATES[i % 3]} for i in range(12)]
    path, out = _cases(tmp_path, rows), tmp_path / "out"
    script = DRIVER.format(tests=str(Path(__file__).parent), path=str(path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    results = out / "explanations.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not results.exists() or results.read_bytes().count(b"\n") < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = results.read_bytes()
    assert written.count(b"\n") >= 2 and written.count(b"\n") < 12, "kill the run mid-way"
    assert all(json.loads(line)["status"] == "ok" for line in written.splitlines() if line.endswith(b"}"))
    result = audit(path, out, model=name_matters, slots=SLOTS, n_samples=40, random_state=0)
    ids = [r["id"] for r in _records(out)]
    assert sorted(ids) == sorted(f"c{i}" for i in range(12)) and len(set(ids)) == 12
    assert result.skipped == written.count(b"\n")


# ------------------------------------------------------------ local workers
def _spec(model, **options):
    return WorkSpec(model=model, options={"n_samples": 40, "random_state": 0, **options})


def test_two_worker_processes_give_the_same_records_as_one(tmp_path):
    cases, _ = read_cases(_cases(tmp_path), slots=SLOTS)
    serial, parallel = [], []
    run_serial(cases, _spec(name_matters), serial.append)
    LocalWorkers(2).execute(cases, _spec(name_matters, batch_size=3), parallel.append)
    key = lambda r: r["id"]  # noqa: E731
    assert [_comparable(r) for r in sorted(parallel, key=key)] == [_comparable(r) for r in sorted(serial, key=key)]


def test_a_killed_worker_process_loses_no_case(tmp_path, monkeypatch):
    monkeypatch.setenv("GSMILE_TEST_AUDIT_MARKERS", str(tmp_path))
    rows = [{"id": f"c{i}", "prompt": f"prompt number {i} about the loan"} for i in range(5)]
    rows.insert(2, {"id": "victim", "prompt": "DIEONCE please, about the loan"})
    cases, _ = read_cases(_cases(tmp_path, rows))
    records = []
    LocalWorkers(2, poll_seconds=0.2).execute(cases, _spec(audit_models.die_once), records.append)
    assert (tmp_path / "dieonce").exists(), "the worker was killed"
    assert sorted(r["id"] for r in records) == sorted(c.id for c in cases)
    assert all(r["status"] == "ok" for r in records)


def test_a_case_that_always_kills_its_worker_fails_after_three_tries(tmp_path):
    rows = [{"id": "a", "prompt": "first fine prompt"}, {"id": "poison", "prompt": "DIEALWAYS pill"},
            {"id": "b", "prompt": "second fine prompt"}]
    cases, _ = read_cases(_cases(tmp_path, rows))
    records = []
    LocalWorkers(2, poll_seconds=0.2).execute(cases, _spec(audit_models.die_always), records.append)
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == ["a", "b", "poison"] and len(records) == 3
    assert by_id["poison"]["error"]["type"] == "WorkerDied" and "3 times" in by_id["poison"]["error"]["message"]
    assert by_id["a"]["status"] == by_id["b"]["status"] == "ok"


def test_workers_through_audit_match_serial(tmp_path):
    path = _cases(tmp_path)
    audit(path, tmp_path / "one", model=name_matters, slots=SLOTS, n_samples=40, random_state=0)
    audit(path, tmp_path / "two", model=name_matters, slots=SLOTS, n_samples=40, random_state=0, workers=2)
    key = lambda r: r["id"]  # noqa: E731
    assert [_comparable(r) for r in sorted(_records(tmp_path / "two"), key=key)] == \
        [_comparable(r) for r in sorted(_records(tmp_path / "one"), key=key)]


def test_api_concurrency_is_one_limit_split_between_workers():
    from gsmile.audit import _work_spec

    spec = _work_spec("openai:m", {"concurrency": 4}, {}, 2, None)
    assert spec.model_options["concurrency"] == 2
    with pytest.raises(InvalidInputError, match="shared by all workers"):
        _work_spec("openai:m", {"concurrency": 1}, {}, 2, None)
    with pytest.raises(InvalidInputError, match="module-level function"):
        _work_spec(lambda texts: [0.0] * len(texts), {}, {}, 2, None)


# ------------------------------------------------------------------- CLI
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsmile: error: cannot read the audit input") and err.count("\n") == 1
    assert main(["audit", str(_cases(tmp_path)), "--out", str(tmp_path / "o"), "--samples", "1"]) == 2
    assert "n_samples" in capsys.readouterr().err
    assert main(["audit", str(_cases(tmp_path)), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert not (tmp_path / "o").exists(), "nothing written for a bad option"


@pytest.mark.model
def test_cli_audit_with_the_embedded_model_then_report(tmp_path, capsys):
    rows = [{"id": "q1", "prompt": "What is the capital of France?"},
            {"id": "t1", "template": "Should {name} get the loan?", "slots": {"name": {"A": ["Emily"], "B": ["Jamal"]}}}]
    out = tmp_path / "out"
    code = main(["audit", str(_cases(tmp_path, rows)), "--out", str(out), "--samples", "16", "--max-new-tokens", "4",
                 "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    records = {r["id"]: r for r in _records(out)}
    assert records["q1"]["status"] == "ok" and records["t1"]["status"] == "ok"
    shifts = records["t1"]["shifts"]
    assert shifts["between"] > 0 and np.isfinite(shifts["between"])  # swapping the name moves SmolLM2's distribution
    assert "2 cases: 2 explained, 0 failed" in printed
    assert (out / "report.html").exists() and json.loads((out / "summary.json").read_text())["cases"]["ok"] == 2
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()


def test_api_model_with_two_workers_keeps_one_limit_on_requests_in_flight(tmp_path):
    from fake_openai import FakeOpenAI

    rows = [{"id": f"q{i}", "prompt": f"Why is Paris the capital of France and not city {i}?", "response": " Paris."}
            for i in range(4)]
    path = _cases(tmp_path, rows)
    with FakeOpenAI() as srv:
        # Each answer takes 0.1 s, so one worker alone needs about 5 s for the 4 cases: longer than
        # the other worker takes to start, even on a loaded machine (at 0.01 s one worker could
        # finish every case first, and nothing was ever in flight at once).
        srv.delay_s = 0.1
        code = main(["audit", str(path), "--out", str(tmp_path / "out"), "--model", "openai:fake", "--base-url", srv.base_url,
                     "--no-cache", "--target", "logprob", "--samples", "12", "--workers", "2", "--concurrency", "2",
                     "--batch-size", "4", "--quiet"])
        assert code == 0
        assert srv.max_in_flight == 2  # two workers, one request each: never the 4 of two workers with 2 each
    records = _records(tmp_path / "out")
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert all(r["variants"][0]["explanation"]["extras"]["calls"]["calls"] > 0 for r in records)
