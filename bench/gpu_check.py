"""The embedded model on a CUDA GPU against the CPU: same log-probs and explanations, within
tolerances, and how long each takes.

    python bench/gpu_check.py [--prompts 3] [--samples 64] [--max-new-tokens 24] [--device cuda]

Without a CUDA GPU it prints one line saying so and exits 0. With one, for each of a few
prompts it takes the CPU float32 model's greedy response, then on CPU float32 (the
reference), GPU float32 and GPU bfloat16:

- the summed log p of that response (teacher-forced) and a gSMILE explanation of it
  (``--samples`` perturbations, seed 0);
- the time of each explanation and the peak GPU memory (``torch.cuda.max_memory_allocated``).

It checks, against CPU float32: GPU float32 within FP32_LOGP nats of summed log p and
coefficients within FP32_COEF of the largest |coefficient|; GPU bfloat16 within BF16_LOGP
nats per response token (bfloat16 keeps 8 bits of mantissa: 0.02-0.05 nats per token were
measured on the CPU), the top unit the same and coefficients within BF16_COEF of the largest.
Exit status 1 when a check fails or a configuration raises (its error is printed).

``--device cpu`` runs the same checks with the CPU in the GPU's place (float32 against itself,
then bfloat16): the script's own logic, run where no GPU is (``tests/test_device.py`` does).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

PROMPTS = [
    "What is the capital of France and why is it historically significant?",
    "Explain in one sentence why the sky is blue.",
    "Name three fruits that are rich in vitamin C.",
    "Who wrote the novel Pride and Prejudice, and when was it published?",
]
#: Tolerances against CPU float32 (see the module docstring).
FP32_LOGP = 0.05
FP32_COEF = 0.02
BF16_LOGP = 0.1
BF16_COEF = 0.25


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3, help="prompts explained (at most %d)" % len(PROMPTS))
    parser.add_argument("--samples", type=int, default=64, help="perturbations per explanation (default: 64)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="length of the greedy response (default: 24)")
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (default: cuda; cpu checks the script)")
    args = parser.parse_args(argv)

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (torch {torch.__version__}); nothing to check")
        return 0
    configs = [("cpu", "float32"), (args.device, "float32"), (args.device, "bfloat16")]

    import gsmile
    from gsmile.backends import resolve_model

    reference = resolve_model("local", device="cpu", dtype="float32").load()
    prompts = PROMPTS[: max(1, args.prompts)]
    responses = [reference.decode(reference.generate(p, args.max_new_tokens)) for p in prompts]
    where = torch.cuda.get_device_name(0) if cuda else args.device
    print(f"device: {where}; torch {torch.__version__}; {len(prompts)} prompts, "
          f"{args.samples} samples, responses of up to {args.max_new_tokens} tokens")
    results, failures = {}, []
    for i, (device, dtype) in enumerate(configs):
        name = f"{device}/{dtype}" + ("" if i == 0 or (device, dtype) != configs[0] else " (again)")
        try:
            lm = resolve_model("local", device=device, dtype=dtype).load()
            if cuda and device != "cpu":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            rows = []
            for prompt, response in zip(prompts, responses):
                ids = lm.encode_response(response)
                logp = float(lm.logprobs([prompt], ids)[0, np.arange(len(ids)), ids].sum())
                tic = time.perf_counter()
                exp = gsmile.Explainer(lm, n_samples=args.samples, random_state=0).explain(prompt, response)
                if cuda and device != "cpu":
                    torch.cuda.synchronize()
                rows.append((len(ids), logp, np.asarray(exp.coefficients), time.perf_counter() - tic, exp.extras))
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda and device != "cpu" else None
        except Exception as exc:  # report every configuration, then fail
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"{name:15s} FAILED: {type(exc).__name__}: {exc}")
            continue
        results[name] = rows
        extras = rows[0][4]
        print(f"{name:15s} explain {sum(r[3] for r in rows):7.2f} s in all ({', '.join(f'{r[3]:.2f}' for r in rows)}); "
              f"peak GPU memory {'-' if peak is None else f'{peak:.0f} MiB'}; recorded device {extras.get('device')}, "
              f"dtype {extras.get('dtype')}, fast path {extras.get('fast_path')}")
    base = results.get("cpu/float32")
    for name, rows in results.items():
        if base is None or name == "cpu/float32":
            continue
        bf16 = name.endswith("bfloat16")
        for i, ((n, lp0, c0, *_), (_, lp, c, *_)) in enumerate(zip(base, rows)):
            scale = max(float(np.abs(c0).max()), 1e-12)
            dlogp, dcoef = abs(lp - lp0), float(np.abs(c - c0).max()) / scale
            ok = dlogp <= (BF16_LOGP * n if bf16 else FP32_LOGP) and dcoef <= (BF16_COEF if bf16 else FP32_COEF)
            if bf16:
                ok = ok and int(np.argmax(c)) == int(np.argmax(c0))
            print(f"  {name} prompt {i}: |Δ log p| {dlogp:.4f} nats over {n} tokens; max |Δ coef| {dcoef:.4f} of the largest"
                  f"{'' if ok else '  <- outside the tolerance'}")
            if not ok:
                failures.append(f"{name} prompt {i}")
    if failures:
        print(f"gpu_check: {len(failures)} failure(s): {'; '.join(failures)}")
        return 1
    print("gpu_check: every configuration within its tolerances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
