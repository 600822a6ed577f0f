"""The gsmile command: errors are one line with exit status 2; outputs are written whole."""

import json
import os
import subprocess
import sys

import pytest

from gsmile.cli import main

PROMPT = "What is the capital of France and why is it historically significant?"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", ""], "prompt is empty"),
        (["explain", "   "], "prompt is empty"),
        (["explain", "Hello"], "at least 2 are needed"),
        (["explain", PROMPT, "--target", "cosine"], "invalid choice: 'cosine'"),
        (["explain", PROMPT, "--unit", "para"], "invalid choice: 'para'"),
        (["explain", PROMPT, "--dropout", "0.9"], "dropout must be between 0.05 and 0.5"),
        (["explain", PROMPT, "--samples", "3"], "n_samples must be an integer from 10"),
        (["explain", PROMPT, "--samples", "many"], "invalid int value"),
        (["explain", PROMPT, "--max-evals", "1"], "max_evals must be an integer from 2"),
        (["explain", PROMPT, "--max-evals", "40", "--until-stable"], "max_evals and until_stable cannot be combined"),
        (["explain", PROMPT, "--json", "/nonexistent-dir/out.json"], "does not exist"),
        (["explain", PROMPT, "--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(argv, message, capsys, monkeypatch):
    # "Hello" reaches the model check only after loading; use a scalar stand-in there.
    if argv[1:2] == ["Hello"]:
        monkeypatch.setattr("gsmile.backends.MODELS", {"local": lambda: _Const()})
        monkeypatch.setattr("gsmile.backends._loaded", {})
    with pytest.raises(SystemExit) if argv[0] == "frobnicate" or "invalid" in message else _nullcontext():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


class _Const:
    model_id = "const"

    def __call__(self, texts):
        return [0.0] * len(texts)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_unwritable_directory_is_refused_before_running(tmp_path, capsys):
    target = tmp_path / "adir"
    target.mkdir()
    assert main(["explain", PROMPT, "--png", str(target)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.model
def test_cli_explains_the_example_and_writes_every_output(tmp_path, lm):
    out = {k: tmp_path / f"exp.{k}" for k in ("json", "html", "png")}
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "gsmile.cli", "explain", PROMPT, "--samples", "24", "--max-new-tokens", "10",
         "--json", str(out["json"]), "--html", str(out["html"]), "--png", str(out["png"])],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Response")
    bar_lines = [l for l in lines if "█" in l or "░" in l]
    assert [l.split()[0] for l in bar_lines] == PROMPT.replace("?", "").split()
    assert any(l.startswith("Surrogate fidelity R²:") for l in lines)
    assert any(l.startswith("Top 3 drivers:") for l in lines)
    data = json.loads(out["json"].read_text())
    assert data["schema"] == "gsmile.explanation" and data["n_samples"] == 24
    assert out["html"].read_text().startswith("<!DOCTYPE html>")
    assert out["png"].read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_atomic_write_gives_ordinary_permissions_and_keeps_an_existing_mode(tmp_path):
    from gsmile._io import write_atomic

    old = os.umask(0o022)
    try:
        fresh = tmp_path / "new.json"
        write_atomic(fresh, "{}")
        assert fresh.read_text() == "{}" and (fresh.stat().st_mode & 0o777) == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        write_atomic(kept, b"new")
        assert kept.read_bytes() == b"new" and (kept.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "new.json"]
