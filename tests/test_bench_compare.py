"""bench/compare.py keeps finished blocks and reuses them: a stopped run goes on where it
stopped, with the same records, and never mixes settings. The model, the peers and the
faithfulness curves are replaced by fakes, so this runs in well under a second."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def compare(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    class FakeCase:
        def __init__(self, lm, prompt, max_new_tokens, id="prompt"):
            self.id, self.prompt, self.n = id, prompt, len(prompt.split())
            self.response = f"answer to {prompt}"

        def exact_shapley(self):
            calls.append(("exact", self.id))
            return np.arange(self.n, dtype=float)

    def runner(name):
        def run(case, budget, seed):
            calls.append((name, case.id, budget, seed))
            rng = np.random.default_rng([budget, seed, case.n])
            return np.arange(case.n) + rng.normal(0, 0.1, case.n), budget

        return run

    monkeypatch.setattr(module, "Case", FakeCase)
    monkeypatch.setattr(module, "_load_model", lambda: object())
    monkeypatch.setattr(module, "faithfulness", lambda case, a: (float(np.sum(a)), float(np.max(a))))
    monkeypatch.setattr(module, "RUNNERS", {"gsmile:fake": runner("gsmile:fake"), "peer:fake": runner("peer:fake")})
    monkeypatch.setattr(module, "FIXED_BUDGET", set())
    monkeypatch.setattr(module, "_commit", lambda: "abc1234")
    module.calls = calls
    return module


def _args(tmp_path, **kw):
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        rows = [{"id": "long", "prompt": "one two three four five"}, {"id": "short", "prompt": "one two three"},
                {"id": "mid", "prompt": "one two three four"}]
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dict(budgets="2,4", methods=None, max_new_tokens=4, seeds=2, shapley_max_units=4, prompts=None,
                prompt_file=str(prompts), out=str(tmp_path / "out"), fresh=False, report=False, rerun=None)
    return SimpleNamespace(**{**base, **kw})


def _plain(records):
    """The records as written to JSON, less the wall times (which differ from run to run)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(json.dumps(records))]


def test_a_finished_run_is_reused_whole(compare, tmp_path):
    first = compare.run(_args(tmp_path))
    n_calls = len(compare.calls)
    # 3 prompts x 2 budgets x 2 methods x 2 seeds, and exact values for the two short prompts
    assert n_calls == 3 * 2 * 2 * 2 + 2
    assert [r["prompt"] for r in first["records"] if r["method"] == "exact-shapley"] == ["short", "mid"]
    again = compare.run(_args(tmp_path))
    assert len(compare.calls) == n_calls  # nothing ran again
    assert _plain(again["records"]) == _plain(first["records"])
    assert again["commits"] == ["abc1234"]


def test_a_stopped_run_goes_on_where_it_stopped(compare, tmp_path):
    whole = compare.run(_args(tmp_path, out=str(tmp_path / "whole")))
    compare.calls.clear()
    compare.run(_args(tmp_path, prompts=1))  # "short" only; then a kill cuts a line short
    path = tmp_path / "out" / compare.Checkpoint.NAME
    with open(path, "a") as fh:
        fh.write('{"prompt": "mid", "budg')
    compare.calls.clear()
    rest = compare.run(_args(tmp_path))
    assert not any(c[1] == "short" for c in compare.calls)  # reused
    assert {c[1] for c in compare.calls} == {"mid", "long"}
    assert _plain(rest["records"]) == _plain(whole["records"])  # the same numbers as one run


def test_a_new_budget_runs_only_that_budget(compare, tmp_path):
    compare.run(_args(tmp_path))
    compare.calls.clear()
    more = compare.run(_args(tmp_path, budgets="2,4,8"))
    assert {c[2] for c in compare.calls} == {8 * 3, 8 * 4, 8 * 5}  # b * n units, at 8N only
    assert not any(c[0] == "exact" for c in compare.calls)
    assert {r["budget"] for r in more["records"]} == {2, 4, 8, None}


