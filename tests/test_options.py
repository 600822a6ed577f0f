"""Method options are declared once, in each factory: the specs, the CLI flags and -o,
docs/methods.md, the errors' fields, the parts' protocols and reseeding a built method."""

import inspect
import json
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from gsmile.cli import build_parser, main
from gsmile.errors import InvalidInputError
from gsmile.kernels import GaussianKernel, Kernel
from gsmile.methods import (
    METHODS,
    PERTURBATION_METHODS,
    OptionSpec,
    SurrogateMethod,
    make_method,
    method_options,
    option_specs,
    options_markdown,
    parse_option,
)
from gsmile.methods.options import factory_specs
from gsmile.samplers import DropoutSampler, Sampler
from gsmile.surrogates import Surrogate, WeightedLinearRegression

DOCS = Path(__file__).resolve().parent.parent / "docs" / "methods.md"
from test_cli_methods import PROMPT, Stand, stand  # noqa: E402,F401 (stand: the fixture)


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize("name", list(METHODS))
def test_specs_follow_the_factory_signature(name):
    factory = METHODS[name]
    params = [p for p in inspect.signature(factory).parameters.values() if p.name != "random_state"]
    hints = typing.get_type_hints(factory)
    specs = option_specs(name)
    assert list(specs) == [p.name for p in params]
    for p in params:
        spec = specs[p.name]
        assert spec.default == p.default and type(spec.default) is type(p.default)
        assert spec.help and "\n" not in spec.help
        hint = hints[p.name]
        assert spec.nullable == (type(None) in typing.get_args(hint))
        inner = [a for a in typing.get_args(hint) if a is not type(None)] if spec.nullable else [hint]
        if spec.choices:
            assert typing.get_origin(inner[0]) is Literal and spec.choices == typing.get_args(inner[0])
        else:
            assert inner == [spec.type]
    assert method_options(name) == {k: s.default for k, s in specs.items()}


def test_known_specs():
    assert option_specs("occlusion")["window"] == OptionSpec(
        "window", 1, int, "how many consecutive units each mask leaves out (1: leave-one-out)"
    )
    sigma = option_specs("gsmile")["sigma"]
    assert (sigma.type, sigma.nullable, sigma.default, sigma.flag) == (float, True, None, "--sigma")
    selection = option_specs("lime")["feature_selection"]
    assert selection.choices == ("forward", "highest_weights") and selection.type_name == '"forward" or "highest_weights"'
    assert option_specs("shapley") == {} and option_specs("kernelshap") == {}
    assert option_specs("lime")["num_features"].to_dict() == {
        "name": "num_features", "default": None, "type": "int", "nullable": True, "choices": None,
        "help": "keep at most this many units, chosen by feature_selection (none: all)",
    }


def test_specs_of_a_factory_of_your_own():
    def mine(scale: float = 1.0, flag: bool = False, mode: Literal["a", "b"] | None = "a", random_state=None):
        """Mine.

        Options:
            scale: how much
            flag: whether
            mode: which one
        """

    specs = factory_specs(mine)
    assert [(s.type, s.nullable, s.choices) for s in specs.values()] == [(float, False, None), (bool, False, None), (str, True, ("a", "b"))]
    assert specs["flag"].parse("yes") is True and specs["flag"].parse("off") is False
    assert specs["mode"].parse("none") is None and specs["mode"].parse("b") == "b"


@pytest.mark.parametrize(
    "doc, message",
    [
        ("No options here.", "has no 'name: description' line"),
        ("X.\n\nOptions:\n    scale: how much\n    other: extra", "describes other"),
        ("X.\n\nOptions:\n    scale how much", "an Options line is 'name: one-line description'"),
    ],
)
def test_a_factory_must_describe_each_option_once(doc, message):
    def bad(scale: float = 1.0, random_state=None):
        pass

    bad.__doc__ = doc
    with pytest.raises(TypeError, match=message):
        factory_specs(bad)


