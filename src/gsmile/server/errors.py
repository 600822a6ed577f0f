"""Library errors turned into HTTP statuses and JSON bodies, in one place.

* ``FieldError`` and the library's ``InvalidInputError``/``SchemaError``: 422 with the
  message; when the error names its field (``InvalidInputError.field``), ``fields`` names it;
* ``UnknownNameError`` (method, unit, target...): 400 with the valid names;
* ``NotSupported``: 501 (e.g. the analyze endpoint on a scalar model);
* ``ModelError``: 503 (the model could not be loaded or run);
* anything else: 500 with a request id; the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from ..errors import InvalidInputError, ModelError, SchemaError, UnknownNameError

log = logging.getLogger("gsmile.server")


class FieldError(Exception):
    """A request field has a value the API cannot use (422 naming the field)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"invalid field {field!r}: {message}")


class NotSupported(Exception):
    """The request needs something this service does not have (501)."""


def new_request_id() -> str:
    return uuid.uuid4().hex


def error_body(exc: BaseException, request_id: str | None = None) -> dict[str, Any]:
    """``{"status", "error", ...}`` for ``exc``; unexpected errors are logged with a request id."""
    if isinstance(exc, FieldError):
        return {"status": 422, "error": str(exc), "fields": [{"field": exc.field, "message": exc.message}]}
    if isinstance(exc, UnknownNameError):
        return {"status": 400, "error": str(exc), "valid": list(exc.valid)}
    if isinstance(exc, InvalidInputError) and exc.field:
        return {"status": 422, "error": str(exc), "fields": [{"field": exc.field, "message": str(exc)}]}
    if isinstance(exc, (InvalidInputError, SchemaError)):
        return {"status": 422, "error": str(exc)}
    if isinstance(exc, NotSupported):
        return {"status": 501, "error": str(exc)}
    if isinstance(exc, ModelError):
        return {"status": 503, "error": f"model error: {exc}"}
    request_id = request_id or new_request_id()
    log.error("internal error (request %s)", request_id, exc_info=(type(exc), exc, exc.__traceback__))
    return {"status": 500, "error": "internal error", "request_id": request_id}
