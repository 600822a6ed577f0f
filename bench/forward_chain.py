"""Long inputs on a model the lean Llama body does not run, on this CPU, in one process.

    python bench/forward_chain.py [--repeats 3] [--threads N] [--sentences 20,60]

A model that is not a plain Llama (Qwen, Phi, Gemma...) is scored by transformers' forward.
On the CPU its long rows are now scored one after another, each from the keys and values of
the start it shares with the row before it (``HFCausalLM._chain_hidden`` through
``_ForwardSteps``); before, whole rows were batched. The embedded SmolLM2 stands in for such a
model (its lean body switched off), three arms interleaved, medians over ``--repeats``:

A. the lean body (what a Llama gets), for reference;
B. transformers' forward, long rows one after another from their shared starts (now);
C. transformers' forward over whole rows, batched (before; what a GPU still does).

For each ``--sentences`` it explains a retrieval context by occlusion over its sentences and
prints the medians, the ratio B/C, the tokens each arm fed the model, and the largest
coefficient gap of B and of A from C over the largest |coefficient|.

Writes bench/results/forward_chain.txt (the printed report).
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
QUESTION = "What is the secret code for the storage room?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--sentences", default="20,60", help="context sizes, comma-separated")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "forward_chain.txt"))
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, HERE)
    from report import Report
    from vs_captum import make_context

    from gsmile import Explainer
    from gsmile.backends import resolve_model
    from gsmile.backends.local import HFCausalLM
    from gsmile.inputs import user_turn

    class WholeRows(HFCausalLM):
        def _chains_without_body(self) -> bool:
            return False

    if args.threads:
        torch.set_num_threads(args.threads)
    say = Report()

    lean = resolve_model("local").load()
    arms = {"A lean body": lean}
    for name, cls in (("B forward, row after row", HFCausalLM), ("C forward, whole rows", WholeRows)):
        twin = cls(lean.path, model_id=lean.model_id)
        twin._model, twin._tokenizer, twin._body = lean._model, lean._tokenizer, False
        arms[name] = twin
    fed = {"n": 0}
    model_forward = lean.model.model.forward

    def counted(*a, **k):
        fed["n"] += k["input_ids"].numel()
        return model_forward(*a, **k)

    lean.model.model.forward = counted  # the lean body does not call it (its tokens are not counted)

    say("# long inputs through transformers' forward on this CPU: row after row (B) against whole rows (C)")
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}; repeats {args.repeats} (arms interleaved; medians); the embedded SmolLM2 in float32")
    for name, lm in arms.items():
        say(f"  {name}: {lm._no_fast_path_reason() or 'the lean Llama body'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lm in arms.values():
            Explainer(lm, method="occlusion").explain("Paris is nice.", "Yes.")  # warm-up: imports, template caches
        for n in (int(x) for x in args.sentences.split(",")):
            context = make_context(n)
            response = lean.decode(lean.generate(user_turn(QUESTION, context), 24))
            times = {name: [] for name in arms}
            tokens, exps = {}, {}
            for _ in range(args.repeats):
                for name, lm in arms.items():
                    fed["n"] = 0
                    start = time.perf_counter()
                    exps[name] = Explainer(lm, method="occlusion").explain(QUESTION, response, context=context)
                    times[name].append(time.perf_counter() - start)
                    tokens[name] = fed["n"]
            med = {name: statistics.median(t) for name, t in times.items()}
            say()
            say(f"## {n}-sentence context, occlusion ({len(exps['A lean body'].units)} units, "
                f"{len(lean.prompt_ids(user_turn(QUESTION, context)))} prompt tokens, {len(lean.encode_response(response))} response tokens)")
            for name in arms:
                fed_line = f"; {tokens[name]} tokens through transformers' forward" if name != "A lean body" else ""
                say(f"  {name:<26} median {med[name]:7.2f} s (runs {', '.join(f'{t:.2f}' for t in times[name])}){fed_line}")
            a, b, c = (np.asarray(exps[name].coefficients) for name in arms)
            scale = max(float(np.abs(c).max()), 1e-12)
            names = list(arms)
            say(f"  ratio B/C {med[names[1]] / med[names[2]]:.2f}; tokens B/C {tokens[names[1]] / max(1, tokens[names[2]]):.2f}; "
                f"ratio A/B {med[names[0]] / med[names[1]]:.2f}")
            say(f"  coefficient gap from C: B {float(np.abs(b - c).max()) / scale:.1e}, A {float(np.abs(a - c).max()) / scale:.1e} "
                "of the largest")
    say()
    say.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
