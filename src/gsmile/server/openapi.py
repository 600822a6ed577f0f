"""The OpenAPI schema checked into the repository (``openapi.json`` beside this file).

Regenerate it after changing the API with::

    python -m gsmile.server.openapi

``tests/test_server_api.py`` fails when the served schema and the file differ.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("openapi.json")


def current_schema() -> dict:
    """The schema the app serves (built without loading any model)."""
    import tempfile

    from .app import create_app
    from .settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(jobs_path=Path(tmp) / "jobs.sqlite3"), model=lambda texts: [0.0] * len(texts))
        schema = app.openapi()
        app.state.manager.shutdown()
        app.state.store.close()
    return schema


def dumps(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    from .._io import write_atomic

    write_atomic(SCHEMA_PATH, dumps(current_schema()))
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
