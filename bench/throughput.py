"""Throughput of an explanation against plain batched forward passes, in one process.

    python bench/throughput.py [--samples 200] [--repeats 3] [--batch-sizes 8,16,24,32] [--target wasserstein]

Three arms, interleaved (A, B, C, A, B, C, ...) so that load from other processes hits all
of them alike; each is timed ``--repeats`` times and the medians are reported:

A. the explanation as shipped (prefix key/value cache, logits only at the response
   positions, batch size chosen automatically), the response given, the model loaded;
B. plain teacher-forced forward passes over exactly the perturbed prompts A scored
   (full logits at every position, no cache), nothing else, at each of ``--batch-sizes``;
   the fastest batch size (by median) is the baseline;
C. the same explanation with the prefix cache switched off (the plain scoring path).

Prints the ratio A / B (goal: at most 0.7), where A's time goes (transformer body, output
layer, the rest; body + output layer over B is the floor of any exact scorer of these inputs)
and checks that A and C give the same coefficients and per-prompt scores to 1e-4.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np

PROMPT = "What is the capital of France and why is it historically significant?"


def plain_forward_seconds(lm, texts, response_ids, batch_size):
    import torch

    rows = [lm.prompt_ids(t) + list(response_ids) for t in texts]
    pad = lm.tokenizer.pad_token_id
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo : lo + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])
            lm.model(input_ids=ids, attention_mask=mask).logits
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,16,24,32", help="batch sizes tried for the plain passes (B)")
    parser.add_argument("--target", default="wasserstein")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    from gsmile import Explainer
    from gsmile.backends import resolve_model
    from gsmile.units import Segmentation

    lm = resolve_model("local").load()
    response = lm.decode(lm.generate(PROMPT, args.max_new_tokens))
    response_ids = lm.encode_response(response)

    def explain(prefix_cache: bool):
        lm.prefix_cache = prefix_cache
        try:
            explainer = Explainer(lm, n_samples=args.samples, target=args.target, random_state=0)
            start = time.perf_counter()
            exp = explainer.explain(PROMPT, response)
            return time.perf_counter() - start, exp, explainer
        finally:
            lm.prefix_cache = True

    # Warm-up (lazy imports, the cached prefix, allocator) outside the timings.
    _, warm, explainer = explain(True)
    method = explainer.validate()[3]
    seg = Segmentation(warm.prompt, warm.units)
    masks = np.unique(method.sample(len(seg), args.samples), axis=0)
    texts = sorted({seg.render(m) for m in masks} - {PROMPT})
    assert len(texts) == warm.n_unique, (len(texts), warm.n_unique)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    plain = {b: [] for b in batch_sizes}
    times = {"A": [], "C": []}
    exps = {}
    for _ in range(args.repeats):
        t, exps["A"], _ = explain(True)
        times["A"].append(t)
        for b in batch_sizes:
            plain[b].append(plain_forward_seconds(lm, texts, response_ids, b))
        t, exps["C"], _ = explain(False)
        times["C"].append(t)
    best = min(batch_sizes, key=lambda b: statistics.median(plain[b]))
    times["B"] = plain[best]
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["A"], times["B"])]

    # Where A's time goes: the transformer body and the output layer, timed by forward hooks
    # during one more run of A. Body + output layer is what any exact teacher-forced scorer
    # must compute for these inputs: their sum over B bounds the ratio A / B from below.
    spent = {"body": 0.0, "head": 0.0}
    started = {}

    def timer(key):
        def pre(module, args, kwargs=None):
            started[key] = time.perf_counter()

        def post(module, args, out, kwargs=None):
            spent[key] += time.perf_counter() - started[key]

        return pre, post

    hooks = []
    for key, module in (("body", lm.model.model), ("head", lm.model.lm_head)):
        pre, post = timer(key)
        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        t_hooked, _, _ = explain(True)
    finally:
        for h in hooks:
            h.remove()

    # Same scores on both paths: per-prompt values (via the coefficients' inputs) and coefficients.
    from gsmile.metrics import ExplanationScorer

    fast_scorer, plain_scorer = ExplanationScorer(exps["A"], lm), ExplanationScorer(exps["C"], lm)
    some = np.vstack([seg.full_mask[None], masks[: min(len(masks), 24)]])
    fast_values = fast_scorer.values(some)
    lm.prefix_cache = False
    try:
        plain_values = plain_scorer.values(some)
    finally:
        lm.prefix_cache = True
    coef_diff = float(np.abs(exps["A"].coefficients - exps["C"].coefficients).max())
    value_diff = float(np.abs(fast_values - plain_values).max())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"prompt: {PROMPT!r}; {len(warm.units)} units; {args.samples} samples, {warm.n_unique} unique prompts scored; "
          f"target {args.target}; {len(response_ids)} response tokens (given; generation is not timed)")
    print(f"auto batch size: {warm.params['batch_size']}; repeats: {args.repeats} (interleaved A, B, C)")
    for b in batch_sizes:
        label = f"plain forward passes, batch {b}" + (" (best)" if b == best else "")
        print(f"B. {label:<36} median {statistics.median(plain[b]):7.2f} s  runs: " + ", ".join(f"{t:.2f}" for t in plain[b]))
    for key, label in (("A", "explanation, fast scorer"), ("C", "explanation, prefix cache off")):
        print(f"{key}. {label:<36} median {med[key]:7.2f} s  runs: " + ", ".join(f"{t:.2f}" for t in times[key]))
    print(f"ratio A / B at the best batch size {best} (median of per-repeat ratios): {statistics.median(ratios):.2f}  "
          f"(goal <= 1.15 for the core issue, <= 0.7 for the fast scorer)")
    print(f"ratio A / C (prefix cache gain): {med['A'] / med['C']:.2f}")
    rest = t_hooked - spent["body"] - spent["head"]
    print(f"A, one more run, by part: transformer body {spent['body']:.2f} s, output layer at the response positions "
          f"{spent['head']:.2f} s, the rest (log-softmax, target, Python) {rest:.2f} s; total {t_hooked:.2f} s")
    print(f"floor for an exact scorer of these inputs, (body + output layer) / B: "
          f"{(spent['body'] + spent['head']) / med['B']:.2f}")
    print(f"max |coefficient difference| A vs C: {coef_diff:.2e}; max |score difference| on {len(some)} prompts: "
          f"{value_diff:.2e}  ({'OK' if max(coef_diff, value_diff) <= 1e-4 else 'ABOVE'} 1e-4)")
    print(f"peak resident memory: {peak_mb:.0f} MiB")
    return 0 if max(coef_diff, value_diff) <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
