"""Scalar model functions for audit tests that explain cases in other processes (Ray
actors, worker processes). They are module-level, so they travel to those processes by
name and are imported there: such a process needs this directory on its import path (the
Ray instance of test_audit_ray.py puts it in PYTHONPATH). Keep each one small,
deterministic and documented here.
"""

import os
import re
from pathlib import Path

#: weighted_words' weight of each word (every other word weighs 0).
WEIGHTS = {"loan": 1.0, "approve": 0.5, "Jamal": 0.8, "Darnell": 0.6, "Emily": -0.3, "Anna": -0.1,
           "dragon": 0.5, "capital": 0.4, "France": 0.7, "river": -0.2}


def weighted_words(texts):
    """The summed weight (WEIGHTS) of the words present in each text."""
    return [sum(WEIGHTS.get(w, 0.0) for w in re.findall(r"\w+", t)) for t in texts]


def die_once(texts):
    """weighted_words, but kills its own process the first time a text holds DIEONCE: the
    marker file $GSMILE_TEST_AUDIT_MARKERS/dieonce, made just before dying, remembers it
    across processes, so the case succeeds when tried again."""
    if any("DIEONCE" in t for t in texts):
        marker = Path(os.environ["GSMILE_TEST_AUDIT_MARKERS"]) / "dieonce"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    return weighted_words(texts)


def die_always(texts):
    """weighted_words, but kills its own process whenever a text holds DIEALWAYS."""
    if any("DIEALWAYS" in t for t in texts):
        os._exit(1)
    return weighted_words(texts)
