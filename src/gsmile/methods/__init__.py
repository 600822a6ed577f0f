"""Attribution methods, each composed from a sampler, a kernel and a surrogate.

``METHODS`` maps a method name to a factory taking the method's options as keyword
arguments; CLI choices and API names come from it.
"""

from __future__ import annotations

from typing import Callable

from ..errors import lookup
from .base import MethodResult, SurrogateMethod
from .gsmile import gsmile

METHODS: dict[str, Callable[..., SurrogateMethod]] = {
    "gsmile": gsmile,
}


def make_method(name: str, **options) -> SurrogateMethod:
    return lookup(METHODS, name, "method")(**options)


__all__ = ["METHODS", "MethodResult", "SurrogateMethod", "make_method"]
