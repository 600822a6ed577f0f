"""A 500-word prompt explained at word level, coarse to fine, on the embedded model.

    python bench/long_prompt.py [--words 500] [--max-evals 300] [--seed 0] [--out bench/results/long_prompt.txt]

The prompt is the distractor sentences of ``bench/long_context.py`` (about 500 words) with one
supporting sentence ("The secret code for the archive is 4721.") at a third of the way in,
followed by the question; the model copies the code. It is explained as a prompt (no context)
with ``unit="sentence", refine="word", max_evals=300``: level 1 ranks the sentences with half
the budget, level 2 splits the top 3 into words. Printed: model calls, wall time (the model
loaded; generation included), peak memory, each level's fidelity R² (in-sample and held out)
and effective sample size, whether the explanation calls itself reliable, and the top units,
which should be the code's sentence and, inside it, the code. The report is written atomically.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_context import all_distractors, write_text  # noqa: E402


def make_prompt(words: int, seed: int) -> tuple[str, str]:
    rng = random.Random(f"prompt-{seed}")
    pool = all_distractors()
    question = "What is the secret code for the archive?"
    support = "The secret code for the archive is 4721."
    sentences, count = [], len(question.split()) + len(support.split())
    while count < words:
        s = rng.choice(pool)
        sentences.append(s)
        count += len(s.split())
    sentences.insert(len(sentences) // 3, support)
    return " ".join(sentences) + " " + question, support


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=500)
    parser.add_argument("--max-evals", type=int, default=300)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/long_prompt.txt"))
    args = parser.parse_args(argv)

    import warnings

    import gsmile
    from gsmile.backends import resolve_model

    prompt, support = make_prompt(args.words, args.seed)
    lm = resolve_model("local")
    lm.load()
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = gsmile.explain(prompt, model=lm, unit="sentence", refine="word", max_evals=args.max_evals,
                             max_new_tokens=args.max_new_tokens, random_state=args.seed)
    wall = time.perf_counter() - tic
    order = sorted(range(len(exp.units)), key=lambda i: -exp.coefficients[i])
    lines = [
        f"prompt: {len(prompt.split())} words, {len(exp.levels[0]['units'])} sentences, "
        f"{len(lm.prompt_ids(prompt))} tokens; response {exp.response!r}",
        f"settings: unit sentence, refine word, refine_top 3, max_evals {args.max_evals}, seed {args.seed}",
        f"model calls (n_unique): {exp.n_unique}; wall {wall:.1f} s (model loaded; generation "
        f"{exp.timings.get('generate', 0):.1f} s included); process peak RSS {exp.timings['peak_rss_mb']:.0f} MB",
    ]
    for i, level in enumerate(exp.levels, 1):
        lines.append(f"level {i} ({level['unit_type']}): {len(level['units'])} units, {level['n_evals']} evaluations, "
                     f"fidelity R² {level['fidelity_r2']:.3f}, held-out R² {level['held_out_r2'] if level['held_out_r2'] is None else round(level['held_out_r2'], 3)}")
    lines.append(f"explanation: fidelity R² {exp.fidelity_r2:.3f}, held-out R² "
                 f"{exp.held_out_r2 if exp.held_out_r2 is None else round(exp.held_out_r2, 3)}, effective sample size "
                 f"{exp.effective_sample_size:.1f}, reliable: {exp.reliable}")
    if exp.reliability_issues:
        lines.append("why not reliable: " + "; ".join(exp.reliability_issues))
    lines.append("top 5 units: " + " | ".join(f"{exp.units[i].text!r} {exp.coefficients[i]:+.3f}" for i in order[:5]))
    top_sentence = exp.levels[0]["units"][max(range(len(exp.levels[0]["units"])), key=lambda i: exp.levels[0]["coefficients"][i])]["text"]
    lines.append(f"level 1 top sentence is the supporting one: {top_sentence == support}; "
                 f"top unit lies in it: {exp.units[order[0]].text in support}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    write_text(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
