"""gsmile audit on Ray (gsmile.audit.ray_runner): the same records as in this process,
dead actors' cases retried (at most MAX_ATTEMPTS times), model and address errors, and
audit(ray=True) end to end. One local Ray instance (2 CPUs) serves the whole module; no
external cluster. The model functions live in tests/audit_models.py, which the actors
import through the instance's PYTHONPATH."""

import importlib
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import audit_models  # noqa: E402  (tests/ is on the driver's path; the actors get it in PYTHONPATH)

from gsmile.audit import audit  # noqa: E402
from gsmile.audit.cases import read_cases  # noqa: E402
from gsmile.audit.ray_runner import RAY_MISSING, RayWorkers, check_address, connect, import_ray  # noqa: E402
from gsmile.audit.run import MAX_ATTEMPTS, run_serial  # noqa: E402
from gsmile.audit.work import WorkSpec  # noqa: E402
from gsmile.errors import InvalidInputError, ModelError  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
OPTIONS = {"n_samples": 48, "random_state": 0}
ROWS = [
    {"id": "loan", "template": "{name} applied for the loan. Should the bank approve it?",
     "slots": {"name": {"A": ["Emily", "Anna"], "B": ["Jamal", "Darnell"]}}},
    {"id": "capital", "prompt": "What is the capital of France and its main river?", "group": "geo"},
    {"id": "dragon", "prompt": "Write a short story about a dragon who wants a loan."},
    {"id": "plain", "prompt": "Name three colours of the rainbow in order."},
    {"id": "river", "prompt": "Which river flows through the capital of France?", "source": "wiki"},
    {"id": "approve", "prompt": "Would you approve a loan for a dragon?"},
]


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    """A local Ray instance for the module; its workers import tests/ and get a directory
    for the marker files of audit_models.die_once (returned)."""
    directory = tmp_path_factory.mktemp("ray-markers")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS_DIR), "GSMILE_TEST_AUDIT_MARKERS": str(directory)}})
    yield directory
    ray.shutdown()


def _cases(tmp_path, rows=ROWS):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cases, bad = read_cases(path)
    assert not bad
    return cases


def _collect(executor, cases, spec):
    records = []
    executor.execute(cases, spec, records.append)
    return records


def _by_id(records):
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"a case recorded twice: {sorted(ids)}"
    return {r["id"]: r for r in records}


def _comparable(record):
    """A record without its timings and batch sizes (how it was computed, not what)."""
    record = json.loads(json.dumps(record))
    record.pop("seconds")
    for v in record["variants"]:
        v["explanation"].pop("timings", None)
        for name in ("batch_size", "batch_size_auto"):
            v["explanation"]["params"].pop(name, None)
    return record


def test_records_are_those_of_this_process(markers, tmp_path):
    cases = _cases(tmp_path)
    spec = WorkSpec(model=audit_models.weighted_words, options=OPTIONS)
    serial = _by_id(_collect(type("Serial", (), {"execute": staticmethod(run_serial)})(), cases, spec))
    on_ray = _by_id(_collect(RayWorkers(2), cases, spec))
    assert set(on_ray) == {c.id for c in cases}
    assert all(r["status"] == "ok" for r in on_ray.values()), [r["error"] for r in on_ray.values()]
    assert len(on_ray["loan"]["variants"]) == 4 and on_ray["loan"]["shifts"]["between"] > 0
    for case_id, record in on_ray.items():
        assert _comparable(record) == _comparable(serial[case_id]), case_id


def test_a_dead_actors_case_goes_to_a_new_actor(markers, tmp_path):
    rows = ROWS[1:4] + [{"id": "killer", "prompt": "DIEONCE: which river flows through France?"}] + ROWS[4:]
    cases = _cases(tmp_path, rows)
    records = _by_id(_collect(RayWorkers(2), cases, WorkSpec(model=audit_models.die_once, options=OPTIONS)))
    assert (markers / "dieonce").exists()  # an actor did die under the case
    assert set(records) == {c.id for c in cases}
    assert all(r["status"] == "ok" for r in records.values()), [r["error"] for r in records.values()]
    serial = []
    run_serial(cases, WorkSpec(model=audit_models.weighted_words, options=OPTIONS), serial.append)
    for expected in serial:
        got = records[expected["id"]]
        assert [v["explanation"]["coefficients"] for v in got["variants"]] == \
               [v["explanation"]["coefficients"] for v in expected["variants"]]


