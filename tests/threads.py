"""Running test jobs at the same moment, for the tests of anything shared between explanations."""

from __future__ import annotations

import sys
import threading
import time

TIMEOUT = 120  # seconds a thread may take before the test fails instead of hanging


def run_together(fns):
    """Call every fn in a thread of its own, all released at once by a barrier. Returns
    [(result, started, finished)] in order; re-raises the first exception."""
    barrier = threading.Barrier(len(fns))
    out: list = [None] * len(fns)

    def work(i, fn):
        barrier.wait(timeout=30)
        started = time.monotonic()
        try:
            out[i] = (fn(), started, time.monotonic())
        except BaseException as exc:  # reported in the main thread
            out[i] = exc

    threads = [threading.Thread(target=work, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
            assert not t.is_alive(), "a concurrent explanation did not finish (deadlock?)"
    finally:
        sys.setswitchinterval(interval)
    for item in out:
        if isinstance(item, BaseException):
            raise item
    return out


def assert_overlapped(spans):
    """Every run started before any run finished: they really ran at the same moment."""
    started = max(s for s, _ in spans)
    finished = min(f for _, f in spans)
    assert started < finished, f"the runs did not overlap: last start {started:.4f} >= first finish {finished:.4f}"
