"""gsmile against Captum's implementation of the same algorithm, on the same model object, in one process.

    python bench/vs_captum.py [--repeats 3] [--settings prompt-8,prompt-48,prompt-128,ctx-20,ctx-100]
                              [--methods occlusion,kernelshap] [--quick] [--threads N]
                              [--device cpu|cuda|cuda:N|mps] [--dtype float32|bfloat16|float16]

The embedded SmolLM2 is loaded once (``resolve_model("local", device=, dtype=)``); gsmile explains through it
and Captum 0.9's ``LLMAttribution`` (``forward_in_tokens=False``) calls the very same
``lm.model``. The response is given (the same token ids to both; generation is not timed).

Settings:

* ``prompt-K``: the example prompt (12 word units) with the first K of 128 greedily generated
  response tokens. Occlusion (gsmile ``method="occlusion"`` vs Captum ``FeatureAblation``) and
  KernelSHAP at 8N samples (gsmile ``method="kernelshap", n_samples=96`` vs Captum
  ``KernelShap(n_samples=96)``).
* ``ctx-S``: a retrieval context of S generated sentences (distractors and one supporting
  sentence), the question asked after it, the model's greedy answer as the response; sentence
  units over the context; occlusion only (KernelSHAP at 8N over 100 sentences would be 800
  rows of ~1,100 tokens per Captum run). gsmile: ``explain(question, response, context=ctx,
  method="occlusion")``; Captum: ``FeatureAblation`` over the sentences in a
  ``TextTemplateInput`` whose template is gsmile's user turn (``CONTEXT_TEMPLATE``) inside the
  model's chat template, so the unperturbed input is the same token sequence (checked).

Arms, interleaved per setting (gsmile, Captum, gsmile, ... ``--repeats`` times, medians
reported): gsmile with its default target (wasserstein), gsmile with target="logprob" (Captum's
target: the summed log-probability of the response), and Captum. One untimed warm-up of each
side first (lazy imports, the cached template prefix).

For each setting it prints the medians, the ratio gsmile / Captum, and the arithmetic floor of
that ratio: the matrix-product FLOPs gsmile's scorer did over the FLOPs Captum's forwards did,
from counts recorded during the timed runs (tokens fed to the lean body per call with each
token's key count; output-layer positions; for Captum the tokens of each row fed to the model
and the positions its output layer computed). Per token: 2 x (the layers' weights) + 4 x layers
x hidden x keys, where keys are the keys a token may attend to (causal; the token tree's mask);
the output layer: 2 x vocab x hidden per position where it is applied (Captum: counted by a hook
on ``lm_head``; transformers computes logits at every position of Captum's rows). The ratio would
equal the floor if both sides' products ran equally fast and nothing else took time; ratio / floor
is how far it is from that (below 1: gsmile's products ran faster per FLOP than Captum's batch-1
rows, or the runs were disturbed). Each side's last run is also split into time in the model's
body, in the output layer (gsmile: with log-softmax and the target's reduction) and the rest,
with the GFLOP/s achieved inside the model: far below ~75 per thread (2 idle cores: ~150) means other processes
shared the CPUs (the load average is printed at the start and the end). The counting hooks are on
during the timed runs of both sides (their cost is small: a mask sum per lean-body call).

Forward rows: gsmile's ``exp.n_unique`` (distinct inputs, the original included); Captum's rows are
counted by a hook on the model's body, distinct ones by their token ids (Captum's KernelShap sends
the original, the all-removed input and n_samples - 2 draws, duplicates included; 12 units, 96
samples: 96 rows, 79 distinct; gsmile: 80 distinct with the original). Sanity checks: the
unperturbed input has the same token ids on both sides, how many occlusion rows render
identically (Captum's template cannot reproduce gsmile's joining of the gaps when the first unit
is dropped), and the Spearman correlation of the attributions (occlusion with target="logprob" is
the same algorithm and the same target: it should be ~1 with the same top unit).

``--device`` and ``--dtype`` place the one model object both sides use (default: the CPU in
float32). On the CPU, in float32 or bfloat16, gsmile scores through its lean body; elsewhere
(a GPU, float16) through transformers' forward, as Captum does, and then its work is counted
by the same hooks on the model's body and output layer (the report's second line says which
path); on a GPU each arm's clock is read after ``torch.cuda.synchronize()``.

``--threads N`` sets torch's threads for both sides (default: torch's own choice). On a machine
other processes share, use ``--threads 1``: with 2 threads on 2 busy cores one 51-token Captum row
took 1.8-4.2 s instead of 0.3 s with 1 thread (every small op waits for a descheduled thread),
which hurts Captum's many small batch-1 forwards far more than gsmile's batched products.

Writes bench/results/vs_captum.txt (the printed report) and bench/results/vs_captum.json.

Cost: ``--quick --threads 1`` took 1 min 44 s on 2 shared cores. The full run is dominated by
ctx-100: Captum's 101 rows are ~97,000 row tokens with logits at every position (~28 TFLOP per
run, about 7 minutes at one thread's ~65 GFLOP/s), gsmile's two arms ~45,000 stem tokens each
through the chain scorer; with 3 repeats expect 30-45 minutes at one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_context import PeakRSS  # noqa: E402  (the same memory sampler as the long-context benchmark)

PROMPT = "What is the capital of France and why is it historically significant?"
QUESTION = "What is the secret code for the storage room?"
SUPPORT = "The secret code for the storage room is 4721."
ALL_SETTINGS = ("prompt-8", "prompt-48", "prompt-128", "ctx-20", "ctx-100")
QUICK_SETTINGS = ("prompt-8", "ctx-20")
GSMILE_TARGETS = ("wasserstein", "logprob")
CAPTUM_NAME = {"occlusion": "FeatureAblation", "kernelshap": "KernelShap"}
KERNELSHAP_PER_UNIT = 8  # KernelSHAP at 8N samples

_NAMES = ["blue", "red", "green", "old", "small", "heavy", "quiet", "bright", "narrow", "wooden"]
_THINGS = ["ladder", "lamp", "crate", "bicycle", "kettle", "printer", "carpet", "window", "basket", "mirror"]
_PLACES = ["garage", "kitchen", "office", "attic", "hallway", "garden", "basement", "studio", "library", "porch"]
_VERBS = ["was moved to", "is stored in", "was painted in", "stands in", "was found in", "is kept in"]


def distractors(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct deterministic sentences of about 40 characters, none about a code."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        s = f"The {rng.choice(_NAMES)} {rng.choice(_THINGS)} {rng.choice(_VERBS)} the {rng.choice(_PLACES)}."
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_context(n_sentences: int) -> str:
    """``n_sentences`` sentences: distractors with the supporting one at about a third."""
    sentences = distractors(n_sentences - 1)
    sentences.insert(n_sentences // 3, SUPPORT)
    return " ".join(sentences)


# --------------------------------------------------------------------------- counting
class Counts:
    """Matrix-product work recorded while the hooks are on (see :func:`install_counters`)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.body_tokens = 0  # tokens through every layer's projections and MLP
        self.kv_only_tokens = 0  # tokens through the projections for keys and values only (last layer)
        self.attn_keys = 0  # sum over tokens and layers of the keys each may attend to
        self.head_positions = 0  # positions the output layer was applied at
        self.body_calls = 0
        self.model_rows = 0  # rows through transformers' forward (lm.model.model)
        self.model_tokens = 0
        self.model_attn_keys = 0
        self.row_ids: list[tuple] = []  # the rows transformers' forward saw (Captum's perturbations)
        self.body_s = 0.0  # seconds in the lean body (gsmile) or transformers' LlamaModel (Captum)
        self.head_s = 0.0  # seconds in the output layer (gsmile: with log-softmax and the target's reduce)

    def flops(self, per_layer: dict, layers: int, hidden: int, vocab: int) -> int:
        full = 2 * (per_layer["qkv"] + per_layer["o"] + per_layer["mlp"])
        body = (self.body_tokens + self.model_tokens) * full * layers
        body -= self.kv_only_tokens * 2 * (per_layer["o"] + per_layer["mlp"])  # kv_only skips the last layer's o and MLP
        attn = 4 * hidden * (self.attn_keys + self.model_attn_keys)
        return int(body + attn + 2 * vocab * hidden * self.head_positions)


