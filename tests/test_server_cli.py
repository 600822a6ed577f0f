"""``gsmile serve``: binds 127.0.0.1:8800 unless told otherwise; CORS only with --cors-origin."""

from __future__ import annotations

import pytest

import uvicorn  # noqa: E402

from gsmile.cli import main  # noqa: E402


@pytest.fixture
def captured(monkeypatch, tmp_path):
    calls = {}

    def fake_run(app, **kwargs):
        calls["app"] = app
        calls.update(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("GSMILE_JOBS_DB", str(tmp_path / "jobs.sqlite3"))
    monkeypatch.delenv("GSMILE_API_KEY", raising=False)
    yield calls
    if "app" in calls:
        calls["app"].state.manager.shutdown()
        calls["app"].state.store.close()


def test_defaults_bind_loopback_port_8800_without_cors(captured):
    assert main(["serve", "--quiet"]) == 0
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8800
    settings = captured["app"].state.settings
    assert settings.cors_origins == [] and settings.api_key is None
    assert not any("CORSMiddleware" in repr(m) for m in captured["app"].user_middleware)


def test_options_reach_the_app(captured, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GSMILE_API_KEY", "k")
    code = main(["serve", "--host", "0.0.0.0", "--port", "9001", "--cors-origin", "http://a.test",
                 "--cors-origin", "http://b.test", "--max-concurrent", "3", "--jobs-db", str(tmp_path / "other.db")])
    assert code == 0
    assert (captured["host"], captured["port"]) == ("0.0.0.0", 9001)
    settings = captured["app"].state.settings
    assert settings.cors_origins == ["http://a.test", "http://b.test"]
    assert settings.api_key == "k" and settings.max_concurrent == 3
    assert settings.jobs_path == tmp_path / "other.db"
    assert any("CORSMiddleware" in repr(m) for m in captured["app"].user_middleware)
    assert "serving on http://0.0.0.0:9001/" in capsys.readouterr().err


def test_public_bind_without_a_key_warns(captured, capsys):
    main(["serve", "--host", "0.0.0.0"])
    assert "without GSMILE_API_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "0"], "--port must be from 1 to 65535"),
    (["serve", "--max-concurrent", "0"], "max_concurrent (GSMILE_MAX_CONCURRENT) must be an integer of at least 1"),
])
def test_bad_options_exit_2_with_one_line(captured, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_environment_exits_2(captured, capsys, monkeypatch):
    monkeypatch.setenv("GSMILE_XAI_MAXLEN", "big")
    assert main(["serve"]) == 2
    assert "GSMILE_XAI_MAXLEN must be an integer" in capsys.readouterr().err


def test_an_api_model_is_served_with_the_api_flags(captured, tmp_path):
    """``gsmile serve --model openai:NAME`` with the API flags serves that model: the
    explanation comes from the API (requests reach it) and equals the library's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_openai import FakeOpenAI
    from server_client import Api

    from gsmile import explain
    from gsmile.backends.openai import OpenAIBackend

    with FakeOpenAI() as srv:
        assert main(["serve", "--quiet", "--model", "openai:toy", "--base-url", srv.base_url, "--concurrency", "2",
                     "--cache-dir", str(tmp_path / "calls")]) == 0
        api = Api(captured["app"])
        assert api.get("/healthz").json()["model"] == "openai:toy"
        r = api.post("/v1/explain", json={"prompt": "What is the capital of France", "n_samples": 20, "random_state": 1})
        assert r.status_code == 200, r.text
        assert srv.requests > 0
        body = r.json()
        assert body["model_id"] == "openai:toy"
        backend = OpenAIBackend("toy", base_url=srv.base_url, use_cache=False)
        lib = explain("What is the capital of France", model=backend, n_samples=20, random_state=1)
        assert body["coefficients"] == pytest.approx(list(lib.coefficients), abs=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["serve", "--base-url", "http://127.0.0.1:1/v1"], "--base-url applies only to --model openai:NAME"),
    (["serve", "--model", "openai:"], "openai:NAME needs a model name"),
    (["serve", "--model", "openai:toy", "--base-url", "ftp://x"], "must start with http:// or https://"),
])
def test_bad_api_flags_exit_2_with_one_line(captured, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "app" not in captured
