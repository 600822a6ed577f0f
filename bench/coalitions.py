"""Tabulate the embedded model's log p(response) on every coalition of a prompt's words.

    python bench/coalitions.py [--max-units 12] [--max-new-tokens 8] [--out bench/results/coalitions.json]

For each prompt of ``bench/prompts.jsonl`` with at most ``--max-units`` word units, the
model's greedy response (``--max-new-tokens``, as in ``bench/compare.py``) is fixed and
log p(response | prompt with only the kept words) is scored for all 2^N subsets of the
words, with gsmile's scorer (the same texts and values ``bench/compare.py`` uses for exact
Shapley values and for the deletion and insertion curves).

The table is a game whose every value is known, so any estimator can be run on it with many
seeds and no model call (``bench/simulate.py``): its deletion and insertion curves, its
distance from the exact Shapley values and its spread over seeds are all exact look-ups.

Output (plain JSON): ``{"schema": "gsmile.bench.coalitions", "version": 1, "games": [...]}``;
each game has ``id``, ``prompt``, ``response``, ``units`` (the words' texts) and ``values``,
indexed by the bitmask of kept units (bit i set: unit i kept; the last entry is the prompt
itself). Finished games are kept when the file exists and its settings match (about 55
coalitions/s on 2 cores: 15 minutes for the 27 prompts of at most 12 words).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SCHEMA = "gsmile.bench.coalitions"


def main(argv=None) -> int:
    from compare import Case, _commit, load_prompts

    from gsmile._io import write_atomic
    from gsmile.backends import resolve_model
    from gsmile.samplers import all_coalitions
    from gsmile.units import Segmentation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-units", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--prompt-file", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--out", default=str(HERE / "results" / "coalitions.json"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    settings = {"max_new_tokens": args.max_new_tokens, "unit": "word", "target": "logprob"}
    games: dict[str, dict] = {}
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("settings") == settings:
            games = {g["id"]: g for g in old["games"]}
    lm = None
    for row in load_prompts(Path(args.prompt_file), None):
        kept = games.get(row["id"])
        if kept is not None and kept["prompt"] == row["prompt"]:
            continue
        if len(Segmentation.from_text(row["prompt"], "word")) > args.max_units:
            continue
        if lm is None:
            lm = resolve_model("local").load()
        case = Case(lm, row["prompt"], args.max_new_tokens, row["id"])
        t0 = time.perf_counter()
        values = case.oracle.values(all_coalitions(case.n))  # row b keeps the units of bitmask b
        games[row["id"]] = {"id": row["id"], "prompt": row["prompt"], "response": case.response,
                            "units": [u.text for u in case.seg.units], "values": values.tolist()}
        print(f"{row['id']}: {case.n} units, {2**case.n} coalitions in {time.perf_counter() - t0:.1f} s", flush=True)
        doc = {"schema": SCHEMA, "version": 1, "settings": settings, "commit": _commit(),
               "model_id": lm.model_id, "games": sorted(games.values(), key=lambda g: (len(g["units"]), g["id"]))}
        write_atomic(out, json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