def test_an_option_needs_a_default_and_a_supported_type():
    def no_default(scale: float, random_state=None):
        """X.

        Options:
            scale: how much
        """

    def listed(scale: list = None, random_state=None):
        """X.

        Options:
            scale: how much
        """

    with pytest.raises(TypeError, match="with a default"):
        factory_specs(no_default)
    with pytest.raises(TypeError, match="annotate it with int, float"):
        factory_specs(listed)


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "method, key, text, value",
    [
        ("gsmile", "dropout", "0.3", 0.3),
        ("gsmile", "sigma", "2", 2.0),
        ("gsmile", "sigma", "none", None),
        ("gsmile", "sigma", "None", None),
        ("occlusion", "window", " 3 ", 3),
        ("lime", "num_features", "2", 2),
        ("lime", "num_features", "null", None),
        ("lime", "feature_selection", "highest_weights", "highest_weights"),
        ("lime", "alpha", "0", 0.0),
        ("banzhaf", "keep", "0.5", 0.5),
    ],
)
def test_parse_option_gives_the_option_type(method, key, text, value):
    parsed = parse_option(method, key, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "method, key, text, message",
    [
        ("occlusion", "window", "2.5", "window must be an integer, got '2.5'"),
        ("occlusion", "window", "none", "window must be an integer, got 'none'"),
        ("lime", "num_features", "all", "num_features must be an integer or none, got 'all'"),
        ("gsmile", "dropout", "a lot", "dropout must be a number, got 'a lot'"),
        ("gsmile", "dropout", "nan", "dropout must be a number, got 'nan'"),
        ("lime", "feature_selection", "lasso", "feature_selection must be one of: forward, highest_weights; got 'lasso'"),
        ("lime", "window", "2", "unknown option 'window' for method 'lime'; valid options: kernel_width, num_features, feature_selection, alpha"),
        ("shapley", "budget", "2", "unknown option 'budget' for method 'shapley'; it takes no options"),
    ],
)
def test_parse_option_errors_name_the_field(method, key, text, message):
    with pytest.raises(InvalidInputError) as err:
        parse_option(method, key, text)
    assert str(err.value) == message
    assert err.value.field == f"method_options.{key}"


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(Exception, match="unknown method 'mesh'"):
        parse_option("mesh", "x", "1")


# ------------------------------------------------------------------ validation fields
def test_make_method_unknown_option_field():
    with pytest.raises(InvalidInputError, match="unknown options 'a', 'b' for method 'occlusion'; valid options: window") as err:
        make_method("occlusion", a=1, b=2)
    assert err.value.field == "method_options"
    with pytest.raises(InvalidInputError, match="unknown option 'a' for method 'occlusion'") as err:
        make_method("occlusion", a=1)
    assert err.value.field == "method_options.a"


@pytest.mark.parametrize(
    "method, options, field, message",
    [
        ("gsmile", {"dropout": 0.9}, "dropout", "dropout must be between 0.05 and 0.5, got 0.9"),
        ("gsmile", {"sigma": -1.0}, "sigma", "sigma must be a positive number, got -1.0"),
        ("occlusion", {"window": 0}, "method_options.window", "window must be a positive integer (units occluded together), got 0"),
        ("lime", {"kernel_width": 0}, "method_options.kernel_width", "kernel_width must be a positive number, got 0"),
        ("lime", {"num_features": 0}, "method_options.num_features", "num_features must be a positive integer, got 0"),
        ("lime", {"feature_selection": "lasso"}, "method_options.feature_selection", "feature_selection must be one of: forward, highest_weights; got 'lasso'"),
        ("lime", {"num_features": 2, "feature_selection": "lasso"}, "method_options.feature_selection", "feature_selection must be one of"),
        ("lime", {"alpha": -1}, "method_options.alpha", "alpha must be a non-negative number (the ridge penalty), got -1"),
        ("mupax", {"threshold_percentile": 1.5}, "method_options.threshold_percentile", "threshold_percentile must be a number from 0 to 1, got 1.5"),
        ("mupax", {"neutral_tolerance": -0.1}, "method_options.neutral_tolerance", "neutral_tolerance must be a number from 0 to 1"),
        ("banzhaf", {"keep": 1}, "method_options.keep", "keep must be a probability strictly between 0 and 1, got 1"),
    ],
)
def test_validation_errors_name_the_option(method, options, field, message):
    with pytest.raises(InvalidInputError) as err:
        make_method(method, **options).validate()
    assert message in str(err.value)
    assert err.value.field == field