def install_counters(lm, counts: Counts):
    """Count the work of gsmile's scorer (the lean body's calls, the output layer at the picked
    positions) and of transformers' forward (Captum's calls; gsmile's template prefix) into
    ``counts``. Returns a function that removes every hook."""
    from gsmile.backends import local

    body = lm._fast_body() if lm._no_fast_path_reason() is None else None  # None: gsmile uses transformers' forward
    body_cls = type(body)
    layers = len(lm.model.model.layers)
    orig_body = body_cls.__dict__["__call__"] if body is not None else None
    orig_head = local.HFCausalLM.__dict__["_head_log_softmax"]

    def counted_body(self, input_ids, past=None, start=0, positions=None, mask=None, kv_only=False, keep_kv=False):
        n, width = input_ids.shape
        counts.body_calls += 1
        if mask is None:  # causal over the prefix: token i sees start + i + 1 keys
            keys = n * (width * start + width * (width + 1) // 2)
        else:
            keys = int(mask.sum()) * (n // mask.shape[0])
        if kv_only:
            counts.kv_only_tokens += n * width  # every layer's qkv; attention, o and MLP in all but the last
            counts.body_tokens += n * width
            counts.attn_keys += keys * (layers - 1)
        else:
            counts.body_tokens += n * width
            counts.attn_keys += keys * layers
        tic = time.perf_counter()
        try:
            return orig_body(self, input_ids, past, start, positions=positions, mask=mask, kv_only=kv_only, keep_kv=keep_kv)
        finally:
            counts.body_s += time.perf_counter() - tic

    in_head = [False]  # off the float32 CPU path gsmile's head calls lm_head: counted here, not by its hooks

    def counted_head(self, picked, reduce=None):
        counts.head_positions += int(picked.shape[0] * picked.shape[1])
        tic = time.perf_counter()
        in_head[0] = True
        try:
            return orig_head(self, picked, reduce)
        finally:
            in_head[0] = False
            counts.head_s += time.perf_counter() - tic

    started = {}

    def model_hook(module, args, kwargs):
        started[id(module)] = time.perf_counter()
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        past = kwargs.get("past_key_values")
        start = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        n, width = ids.shape
        counts.model_rows += n
        counts.model_tokens += n * width
        counts.model_attn_keys += layers * n * (width * start + width * (width + 1) // 2)
        if start == 0:
            counts.row_ids.extend(tuple(r) for r in ids.tolist())

    def model_done(module, args, output):
        counts.body_s += time.perf_counter() - started.pop(id(module), time.perf_counter())

    def head_start(module, args):
        started[id(module)] = time.perf_counter()

    def head_hook(module, args, output):
        if in_head[0]:
            started.pop(id(module), None)
            return
        counts.head_positions += int(output.numel() // output.shape[-1])
        counts.head_s += time.perf_counter() - started.pop(id(module), time.perf_counter())

    if body is not None:
        body_cls.__call__ = counted_body
    local.HFCausalLM._head_log_softmax = counted_head
    handles = [lm.model.model.register_forward_pre_hook(model_hook, with_kwargs=True),
               lm.model.model.register_forward_hook(model_done),
               lm.model.lm_head.register_forward_pre_hook(head_start),
               lm.model.lm_head.register_forward_hook(head_hook)]

    def remove():
        if body is not None:
            body_cls.__call__ = orig_body
        local.HFCausalLM._head_log_softmax = orig_head
        for h in handles:
            h.remove()

    return remove


# --------------------------------------------------------------------------- Captum input
def captum_input(lm, text: str, units, wrap):
    """A TextTemplateInput over ``units`` of ``text`` whose rendering is ``wrap(text)`` put in the
    model's chat template as the user turn, the exact string gsmile tokenizes. Each unit's value
    carries the whitespace before it (the first unit: none), so that dropping a unit leaves one
    gap as gsmile's rendering does (one exception: dropping the first unit leaves the space
    after it)."""
    from captum.attr import TextTemplateInput

    marker = "\x00TEXT\x00"
    user = wrap(marker)
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    before, after = chat.split(marker)

    def esc(s):
        return s.replace("{", "{{").replace("}", "}}")

    parts, values, last = [esc(before)], [], 0
    for i, u in enumerate(units):
        gap = text[last : u.start]
        if i == 0:
            parts.append(esc(gap) + "{}")
            values.append(u.text)
        else:
            parts.append("{}")
            values.append(gap + u.text)
        last = u.end
    parts.append(esc(text[last:]) + esc(after))
    return TextTemplateInput("".join(parts), values=values, baselines=[""] * len(values))


def captum_text(inp, mask) -> str:
    """The text Captum's TextTemplateInput renders with the units of ``mask`` kept."""
    return inp.format_fn(*[v if keep else b for v, b, keep in zip(inp.values, inp.baselines, mask)])


# --------------------------------------------------------------------------- one setting
class Setting:
    def __init__(self, name, prompt, response_ids, context=None):
        self.name, self.prompt, self.response_ids, self.context = name, prompt, list(response_ids), context


def sync(lm) -> None:
    """Wait for the model's device (a GPU runs asynchronously) before the clock is read."""
    import torch

    if lm.model.device.type == "cuda":
        torch.cuda.synchronize(lm.model.device)


def run_gsmile(lm, setting: Setting, method: str, target: str, n_samples: int):
    from gsmile import Explainer

    explainer = Explainer(lm, method=method, target=target, n_samples=n_samples, random_state=0)
    response = lm.decode(setting.response_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sync(lm)
        start = time.perf_counter()
        exp = explainer.explain(setting.prompt, response, context=setting.context)
        sync(lm)
        elapsed = time.perf_counter() - start
    return elapsed, exp


def run_captum(lm, inp, method: str, response_ids, n_samples: int):
    import captum.attr as ca
    import torch

    torch.manual_seed(0)
    algo = getattr(ca, CAPTUM_NAME[method])(lm.model)
    llm = ca.LLMAttribution(algo, lm.tokenizer)
    kwargs = {"n_samples": n_samples} if method == "kernelshap" else {}
    sync(lm)
    start = time.perf_counter()
    with torch.inference_mode():
        res = llm.attribute(inp, target=torch.tensor(response_ids), forward_in_tokens=False, **kwargs)
    sync(lm)
    elapsed = time.perf_counter() - start
    return elapsed, res.seq_attr.detach().float().cpu().numpy().reshape(-1)


def split(work, body: str, head: str) -> str:
    """Where the last timed run's seconds went, and the products' speed."""
    gflop, c = work
    inside = c["body_s"] + c["head_s"]
    return (f"last run {c['total_s']:.2f} s: {body} {c['body_s']:.2f} s, {head} {c['head_s']:.2f} s, the rest "
            f"{c['total_s'] - inside:.2f} s; {gflop / max(inside, 1e-9):.0f} GFLOP/s inside the model")


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default=",".join(ALL_SETTINGS), help="subset of " + ",".join(ALL_SETTINGS))
    parser.add_argument("--methods", default="occlusion,kernelshap", help="occlusion,kernelshap (contexts: occlusion only)")
    parser.add_argument("--quick", action="store_true", help="1 repeat; prompt-8 and ctx-20 only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "vs_captum"),
                        help="output path without extension (.txt and .json are written)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.settings = 1, ",".join(QUICK_SETTINGS)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [s for s in settings if s not in ALL_SETTINGS] + [m for m in methods if m not in CAPTUM_NAME]
    if bad:
        parser.error(f"unknown setting or method: {', '.join(bad)}")

    lines: list[str] = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    import captum
    import torch
    import transformers

    from gsmile._io import write_atomic
    from gsmile.backends import resolve_model
    from gsmile.errors import GsmileError
    from gsmile.inputs import user_turn

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    try:
        lm = resolve_model("local", device=args.device, dtype=args.dtype).load()
    except GsmileError as exc:  # an absent device, float16 on the CPU...: one line
        parser.error(str(exc))
    load_s = time.perf_counter() - t0
    config = lm.model.config
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    layer0 = lm.model.model.layers[0]
    per_layer = {"qkv": sum(layer0.self_attn.get_submodule(p).weight.numel() for p in ("q_proj", "k_proj", "v_proj")),
                 "o": layer0.self_attn.o_proj.weight.numel(),
                 "mlp": sum(layer0.mlp.get_submodule(p).weight.numel() for p in ("gate_proj", "up_proj", "down_proj"))}

    def gflop(c: Counts) -> float:
        return c.flops(per_layer, layers, hidden, vocab) / 1e9

    say(f"# gsmile vs Captum {captum.__version__}, same algorithm, same model object ({lm.model_id}), one process")
    no_fast = lm._no_fast_path_reason()
    say(f"model on {lm.model.device} in {str(lm.model.dtype).replace('torch.', '')}; gsmile scores through "
        + ("its lean body" if no_fast is None else f"transformers' forward ({no_fast})"))
    say(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs (load average at start {load_start[0]:.1f}); model loaded in {load_s:.1f} s; "
        f"repeats {args.repeats} (arms interleaved; medians)")
    if load_start[0] >= 1.0 and torch.get_num_threads() > 1:
        say(f"WARNING: load average {load_start[0]:.1f} before the run: other processes use the CPUs. With several torch "
            f"threads on shared cores each small op waits for a descheduled thread; Captum's batch-1 rows (many small "
            f"ops) suffer far more than gsmile's batched products (measured here: one 51-token row 1.8-4.2 s with 2 "
            f"threads, 0.3 s with 1). Use --threads 1 on a shared machine, or run it idle.")
    say("Captum: LLMAttribution(..., forward_in_tokens=False), one row per forward (its default), under "
        "torch.inference_mode; gsmile: Explainer(method, n_samples, target, random_state=0), batch size automatic.")
    say("gsmile's default target is wasserstein (the response's output distributions compared per position); "
        "Captum's is the response's summed log-probability, so gsmile is also run with target='logprob'.")
    say()

    # The settings' inputs: responses given (generation not timed).
    t0 = time.perf_counter()
    needed_prompt = [s for s in settings if s.startswith("prompt-")]
    cases: list[Setting] = []
    if needed_prompt:
        # Greedy decoding: the first K of 128 tokens are the first K generated (only as many as needed are).
        full = lm.generate(PROMPT, max(int(s.split("-")[1]) for s in needed_prompt))
        for s in needed_prompt:
            k = int(s.split("-")[1])
            cases.append(Setting(s, PROMPT, full[:k]))
    for s in settings:
        if s.startswith("ctx-"):
            ctx = make_context(int(s.split("-")[1]))
            answer = lm.generate(user_turn(QUESTION, ctx), 24)
            cases.append(Setting(s, QUESTION, answer, context=ctx))
    # Decoding and re-encoding must give back the same ids (both sides score these ids).
    for c in cases:
        c.response_ids = lm.encode_response(lm.decode(c.response_ids))
    say(f"responses generated in {time.perf_counter() - t0:.1f} s (greedy; not timed in the comparison)")
    for c in cases:
        say(f"  {c.name}: {len(c.response_ids)} response tokens: {lm.decode(c.response_ids)!r}")
    say()

    counts = Counts()
    remove = install_counters(lm, counts)
    results = []
    try:
        # Warm-up of both sides, untimed: imports, the template prefix's cache, allocator.
        t0 = time.perf_counter()
        warm = Setting("warm-up", PROMPT, lm.encode_response("Paris is the capital."))
        _, wexp = run_gsmile(lm, warm, "occlusion", "wasserstein", 96)
        run_captum(lm, captum_input(lm, wexp.text, wexp.units, lambda t: t), "occlusion", warm.response_ids, 96)
        say(f"warm-up (both sides, untimed): {time.perf_counter() - t0:.1f} s")
        say()

        for case in cases:
            for method in methods:
                if case.context is not None and method != "occlusion":
                    continue
                results.append(compare(lm, case, method, args.repeats, counts, gflop, say))
                # What has finished so far, kept if the run is stopped (the summary comes at the end).
                os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
                write_atomic(args.out + ".txt", "\n".join(lines) + "\n")
    finally:
        remove()

    say("## Summary (median seconds; ratio gsmile / Captum; floor = gsmile's matrix-product FLOPs / Captum's)")
    say(f"{'setting':<12}{'method':<12}{'gsmile target':<15}{'gsmile s':>9}{'Captum s':>9}{'ratio':>7}{'floor':>7}"
        f"{'ratio/floor':>12}{'rows g/C':>11}")
    for r in results:
        for arm in r["gsmile"]:
            say(f"{r['setting']:<12}{r['method']:<12}{arm['target']:<15}{arm['median_s']:>9.2f}{r['captum']['median_s']:>9.2f}"
                f"{arm['ratio']:>7.2f}{arm['floor']:>7.2f}{arm['ratio_over_floor']:>12.2f}"
                f"{arm['n_unique']:>6}/{r['captum']['forward_rows']:<4}")
    peak = PeakRSS.rss_kb() / 1024
    import resource

    load_end = os.getloadavg()
    say(f"load average at the end (1, 5, 15 min): {load_end[0]:.1f}, {load_end[1]:.1f}, {load_end[2]:.1f} on "
        f"{os.cpu_count()} CPUs; GFLOP/s inside the model far below ~75 per thread in float32 (~150 in bfloat16 with "
        f"AVX-512 BF16; {torch.get_num_threads()} threads here) means other processes shared the CPUs")
    say(f"process peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (now {peak:.0f} MiB)")

    out_dir = os.path.dirname(args.out)
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(args.out + ".txt", "\n".join(lines) + "\n")
    meta = {"captum": captum.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "device": str(lm.model.device), "dtype": str(lm.model.dtype), "loadavg_start": load_start, "loadavg_end": load_end, "repeats": args.repeats, "settings": settings, "methods": methods,
            "per_layer_params": per_layer, "layers": layers, "hidden": hidden, "vocab": vocab}
    write_atomic(args.out + ".json", json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}.txt and {args.out}.json", file=sys.stderr)
    return 0


def compare(lm, case: Setting, method: str, repeats: int, counts: Counts, gflop, say) -> dict:
    """Time the arms of one setting and method, interleaved; print and return the record."""
    from gsmile.inputs import CONTEXT_TEMPLATE, ModelInput
    from gsmile.units import Segmentation

    # The units: gsmile's segmentation of the explained text (from the same segmenter the explainer uses).
    text = case.prompt if case.context is None else case.context
    units = Segmentation.from_text(text, "word" if case.context is None else "sentence").units
    n = len(units)
    n_samples = KERNELSHAP_PER_UNIT * n if method == "kernelshap" else 96
    if case.context is None:
        wrap = lambda t: t  # noqa: E731
    else:
        wrap = lambda t: CONTEXT_TEMPLATE.format(context=t, prompt=case.prompt)  # noqa: E731
    inp = captum_input(lm, text, units, wrap)

    # Same token sequence for the unperturbed input; how many occlusion rows render identically.
    gs_inputs = ModelInput(Segmentation(text, units), case.prompt, case.context)
    gs_ids = lm.prompt_ids(gs_inputs.original)
    cap_ids = lm.tokenizer.encode(captum_text(inp, [True] * n), return_tensors="pt")[0].tolist()
    same_original = gs_ids == cap_ids
    occl = [np.arange(n) != i for i in range(n)]
    same_rows = sum(lm.prompt_ids(gs_inputs.render(m)) == lm.tokenizer.encode(captum_text(inp, m)) for m in occl)

    arms = [("gsmile", t) for t in GSMILE_TARGETS]
    arms.insert(1, ("captum", None))  # gsmile, Captum, gsmile: interleaved
    times = {a: [] for a in arms}
    work = {}
    rss = {}
    out = {}
    for _ in range(repeats):
        for arm in arms:
            counts.reset()
            with PeakRSS() as peak:
                if arm[0] == "gsmile":
                    t, exp = run_gsmile(lm, case, method, arm[1], n_samples)
                    out[arm] = (exp.coefficients, exp.n_unique)
                    if [u.text for u in exp.units] != [u.text for u in units]:
                        raise SystemExit(f"{case.name}: gsmile's units differ from the ones given to Captum")
                else:
                    t, attr = run_captum(lm, inp, method, case.response_ids, n_samples)
                    out[arm] = (attr, counts.model_rows, len(set(counts.row_ids)))
            times[arm].append(t)
            rss[arm] = max(rss.get(arm, 0.0), peak.peak_mb)
            work[arm] = (gflop(counts), {**{k: v for k, v in vars(counts).items() if k != "row_ids"}, "total_s": t})

    cap = ("captum", None)
    cap_med = statistics.median(times[cap])
    cap_attr, cap_rows, cap_distinct = out[cap]
    say(f"## {case.name}, {method} (gsmile {method} vs Captum {CAPTUM_NAME[method]}): {n} "
        f"{'sentence' if case.context else 'word'} units, {len(case.response_ids)} response tokens, "
        f"{len(gs_ids)} prompt tokens unperturbed" + (f", n_samples {n_samples}" if method == "kernelshap" else ""))
    say(f"  unperturbed input: same token ids on both sides: {same_original}; occlusion rows rendered to identical ids: "
        f"{same_rows}/{n}")
    say(f"  Captum {CAPTUM_NAME[method]}: median {cap_med:.2f} s (runs {', '.join(f'{t:.2f}' for t in times[cap])}); "
        f"{cap_rows} forward rows ({cap_distinct} distinct), {work[cap][1]['model_tokens']} row tokens, output layer at "
        f"{work[cap][1]['head_positions']} positions; {work[cap][0]:.0f} GFLOP; peak RSS {rss[cap]:.0f} MiB")
    say("      " + split(work[cap], "transformers' LlamaModel", "lm_head"))
    record = {"setting": case.name, "method": method, "n_units": n, "response_tokens": len(case.response_ids),
              "prompt_tokens": len(gs_ids), "n_samples": n_samples if method == "kernelshap" else None,
              "same_original_ids": same_original, "identical_occlusion_rows": int(same_rows),
              "captum": {"name": CAPTUM_NAME[method], "times_s": times[cap], "median_s": cap_med, "forward_rows": cap_rows,
                         "distinct_rows": cap_distinct, "gflop": work[cap][0], "counts": work[cap][1],
                         "peak_rss_mib": rss[cap], "attributions": cap_attr.tolist()},
              "gsmile": []}
    for arm in arms:
        if arm == cap:
            continue
        med = statistics.median(times[arm])
        coef, n_unique = out[arm]
        ratio = med / cap_med
        floor = work[arm][0] / work[cap][0]
        rho = spearman(coef, cap_attr)
        top_same = int(np.argmax(coef)) == int(np.argmax(cap_attr))
        c = work[arm][1]
        extra = f" (+{c['model_tokens']} through transformers' forward)" if c["model_tokens"] else ""
        say(f"  gsmile target={arm[1]:<11}: median {med:.2f} s (runs {', '.join(f'{t:.2f}' for t in times[arm])}); "
            f"{n_unique} distinct rows scored; {c['body_tokens']} body tokens in {c['body_calls']} calls"
            f"{extra}, "
            f"output layer at {c['head_positions']} positions; {work[arm][0]:.0f} GFLOP; peak RSS {rss[arm]:.0f} MiB")
        say("      " + split(work[arm], "lean body" if c["body_calls"] else "transformers' LlamaModel", "output layer, log-softmax and target"))
        say(f"      ratio gsmile / Captum {ratio:.2f}; floor {floor:.2f}; ratio / floor {ratio / floor:.2f}; "
            f"Spearman rho vs Captum {rho:+.2f}, same top unit: {top_same}"
            + ("  <- same algorithm and target: should agree" if method == "occlusion" and arm[1] == "logprob" else ""))
        record["gsmile"].append({"target": arm[1], "times_s": times[arm], "median_s": med, "n_unique": n_unique,
                                 "gflop": work[arm][0], "counts": c, "peak_rss_mib": rss[arm], "ratio": ratio,
                                 "floor": floor, "ratio_over_floor": ratio / floor, "spearman_vs_captum": rho,
                                 "same_top_unit": top_same, "coefficients": np.asarray(coef).tolist()})
    say()
    return record


if __name__ == "__main__":
    sys.exit(main())