def test_other_settings_are_refused_not_mixed(compare, tmp_path):
    compare.run(_args(tmp_path, prompts=1))
    with pytest.raises(SystemExit, match="other settings"):
        compare.run(_args(tmp_path, seeds=3))
    compare.calls.clear()
    fresh = compare.run(_args(tmp_path, seeds=3, prompts=1, fresh=True))
    assert len(compare.calls) == 2 * 2 * 3 + 1
    assert fresh["seeds"] == 3


def test_a_changed_prompt_or_response_is_refused(compare, tmp_path):
    compare.run(_args(tmp_path, prompts=1))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompts.read_text().replace('"one two three"', '"one two tree"'))
    with pytest.raises(SystemExit, match="changed"):
        compare.run(_args(tmp_path, prompts=1))


def test_load_prompts_puts_the_shortest_first(compare, tmp_path):
    _args(tmp_path)
    rows = compare.load_prompts(tmp_path / "prompts.jsonl", None)
    assert [r["id"] for r in rows] == ["short", "mid", "long"]
    assert [r["id"] for r in compare.load_prompts(tmp_path / "prompts.jsonl", 2)] == ["short", "mid"]


def test_report_runs_nothing_and_keeps_only_finished_blocks(compare, tmp_path):
    compare.run(_args(tmp_path, prompts=2))  # "short" and "mid" at 2N and 4N
    compare.run(_args(tmp_path, prompts=1, budgets="2,4,8"))  # "short" at 8N too
    compare.calls.clear()
    report = compare.run(_args(tmp_path, budgets="2,4,8", report=True))
    assert compare.calls == []
    at = {b: {r["prompt"] for r in report["records"] if r["budget"] == b} for b in (2, 4, 8)}
    assert at == {2: {"short", "mid"}, 4: {"short", "mid"}, 8: {"short"}}  # "long" never ran
    with pytest.raises(SystemExit, match="needs the finished blocks"):
        compare.run(_args(tmp_path, out=str(tmp_path / "empty"), report=True))


def test_rerun_replaces_one_methods_records_once_per_commit(compare, tmp_path):
    first = compare.run(_args(tmp_path))
    n_calls = len(compare.calls)
    compare._commit = lambda: "def5678"
    # The changed method now returns other attributions; the peer's records must stay.
    compare.RUNNERS["gsmile:fake"] = lambda case, budget, seed: (compare.calls.append(("new", case.id, budget, seed))
                                                                  or (-np.arange(case.n, dtype=float), budget))
    again = compare.run(_args(tmp_path, rerun="gsmile:fake"))
    new_calls = compare.calls[n_calls:]
    assert sorted(new_calls) == sorted(("new", p, b * n, s) for p, n in [("short", 3), ("mid", 4), ("long", 5)]
                                       for b in (2, 4) for s in (0, 1))
    def by(result, method):
        return [r for r in _plain(result["records"]) if r["method"] == method]
    assert by(again, "peer:fake") == by(first, "peer:fake")
    assert all(r["attributions"][0] == 0 and r["attributions"][1] == -1 for r in by(again, "gsmile:fake"))
    assert again["reruns"] == {"gsmile:fake": ["def5678"]}
    # The same commit again: nothing runs; the report keeps the new records.
    third = compare.run(_args(tmp_path, rerun="gsmile:fake"))
    assert len(compare.calls) == n_calls + len(new_calls)
    assert _plain(third["records"]) == _plain(again["records"])
    report = compare.run(_args(tmp_path, report=True))
    assert by(report, "gsmile:fake") == by(again, "gsmile:fake")


def test_rerun_of_an_unknown_method_is_refused(compare, tmp_path):
    with pytest.raises(SystemExit, match="--rerun names gsmile:nope"):
        compare.run(_args(tmp_path, rerun="gsmile:nope"))