def test_window_larger_than_the_units_and_bad_seed_name_their_field():
    with pytest.raises(InvalidInputError, match="window 4 is larger than the 3 units") as err:
        make_method("occlusion", window=4).sample(3, 10)
    assert err.value.field == "method_options.window"
    with pytest.raises(InvalidInputError, match="random_state must be a non-negative integer") as err:
        make_method("gsmile", random_state=-1).sample(5, 10)
    assert err.value.field == "random_state"


# ------------------------------------------------------------------ protocols and reseeding
@pytest.mark.parametrize("name", list(PERTURBATION_METHODS))
def test_every_part_follows_its_protocol(name):
    method = make_method(name, random_state=0)
    assert isinstance(method.sampler, Sampler)
    assert isinstance(method.kernel, Kernel)
    assert isinstance(method.surrogate_factory(), Surrogate)
    method.validate()
    assert method.draw is None or callable(method.draw)
    width = method.kernel.width(9)
    assert width == (1.5 if name == "gsmile" else None)


@pytest.mark.parametrize("name", list(PERTURBATION_METHODS))
def test_with_random_state_matches_a_fresh_method_and_leaves_the_original(name):
    options = {"lime": {"num_features": 2}, "banzhaf": {"keep": 0.3}}.get(name, {})
    original = make_method(name, **options, random_state=1)
    before = original.sample(6, 40)
    for seed in (0, 7, 123):
        reseeded = original.with_random_state(seed)
        fresh = make_method(name, **options, random_state=seed)
        np.testing.assert_array_equal(reseeded.sample(6, 40), fresh.sample(6, 40))
        assert type(reseeded) is type(original) and reseeded.name == original.name
        assert reseeded.params == original.params and reseeded.params is not original.params
        assert reseeded.sampler is not original.sampler
        if fresh.draw is not None:
            np.testing.assert_array_equal(reseeded.draw(6, 20), fresh.draw(6, 20))
    np.testing.assert_array_equal(original.sample(6, 40), before)
    assert original.sampler.random_state in (1, None)


def test_a_method_of_your_own():
    method = SurrogateMethod(sampler=DropoutSampler(0.25, random_state=3), kernel=GaussianKernel(), surrogate_factory=WeightedLinearRegression)
    assert method.name == "custom" and method.params == {} and method.draw is None
    method.validate()
    again = method.with_random_state(3)
    np.testing.assert_array_equal(again.sample(5, 30), method.sample(5, 30))
    assert not np.array_equal(method.with_random_state(4).sample(5, 30), method.sample(5, 30))
    masks = np.vstack([np.ones((1, 5), bool), method.sample(5, 30)])
    result = method.fit(masks, masks @ np.arange(5.0))
    np.testing.assert_allclose(result.coefficients, np.arange(5.0), atol=1e-9)
    assert result.sigma == pytest.approx(0.5 * np.sqrt(5))
    named = SurrogateMethod("mine", DropoutSampler(), GaussianKernel(), WeightedLinearRegression)  # positional, as before
    assert named.name == "mine"
    with pytest.raises(TypeError, match="needs sampler=, kernel= and surrogate_factory="):
        SurrogateMethod(sampler=DropoutSampler())
    with pytest.raises(InvalidInputError) as err:
        SurrogateMethod(sampler=DropoutSampler(0.9), kernel=GaussianKernel(), surrogate_factory=WeightedLinearRegression).validate()
    assert err.value.field == "dropout"


# ------------------------------------------------------------------ docs
def test_docs_methods_md_is_current():
    assert DOCS.read_text(encoding="utf-8") == options_markdown(), "docs/methods.md is stale: run gsmile methods --markdown > docs/methods.md"


def test_docs_list_every_option():
    text = options_markdown()
    for name in METHODS:
        assert f"## {name}\n" in text
        for spec in option_specs(name).values():
            assert f"| `{spec.name}` | {spec.type_name} |" in text and spec.help.replace("|", "\\|") in text


