"""The image flags of gsmile explain: user mistakes are one line with exit status 2."""

import pytest

from cli_util import one_line_error
from gsmile.cli import main

PROMPT = "a red circle above a blue square on green grass"


@pytest.mark.parametrize("argv, message", [
    (["--image-seeds", "2"], "--image-seeds applies only to text-to-image models"),
    (["--embedder", "pixel"], "--embedder applies only to text-to-image models"),
    (["--image-steps", "4"], "--image-steps apply only to text-to-image models"),
    (["--image-size", "12"], "expected WIDTHxHEIGHT in pixels"),
    (["--image-size", "4x4"], "expected WIDTHxHEIGHT in pixels"),
    (["--model", "diffusers:/nonexistent/pipeline"], "no such directory"),
    (["--model", "diffusers:/tmp", "--image-seeds", "0"], "image_seeds must be an integer from 1 to 64"),
    (["--model", "diffusers:/tmp", "--embedder", "jpeg"], "unknown embedder 'jpeg'"),
    (["--model", "diffusers:/tmp", "--embedder", "clip"], "clip:PATH"),
    (["--model", "diffusers:/tmp", "--base-url", "http://x"], "--base-url applies only to models behind an API"),
])
def test_image_flag_mistakes_exit_2_with_one_line(argv, message, capsys, tmp_path):
    err = one_line_error(["explain", PROMPT, *argv], capsys)
    assert message in err, err


def test_a_directory_without_a_pipeline_is_refused(tmp_path, capsys):
    assert main(["explain", PROMPT, "--model", f"diffusers:{tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model_index.json is missing" in err and len(err.splitlines()) == 1
