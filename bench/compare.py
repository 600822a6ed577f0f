"""gsmile's methods against Captum, shap and lime on the embedded model, at equal budgets.

    python bench/compare.py [--prompts 3] [--budgets 2,4,8,16] [--seeds 3] [--max-new-tokens 8]

Needs the peers (``pip install -e '.[bench]'``; see ``make compare``). For each prompt of
``bench/prompts.jsonl`` (the ones with the fewest word units first when ``--prompts`` is
smaller than the file) the model's greedy response is fixed and every method explains the
same quantity, log p(response | prompt), over the same word units, with a budget of
``b·N`` model evaluations for each ``b`` in ``--budgets`` (N = number of units):

* gsmile's methods (``GSMILE_METHODS``): ``max_evals = b·N`` (masks are drawn until their
  distinct ones, plus the original prompt, fill the budget: repeats cost no evaluation);
* Captum ``LLMAttribution`` (``forward_in_tokens=False``, ``TextTemplateInput`` over the
  same words in the same chat template): FeatureAblation (always N+1 evaluations),
  ShapleyValueSampling (``n_samples = max(1, b·N // (N+1))`` permutations), KernelShap and
  Lime (``n_samples = b·N``);
* shap's Partition explainer (Text masker over the same words, ``max_evals = b·N``);
* lime's ``LimeTextExplainer`` (same words, ``num_samples = b·N``), its classifier function
  returning log p(response) as the one "class".

Per method and budget, averaged over prompts and seeds: deletion and insertion AOPC
(gsmile.faithfulness, scored with gsmile's scorer on the log-prob target), Spearman correlation
and top-3 agreement with exact Shapley values (all 2^N coalitions, prompts of at most
``--shapley-max-units`` units), top-3 Jaccard across ``--seeds`` seeds, wall time (median
over the seeds) and model evaluations made. The goals table compares the best gsmile method
with the best peer prompt by prompt: the mean difference and its 95% interval (t
distribution over prompts), and whether gsmile is ahead, level (the interval holds 0) or
behind. Writes ``compare.md``, ``compare.json`` and
``compare.png`` to ``--out`` (default bench/results). Adding a method is one entry in
``RUNNERS``.

A full run takes hours on a small CPU, so it can be stopped and started again: each prompt's
records at each budget are kept in ``OUT/compare.partial.jsonl`` as soon as every method has
run there, and the next run with the same settings reuses them (``--fresh`` discards them).
The same command with every block finished only rebuilds the tables; ``--report`` writes them
from whatever is finished, running nothing (each budget's tables then hold the prompts
finished at that budget). ``--rerun METHODS`` runs those methods again in every finished block
(once per commit) after a change to them, keeping the other methods' records; the tables say
which methods were run again and at which commit. The time ratios compare methods timed within one block, with their
repeats interleaved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOP = 3

#: gsmile methods benchmarked (exact "shapley" is the reference, not a contestant).
GSMILE_METHODS = ["gsmile", "kernelshap", "lime", "occlusion", "mupax", "banzhaf"]


# --------------------------------------------------------------------------- context
class Case:
    """One prompt: the model, its units, the fixed response and an oracle scorer."""

    def __init__(self, lm, prompt: str, max_new_tokens: int, id: str = "prompt"):
        from gsmile.explanation import Explanation
        from gsmile.faithfulness import ExplanationScorer
        from gsmile.units import Segmentation

        self.lm = lm
        self.id = id
        self.prompt = prompt
        self.seg = Segmentation.from_text(prompt, "word")
        self.n = len(self.seg)
        self.response_ids = lm.generate(prompt, max_new_tokens)
        self.response = lm.decode(self.response_ids)
        self.response_ids = lm.encode_response(self.response)  # what every method scores
        # A placeholder explanation gives the oracle scorer its prompt, units, target and response.
        self.template = Explanation(prompt, self.response, self.seg.units, np.zeros(self.n), 0.0, float("nan"),
                                    target="logprob", model_id=lm.model_id)
        self.oracle = ExplanationScorer(self.template, lm)

    def logp(self, texts):
        """log p(response | text) for each text (used by the shap and lime wrappers), scored
        by gsmile's Scorer on the log-prob target. A fresh scorer per call, so a peer's call
        costs what it asks for (plus the prompt, the target's reference) and no peer reuses
        the values of another call."""
        from gsmile.scoring import Scorer
        from gsmile.targets import make_target

        scorer = Scorer(self.lm, original=self.prompt, target=make_target("logprob"), response_ids=self.response_ids)
        y = scorer.values(list(texts))  # log p(response | text) − log p(response | prompt)
        ref = scorer.target
        return y + float(ref.reference_[np.arange(len(self.response_ids)), ref.response_ids_].astype(np.float64).sum())

    def exact_shapley(self) -> np.ndarray:
        """Exact Shapley values of log p(response) by enumerating every coalition."""
        n = self.n
        masks = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
        values = self.oracle.values(masks)
        index = {tuple(m): v for m, v in zip(map(tuple, masks), values)}
        sizes = masks.sum(axis=1)
        weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) if s < n else 0.0 for s in range(n + 1)])
        phi = np.zeros(n)
        for m, v, s in zip(masks, values, sizes):
            for i in np.flatnonzero(~m):
                with_i = m.copy()
                with_i[i] = True
                phi[i] += weight[s] * (index[tuple(with_i)] - v)
        return phi


# --------------------------------------------------------------------------- runners
# Each runner: (case, budget_evals, seed) -> (attributions over the units, model evaluations).


def gsmile_runner(method: str):
    def run(case: Case, budget: int, seed: int):
        import gsmile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = gsmile.explain(case.prompt, case.response, model=case.lm, method=method, target="logprob",
                                 max_evals=budget, random_state=seed)
        return exp.coefficients, exp.n_unique  # the original included

    return run


class _ForwardCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def close(self):
        self.handle.remove()


def _captum_input(case: Case):
    """A TextTemplateInput over the case's words, in the model's chat template."""
    from captum.attr import TextTemplateInput

    marker = "\x00USER\x00"
    chat = case.lm.tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                                 add_generation_prompt=True)
    before, after = chat.split(marker)

    def esc(s):
        return s.replace("{", "{{").replace("}", "}}")

    parts, last = [esc(before)], 0
    for u in case.seg.units:
        parts.append(esc(case.prompt[last : u.start]) + "{}")
        last = u.end
    parts.append(esc(case.prompt[last:]) + esc(after))
    return TextTemplateInput("".join(parts), values=[u.text for u in case.seg.units], baselines=[""] * case.n)


def captum_runner(name: str):
    def run(case: Case, budget: int, seed: int):
        import captum.attr as ca
        import torch

        torch.manual_seed(seed)
        model = case.lm.model
        algo = getattr(ca, name)(model)
        llm = ca.LLMAttribution(algo, case.lm.tokenizer)
        kwargs = {}
        if name == "ShapleyValueSampling":
            kwargs["n_samples"] = max(1, budget // (case.n + 1))
        elif name in ("KernelShap", "Lime"):
            kwargs["n_samples"] = budget
        counter = _ForwardCounter(model.model)  # captum calls model.forward directly: count the base model
        try:
            with torch.inference_mode():
                res = llm.attribute(_captum_input(case), target=torch.tensor(case.response_ids),
                                    forward_in_tokens=False, **kwargs)
        finally:
            counter.close()
        return res.seq_attr.detach().float().numpy().reshape(-1), counter.calls

    return run


def _word_tokenizer(case: Case):
    """A tokenizer for shap's Text masker whose tokens are the case's word units; each token
    runs to the start of the next one (the last to the end), so shap rebuilds the text whole."""
    from gsmile.units import word_spans

    def spans_of(text):
        starts = [s for s, _ in word_spans(text)]
        if not starts:
            return []
        starts[0] = 0
        return list(zip(starts, starts[1:] + [len(text)]))

    def tokenize(text, return_offsets_mapping=True, **_):
        offsets = spans_of(text)
        out = {"input_ids": list(range(1, len(offsets) + 1))}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    return tokenize


def shap_runner(case: Case, budget: int, seed: int):
    import re

    import shap

    calls = [0]
    # shap needs a mask token that is itself one token; it is removed again before scoring,
    # so the model sees the words dropped as in every other method.
    placeholder = re.compile(r"MASKEDWORD\s*")

    def f(texts):
        texts = [" ".join(placeholder.sub("", str(t)).split()) if "MASKEDWORD" in str(t) else str(t) for t in texts]
        calls[0] += len(texts)
        return case.logp(texts)

    np.random.seed(seed)  # shap's Partition explainer is deterministic; seeded for form
    masker = shap.maskers.Text(_word_tokenizer(case), mask_token="MASKEDWORD", collapse_mask_token=True)
    explainer = shap.Explainer(f, masker, algorithm="partition", silent=True)
    values = explainer([case.prompt], max_evals=max(budget, 2 * case.n + 1), silent=True)
    return np.asarray(values.values[0], dtype=float).reshape(-1)[: case.n], calls[0]


def lime_runner(case: Case, budget: int, seed: int):
    from lime.lime_text import LimeTextExplainer

    calls = [0]

    def classifier(texts):
        calls[0] += len(texts)
        return case.logp(list(texts))[:, None]

    from gsmile.units import word_spans

    def split(text):
        return [text[s:e] for s, e in word_spans(text)]

    explainer = LimeTextExplainer(split_expression=split, bow=False, mask_string="", random_state=seed)
    exp = explainer.explain_instance(case.prompt, classifier, labels=(0,), num_features=case.n, num_samples=budget)
    attributions = np.zeros(case.n)
    for index, weight in exp.as_map()[0]:
        attributions[index] = weight
    return attributions, calls[0]


RUNNERS = {
    **{f"gsmile:{m}": gsmile_runner(m) for m in GSMILE_METHODS},
    "captum:FeatureAblation": captum_runner("FeatureAblation"),
    "captum:ShapleyValueSampling": captum_runner("ShapleyValueSampling"),
    "captum:KernelShap": captum_runner("KernelShap"),
    "captum:Lime": captum_runner("Lime"),
    "shap:Partition": shap_runner,
    "lime:LimeText": lime_runner,
}
#: Methods whose result does not depend on the seed (their top-3 Jaccard is 1 by construction;
#: they still run once per seed so that their wall time is a median like the others').
DETERMINISTIC = {"gsmile:occlusion", "captum:FeatureAblation", "shap:Partition"}
#: Methods whose evaluations do not depend on the budget (run at the first budget only).
FIXED_BUDGET = {"gsmile:occlusion", "captum:FeatureAblation"}


def counts_at(record: dict, budget: int, budgets: list[int]) -> bool:
    """Whether a record stands for its method at ``budget`` (a fixed-budget method runs at
    the first budget only and stands for every one)."""
    first = budgets[0]
    return record["budget"] == budget or (record["method"] in FIXED_BUDGET and record["budget"] == first)


# --------------------------------------------------------------------------- measures
def spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def top_agreement(a, b, k=TOP) -> float:
    from gsmile.stability import top_k_units

    return len(top_k_units(a, k) & top_k_units(b, k)) / min(k, len(a))


def jaccard(runs, k=TOP) -> float | None:
    from gsmile.stability import top_k_units

    tops = [top_k_units(r, k) for r in runs]
    pairs = [len(x & y) / len(x | y) for x, y in combinations(tops, 2)]
    return float(np.mean(pairs)) if pairs else None


def faithfulness(case: Case, attributions):
    from gsmile.faithfulness import aopc, deletion_curve, importance_order, insertion_aopc, insertion_curve

    order = importance_order(attributions)
    return aopc(deletion_curve(case.oracle, order)), insertion_aopc(insertion_curve(case.oracle, order))


# --------------------------------------------------------------------------- main
def load_prompts(path: Path, count: int | None):
    """The prompts with the fewest word units first (ties in file order); the first ``count``."""
    from gsmile.units import Segmentation

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = sorted(rows, key=lambda r: len(Segmentation.from_text(r["prompt"])))
    return rows if count is None else rows[:count]


class Checkpoint:
    """The finished blocks of a run, one JSON line each in ``compare.partial.jsonl`` beside
    the results, so a run that is stopped goes on where it stopped: a block is one prompt's
    records at one budget (or its exact Shapley values), written only once every method has
    run. The first line holds the settings every block depends on; a run with other settings
    refuses the file rather than mixing numbers (``--fresh`` starts a new one). A last line
    cut short by a kill is ignored."""

    NAME = "compare.partial.jsonl"

    def __init__(self, out: Path, settings: dict, fresh: bool = False):
        self.path = out / self.NAME
        self.settings = settings
        self.blocks: dict[tuple[str, int | None], dict] = {}
        if fresh or not self.path.exists():
            out.mkdir(parents=True, exist_ok=True)
            from gsmile._io import write_atomic

            write_atomic(self.path, json.dumps({"settings": settings}) + "\n")
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0])["settings"] if lines else None
        except (ValueError, KeyError, TypeError):
            head = None
        if head != settings:
            raise SystemExit(f"error: {self.path} was written with other settings ({head}, this run: {settings}); "
                             "run with --fresh to discard it, or give another --out")
        for number, line in enumerate(lines[1:], start=2):
            try:
                block = json.loads(line)
            except ValueError:
                if number == len(lines):  # cut short by a kill: that block is simply run again
                    break
                raise SystemExit(f"error: {self.path} line {number} is not JSON; run with --fresh to discard the file")
            self.blocks[(block["prompt"], block["budget"])] = block

    def get(self, prompt: str, budget: int | None) -> dict | None:
        return self.blocks.get((prompt, budget))

    def put(self, block: dict) -> None:
        line = json.dumps(block) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.blocks[(block["prompt"], block["budget"])] = block


def _commit() -> str | None:
    """The checked-out commit (with "+" when the tree has changes), or None outside git."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def run_budget(case: Case, methods: list[str], b: int, seeds: int, exact) -> list[dict]:
    """Every method on one prompt at budget ``b``: one record per method."""
    runs = {m: {"attrs": [], "times": [], "evals": [], "error": None} for m in methods}
    # Seeds outermost, methods inside: every method's repeats are spread over the same
    # stretch of time, so load from other processes hits them alike.
    for seed in range(seeds):
        for name in methods:
            state = runs[name]
            if state["error"] is not None:
                continue
            try:
                t = time.perf_counter()
                a, n_evals = RUNNERS[name](case, b * case.n, seed)
                state["times"].append(time.perf_counter() - t)
                state["attrs"].append(np.asarray(a, dtype=float))
                state["evals"].append(n_evals)
            except Exception as exc:  # a peer failing is reported, not fatal
                state["error"] = f"{type(exc).__name__}: {exc}"[:300]
    records = []
    for name in methods:
        attrs, times, evals, error = (runs[name][k] for k in ("attrs", "times", "evals", "error"))
        rec = {"prompt": case.id, "n_units": case.n, "budget": b, "method": name, "error": error}
        if error is None:
            # Every seed's attributions are scored (the oracle caches texts; for prompts
            # with exact Shapley values every coalition is already scored), and averaged.
            per_seed = [faithfulness(case, a) for a in attrs]
            rhos = [spearman(a, exact) for a in attrs] if exact is not None else []
            rhos = [r for r in rhos if r is not None]
            rec.update(
                deletion_aopc=float(np.mean([d for d, _ in per_seed])),
                insertion_aopc=float(np.mean([i for _, i in per_seed])),
                deletion_aopc_seeds=[d for d, _ in per_seed],
                spearman=float(np.mean(rhos)) if rhos else None,
                spearman_seeds=rhos if exact is not None else None,
                top3=float(np.mean([top_agreement(a, exact) for a in attrs])) if exact is not None else None,
                jaccard=jaccard(attrs) if len(attrs) > 1 else (1.0 if name in DETERMINISTIC else None),
                seconds=statistics.median(times),
                evaluations=statistics.median(evals),
                attributions=attrs[0].tolist(),
            )
        records.append(rec)
    return records


def _print_records(records: list[dict]) -> None:
    for rec in records:
        if rec["error"] is None:
            rho = rec["spearman"] if rec["spearman"] is not None else float("nan")
            print(f"    {rec['budget']:>2}N {rec['method']:<28} del {rec['deletion_aopc']:7.3f} "
                  f"ins {rec['insertion_aopc']:7.3f} rho {rho:6.3f} {rec['seconds']:6.2f} s "
                  f"{rec['evaluations']:6.0f} evals", flush=True)
        else:
            print(f"    {rec['budget']:>2}N {rec['method']:<28} FAILED {rec['error']}", flush=True)


def run(args) -> dict:
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = [m for m in RUNNERS if not args.methods or m in args.methods.split(",")]
    settings = {"max_new_tokens": args.max_new_tokens, "seeds": args.seeds, "shapley_max_units": args.shapley_max_units,
                "methods": methods, "first_budget": budgets[0]}
    if args.report and (args.fresh or not (Path(args.out) / Checkpoint.NAME).exists()):
        raise SystemExit(f"error: --report needs the finished blocks of an earlier run in {Path(args.out) / Checkpoint.NAME}")
    checkpoint = Checkpoint(Path(args.out), settings, fresh=args.fresh)
    commit = _commit()
    rerun = args.rerun.split(",") if args.rerun else []
    unknown = [m for m in rerun if m not in methods]
    if unknown:
        raise SystemExit(f"error: --rerun names {', '.join(unknown)}, not among the methods run: {', '.join(methods)}")

    def active_at(m, b):
        return not (m in FIXED_BUDGET and b != budgets[0])

    lm = None
    records = []
    for p_index, row in enumerate(load_prompts(Path(args.prompt_file), args.prompts)):
        pid = row["id"]
        done = {b: checkpoint.get(pid, b) for b in [None, *budgets]}
        for block in done.values():
            if block is not None and block.get("text") not in (None, row["prompt"]):
                raise SystemExit(f"error: prompt {pid!r} changed since {checkpoint.path} was written; run with --fresh")
        if args.report:  # finished blocks only: a budget not finished for this prompt leaves it out there
            if done[None] is not None:
                records += [r for b in budgets if done[b] is not None for r in done[b]["records"]] + done[None]["records"]
            continue
        redo = {b: [m for m in rerun if active_at(m, b) and (done[b].get("rerun") or {}).get(m) != commit]
                for b in budgets if done[b] is not None}
        case = None
        if any(block is None for block in done.values()) or any(redo.values()):
            if lm is None:
                lm = _load_model()
            case = Case(lm, row["prompt"], args.max_new_tokens, pid)
            stored = next((blk["response"] for blk in done.values() if blk and blk.get("response") is not None), None)
            if stored is not None and stored != case.response:
                raise SystemExit(f"error: the model's response to {pid!r} is now {case.response!r}, not {stored!r} as "
                                 f"in {checkpoint.path}; run with --fresh")
        if done[None] is None:  # the reference: exact Shapley values, or none for a long prompt
            t0 = time.perf_counter()
            exact_recs = []
            if case.n <= args.shapley_max_units:
                exact = case.exact_shapley()
                exact_recs = [{"prompt": pid, "n_units": case.n, "method": "exact-shapley", "budget": None,
                               "attributions": exact.tolist(), "deletion_aopc": faithfulness(case, exact)[0]}]
            done[None] = {"prompt": pid, "budget": None, "text": row["prompt"], "response": case.response,
                          "commit": commit, "seconds": time.perf_counter() - t0, "records": exact_recs}
            checkpoint.put(done[None])
        exact_recs = done[None]["records"]
        exact = np.array(exact_recs[0]["attributions"]) if exact_recs else None
        n_units = case.n if case is not None else next(r["n_units"] for blk in done.values() for r in blk["records"])
        print(f"[{p_index + 1}] {pid}: {n_units} units, response {done[None]['response']!r}"
              + (", exact Shapley values" if exact is not None else ""), flush=True)
        for b in budgets:
            if done[b] is None:
                active = [m for m in methods if active_at(m, b)]
                done[b] = {"prompt": pid, "budget": b, "text": row["prompt"], "response": case.response,
                           "commit": commit, "records": run_budget(case, active, b, args.seeds, exact)}
                checkpoint.put(done[b])
                _print_records(done[b]["records"])
            elif redo.get(b):
                # --rerun: these methods run again; the block keeps every other method's records.
                fresh = {r["method"]: r for r in run_budget(case, redo[b], b, args.seeds, exact)}
                kept = [fresh.pop(r["method"], r) for r in done[b]["records"]]
                done[b] = dict(done[b], records=kept + list(fresh.values()),
                               rerun={**(done[b].get("rerun") or {}), **{m: commit for m in redo[b]}})
                checkpoint.put(done[b])
                print(f"    {b:>2}N from {checkpoint.path.name} (commit {done[b].get('commit') or '?'}), "
                      f"{', '.join(redo[b])} run again:", flush=True)
                _print_records([r for r in done[b]["records"] if r["method"] in redo[b]])
            else:
                print(f"    {b:>2}N from {checkpoint.path.name} (commit {done[b].get('commit') or '?'})", flush=True)
            records += done[b]["records"]
        records += exact_recs
    used = [blk for blk in checkpoint.blocks.values() if blk["prompt"] in {r["prompt"] for r in records}]
    commits = sorted({blk.get("commit") or "?" for blk in used})
    reruns: dict[str, set] = {}
    for blk in used:
        for m, c in (blk.get("rerun") or {}).items():
            reruns.setdefault(m, set()).add(c or "?")
    return {"budgets": budgets, "methods": methods, "seeds": args.seeds, "max_new_tokens": args.max_new_tokens,
            "command": "python bench/compare.py " + " ".join(sys.argv[1:]), "commits": commits,
            "reruns": {m: sorted(c) for m, c in sorted(reruns.items())}, "records": records}


def _load_model():
    """The embedded model, and every peer (and scipy) imported before any timing: import time
    is not explanation time."""
    from gsmile.backends import resolve_model

    lm = resolve_model("local").load()
    for module in ("captum.attr", "shap", "lime.lime_text", "scipy.stats"):
        try:
            __import__(module)
        except ImportError as exc:
            print(f"warning: {module} is not installed ({exc}); its methods will fail", file=sys.stderr)
    return lm


def summarize(result: dict) -> list[dict]:
    rows = []
    recs = [r for r in result["records"] if r.get("budget") is not None]
    for b in result["budgets"]:
        for name in result["methods"]:
            group = [r for r in recs if r["method"] == name and counts_at(r, b, result["budgets"])]
            ok = [r for r in group if r["error"] is None]
            if not group:
                continue

            def mean(key):
                vals = [r[key] for r in ok if r.get(key) is not None]
                return float(np.mean(vals)) if vals else None

            rows.append({"budget": b, "method": name, "prompts": len(ok), "failed": len(group) - len(ok),
                         **{k: mean(k) for k in ("deletion_aopc", "insertion_aopc", "spearman", "top3", "jaccard", "seconds", "evaluations")},
                         "error": next((r["error"] for r in group if r["error"]), None)})
    return rows


def markdown(result: dict, rows: list[dict]) -> str:
    def f(x, d=3):
        return "–" if x is None else f"{x:.{d}f}"

    n_prompts = len({r["prompt"] for r in result["records"]})
    exact = [r for r in result["records"] if r["method"] == "exact-shapley"]
    lines = [
        "# gsmile vs Captum, shap and lime",
        "",
        f"Command: `{result['command']}`  ",
        *([f"Finished blocks come from commits {', '.join(result['commits'])} (kept in {Checkpoint.NAME}).  "]
          if len(result.get("commits", [])) > 1 else []),
        *([f"Run again (--rerun) at a later commit: {m} at {', '.join(c)}; its wall times come from that run.  "
           for m, c in (result.get("reruns") or {}).items()]),
        f"{n_prompts} prompts ({len(exact)} with exact Shapley values), embedded SmolLM2-135M-Instruct on CPU, "
        f"greedy response of at most {result['max_new_tokens']} tokens, target log p(response), word units, "
        f"{result['seeds']} seeds. Budget bN = b × (number of units) model evaluations.",
        "",
        "Columns: deletion / insertion AOPC (higher is better: removing the top units lowers log p fast / "
        "keeping only them recovers it fast); ρ and top-3: Spearman correlation and top-3 overlap with exact "
        "Shapley values; Jaccard: top-3 overlap across seeds; time: median wall seconds per explanation; evals: "
        "model evaluations made.",
        "",
    ]
    if exact:
        lines.append(f"Exact Shapley values themselves: deletion AOPC {np.mean([r['deletion_aopc'] for r in exact]):.3f}.")
        lines.append("")
    lines += goals(result, rows)
    for b in result["budgets"]:
        lines += [f"## Budget {b}N", "", "| method | deletion AOPC | insertion AOPC | ρ vs Shapley | top-3 vs Shapley | Jaccard (seeds) | time (s) | evals |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["budget"] == b):
            if r["prompts"] == 0:
                lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | |")
                continue
            lines.append(f"| {r['method']} | {f(r['deletion_aopc'])} | {f(r['insertion_aopc'])} | {f(r['spearman'])} | "
                         f"{f(r['top3'], 2)} | {f(r['jaccard'], 2)} | {f(r['seconds'], 2)} | {f(r['evaluations'], 0)} |")
        lines.append("")
    return "\n".join(lines)


#: gsmile method -> the Captum method running the same algorithm (for the time ratios).
PAIRS = {"gsmile:occlusion": "captum:FeatureAblation", "gsmile:kernelshap": "captum:KernelShap", "gsmile:lime": "captum:Lime"}


def paired(result: dict, b: int, key: str, ours: str, theirs: str):
    """Mean over prompts of ``key``(ours) − ``key``(theirs) at budget ``b``, with a 95%
    t interval: (mean, low, high, prompts), or None with fewer than 2 prompts."""
    from scipy.stats import t as student

    def by_prompt(name):
        return {r["prompt"]: r[key] for r in result["records"]
                if r["method"] == name and r.get(key) is not None and counts_at(r, b, result["budgets"])}

    a, c = by_prompt(ours), by_prompt(theirs)
    diffs = np.array([a[p] - c[p] for p in a if p in c])
    if len(diffs) < 2:
        return None
    half = student.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return float(diffs.mean()), float(diffs.mean() - half), float(diffs.mean() + half), len(diffs)


def goals(result: dict, rows: list[dict]) -> list[str]:
    """The issue's goals, checked on this run's numbers."""

    def best(b, key, gsmile: bool):
        cands = [r for r in rows if r["budget"] == b and r.get(key) is not None and r["method"].startswith("gsmile") == gsmile]
        return max(cands, key=lambda r: r[key]) if cands else None

    def f(x, d=3):
        return "–" if x is None else f"{x:.{d}f}"

    def versus(b, key):
        ours, theirs = best(b, key, True), best(b, key, False)
        if ours is None or theirs is None:
            return "–", "–", "–"
        diff = paired(result, b, key, ours["method"], theirs["method"])
        if diff is None:
            verdict = "–"
        else:
            mean, lo, hi, n = diff
            verdict = (f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] " + ("ahead" if lo > 0 else "behind" if hi < 0 else "level")
                       + f" ({n})")
        return (f"{f(ours[key])} ({ours['method'].split(':')[1]})", f"{f(theirs[key])} ({theirs['method']})", verdict)

    out = ["## Goals checked on this run", "",
           "| budget | best gsmile deletion AOPC | best peer | difference [95% CI] | best gsmile ρ | best peer ρ | "
           "difference [95% CI] | time gsmile / Captum, same algorithm |",
           "|---|---|---|---|---|---|---|---|"]
    for b in result["budgets"]:
        by = {r["method"]: r for r in rows if r["budget"] == b}
        ratios = [f"{g.split(':')[1]} {by[g]['seconds'] / by[c]['seconds']:.2f}" for g, c in PAIRS.items()
                  if g in by and c in by and by[g].get("seconds") and by[c].get("seconds")]
        out.append(f"| {b}N | {' | '.join(versus(b, 'deletion_aopc'))} | {' | '.join(versus(b, 'spearman'))} | "
                   f"{', '.join(ratios) or '–'} |")
    out += ["", "Differences: best gsmile method minus best peer (each chosen by its mean), prompt by prompt "
            "(in brackets: the prompts compared; ρ needs exact Shapley values, so prompts of at most "
            "--shapley-max-units units); ahead / behind when the 95% interval excludes 0, else level. Time ratios: median wall time per "
            "explanation, gsmile's method over Captum's implementation of the same algorithm, both measured in this "
            "run with their repeats interleaved (lower is faster; goal ≤ 0.33).", ""]
    return out


def chart(result: dict, rows: list[dict]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors
    panels = [("deletion_aopc", "deletion AOPC (higher is better)"), ("spearman", "Spearman ρ vs exact Shapley"),
              ("seconds", "wall time per explanation (s, log)")]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_axes([0.045 + i * 0.265, 0.13, 0.215, 0.78])
        for j, name in enumerate(result["methods"]):
            pts = [(r["budget"], r[key]) for r in rows if r["method"] == name and r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ours = name.startswith("gsmile")
                ax.plot(x, y, marker="o" if ours else "s", linestyle="-" if ours else "--", linewidth=2 if ours else 1.2,
                        color=colors[(2 * j) % 20 if j < 10 else (2 * j + 1) % 20], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["budgets"], [f"{b}N" for b in result["budgets"]])
        ax.set_xlabel("budget (model evaluations)")
        ax.set_title(title, fontsize=10)
        if key == "seconds":
            ax.set_yscale("log")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="number of prompts (the shortest first; default: all)")
    parser.add_argument("--budgets", default="2,4,8,16", help="budgets as multiples of the number of units")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--shapley-max-units", type=int, default=12)
    parser.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(RUNNERS))
    parser.add_argument("--prompt-file", default=str(HERE / "prompts.jsonl"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--from-json", metavar="PATH", help="only rewrite the table and chart from a saved compare.json")
    parser.add_argument("--report", action="store_true",
                        help=f"run nothing: write the tables from the finished blocks in OUT/{Checkpoint.NAME} "
                             "(a budget's table holds the prompts finished at that budget)")
    parser.add_argument("--rerun", metavar="METHODS", default=None,
                        help="comma-separated methods to run again in the finished blocks (once per commit), keeping "
                             "every other method's records: after a change to those methods")
    parser.add_argument("--fresh", action="store_true",
                        help=f"discard the finished blocks kept in OUT/{Checkpoint.NAME} (by default a run reuses them)")
    args = parser.parse_args(argv)

    from gsmile._io import write_atomic

    warnings.filterwarnings("ignore")
    result = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    rows = summarize(result)
    result["summary"] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.json", json.dumps(result, indent=1) + "\n")
    write_atomic(out / "compare.md", markdown(result, rows) + "\n")
    write_atomic(out / "compare.png", chart(result, rows))
    print(markdown(result, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
