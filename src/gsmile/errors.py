"""Error types. Every user mistake raises a subclass of :class:`GsmileError`.

The CLI and the server catch ``GsmileError`` once and print its message; anything
else is a bug and is reported as such.
"""

from __future__ import annotations


class GsmileError(Exception):
    """Base class of every error gsmile raises on purpose."""


class InvalidInputError(GsmileError, ValueError):
    """An argument has a value gsmile cannot use (empty prompt, rate out of range...).

    ``field``: the option at fault when one is (``"n_samples"``, ``"dropout"``,
    ``"method_options.kernel_width"``), so a caller (the server's 422, the CLI) can name it."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnknownNameError(GsmileError, KeyError):
    """A name looked up in a registry (unit, target, method...) does not exist."""

    def __init__(self, kind: str, name: object, valid: list[str] | tuple[str, ...]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class ModelError(GsmileError, RuntimeError):
    """The model could not be loaded or called (missing wheel, failing callable...)."""


class ComputationError(GsmileError, RuntimeError):
    """A numerical step failed on these inputs; the message says which and what to try."""


class SchemaError(GsmileError, ValueError):
    """A serialized explanation cannot be read (wrong schema, unsupported version)."""


def lookup(registry: dict, name: object, kind: str):
    """Return ``registry[name]`` or raise :class:`UnknownNameError` listing the valid names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise UnknownNameError(kind, name, list(registry)) from None


def check_int(label: str, value: object, lo: int, hi: int | None = None, *, field: str | None = None) -> int:
    """``value`` as an int, or :class:`InvalidInputError` saying the range: an integer (not a
    bool; numpy integers are fine) from ``lo`` to ``hi``, or of at least ``lo`` without ``hi``.
    The error's ``field`` is ``field``, else ``label``."""
    import numbers

    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise InvalidInputError(f"{label} must be an integer {allowed}, got {value!r}", field=field or label)
    return int(value)


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is an out-of-memory failure of the
    host or a device (Python's MemoryError, torch's OutOfMemoryError, or a message saying so)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
