"""An audit's directory: its options (``audit.json``) and its results
(``explanations.jsonl``, append-only, one complete line per case).

Only the driver writes here. A line is written with one ``write`` and synced before the
next case is counted as done, so a run killed at any moment loses at most the cases in
flight; a line cut short by a crash (no final newline) is dropped when the directory is
opened again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import write_atomic
from ..errors import InvalidInputError

MANIFEST = "audit.json"
RESULTS = "explanations.jsonl"
REPORT_FILES = ("summary.json", "report.html")
MANIFEST_SCHEMA = "gsmile.audit"
MANIFEST_VERSION = 1


class AuditStore:
    """The files of one audit directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.results = self.directory / RESULTS
        self.manifest = self.directory / MANIFEST

    def open(self, settings: dict[str, Any], *, fresh: bool = False) -> None:
        """Create the directory, or reopen it for the same ``settings`` (the explanation
        options and the model). Different settings are refused unless ``fresh``, which
        deletes the earlier results."""
        if self.directory.exists() and not self.directory.is_dir():
            raise InvalidInputError(f"--out {str(self.directory)!r} is a file; give a directory", field="out")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"cannot create the audit directory {str(self.directory)!r}: {exc.strerror}", field="out") from None
        if not os.access(self.directory, os.W_OK):
            raise InvalidInputError(f"cannot write to the audit directory {str(self.directory)!r}: permission denied", field="out")
        wanted = {"schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION, "settings": settings}
        if fresh:
            for name in (RESULTS, *REPORT_FILES):
                (self.directory / name).unlink(missing_ok=True)
        elif self.manifest.exists():
            old = self._read_manifest()
            if old.get("settings") != settings:
                changed = _changed(old.get("settings", {}), settings)
                raise InvalidInputError(
                    f"{str(self.directory)!r} holds an audit made with other settings ({', '.join(changed)} changed); "
                    f"rerun with the same options to resume it, or add --fresh to discard its results and start over",
                    field="out")
        elif self.results.exists() and self.results.stat().st_size:
            raise InvalidInputError(f"{str(self.directory)!r} holds results but no {MANIFEST}; add --fresh to start over",
                                    field="out")
        write_atomic(self.manifest, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        self._drop_partial_line()

    def _read_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidInputError(f"{str(self.manifest)!r} is unreadable; add --fresh to start over", field="out") from None
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise InvalidInputError(f"{str(self.manifest)!r} is not a gsmile audit file; choose another --out", field="out")
        if data.get("version") != MANIFEST_VERSION:
            raise InvalidInputError(f"{str(self.manifest)!r} is version {data.get('version')}; this gsmile reads version "
                                    f"{MANIFEST_VERSION}; add --fresh to start over", field="out")
        return data

    def _drop_partial_line(self) -> None:
        """Cut a last line that a killed run left without its newline."""
        if not self.results.exists():
            return
        with open(self.results, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def finished(self) -> dict[str, str]:
        """id -> status of every case with a complete line (the last line of an id wins)."""
        done: dict[str, str] = {}
        if not self.results.exists():
            return done
        with open(self.results, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "id" in record:
                    done[str(record["id"])] = record.get("status", "failed")
        return done

    def append(self, record: dict[str, Any]) -> None:
        """Add one case's record: a single write of one complete line, synced to disk."""
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(self.results, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write (rare: signals, full disks) is finished, not left half
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ (``options.n_samples``)."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names
