"""Attribution methods, each composed from a sampler, a kernel and a surrogate.

``METHODS`` maps a method name to a factory taking the method's options as keyword
arguments plus ``random_state``; CLI choices and API names come from it. Each option is
declared once, in its factory (signature: name, default, type; docstring: description):
:func:`option_specs` reads it for the CLI, the HTTP layer and ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import InvalidInputError, lookup
from .banzhaf import banzhaf
from .base import MethodResult, SurrogateMethod
from .gsmile import gsmile
from .lime import lime
from .mupax import mupax, mupax_statistics
from .occlusion import occlusion
from .options import OptionSpec, factory_specs, summary
from .shapley import MAX_EXACT_UNITS, kernelshap, shapley
from .whitebox import WHITEBOX_METHODS, WhiteBoxMethod

METHODS: dict[str, Callable[..., SurrogateMethod | WhiteBoxMethod]] = {
    "gsmile": gsmile,
    "occlusion": occlusion,
    "lime": lime,
    "kernelshap": kernelshap,
    "shapley": shapley,
    "mupax": mupax,
    "banzhaf": banzhaf,
    **WHITEBOX_METHODS,  # local models only: read from inside the model (gsmile.whitebox)
}

#: The methods that perturb the input and fit a surrogate (every one but the white-box ones).
PERTURBATION_METHODS = tuple(name for name in METHODS if name not in WHITEBOX_METHODS)

#: Where docs/methods.md comes from (the test checks the committed file is current).
DOCS_COMMAND = "gsmile methods --markdown > docs/methods.md"


def option_specs(name: str) -> dict[str, OptionSpec]:
    """The options method ``name`` takes (``random_state`` aside), in signature order."""
    return factory_specs(lookup(METHODS, name, "method"))


def method_options(name: str) -> dict[str, object]:
    """The options a method takes (``random_state`` aside), with their defaults."""
    return {key: spec.default for key, spec in option_specs(name).items()}


def method_summary(name: str) -> str:
    """One line saying what method ``name`` does (its factory's docstring's first line)."""
    return summary(lookup(METHODS, name, "method"))


def _unknown_message(name: str, unknown: list[str]) -> str:
    valid = option_specs(name)
    takes = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown option{plural} {', '.join(map(repr, unknown))} for method {name!r}; {takes}"


def parse_option(method: str, key: str, text: str) -> Any:
    """The value of option ``key`` of ``method`` written as ``text`` (``"0.3"``, ``"2"``,
    ``"forward"``, ``"none"`` where None is allowed, ``"true"``/``"false"``). Raises
    InvalidInputError with ``field="method_options.<key>"`` for an unknown key or a text that
    is not of the option's type (its range is checked when the method is validated)."""
    spec = option_specs(method).get(key)
    if spec is None:
        raise InvalidInputError(_unknown_message(method, [key]), field=f"method_options.{key}")
    return spec.parse(text)


def make_method(name: str, **options) -> SurrogateMethod:
    """Build method ``name`` with ``options``; unknown options raise InvalidInputError
    naming the valid ones (``field``: ``method_options.NAME`` for one unknown option,
    ``method_options`` for several)."""
    factory = lookup(METHODS, name, "method")
    valid = option_specs(name)
    unknown = sorted(k for k in options if k not in valid and k != "random_state")
    if unknown:
        field = f"method_options.{unknown[0]}" if len(unknown) == 1 else "method_options"
        raise InvalidInputError(_unknown_message(name, unknown), field=field)
    return factory(**options)


def _markdown_value(value: Any) -> str:
    return "`None`" if value is None else f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def options_markdown() -> str:
    """docs/methods.md: every method with its options, built from :func:`option_specs`."""
    out = [
        "# Methods and their options",
        "",
        f"<!-- Generated from the method factories in gsmile.methods; do not edit. Rebuild: {DOCS_COMMAND} -->",
        "",
        "Each option is declared once, in its method's factory (`gsmile/methods/<method>.py`): the",
        "signature gives its name, default and type, the docstring's `Options:` section its description.",
        "Give an option:",
        "",
        '- in Python: `Explainer(model, method="lime", method_options={"kernel_width": 0.5})`;',
        "- on the command line: `gsmile explain PROMPT --method lime --kernel-width 0.5`, or",
        "  `-o kernel_width=0.5` (`gsmile methods` lists them);",
        '- over HTTP: `{"method": "lime", "method_options": {"kernel_width": 0.5}}`.',
        "",
        "On the command line and in `-o`, `none` stands for None and `true`/`false` for booleans.",
        "",
    ]
    for name in METHODS:
        out += [f"## {name}", "", method_summary(name), ""]
        specs = option_specs(name)
        if not specs:
            out += ["No options.", ""]
            continue
        out += ["| option | type | default | description |", "| --- | --- | --- | --- |"]
        for spec in specs.values():
            cells = [f"`{spec.name}`", spec.type_name, _markdown_value(spec.default), spec.help]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


__all__ = [
    "MAX_EXACT_UNITS",
    "METHODS",
    "MethodResult",
    "OptionSpec",
    "PERTURBATION_METHODS",
    "SurrogateMethod",
    "WHITEBOX_METHODS",
    "WhiteBoxMethod",
    "make_method",
    "method_options",
    "method_summary",
    "mupax_statistics",
    "option_specs",
    "options_markdown",
    "parse_option",
]
