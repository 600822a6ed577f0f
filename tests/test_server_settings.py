"""Server settings: pydantic-settings reading GSMILE_* variables (only through from_env)."""

from __future__ import annotations

from pathlib import Path

import pytest


from pydantic_settings import BaseSettings  # noqa: E402

from gsmile.errors import InvalidInputError  # noqa: E402
from gsmile.server.settings import Settings  # noqa: E402


def test_settings_read_their_gsmile_variables():
    assert issubclass(Settings, BaseSettings)
    env = {"GSMILE_API_KEY": "s3cret", "GSMILE_MAX_BODY_BYTES": "4096", "GSMILE_MAX_CONCURRENT": "3", "GSMILE_MAX_QUEUE": "0",
           "GSMILE_RETRY_AFTER": "9", "GSMILE_JOBS_DB": "/tmp/x/jobs.db", "GSMILE_JOBS_KEEP": "5", "GSMILE_XAI_MAXLEN": "64",
           "GSMILE_XAI_SRC_CHARS": "100", "GSMILE_ANALYZE_MIN_MAXLEN": "32", "GSMILE_MODEL": "hf:/m",
           "GSMILE_MAX_SAMPLES": "50", "GSMILE_CORS_ORIGINS": "http://a.test, http://b.test"}
    s = Settings.from_env(env)
    assert (s.api_key, s.max_body_bytes, s.max_concurrent, s.max_queue, s.retry_after_s) == ("s3cret", 4096, 3, 0, 9)
    assert (s.jobs_path, s.jobs_keep, s.xai_maxlen, s.xai_src_chars, s.analyze_min_maxlen) == (Path("/tmp/x/jobs.db"), 5, 64, 100, 32)
    assert (s.model, s.max_samples, s.cors_origins) == ("hf:/m", 50, ["http://a.test", "http://b.test"])
    assert "s3cret" not in repr(s)  # the key is kept out of logs


def test_overrides_win_and_the_constructor_reads_no_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GSMILE_MAX_CONCURRENT", "4")
    monkeypatch.setenv("GSMILE_API_KEY", "from-env")
    assert Settings.from_env(max_concurrent=2, model=None).max_concurrent == 2
    assert Settings.from_env().api_key == "from-env"
    direct = Settings(jobs_path=tmp_path / "j.db")
    assert direct.max_concurrent == 1 and direct.api_key is None
    assert Settings.from_env({"GSMILE_API_KEY": "", "GSMILE_JOBS_DB": "~/j.db"}).api_key is None
    assert Settings.from_env({"GSMILE_JOBS_DB": "~/j.db"}).jobs_path == Path("~/j.db").expanduser()


@pytest.mark.parametrize("env, message", [
    ({"GSMILE_XAI_MAXLEN": "big"}, "GSMILE_XAI_MAXLEN must be an integer, got 'big'"),
    ({"GSMILE_RETRY_AFTER": "soon"}, "GSMILE_RETRY_AFTER must be an integer, got 'soon'"),
    ({"GSMILE_MAX_CONCURRENT": "0"}, "max_concurrent (GSMILE_MAX_CONCURRENT) must be an integer of at least 1, got 0"),
    ({"GSMILE_MAX_SAMPLES": "5"}, "max_samples (GSMILE_MAX_SAMPLES) must be an integer of at least 10, got 5"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(InvalidInputError) as info:
        Settings.from_env(env)
    assert str(info.value) == message
