"""CLI flags of the methods, context, segments and stability (a scalar stand-in model)."""

import json

import pytest

from cli_util import one_line_error
from gsmile.cli import main
from gsmile.methods import PERTURBATION_METHODS

PROMPT = "What is the capital of France, and why is it famous?"
WEIGHTS = {"capital": 2.0, "France": 3.0, "famous": 1.0, "why": -1.5}


class Stand:
    """f(text) = Σ weights of the words present: a scalar model the CLI reaches as 'local'."""

    model_id = "stand-in"

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.extend(texts)
        return [sum(w for word, w in WEIGHTS.items() if word in t) for t in texts]


@pytest.fixture
def stand(monkeypatch):
    model = Stand()
    monkeypatch.setattr("gsmile.backends.MODELS", {"local": lambda: model})
    monkeypatch.setattr("gsmile.backends._loaded", {})
    return model


@pytest.mark.parametrize("method", sorted(PERTURBATION_METHODS))
def test_each_method_runs_from_the_cli(method, stand, tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(["explain", PROMPT, "--method", method, "--samples", "60", "--quiet", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["method"] == method
    coef = dict(zip([u["text"] for u in data["units"]], data["coefficients"]))
    # every method finds France the strongest and 'why' negative on this additive model
    assert max(coef, key=lambda k: abs(coef[k])) == "France"
    assert coef["why"] < 0
    assert "France" in capsys.readouterr().out


def test_method_flags_reach_the_method(stand, tmp_path):
    out = tmp_path / "e.json"
    assert main(["explain", PROMPT, "--method", "occlusion", "--window", "2", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"]["window"] == 2
    assert main(["explain", PROMPT, "--method", "lime", "--num-features", "2", "--kernel-width", "0.5", "--quiet", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["params"]["num_features"] == 2 and data["params"]["kernel_width"] == 0.5
    assert sum(c != 0 for c in data["coefficients"]) == 2
    assert main(["explain", PROMPT, "--method", "mupax", "--threshold-percentile", "0.5", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["extras"]["mupax"]["threshold_percentile"] == 0.5
    assert main(["explain", PROMPT, "--method", "banzhaf", "--keep", "0.3", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"]["keep"] == 0.3


def test_context_segments_and_runs_from_the_cli(stand, tmp_path, capsys):
    out = tmp_path / "e.json"
    context = "France is in Europe. Its capital is famous. Cats purr."
    assert main(["explain", "Tell me about it.", "--context", context, "--method", "shapley", "--quiet", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["explained"] == "context" and data["unit_type"] == "sentence" and len(data["units"]) == 3
    assert all("Question: Tell me about it." in t for t in stand.seen)

    seg_file = tmp_path / "segments.txt"
    seg_file.write_text("What is the capital\nof France,\nand why is it famous?\n", encoding="utf-8")
    assert main(["explain", PROMPT, "--segments", str(seg_file), "--method", "occlusion", "--quiet", "--json", str(out)]) == 0
    assert [u["text"] for u in json.loads(out.read_text())["units"]] == ["What is the capital", "of France,", "and why is it famous?"]

    segs = json.dumps(["What is the capital of France,", "and why is it famous?"])
    assert main(["explain", PROMPT, "--segments", segs, "--method", "shapley", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["coefficients"] == pytest.approx([5.0, -0.5])

    capsys.readouterr()
    assert main(["explain", PROMPT, "--method", "lime", "--runs", "3", "--top-k", "2", "--samples", "30", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Stability over 3 runs: top-2 Jaccard" in printed
    report = json.loads(out.read_text())["extras"]["stability"]
    assert report["seeds"] == [0, 1, 2] and report["top_k"] == 2


def test_unit_flag_applies_to_the_context(stand, tmp_path):
    out = tmp_path / "e.json"
    assert main(["explain", "Tell me.", "--context", "France is famous, and old.", "--unit", "phrase", "--method", "occlusion", "--quiet", "--json", str(out)]) == 0
    assert [u["text"] for u in json.loads(out.read_text())["units"]] == ["France is famous,", "and old."]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "lime", "--window", "2"], "--window does not apply to method 'lime' (its options: --kernel-width, --num-features, --feature-selection, --alpha)"),
        (["--method", "shapley", "--kernel-width", "0.3"], "--kernel-width does not apply to method 'shapley' (it takes no options)"),
        (["--method", "occlusion", "--dropout", "0.3"], "--dropout does not apply to method 'occlusion'"),
        (["--method", "lime", "--sigma", "2"], "--sigma does not apply to method 'lime'"),
        (["--method", "occlusion", "--window", "0"], "window must be a positive integer"),
        (["--method", "mupax", "--threshold-percentile", "1.5"], "threshold_percentile must be a number from 0 to 1"),
        (["--method", "lime", "--num-features", "0"], "num_features must be a positive integer"),
        (["--method", "lime", "--keep", "0.3"], "--keep does not apply to method 'lime'"),
        (["--method", "banzhaf", "--keep", "1"], "keep must be a probability strictly between 0 and 1"),
        (["--method", "mesh"], "invalid choice: 'mesh'"),
        (["--runs", "0"], "runs must be an integer from 1"),
        (["--top-k", "0"], "top_k must be an integer from 1"),
        (["--context-file", "/nonexistent/ctx.txt"], "cannot read context file"),
        (["--context", "a. b.", "--context-file", "x"], "not allowed with argument"),
        (["--segments", "[1, 2]"], "--segments must be a JSON list of strings"),
        (["--segments", "[\"What is\", \"nothing\"]"], "segment 1 ('nothing') does not continue the text"),
        (["--segments", "not json"], "--segments: not a JSON list of strings nor a file"),
        (["--segments", "[\"What\"]", "--unit", "word"], "--segments and --unit cannot be combined"),
        (["--method", "shapley", "--segments", json.dumps(PROMPT.split())[:-1] + ", \"x\"]"], "segment 11 ('x')"),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(argv, message, stand, capsys):
    err = one_line_error(["explain", PROMPT, *argv], capsys)
    assert message in err, err


def test_shapley_on_too_many_units_points_to_kernelshap(stand, capsys):
    long_prompt = " ".join(f"word{i}" for i in range(16))
    assert main(["explain", long_prompt, "--method", "shapley", "--quiet"]) == 2
    assert "use method 'kernelshap'" in capsys.readouterr().err
