"""gsmile's methods and the peers' algorithms on tabulated games: many seeds, no model call.

    python bench/simulate.py [--budgets 2,4,8] [--seeds 20] [--methods a,b] [--out bench/results]

``bench/coalitions.py`` scores the embedded model's log p(response) on every subset of a
prompt's words. On such a table every method can be run, and every score computed, by
look-up: the deletion and insertion curves (gsmile.faithfulness' definitions), the Spearman
correlation and top-3 agreement with the exact Shapley values, and the top-3 Jaccard over
seeds. So the comparison of ``bench/compare.py`` can be repeated with many seeds, at a cost
of seconds, on the same values the real model gives; differences between methods of a few
hundredths of AOPC, which 3 seeds cannot separate from sampling noise, can be.

What is the same as in ``bench/compare.py``: the games (prompt, fixed response, word units,
target log p(response)), the budgets (b·N model evaluations), gsmile's methods called through
``gsmile.explain`` (a scalar model that looks the value up), shap's Partition explainer and
lime's LimeTextExplainer through the very runners of compare.py. What differs: Captum's
algorithms run on their own (``captum.attr.Lime`` etc. over a 1×N tensor of ones with
baseline 0, the form ``LLMAttribution`` gives them) instead of through ``LLMAttribution``;
texts are looked up by their words, so a peer's text that differs from gsmile's only in
spacing or punctuation between the words (shap's drops the gaps next to a masked word) gets
gsmile's value. Wall times are not measured here (see compare.py).

Writes ``simulate.md`` and ``simulate.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# compare.py's method list, measures and paired intervals (a light import: numpy only).
from compare import GSMILE_METHODS, _commit, jaccard, paired, spearman, top_agreement  # noqa: E402


class Game:
    """A tabulated game: ``values[b]`` is log p(response) with the units of bitmask b kept."""

    def __init__(self, doc: dict):
        from gsmile.samplers import all_coalitions
        from gsmile.units import Segmentation

        self.id = doc["id"]
        self.prompt = doc["prompt"]
        self.response = doc["response"]
        self.values = np.asarray(doc["values"], dtype=float)
        self.seg = Segmentation.from_text(self.prompt, "word")
        self.n = len(self.seg)
        if [u.text for u in self.seg.units] != doc["units"] or len(self.values) != 2**self.n:
            raise SystemExit(f"error: game {self.id!r} does not match its prompt's word units; tabulate it again")
        self._bits = 1 << np.arange(self.n)
        self._by_words = {}
        for b, m in enumerate(all_coalitions(self.n)):  # row b keeps the units of bitmask b
            self._by_words.setdefault(self.words(self.seg.render(m)), self.values[b])
        self.calls = 0

    @staticmethod
    def words(text: str) -> tuple:
        """The text's word units (gsmile's word segmentation; the gaps between them ignored)."""
        from gsmile.units import word_spans

        text = str(text)
        return tuple(text[s:e] for s, e in word_spans(text))

    def value(self, masks) -> np.ndarray:
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        return self.values[(masks * self._bits).sum(axis=1)]

    def logp(self, texts) -> np.ndarray:
        """The value of each text, found by its words (what compare.py's Case.logp scores)."""
        self.calls += len(texts)
        try:
            return np.array([self._by_words[self.words(t)] for t in texts])
        except KeyError as exc:
            raise RuntimeError(f"a text that is no subset of the prompt's words: {exc}") from None

    def __call__(self, texts):  # a scalar model for gsmile.explain
        return self.logp(list(texts)).tolist()

    def exact_shapley(self) -> np.ndarray:
        """gsmile's exact ``shapley`` method fitted on every coalition of the table."""
        from gsmile.methods import make_method
        from gsmile.samplers import all_coalitions

        return make_method("shapley").fit(all_coalitions(self.n), self.values).coefficients

    def faithfulness(self, attributions) -> tuple[float, float]:
        """Deletion and insertion AOPC (gsmile.faithfulness' definitions) by look-up."""
        from gsmile.faithfulness import _removal_masks, aopc, importance_order, insertion_aopc

        order = importance_order(attributions)
        removal = _removal_masks(order, self.n)
        full = self.values[-1]
        return aopc(full - self.value(removal)), insertion_aopc(full - self.value(~removal))


# --------------------------------------------------------------------------- runners
# (game, budget, seed) -> (attributions, model evaluations)


def gsmile_runner(method: str, **options):
    def run(game: Game, budget: int, seed: int):
        import gsmile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = gsmile.explain(game.prompt, model=game, method=method, unit="word", max_evals=budget,
                                 random_state=seed, method_options=options or None)
        return exp.coefficients, exp.n_unique

    return run


def captum_runner(name: str):
    def run(game: Game, budget: int, seed: int):
        import captum.attr as ca
        import torch

        calls = [0]

        def forward(x):
            calls[0] += x.shape[0]
            return torch.tensor(game.value(x.detach().numpy() > 0.5), dtype=torch.float64)

        torch.manual_seed(seed)
        kwargs = {}
        if name == "ShapleyValueSampling":
            kwargs["n_samples"] = max(1, budget // (game.n + 1))
        elif name in ("KernelShap", "Lime"):
            kwargs["n_samples"] = budget
        inputs = torch.ones(1, game.n, dtype=torch.float64)
        attr = getattr(ca, name)(forward).attribute(inputs, baselines=torch.zeros_like(inputs), **kwargs)
        return attr.detach().numpy().reshape(-1), calls[0]

    return run


def peer_runner(name: str):
    def run(game: Game, budget: int, seed: int):
        import compare

        game.calls = 0
        a, _ = getattr(compare, name)(game, budget, seed)
        return a, game.calls

    return run


RUNNERS = {
    **{f"gsmile:{m}": gsmile_runner(m) for m in GSMILE_METHODS},
    "captum:FeatureAblation": captum_runner("FeatureAblation"),
    "captum:ShapleyValueSampling": captum_runner("ShapleyValueSampling"),
    "captum:KernelShap": captum_runner("KernelShap"),
    "captum:Lime": captum_runner("Lime"),
    "shap:Partition": peer_runner("shap_runner"),
    "lime:LimeText": peer_runner("lime_runner"),
}


def run(args) -> dict:
    doc = json.loads(Path(args.games).read_text())
    games = [Game(g) for g in doc["games"]]
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = [m for m in RUNNERS if not args.methods or m in args.methods.split(",")]
    records = []
    for game in games:
        exact = game.exact_shapley()
        deletion, insertion = game.faithfulness(exact)
        records.append({"prompt": game.id, "n_units": game.n, "method": "exact-shapley", "budget": None,
                        "deletion_aopc": deletion, "insertion_aopc": insertion})
        for b in budgets:
            for name in methods:
                attrs, evals = [], []
                for seed in range(args.seeds):
                    a, e = RUNNERS[name](game, b * game.n, seed)
                    attrs.append(np.asarray(a, dtype=float))
                    evals.append(e)
                faith = [game.faithfulness(a) for a in attrs]
                rhos = [r for r in (spearman(a, exact) for a in attrs) if r is not None]
                records.append({
                    "prompt": game.id, "n_units": game.n, "method": name, "budget": b,
                    "deletion_aopc": float(np.mean([d for d, _ in faith])),
                    "insertion_aopc": float(np.mean([i for _, i in faith])),
                    "spearman": float(np.mean(rhos)) if rhos else None,
                    "top3": float(np.mean([top_agreement(a, exact) for a in attrs])),
                    "jaccard": jaccard(attrs),
                    "evaluations": float(np.median(evals)),
                })
        print(f"{game.id}: {game.n} units done", flush=True)
    games_path = Path(args.games).resolve()
    shown = games_path.relative_to(HERE.parent) if games_path.is_relative_to(HERE.parent) else games_path
    return {"budgets": budgets, "methods": methods, "seeds": args.seeds, "games": str(shown),
            "command": "python bench/simulate.py " + " ".join(sys.argv[1:]), "commit": _commit(), "records": records}


def markdown(result: dict) -> str:
    recs = result["records"]
    exact = [r for r in recs if r["method"] == "exact-shapley"]
    lines = ["# gsmile vs the peers' algorithms on tabulated games", "",
             f"Command: `{result['command']}` (commit {result.get('commit') or '?'})  ",
             f"{len(exact)} games from `{result['games']}` (the embedded model's log p(response) on every subset of "
             f"a prompt's words), {result['seeds']} seeds; no model call (see bench/simulate.py for what differs from "
             "bench/compare.py). Exact Shapley values: deletion AOPC "
             f"{np.mean([r['deletion_aopc'] for r in exact]):.3f}, insertion AOPC "
             f"{np.mean([r['insertion_aopc'] for r in exact]):.3f}.", ""]
    keys = [("deletion_aopc", "deletion AOPC"), ("insertion_aopc", "insertion AOPC"), ("spearman", "ρ vs Shapley"),
            ("top3", "top-3 vs Shapley"), ("jaccard", "Jaccard (seeds)"), ("evaluations", "evals")]
    goals = ["## Best gsmile method minus best peer (prompt by prompt, 95% interval)", "",
             "| budget | metric | gsmile | peer | difference [95% CI] |", "|---|---|---|---|---|"]
    for b in result["budgets"]:
        lines += [f"## Budget {b}N", "", "| method | " + " | ".join(k[1] for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        means = {}
        for m in result["methods"]:
            group = [r for r in recs if r["method"] == m and r["budget"] == b]
            row = []
            for k, _ in keys:
                vals = [r[k] for r in group if r.get(k) is not None]
                means[m, k] = float(np.mean(vals)) if vals else float("nan")
                row.append(f"{means[m, k]:.3f}" if k != "evaluations" else f"{means[m, k]:.0f}")
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
        for k in ("deletion_aopc", "spearman"):
            ours = [m for m in result["methods"] if m.startswith("gsmile:")]
            peers = [m for m in result["methods"] if not m.startswith("gsmile:")]
            if not ours or not peers:
                continue
            o = max(ours, key=lambda m: means[m, k])
            p = max(peers, key=lambda m: means[m, k])
            pair = paired(result, b, k, o, p)
            if pair is None:
                continue
            d, low, high, count = pair
            verdict = "ahead" if low > 0 else "behind" if high < 0 else "level"
            goals.append(f"| {b}N | {k} | {means[o, k]:.3f} ({o}) | {means[p, k]:.3f} ({p}) | "
                         f"{d:+.3f} [{low:+.3f}, {high:+.3f}] {verdict} ({count}) |")
    return "\n".join(lines[:5] + goals + [""] + lines[5:]) + "\n"


def main(argv=None) -> int:
    from gsmile._io import write_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", default=str(HERE / "results" / "coalitions.json"))
    ap.add_argument("--budgets", default="2,4,8")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--methods", default="", help="comma-separated names (default: all)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if not Path(args.games).exists():
        raise SystemExit(f"error: {args.games} not found; run python bench/coalitions.py first")
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "simulate.json", json.dumps(result, indent=1))
    md = markdown(result)
    write_atomic(out / "simulate.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
