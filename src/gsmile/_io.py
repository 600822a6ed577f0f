"""Small file helpers: output paths are checked before work starts and written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InvalidInputError, SchemaError


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail early, with a message that says what to fix, if ``path`` cannot be written."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InvalidInputError(f"{what} path {str(p)!r} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInputError(f"cannot write {what} to {str(p)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InvalidInputError(f"cannot write {what} to {str(p)!r}: permission denied")
    return p


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place, so a
    reader never sees a half-written file and a failure leaves the old file untouched.

    The file gets the mode an ordinary write would give it: the old file's mode when it is
    replaced, else 0o666 less the umask (mkstemp alone would leave 0o600)."""
    p = Path(path).expanduser()
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        mode = p.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------ versioned JSON
def parse_json(text: str):
    """``json.loads``, with text that is not JSON refused as a one-line SchemaError."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"not valid JSON: {exc.msg} (line {exc.lineno})") from None


def check_record(data, schema: str, version: int, what: str) -> dict:
    """``data`` if it is a dict tagged ``schema`` and ``version`` (what a result's ``to_dict``
    writes); else a SchemaError naming ``what`` ("explanation", "patching result"...)."""
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise SchemaError(f"not a gsmile {what} (expected schema {schema!r})")
    if data.get("version") != version:
        raise SchemaError(f"unsupported {what} version {data.get('version')!r}; this gsmile reads version {version}")
    return data
