"""A benchmark's printed report: each line printed as it comes and kept, then written whole
(atomically) to bench/results/ with the load average at the end, which says whether other
processes shared the CPUs."""

from __future__ import annotations

import os
import sys


class Report:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path: str) -> None:
        from gsmile._io import write_atomic

        self(f"load average at the end: {os.getloadavg()[0]:.1f}")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_atomic(path, "\n".join(self.lines) + "\n")
        print(f"wrote {path}", file=sys.stderr)