# ------------------------------------------------------------------ CLI
def _options_of(argv):
    from gsmile.cli import _method_options

    return _method_options(build_parser().parse_args(["explain", PROMPT, *argv]))


def test_every_option_has_a_generated_flag():
    flags = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["explain"]._actions}
    for name in METHODS:
        for spec in option_specs(name).values():
            action = flags[f"method_option_{spec.name}"]
            assert action.option_strings == [spec.flag] and spec.help.replace("%", "%%") in action.help and name in action.help


@pytest.mark.parametrize(
    "argv, options",
    [
        (["--method", "lime", "-o", "kernel_width=0.5", "--option", "num_features=2"], {"kernel_width": 0.5, "num_features": 2}),
        (["--method", "lime", "--kernel-width", "0.5", "--num-features", "2"], {"kernel_width": 0.5, "num_features": 2}),
        (["--method", "lime", "-o", "feature-selection=highest_weights", "-o", "num_features=none"], {"feature_selection": "highest_weights", "num_features": None}),
        (["--method", "gsmile", "--dropout", "0.3", "-o", "sigma=1.5"], {"dropout": 0.3, "sigma": 1.5}),
        (["--method", "occlusion", "-o", "window=2"], {"window": 2}),
        (["--method", "mupax", "--neutral-tolerance", "0.1"], {"neutral_tolerance": 0.1}),
        (["--method", "shapley"], {}),
        ([], {}),
    ],
)
def test_flags_and_o_give_the_library_options(argv, options):
    got = _options_of(argv)
    assert got == options and [type(v) for v in got.values()] == [type(v) for v in options.values()]


def test_o_sets_the_option_as_the_library_does(stand, tmp_path):
    from gsmile import Explainer

    out = tmp_path / "e.json"
    argv = ["explain", PROMPT, "--method", "lime", "-o", "kernel_width=0.5", "-o", "num_features=2", "--samples", "60", "--quiet", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["params"]["kernel_width"] == 0.5 and data["params"]["num_features"] == 2
    exp = Explainer(Stand(), method="lime", method_options={"kernel_width": 0.5, "num_features": 2}, n_samples=60, random_state=0).explain(PROMPT)
    assert data["coefficients"] == pytest.approx(list(exp.coefficients), abs=1e-12)
    out2 = tmp_path / "f.json"
    assert main(["explain", PROMPT, "--method", "lime", "--kernel-width", "0.5", "--num-features", "2", "--samples", "60", "--quiet", "--json", str(out2)]) == 0
    assert json.loads(out2.read_text())["coefficients"] == data["coefficients"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "occlusion", "-o", "dropout=0.3"], "unknown option 'dropout' for method 'occlusion'; valid options: window"),
        (["--method", "occlusion", "-o", "window"], "-o takes NAME=VALUE (e.g. -o kernel_width=0.5), got 'window'"),
        (["--method", "occlusion", "-o", "=2"], "-o takes NAME=VALUE"),
        (["--method", "occlusion", "-o", "window=two"], "window must be an integer, got 'two'"),
        (["--method", "occlusion", "--window", "2", "-o", "window=3"], "option window is set twice (--window and -o window=3); set it once"),
        (["--method", "lime", "--feature-selection", "lasso"], "feature_selection must be one of: forward, highest_weights; got 'lasso'"),
        (["--method", "occlusion", "--dropout", "0.3"], "--dropout does not apply to method 'occlusion' (its options: --window)"),
        (["--method", "occlusion", "-o", "window=0"], "window must be a positive integer"),
        (["--method", "banzhaf", "-o", "keep=1"], "keep must be a probability strictly between 0 and 1"),
    ],
)
def test_o_mistakes_exit_2_with_one_line(argv, message, stand, capsys):
    assert main(["explain", PROMPT, *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsmile: error: ") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_gsmile_methods_lists_every_option(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name}\n" in "\n" + out
        for spec in option_specs(name).values():
            assert spec.flag in out and f"-o {spec.name}=" in out and spec.help in out
    assert "(no options)" in out


def test_gsmile_methods_markdown_is_the_docs(capsys):
    assert main(["methods", "--markdown"]) == 0
    assert capsys.readouterr().out == options_markdown()
