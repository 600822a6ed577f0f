"""White-box methods against the perturbation methods on the benchmark prompts.

    python bench/whitebox.py [--prompts 32] [--steps 64] [--out bench/results]

For each prompt of ``bench/results/compare.partial.jsonl`` that has exact Shapley values
(written by ``bench/compare.py``), the response is the model's 8-token greedy one, the same
that file was made with (checked). Every method explains log p(response | prompt) over the
same word units. The white-box methods run on the embedded model: gradient × input,
integrated gradients (``--steps``, zero baseline), last-layer attention and attention
rollout. So do two perturbation methods, as baselines timed in the same process: occlusion
(N + 1 evaluations) and gSMILE at 4N evaluations. For each method and prompt the bench
records:

* deletion AOPC, scored by gsmile's scorer on the log-prob target (higher is better);
* Spearman correlation and top-3 agreement with the exact Shapley values;
* wall time, and its ratio to occlusion's on the same prompt in the same process;
* for integrated gradients, the completeness error.

The report also lists, read from ``compare.partial.jsonl``, the other methods' deletion AOPC
and Spearman at 2N and 8N (KernelSHAP, LIME, Captum's and shap's). Their times come from
another process, so none is compared with them. Writes ``whitebox.md`` and
``whitebox.json`` to ``--out`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import Case, faithfulness, spearman, top_agreement  # noqa: E402

WHITE = ["gradient_x_input", "integrated_gradients", "attnlrp", "attention", "attention_rollout"]
BASELINES = {"occlusion": None, "gsmile@4N": 4}
STORED = ["gsmile:gsmile", "gsmile:kernelshap", "gsmile:lime", "captum:FeatureAblation", "captum:KernelShap",
          "captum:ShapleyValueSampling", "shap:Partition", "lime:LimeText"]


def load_cases(path: Path, count: int | None):
    """(prompt id, text, stored response, exact Shapley values, stored records by budget)."""
    blocks: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "prompt" not in row:
            continue
        entry = blocks.setdefault(row["prompt"], {"text": row["text"], "response": row["response"], "budgets": {}})
        if row["budget"] is None:
            exact = [r for r in row["records"] if r["method"] == "exact-shapley"]
            entry["exact"] = np.array(exact[0]["attributions"]) if exact else None
        else:
            entry["budgets"][row["budget"]] = {r["method"]: r for r in row["records"]}
    cases = [(pid, b["text"], b["response"], b["exact"], b["budgets"]) for pid, b in blocks.items() if b.get("exact") is not None]
    return cases if count is None else cases[:count]


def explain(case: Case, method: str, **options):
    import gsmile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tic = time.perf_counter()
        exp = gsmile.explain(case.prompt, case.response, model=case.lm, method=method, target="logprob", **options)
        return exp, time.perf_counter() - tic


def run(args) -> dict:
    from gsmile.backends import resolve_model

    lm = resolve_model("local").load()
    cases = load_cases(Path(args.partial), args.prompts)
    records = []
    for pid, text, response, exact, stored in cases:
        case = Case(lm, text, max_new_tokens=8, id=pid)
        if case.response != response:
            print(f"{pid}: the response differs from compare.partial.jsonl's ({case.response!r} vs {response!r}); skipped", file=sys.stderr)
            continue
        row = {"prompt": pid, "n_units": case.n, "methods": {}}
        for name, budget in BASELINES.items():
            method = name.split("@")[0]
            options = {"max_evals": budget * case.n, "random_state": 0} if budget else {}
            exp, seconds = explain(case, method, **options)
            row["methods"][name] = {"attributions": exp.coefficients.tolist(), "seconds": seconds, "evaluations": exp.n_unique}
        for method in WHITE:
            options = {"method_options": {"steps": args.steps}} if method == "integrated_gradients" else {}
            exp, seconds = explain(case, method, **options)
            entry = {"attributions": exp.coefficients.tolist(), "seconds": seconds}
            if exp.extras.get("completeness"):
                entry["completeness_error"] = float(exp.extras["completeness"]["relative_error"])
                entry["steps"] = int(exp.extras["steps"])
            row["methods"][method] = entry
        base = row["methods"]["occlusion"]["seconds"]
        for name, entry in row["methods"].items():
            a = np.array(entry["attributions"])
            entry["deletion_aopc"] = float(faithfulness(case, a)[0])
            entry["spearman"] = spearman(a, exact)
            entry["top3"] = top_agreement(a, exact)
            entry["time_vs_occlusion"] = entry["seconds"] / base
        row["stored"] = {b: {m: {"deletion_aopc": r.get("deletion_aopc"), "spearman": r.get("spearman")}
                             for m, r in recs.items() if m in STORED} for b, recs in stored.items() if int(b) in (2, 8)}
        row["exact_deletion_aopc"] = float(faithfulness(case, exact)[0])
        records.append(row)
        summary = ", ".join(f"{m} {e['deletion_aopc']:.2f}/{(e['spearman'] or 0):.2f}" for m, e in row["methods"].items())
        print(f"{pid} (N={case.n}): AOPC/ρ {summary}", flush=True)
    return {"settings": {"steps": args.steps, "prompts": len(records), "max_new_tokens": 8}, "records": records}


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def markdown(result: dict) -> str:
    recs = result["records"]
    names = list(BASELINES) + WHITE
    fmt = lambda x, d=3: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = ["# White-box methods against perturbation methods", "",
             f"{len(recs)} benchmark prompts (those with exact Shapley values), the embedded SmolLM2, the 8-token greedy "
             f"response, log p(response) (attnlrp: the response's logits), word units. Integrated gradients: from {result['settings']['steps']} "
             "points, zero baseline. "
             "Made by `python bench/whitebox.py`.", "",
             "| method | deletion AOPC | Spearman with exact Shapley | top-3 agreement | median time vs occlusion | evaluations |",
             "|---|---|---|---|---|---|"]
    for name in names:
        rows = [r["methods"][name] for r in recs if name in r["methods"]]
        ratio = statistics.median(e["time_vs_occlusion"] for e in rows) if rows else None
        evals = _mean([e.get("evaluations") for e in rows])
        lines.append(f"| {name} | {fmt(_mean([e['deletion_aopc'] for e in rows]))} | {fmt(_mean([e['spearman'] for e in rows]), 2)} | "
                     f"{fmt(_mean([e['top3'] for e in rows]), 2)} | {fmt(ratio, 2)} | {fmt(evals, 1) if evals else 'gradients'} |")
    lines.append(f"| exact Shapley (reference) | {fmt(_mean([r['exact_deletion_aopc'] for r in recs]))} | 1 | 1 | | 2^N |")
    errors = [r["methods"]["integrated_gradients"].get("completeness_error") for r in recs]
    errors = [e for e in errors if e is not None]
    if errors:
        steps = [r["methods"]["integrated_gradients"].get("steps") for r in recs]
        used = ", ".join(f"{n} steps on {steps.count(n)}" for n in sorted({s for s in steps if s}))
        lines += ["", f"Integrated gradients' completeness error: median {statistics.median(errors):.2%}, "
                      f"largest {max(errors):.2%} ({sum(e > 0.05 for e in errors)} of {len(errors)} prompts above 5%, flagged unreliable); "
                      f"the points are doubled from 64 until it is within 1%: {used} prompts."]
    lines += ["", "Other methods on the same prompts, from `bench/results/compare.partial.jsonl` (their times are from another "
                  "process, so none is compared here):", "", "| method | budget | deletion AOPC | Spearman |", "|---|---|---|---|"]
    for m in STORED:
        for b in ("2", "8"):
            vals = [(r["stored"].get(b) or r["stored"].get(int(b)) or {}).get(m) for r in recs]
            vals = [v for v in vals if v]
            if vals:
                lines.append(f"| {m} | {b}N | {fmt(_mean([v['deletion_aopc'] for v in vals]))} | {fmt(_mean([v['spearman'] for v in vals]), 2)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="at most this many prompts (default: all with exact Shapley values)")
    parser.add_argument("--steps", type=int, default=64, help="integrated gradients' steps (default: 64)")
    parser.add_argument("--partial", default=str(HERE / "results" / "compare.partial.jsonl"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--report", action="store_true", help="rewrite whitebox.md from whitebox.json, running nothing")
    args = parser.parse_args(argv)
    from gsmile._io import write_atomic

    result = json.loads((Path(args.out) / "whitebox.json").read_text()) if args.report else run(args)
    out = Path(args.out)
    write_atomic(out / "whitebox.json", json.dumps(result, indent=1) + "\n")
    write_atomic(out / "whitebox.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
