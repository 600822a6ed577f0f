"""Method options, read once from each method factory.

A factory's signature gives every option's name, default and type (its annotation: ``int``,
``float``, ``str``, ``bool``, a ``Literal`` of strings, each optionally ``| None``); its
docstring gives the one-line description, in an ``Options:`` section of ``name: text`` lines::

    def occlusion(window: int = 1, random_state=None) -> SurrogateMethod:
        \"\"\"Occlusion: leave one unit (or a window of consecutive units) out at a time.

        Options:
            window: how many consecutive units each mask leaves out (1: leave-one-out)
        \"\"\"

The CLI's flags, ``gsmile methods``, ``docs/methods.md`` and the HTTP layer all read
:class:`OptionSpec` objects built here, so none of them copies an option by hand
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

from ..errors import InvalidInputError

#: Parameters of a factory that are not options
NOT_OPTIONS = ("random_state",)

_SCALARS = (bool, int, float, str)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its ``name``, ``default``, ``type`` (``int``, ``float``,
    ``str`` or ``bool``), one-line ``help``, whether None is allowed (``nullable``) and, for a
    ``Literal`` annotation, the allowed strings (``choices``)."""

    name: str
    default: Any
    type: type
    help: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        """The CLI flag: ``--kernel-width`` for ``kernel_width``."""
        return "--" + self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        """The type in words: ``float``, ``int or none``, ``"forward" or "highest_weights"``."""
        base = " or ".join(f'"{c}"' for c in self.choices) if self.choices else self.type.__name__
        return f"{base} or none" if self.nullable else base

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``type`` as its name)."""
        data = asdict(self)
        data["type"] = self.type.__name__
        data["choices"] = list(self.choices) if self.choices else None
        return data

    def parse(self, text: str) -> Any:
        """``text`` as a value of this option's type ("none" gives None where allowed).
        Raises InvalidInputError (field ``method_options.<name>``) when it is not one."""
        word = str(text).strip()
        if self.nullable and word.lower() in _NONE:
            return None
        try:
            if self.type is bool:
                if word.lower() in _TRUE:
                    return True
                if word.lower() in _FALSE:
                    return False
                raise ValueError(word)
            if self.type is int:
                return int(word)
            if self.type is float:
                value = float(word)
                if math.isnan(value):
                    raise ValueError(word)
                return value
        except ValueError:
            raise InvalidInputError(f"{self.name} must be {self._expected()}, got {text!r}", field=f"method_options.{self.name}") from None
        if self.choices and word not in self.choices:
            raise InvalidInputError(f"{self.name} must be one of: {', '.join(self.choices)}; got {text!r}", field=f"method_options.{self.name}")
        return word

    def _expected(self) -> str:
        what = {bool: "true or false", int: "an integer", float: "a number", str: "a text"}[self.type]
        return f"{what} or none" if self.nullable else what


def _type_of(name: str, hint: Any) -> tuple[type, bool, tuple[str, ...] | None]:
    """(type, nullable, choices) of an annotation; TypeError for one options cannot have."""
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        if len(args) == 1:
            hint = args[0]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if choices and all(isinstance(c, str) for c in choices):
            return str, nullable, tuple(choices)
    elif hint in _SCALARS:
        return hint, nullable, None
    raise TypeError(f"option {name!r}: annotate it with int, float, str, bool or a Literal of strings (optionally | None), not {hint!r}")


def _help_lines(factory: Callable) -> dict[str, str]:
    """The ``name: text`` lines of the docstring's ``Options:`` section."""
    lines = inspect.getdoc(factory).splitlines() if factory.__doc__ else []
    try:
        start = [line.strip() for line in lines].index("Options:") + 1
    except ValueError:
        return {}
    helps: dict[str, str] = {}
    for line in lines[start:]:
        if not line.strip():
            break
        name, sep, text = line.strip().partition(": ")
        if not sep or not name.isidentifier() or name in helps:
            raise TypeError(f"{factory.__name__}: an Options line is 'name: one-line description', once per option; got {line.strip()!r}")
        helps[name] = text.strip()
    return helps


def summary(factory: Callable) -> str:
    """The first line of the factory's docstring."""
    doc = inspect.getdoc(factory) or ""
    return doc.splitlines()[0].strip() if doc else ""


def factory_specs(factory: Callable) -> dict[str, OptionSpec]:
    """The options of ``factory``, in signature order. A TypeError (a bug in the factory,
    caught by the tests) when an option has no default, no supported annotation, or not
    exactly one help line."""
    return dict(_factory_specs(factory))


@functools.lru_cache(maxsize=None)
def _factory_specs(factory: Callable) -> dict[str, OptionSpec]:
    hints = typing.get_type_hints(factory)
    helps = _help_lines(factory)
    specs: dict[str, OptionSpec] = {}
    for p in inspect.signature(factory).parameters.values():
        if p.name in NOT_OPTIONS:
            continue
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.default is p.empty:
            raise TypeError(f"{factory.__name__}: option {p.name!r} must be a keyword parameter with a default")
        if p.name not in helps:
            raise TypeError(f"{factory.__name__}: option {p.name!r} has no 'name: description' line under Options: in the docstring")
        kind, nullable, choices = _type_of(p.name, hints.get(p.name))
        specs[p.name] = OptionSpec(p.name, p.default, kind, helps[p.name], nullable, choices)
    extra = sorted(set(helps) - set(specs))
    if extra:
        raise TypeError(f"{factory.__name__}: the docstring describes {', '.join(extra)}, which the signature lacks")
    return specs
