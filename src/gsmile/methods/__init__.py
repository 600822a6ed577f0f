"""Attribution methods, each composed from a sampler, a kernel and a surrogate.

``METHODS`` maps a method name to a factory taking the method's options as keyword
arguments plus ``random_state``; CLI choices and API names come from it.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ..errors import InvalidInputError, lookup
from .banzhaf import banzhaf
from .base import MethodResult, SurrogateMethod
from .gsmile import gsmile
from .lime import lime
from .mupax import mupax, mupax_statistics
from .occlusion import occlusion
from .shapley import MAX_EXACT_UNITS, kernelshap, shapley

METHODS: dict[str, Callable[..., SurrogateMethod]] = {
    "gsmile": gsmile,
    "occlusion": occlusion,
    "lime": lime,
    "kernelshap": kernelshap,
    "shapley": shapley,
    "mupax": mupax,
    "banzhaf": banzhaf,
}


def method_options(name: str) -> dict[str, object]:
    """The options a method takes (``random_state`` aside), with their defaults."""
    factory = lookup(METHODS, name, "method")
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.name != "random_state" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def make_method(name: str, **options) -> SurrogateMethod:
    """Build method ``name`` with ``options``; unknown options raise InvalidInputError
    naming the valid ones."""
    factory = lookup(METHODS, name, "method")
    valid = method_options(name)
    unknown = sorted(k for k in options if k not in valid and k != "random_state")
    if unknown:
        takes = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
        plural = "s" if len(unknown) > 1 else ""
        raise InvalidInputError(f"unknown option{plural} {', '.join(map(repr, unknown))} for method {name!r}; {takes}")
    return factory(**options)


__all__ = ["MAX_EXACT_UNITS", "METHODS", "MethodResult", "SurrogateMethod", "make_method", "method_options", "mupax_statistics"]