def test_a_case_that_always_kills_its_actor_fails_after_max_attempts(markers, tmp_path):
    rows = ROWS[1:3] + [{"id": "poison", "prompt": "DIEALWAYS: name a river in France."}] + ROWS[3:4]
    cases = _cases(tmp_path, rows)
    records = _by_id(_collect(RayWorkers(2), cases, WorkSpec(model=audit_models.die_always, options=OPTIONS)))
    assert set(records) == {c.id for c in cases}
    poison = records.pop("poison")
    assert poison["status"] == "failed" and poison["error"]["type"] == "WorkerDied"
    assert f"({MAX_ATTEMPTS} times)" in poison["error"]["message"]
    assert all(r["status"] == "ok" for r in records.values())


def test_audit_on_ray_end_to_end(markers, tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "{not json\n", encoding="utf-8")
    result = audit(path, tmp_path / "ray", model=audit_models.weighted_words, ray=True, workers=2, **OPTIONS)
    lines = (tmp_path / "ray" / "explanations.jsonl").read_text().splitlines()
    assert len(lines) == len(ROWS) + 1 == result.cases
    assert result.explained == len(ROWS) + 1 and result.failed == 1  # the bad line
    assert (tmp_path / "ray" / "summary.json").exists() and (tmp_path / "ray" / "report.html").exists()
    here = audit(path, tmp_path / "here", model=audit_models.weighted_words, **OPTIONS)
    assert here.failed == 1
    ray_records = {r["id"]: _comparable(r) for r in map(json.loads, lines)}
    here_records = {r["id"]: _comparable(r) for r in map(json.loads, (tmp_path / "here" / "explanations.jsonl").read_text().splitlines())}
    assert ray_records == here_records


def test_more_actors_than_the_instance_has_cpus(markers, tmp_path):
    """The third actor never gets a CPU of the 2-CPU instance: the other two do every case."""
    cases = _cases(tmp_path, ROWS[1:5])
    records = _by_id(_collect(RayWorkers(3), cases, WorkSpec(model=audit_models.weighted_words, options=OPTIONS)))
    assert set(records) == {c.id for c in cases} and all(r["status"] == "ok" for r in records.values())


def test_a_model_that_cannot_load_is_a_model_error(markers, tmp_path):
    cases = _cases(tmp_path, ROWS[1:3])
    with pytest.raises(ModelError, match="could not load the model: hf:/no/such/dir: no config.json"):
        RayWorkers(2).execute(cases, WorkSpec(model="hf:/no/such/dir"), lambda r: None)


def test_a_function_the_actors_cannot_import_is_a_model_error(markers, tmp_path, monkeypatch):
    (tmp_path / "driver_only_model.py").write_text("def f(texts):\n    return [1.0 for _ in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("driver_only_model")
    try:
        with pytest.raises(ModelError, match="No module named 'driver_only_model'"):
            RayWorkers(1).execute(_cases(tmp_path, ROWS[1:2]), WorkSpec(model=module.f), lambda r: None)
    finally:
        sys.modules.pop("driver_only_model", None)


def test_an_address_where_nothing_answers_is_refused_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    tic = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(InvalidInputError, match=f"cannot join the Ray cluster at '{address}'"):
            check_address(address)
    with pytest.raises(InvalidInputError, match="cannot join the Ray cluster"):
        connect(ray, f"127.0.0.1:{port}")
    assert time.perf_counter() - tic < 10


def test_without_ray_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvalidInputError, match=r"pip install 'gsmile\[ray\]'") as err:
        import_ray()
    assert str(err.value) == RAY_MISSING
    with pytest.raises(InvalidInputError, match="at least 1"):
        RayWorkers(0)


@pytest.mark.model
def test_embedded_model_on_two_actors_matches_this_process(markers, tmp_path):
    rows = [{"id": "france", "prompt": "What is the capital of France?"},
            {"id": "sky", "prompt": "Why is the sky blue?"}]
    cases = _cases(tmp_path, rows)
    spec = WorkSpec(model=None, options={"n_samples": 16, "max_new_tokens": 4, "random_state": 0})
    on_ray = _by_id(_collect(RayWorkers(2), cases, spec))
    serial = _by_id(_collect(type("Serial", (), {"execute": staticmethod(run_serial)})(), cases, spec))
    for case_id, expected in serial.items():
        got = on_ray[case_id]
        assert got["status"] == "ok" == expected["status"], got["error"]
        (v,), (w,) = got["variants"], expected["variants"]
        assert v["explanation"]["response"] == w["explanation"]["response"]
        assert np.allclose(v["explanation"]["coefficients"], w["explanation"]["coefficients"], atol=1e-6, rtol=0)
