"""Throughput of an explanation against plain teacher-forced forward passes, in one process.

    python bench/throughput.py [--samples 200] [--batch-sizes 1,4,8,16]

1. Explains the example prompt with gSMILE (default settings, model already loaded).
2. Runs plain batched forward passes (full logits, nothing else) over exactly the
   perturbed prompts the explanation scored, at each batch size, and keeps the fastest.
3. Prints both wall times, their ratio (goal: at most 1.15) and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

PROMPT = "What is the capital of France and why is it historically significant?"


def raw_forward_seconds(lm, texts, response_ids, batch_size):
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
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--target", default="wasserstein")
    args = parser.parse_args(argv)

    from gsmile import Explainer
    from gsmile.backends import resolve_model
    from gsmile.units import Segmentation

    lm = resolve_model("local").load()
    explainer = Explainer(lm, n_samples=args.samples, target=args.target, random_state=0)
    start = time.perf_counter()
    exp = explainer.explain(PROMPT)
    explain_s = time.perf_counter() - start

    # The very texts the explanation scored (same seed -> same masks).
    method = explainer.validate()[3]
    seg = Segmentation(exp.prompt, exp.units)
    masks = np.unique(method.sample(len(seg), args.samples), axis=0)
    texts = sorted({seg.render(m) for m in masks} - {PROMPT})
    response_ids = lm.encode_response(exp.response)
    raw = {b: raw_forward_seconds(lm, texts, response_ids, b) for b in map(int, args.batch_sizes.split(","))}
    best_b = min(raw, key=raw.get)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"prompt: {PROMPT!r}; {len(exp.units)} units; {args.samples} samples, {exp.n_unique} unique prompts scored; "
          f"target {args.target}; {len(response_ids)} response tokens")
    print("explanation phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in exp.timings.items()))
    for b, s in raw.items():
        print(f"plain forward passes, batch {b:>2}: {s:.2f} s ({len(texts) / s:.2f} prompts/s)")
    print(f"explanation wall time (model loaded): {explain_s:.2f} s")
    print(f"plain forward passes at the best batch size ({best_b}): {raw[best_b]:.2f} s")
    print(f"ratio explanation / plain passes: {explain_s / raw[best_b]:.2f}  (goal <= 1.15)")
    print(f"peak resident memory: {peak_mb:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
