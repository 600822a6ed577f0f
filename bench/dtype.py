"""The same explanations in float32 and in bfloat16 on this CPU, in one process.

    python bench/dtype.py [--repeats 3] [--threads N] [--samples 64] [--sentences 20]

Three arms, interleaved (A, B, C, A, B, C, ...) so that load from other processes hits them
alike; medians over ``--repeats``:

A. the embedded model in float32 (``resolve_model("local")``): the lean Llama body;
B. the same weights in bfloat16 (``resolve_model("local", dtype="bfloat16")``): the lean body
   in bfloat16 (norms in float32, as transformers computes them);
C. B's model object scored by transformers' forward (``fast_path`` off): what bfloat16 gave
   before the lean body ran in it.

Two settings: the example prompt with its 48-token greedy response (gsmile, ``--samples``
perturbations, seed 0), and a ``--sentences``-sentence retrieval context (occlusion over the
sentences; long rows, scored row after row). For each it prints the medians, the ratios B/A and
B/C, and how far B's explanation is from A's: the largest coefficient gap over the largest
|coefficient| and whether the top 3 units are the same.

First it times one matrix product of the model's MLP size in each precision: bfloat16 is only
faster where the CPU has bfloat16 matrix instructions (AMX, AVX-512 BF16); elsewhere torch
emulates it and it is slower than float32.

Writes bench/results/dtype.txt (the printed report).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "What is the capital of France and why is it historically significant?"
QUESTION = "What is the secret code for the storage room?"


def matmul_gflops(torch, dtype, repeats: int = 20) -> float:
    """GFLOP/s of (512 x 576) @ (576 x 1536), the embedded model's MLP shape, in ``dtype``."""
    a, b = torch.randn(512, 576).to(dtype), torch.randn(576, 1536).to(dtype)
    torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2 * 512 * 576 * 1536 * repeats / (time.perf_counter() - start) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--samples", type=int, default=64, help="gsmile perturbations on the example prompt")
    parser.add_argument("--sentences", type=int, default=20, help="sentences of the retrieval context (occlusion)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "dtype.txt"))
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, HERE)
    from report import Report
    from vs_captum import make_context

    from gsmile import Explainer
    from gsmile.backends import resolve_model
    from gsmile.backends.local import HFCausalLM
    from gsmile.inputs import user_turn

    if args.threads:
        torch.set_num_threads(args.threads)
    say = Report()

    say("# float32 against bfloat16 on this CPU, the embedded SmolLM2, one process")
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}; repeats {args.repeats} (arms interleaved; medians)")
    f32, b16 = matmul_gflops(torch, torch.float32), matmul_gflops(torch, torch.bfloat16)
    say(f"one (512x576)@(576x1536) product: float32 {f32:.0f} GFLOP/s, bfloat16 {b16:.0f} GFLOP/s ({b16 / f32:.2f}x)"
        + ("" if b16 > f32 else "  <- no fast bfloat16 here: expect bfloat16 to be slower"))

    wide = resolve_model("local").load()
    half = resolve_model("local", dtype="bfloat16").load()
    plain = HFCausalLM(half.path, model_id=half.model_id, dtype="bfloat16")
    plain._model, plain._tokenizer, plain.fast_path = half._model, half._tokenizer, False
    arms = {"A float32, lean body": wide, "B bfloat16, lean body": half, "C bfloat16, transformers' forward": plain}
    for name, lm in arms.items():
        reason = lm._no_fast_path_reason()
        say(f"  {name}: {'lean body' if reason is None else reason}")

    context = make_context(args.sentences)
    cases = [
        ("example prompt, 48 response tokens, gsmile", dict(method="gsmile", n_samples=args.samples), PROMPT, None,
         wide.decode(wide.generate(PROMPT, 48))),
        (f"{args.sentences}-sentence context, occlusion", dict(method="occlusion"), QUESTION, context,
         wide.decode(wide.generate(user_turn(QUESTION, context), 24))),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Explainer(wide, method="occlusion").explain("Paris is nice.", "Yes.")  # warm-up: imports, template caches
        Explainer(half, method="occlusion").explain("Paris is nice.", "Yes.")
        say()
        for title, options, prompt, ctx, response in cases:
            times = {name: [] for name in arms}
            exps = {}
            for _ in range(args.repeats):
                for name, lm in arms.items():
                    start = time.perf_counter()
                    exps[name] = Explainer(lm, random_state=0, **options).explain(prompt, response, context=ctx)
                    times[name].append(time.perf_counter() - start)
            med = {name: statistics.median(t) for name, t in times.items()}
            a, b, c = (np.asarray(exps[name].coefficients) for name in arms)
            top = [[u.index for u in exps[name].top(3)] for name in arms]
            say(f"## {title} ({len(exps['A float32, lean body'].units)} units, "
                f"{len(wide.encode_response(response))} response tokens)")
            for name in arms:
                say(f"  {name:<34} median {med[name]:7.2f} s (runs {', '.join(f'{t:.2f}' for t in times[name])}); "
                    f"fidelity R2 {exps[name].fidelity_r2:.3f}")
            names = list(arms)
            say(f"  ratio B/A (bfloat16 lean / float32 lean) {med[names[1]] / med[names[0]]:.2f}; "
                f"ratio B/C (lean / transformers in bfloat16) {med[names[1]] / med[names[2]]:.2f}")
            scale = max(float(np.abs(a).max()), 1e-12)
            say(f"  B against A: largest coefficient gap {float(np.abs(b - a).max()) / scale:.1%} of the largest; "
                f"top 3 {'the same' if top[1] == top[0] else f'{top[1]} vs {top[0]}'}; C against A: "
                f"{float(np.abs(c - a).max()) / scale:.1%}, top 3 {'the same' if top[2] == top[0] else f'{top[2]} vs {top[0]}'}")
            say()
    say.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
