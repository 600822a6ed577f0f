"""Audit throughput on the embedded model: one worker, local worker processes and Ray actors.

    python bench/audit.py [--cases 12] [--samples 32] [--max-new-tokens 8] [--workers 2] [--repeats 3] [--quick]
                          [--out bench/results/audit.txt]

Three arms, each ``gsmile.audit.audit(..., model=None)`` on the same cases (short prompts)
into a fresh directory, interleaved (1, L, R, 1, L, R, ...) so that load from other
processes hits all of them alike; the medians over ``--repeats`` are reported:

1. one worker: every case in this process (its threads: torch's default, every core; the
   process's loaded model is dropped before each run, so each run loads it as the others do);
L. ``--workers`` local worker processes (``workers=N``; each with cores / N threads);
R. a local Ray instance started by the audit (``ray=True``: ``ray.init`` with this
   machine's cores, here as ``ray.init(num_cpus=2)`` on a 2-core machine), ``--workers``
   actors with one thread each.

Two rates per arm: the total (cases over the audit's whole wall time: process or actor
start, Ray's start and shutdown, model loads, the report) and the steady state (each
worker's cases after its first, over the time from its first record to its last, summed
over the workers), so the cost of starting is visible but kept apart. Records do not name
their worker: a worker gets its next case as soon as its record arrives, so records are
matched to workers by their start (arrival less the record's own seconds). Prints the Ray
arm's overhead against the local workers on both (goal: at most 10% in the steady state)
and checks that every arm gives the same coefficients (to 1e-6). Writes the printed table
to ``--out`` ("-": nowhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "What is the capital of France?",
    "Why is the sky blue during the day?",
    "Name a fruit that is rich in vitamin C.",
    "How many legs does a spider have?",
    "What do bees make from nectar?",
    "Which planet is closest to the sun?",
    "What is the boiling point of water?",
    "Who wrote the play Romeo and Juliet?",
    "What colour are ripe bananas?",
    "How many days are in a leap year?",
    "What is the largest ocean on Earth?",
    "Which animal is known as the king of the jungle?",
]


def worker_lanes(arrivals: list[float], seconds: list[float], workers: int, gap: float = 1.0) -> list[list[float]]:
    """The arrival times of the records, split by the worker that made them (records do not
    name it). A worker gets its next case as soon as its record arrives, so a record that
    started (arrived less its own seconds) at most ``gap`` seconds after the last record of
    a worker then idle is that worker's next one; any other record is a new worker's first.
    """
    lanes: list[list[float]] = []
    for arrived, took in zip(arrivals, seconds):
        start = arrived - took
        idle = [lane for lane in lanes if lane[-1] <= start + 0.05]  # 50 ms of timing slack
        near = [lane for lane in idle if start - lane[-1] <= gap]
        if near:
            max(near, key=lambda lane: lane[-1]).append(arrived)
        elif len(lanes) < workers:
            lanes.append([arrived])
        else:  # a late start on a busy machine: the worker idle the longest... or, if none, the first free
            (max(idle, key=lambda lane: lane[-1]) if idle else min(lanes, key=lambda lane: lane[-1])).append(arrived)
    return lanes


def run_arm(label: str, path: Path, workers: int, ray: bool, options: dict) -> dict:
    from gsmile import backends
    from gsmile.audit import audit

    backends._loaded.clear()  # no model kept from an earlier run of this process
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gsmile-bench-audit-") as out:
        tic = time.perf_counter()
        result = audit(path, out, model=None, workers=workers, ray=ray or None, fresh=True,
                       progress=lambda _: stamps.append(time.perf_counter()), **options)
        total = time.perf_counter() - tic
        records = [json.loads(line) for line in (Path(out) / "explanations.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{label}: {len(failed)} cases failed, e.g. {failed[0]['error']}")
    n = len(records)  # in arrival order, as stamps
    lanes = worker_lanes([t - tic for t in stamps], [r["seconds"] for r in records], workers)
    first = max(lane[0] for lane in lanes)  # every worker has started, loaded its model and done one case
    steady = sum((len(lane) - 1) / (lane[-1] - lane[0]) for lane in lanes if len(lane) > 1)
    coefficients = {r["id"]: np.asarray(r["variants"][0]["explanation"]["coefficients"]) for r in records}
    return {"total": total, "first": first, "rate_total": n / total, "rate_steady": steady,
            "coefficients": coefficients, "explained": result.explained, "lanes": [len(lane) for lane in lanes]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12,
                        help=f"cases audited: the {len(PROMPTS)} prompts, repeated in order beyond that (each case is explained afresh)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="local workers and Ray actors")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 cases, 16 samples, 1 repeat (a smoke run)")
    parser.add_argument("--out", default="bench/results/audit.txt", help='where the table is written ("-": nowhere)')
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.samples, args.repeats = 4, 16, 1
    n = max(1, args.cases)
    options = {"n_samples": args.samples, "max_new_tokens": args.max_new_tokens, "random_state": 0}
    arms = [("1", "one worker (this process)", 1, False),
            ("L", f"{args.workers} local worker processes", args.workers, False),
            ("R", f"local Ray instance, {args.workers} actors", args.workers, True)]

    runs = {key: [] for key, *_ in arms}
    with tempfile.TemporaryDirectory(prefix="gsmile-bench-cases-") as tmp:
        path = Path(tmp) / "cases.jsonl"
        path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": PROMPTS[i % len(PROMPTS)]}) + "\n" for i in range(n)))
        for repeat in range(args.repeats):
            for key, label, workers, ray in arms:
                run = run_arm(label, path, workers, ray, options)
                runs[key].append(run)
                print(f"  repeat {repeat + 1}, {key}: {run['total']:.1f} s, steady {60 * run['rate_steady']:.1f} cases/min, "
                      f"cases per worker {run['lanes']}",
                      file=sys.stderr, flush=True)

    def med(key, field):
        return statistics.median(r[field] for r in runs[key])

    def overhead(field):  # the Ray arm's time per case over the local workers', paired by repeat
        return statistics.median(local[field] / on_ray[field] - 1 for local, on_ray in zip(runs["L"], runs["R"]))

    base = runs["1"][0]["coefficients"]
    worst = max(float(np.abs(r["coefficients"][i] - base[i]).max()) for key in runs for r in runs[key] for i in base)
    import ray
    import torch

    lines = [
        f"{n} cases (one short prompt each), embedded model, n_samples {args.samples}, max_new_tokens {args.max_new_tokens}; "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, ray {ray.__version__}; repeats: {args.repeats} "
        f"(interleaved 1, L, R); medians",
        f"{'arm':<44} {'total s':>8} {'all started s':>14} {'cases/min total':>16} {'cases/min steady':>17}",
    ]
    for key, label, workers, _ in arms:
        lines.append(f"{key}. {label:<41} {med(key, 'total'):8.1f} {med(key, 'first'):14.1f} "
                     f"{60 * med(key, 'rate_total'):16.1f} {60 * med(key, 'rate_steady'):17.1f}")
    lines += [
        "(total: the audit call, start to end; all started: until every worker has returned its first case (start, "
        "model load, one case); steady: per worker, its later cases over the time from its first record to its last, "
        "summed over the workers)",
        f"Ray overhead vs {args.workers} local workers, time per case (median of the per-repeat ratios): steady state "
        f"{100 * overhead('rate_steady'):+.1f}% (goal <= +10%), total {100 * overhead('rate_total'):+.1f}%",
        f"speed-up of {args.workers} local workers over one worker: steady {med('L', 'rate_steady') / med('1', 'rate_steady'):.2f}x, "
        f"total {med('L', 'rate_total') / med('1', 'rate_total'):.2f}x",
        f"max |coefficient difference| of any arm and repeat vs the first one-worker run: {worst:.2e} "
        f"({'OK' if worst <= 1e-6 else 'ABOVE'} 1e-6)",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out != "-":
        Path(args.out).write_text(text)
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
