"""Throughput of an explanation against plain batched forward passes, in one process.

    python bench/throughput.py [--samples 200] [--repeats 3] [--batch-sizes 8,16,24,32] [--target wasserstein]

Three arms, interleaved (A, B, C, A, B, C, ...) so that load from other processes hits all
of them alike; each is timed ``--repeats`` times and the medians are reported:

A. the explanation as shipped (the fast path: prefix key/value cache, the lean Llama body
   over a token tree of each batch's perturbed prompts, logits only at the response
   positions, batch size chosen automatically), the response given, the model loaded;
B. plain teacher-forced forward passes over exactly the prompts A scored (the original and
   each distinct perturbation; full logits at every position, no cache), nothing else, at
   each of ``--batch-sizes``;
   the fastest batch size (by median) is the baseline;
C. the same explanation with the fast path switched off (transformers' own forward over
   each whole row).

Prints the ratio A / B (goal: at most 0.7), where A's time goes (transformer body, output
layer, target, the rest), A's matrix-product work over B's, and checks that A and C give the
same coefficients and per-prompt scores, and A and B the same log-probs, to 1e-4.
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

    def explain(fast_path: bool):
        lm.fast_path = fast_path
        try:
            explainer = Explainer(lm, n_samples=args.samples, target=args.target, random_state=0)
            start = time.perf_counter()
            exp = explainer.explain(PROMPT, response)
            return time.perf_counter() - start, exp, explainer
        finally:
            lm.fast_path = True

    # Warm-up (lazy imports, the cached prefix, allocator) outside the timings.
    _, warm, explainer = explain(True)
    method = explainer.validate()  # the method as the explanation built it
    seg = Segmentation(warm.prompt, warm.units)
    masks = np.unique(method.sample(len(seg), args.samples), axis=0)
    perturbed = sorted({seg.render(m) for m in masks} - {PROMPT})
    texts = [PROMPT] + perturbed  # what the explanation scores: the original (the reference) and each distinct perturbation
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

    # Where A's time goes, timed during one more run of A: the transformer body, the output
    # layer with its log-softmax, the target (output distances), the rest (Python, the fit).
    from gsmile import targets
    from gsmile.backends import local

    spent = {"body": 0.0, "head": 0.0, "target": 0.0}
    body_tokens = [0]

    def timed(key, func):
        def run(*a, **k):
            if key == "body":
                body_tokens[0] += a[1].numel()  # input_ids (self is a[0]), padding included
            start = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start
        return run

    body = lm._fast_body()
    patches = [(local.HFCausalLM, "_head_log_softmax"), (type(body), "__call__"),
               (type(targets.make_target(args.target)), "per_position")]
    saved = [(owner, name, owner.__dict__[name]) for owner, name in patches]
    for (owner, name, func), key in zip(saved, ("head", "body", "target")):
        setattr(owner, name, timed(key, func))
    try:
        t_parts, _, _ = explain(True)
    finally:
        for owner, name, func in saved:
            setattr(owner, name, func)
    spent["head"] -= spent["target"]  # the target runs inside the head's loop (reduce)

    # Matrix-product work of A over B's: body tokens (as fed to the lean body in the run
    # above: tree nodes and tails, padding included) times the body's weights, plus
    # output-layer positions times the vocabulary. The ratio A / B could reach it only if A's
    # products ran as fast as B's and nothing else took time.
    config = lm.model.config
    per_token = sum(p.numel() for n_, p in lm.model.model.layers.named_parameters() if p.dim() == 2)
    head_size = config.hidden_size * config.vocab_size
    a_rows = texts
    a_tokens = body_tokens[0]
    b_rows = [len(lm.prompt_ids(t)) + len(response_ids) for t in texts]
    b_tokens = sum(len(c) * max(c) for c in (b_rows[i : i + best] for i in range(0, len(b_rows), best)))
    a_work = a_tokens * per_token + len(a_rows) * len(response_ids) * head_size
    b_work = b_tokens * (per_token + head_size)

    # Same scores on both paths: per-prompt values (via the coefficients' inputs) and coefficients.
    from gsmile.faithfulness import ExplanationScorer

    fast_scorer, plain_scorer = ExplanationScorer(exps["A"], lm), ExplanationScorer(exps["C"], lm)
    some = np.vstack([seg.full_mask[None], masks[: min(len(masks), 24)]])
    fast_values = fast_scorer.values(some)
    lm.fast_path = False
    try:
        plain_values = plain_scorer.values(some)
    finally:
        lm.fast_path = True
    coef_diff = float(np.abs(exps["A"].coefficients - exps["C"].coefficients).max())
    value_diff = float(np.abs(fast_values - plain_values).max())
    # And A's log-probs against B's: the log-softmax of plain full forward passes.
    import torch

    check = [PROMPT] + perturbed[:7]
    fast_lp = lm.logprobs(check, response_ids)
    with torch.inference_mode():
        plain_lp = []
        for t in check:
            ids = lm.prompt_ids(t)
            logits = lm.model(input_ids=torch.tensor([ids + list(response_ids)])).logits[0]
            plain_lp.append(torch.log_softmax(logits[len(ids) - 1 : -1], dim=-1).numpy())
    lp_diff = float(np.abs(fast_lp - np.stack(plain_lp)).max())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"prompt: {PROMPT!r}; {len(warm.units)} units; {args.samples} samples, {warm.n_unique} distinct prompts scored (the original included); "
          f"target {args.target}; {len(response_ids)} response tokens (given; generation is not timed)")
    print(f"auto batch size: {warm.params['batch_size']}; repeats: {args.repeats} (interleaved A, B, C)")
    for b in batch_sizes:
        label = f"plain forward passes, batch {b}" + (" (best)" if b == best else "")
        print(f"B. {label:<36} median {statistics.median(plain[b]):7.2f} s  runs: " + ", ".join(f"{t:.2f}" for t in plain[b]))
    for key, label in (("A", "explanation, fast path"), ("C", "explanation, fast path off")):
        print(f"{key}. {label:<36} median {med[key]:7.2f} s  runs: " + ", ".join(f"{t:.2f}" for t in times[key]))
    print(f"ratio A / B at the best batch size {best} (median of per-repeat ratios): {statistics.median(ratios):.2f}  "
          f"(goal <= 1.15 for the core issue, <= 0.7 for the fast scorer)")
    print(f"ratio A / C (fast path gain): {med['A'] / med['C']:.2f}")
    rest = t_parts - spent["body"] - spent["head"] - spent["target"]
    print(f"A, one more run, by part: transformer body {spent['body']:.2f} s, output layer and log-softmax at the "
          f"response positions {spent['head']:.2f} s, target {spent['target']:.2f} s, the rest (Python, fit) "
          f"{rest:.2f} s; total {t_parts:.2f} s")
    print(f"matrix-product work of A over B: {a_work / b_work:.2f} ({a_tokens} body tokens and "
          f"{len(a_rows) * len(response_ids)} output positions vs {b_tokens} and {b_tokens}); the ratio A / B "
          f"would equal it if A's products ran as fast as B's and nothing else took time")
    worst = max(coef_diff, value_diff, lp_diff)
    print(f"max |coefficient difference| A vs C: {coef_diff:.2e}; max |score difference| on {len(some)} prompts: "
          f"{value_diff:.2e}; max |log-prob difference| A vs B on {len(check)} prompts: {lp_diff:.2e}  "
          f"({'OK' if worst <= 1e-4 else 'ABOVE'} 1e-4)")
    print(f"peak resident memory: {peak_mb:.0f} MiB")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
