"""Context attribution on long retrieval contexts: gsmile against its peers at equal model calls.

    python bench/long_context.py --sizes 20,50,100,200 --cases 4 --out bench/results/long_context.json
    python bench/long_context.py --quick                  # 1 case of 20 sentences, every method
    python bench/long_context.py --methods gsmile,contextcite-64 --sizes 50 --cases 2
    python bench/long_context.py --report --out bench/results/long_context.json   # the table only

Cases (deterministic from ``--seed``): a context of N sentences (N in ``--sizes``, about 40
characters each) made of distractor sentences (templates × vocabulary: hundreds of distinct,
plausible sentences that answer nothing) with the supporting sentence(s) hidden at random
positions, and a question the embedded model (SmolLM2-135M-Instruct) answers by copying:

* ``single``: one supporting sentence ("The secret code for the storage room is 4721." /
  "What is the secret code for the storage room?"); the fact varies (codes, names, colours,
  cities, passwords);
* ``pair``: two supporting sentences, both needed ("The first half of the code for the
  garage is 47." + "The second half of the code for the garage is 21." / "What are the two
  halves of the code for the garage? Answer with the two numbers."; kept if both are copied).

The response is the model's greedy response (gsmile's ``HFCausalLM.generate``, at most
``--max-new-tokens`` tokens); a case is kept only if the answer string appears in it (the
model copied it), and the dropped cases are counted per size. Every method explains that
same response over the same sentence units (gsmile's ``sentence`` split of the context) in
the same user turn (gsmile's ``CONTEXT_TEMPLATE``, in the model's chat template):

* ``gsmile`` / ``gsmile-lasso``: ``Explainer(method="gsmile", context=..., max_evals=B/2)``
  (B = ``--budget``, ContextCite's ablations; default surrogate, and ``surrogate="lasso"``),
  target wasserstein (gsmile's default); calls = the explanation's ``n_unique``;
* ``occlusion``: gsmile's ``method="occlusion"`` (N+1 calls), wasserstein target;
* ``loo-js``: leave-one-out with a Jensen-Shannon target (ARC-JSD's recipe), run as gsmile's
  occlusion with ``target="js"`` (N+1 calls);
* ``contextcite-64`` / ``contextcite-128``: context-cite 0.0.4's ``ContextCiter`` (Lasso on
  64 or 128 random ablations, keep probability 0.5), with a partitioner that renders masks
  through gsmile's sentence split, the same template and the response forced into its cache;
  its ``nltk.download`` at import is made a no-op (no network); batches of up to 8 rows, left
  padded as in its ``from_pretrained`` (1 row for contexts of 1,000+ tokens: it keeps the
  logits at every position). Calls = rows through the model;
* ``captum-fa`` / ``captum-kshap``: Captum ``LLMAttribution`` with ``FeatureAblation`` (N+1)
  and ``KernelShap`` (``n_samples = B/2``, gsmile's budget), ``TextTemplateInput`` over the
  sentences in the chat template (an ablated sentence becomes "", so its surrounding spaces
  stay), ``forward_in_tokens=False``, target = the response's token ids. Calls = rows
  through the model.

Measures (per case, averaged per size × variant × method): top-1 (a supporting sentence
ranked first), recall@3 (share of the supporting sentences among the top 3), drop@k for
k = 1, 3 (ContextCite's top-k log-probability drop: log p(response | full context) − log
p(response | context without the k top-ranked sentences), all scored by one plain
teacher-forced scorer, gsmile's ``HFCausalLM.logprobs``), model calls, wall time, and peak
resident memory (a thread samples VmRSS from /proc/self/status every 20 ms during the
method: the peak, and the peak above the RSS before the method). Each method's libraries are
imported before it is timed; each run of the script times the methods in one process, in
the order given, so a method's first explanation includes its one-time set-up (e.g. gsmile's
wasserstein target preparing the token embeddings).

Records go to ``--out`` (JSON, rewritten atomically after each method of each case); a run
that is stopped and started again skips what is there. The table goes to stdout and to the
same path with ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "long_context.json"

# ------------------------------------------------------------------ cases
PLACES = ["library", "bakery", "museum", "post office", "train station", "school", "garden", "market",
          "hospital", "gym", "harbour", "cinema", "bank", "hotel", "farm", "castle", "zoo", "café",
          "pharmacy", "stadium", "bridge", "factory", "chapel", "workshop"]
TIMES = ["six", "seven", "eight", "nine", "ten", "eleven"]
ANIMALS = ["cat", "dog", "fox", "goose", "horse", "rabbit", "owl", "sheep", "crow", "goat"]
ADJS = ["old", "young", "quiet", "lazy", "grey", "small", "large", "shy", "noisy", "tired"]
WEATHER = ["rain", "snow", "fog", "wind", "sunshine", "hail"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
THINGS = ["bread", "apples", "books", "flowers", "candles", "maps", "coffee", "cheese", "paint", "shoes"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown"]
NAMES = ["Alice", "Bruno", "Clara", "Daniel", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas",
         "Karin", "Liam", "Maria", "Nadia", "Oscar", "Paula", "Rosa", "Simon", "Tina", "Viktor"]
CITIES = ["Lisbon", "Oslo", "Dublin", "Vienna", "Prague", "Madrid", "Warsaw", "Athens", "Berlin",
          "Helsinki", "Zurich", "Seoul", "Lima", "Cairo", "Toronto", "Sydney"]
OBJECTS = ["red box", "old violin", "silver key", "blue lamp", "wooden chest", "golden cup",
           "green folder", "small clock", "black suitcase", "glass vase"]
SYSTEMS = ["staff computer", "guest network", "main server", "front door"]
WORDS = ["falcon", "marble", "thunder", "pepper", "lantern", "harvest", "glacier", "meadow"]

DISTRACTOR_TEMPLATES = [
    ("The {place} opens at {time} in the morning.", ("place", "time")),
    ("The {place} closes early on {day}.", ("place", "day")),
    ("A {adj} {animal} sleeps near the {place}.", ("adj", "animal", "place")),
    ("There was {weather} near the {place} on {day}.", ("weather", "place", "day")),
    ("The {place} sells fresh {thing} every {day}.", ("place", "thing", "day")),
    ("Many people visit the {place} on {day}.", ("place", "day")),
    ("The {place} has a {adj} roof.", ("place", "adj")),
    ("A {adj} {animal} walked past the {place}.", ("adj", "animal", "place")),
    ("The road to the {place} is long.", ("place",)),
    ("Nobody likes the {weather} on {day}.", ("weather", "day")),
    ("The {place} was rebuilt after the {weather}.", ("place", "weather")),
    ("Children play near the {place} after school.", ("place",)),
]
VOCAB = {"place": PLACES, "time": TIMES, "animal": ANIMALS, "adj": ADJS, "weather": WEATHER, "day": DAYS,
         "thing": THINGS}


def all_distractors() -> list[str]:
    """Every distractor sentence (templates × vocabulary), in a fixed order."""
    import itertools

    out = []
    for template, keys in DISTRACTOR_TEMPLATES:
        for values in itertools.product(*(VOCAB[k] for k in keys)):
            out.append(template.format(**dict(zip(keys, values))))
    return out


def single_fact(rng: random.Random) -> tuple[list[str], str, str]:
    """(supporting sentences, question, answer) for a one-sentence case."""
    kind = rng.choice(["code", "manager", "colour", "city", "password"])
    if kind == "code":
        room, code = rng.choice(["storage room", "basement", "archive", "garage"]), str(rng.randint(1000, 9999))
        return [f"The secret code for the {room} is {code}."], f"What is the secret code for the {room}?", code
    if kind == "manager":
        shop, name = rng.choice(["bookshop", "hardware store", "flower shop", "toy shop"]), rng.choice(NAMES)
        return [f"The manager of the {shop} is {name}."], f"Who is the manager of the {shop}?", name
    if kind == "colour":
        name, colour = rng.choice(NAMES), rng.choice(COLOURS)
        return [f"{name}'s favourite colour is {colour}."], f"What is {name}'s favourite colour?", colour
    if kind == "city":
        obj, city = rng.choice(OBJECTS), rng.choice(CITIES)
        return [f"The {obj} is kept in {city}."], f"In which city is the {obj} kept?", city
    system, word = rng.choice(SYSTEMS), rng.choice(WORDS)
    return [f"The password for the {system} is {word}."], f"What is the password for the {system}?", word


def pair_fact(rng: random.Random) -> tuple[list[str], str, list[str]]:
    """(two supporting sentences, question, answers): the answer needs both sentences (each
    gives one half of a code). Tried first and dropped: "X is kept in room 12." + "Room 12 is
    on the third floor." / "On which floor is X kept?" (the model answered with the room, 0
    of 4 at 20 sentences); asking for both halves without "Answer with the two numbers" (the
    model wrote a code block, 1 of 6)."""
    room = rng.choice(["storage room", "basement", "archive", "garage", "office", "cellar"])
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return ([f"The first half of the code for the {room} is {a}.", f"The second half of the code for the {room} is {b}."],
            f"What are the two halves of the code for the {room}? Answer with the two numbers.", [str(a), str(b)])


def copied(answer, response: str) -> bool:
    """Whether the response contains the answer (every part of it) as whole words."""
    import re

    parts = answer if isinstance(answer, list) else [answer]
    return all(re.search(rf"(?<!\w){re.escape(p.lower())}(?!\w)", response.lower()) for p in parts)


def make_case(size: int, index: int, variant: str, seed: int) -> dict:
    """One case: ``size`` sentences, the supporting one(s) at random positions."""
    rng = random.Random(f"{seed}-{variant}-{size}-{index}")
    support, question, answer = (single_fact if variant == "single" else pair_fact)(rng)
    pool = all_distractors()
    distractors = rng.sample(pool, size - len(support))
    positions = sorted(rng.sample(range(size), len(support)))
    sentences, it = [], iter(distractors)
    for i in range(size):
        sentences.append(support[positions.index(i)] if i in positions else next(it))
    return {"id": f"{variant}-{size}-{index}", "variant": variant, "size": size, "index": index,
            "sentences": sentences, "context": " ".join(sentences), "question": question, "answer": answer,
            "gold": positions}


# ------------------------------------------------------------------ measuring
class PeakRSS:
    """Samples VmRSS (/proc/self/status) in a thread; ``peak_mb`` and ``before_mb`` in MB."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self.before = every, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_kb())
            self._stop.wait(self.every)

    def __enter__(self):
        self.before = self.peak = self.rss_kb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_kb())

    @property
    def peak_mb(self) -> float:
        return self.peak / 1024

    @property
    def above_mb(self) -> float:
        return (self.peak - self.before) / 1024


class RowCounter:
    """Counts the rows (sequences) sent through a torch module's forward. Give it the Llama body
    (``model.model``): Captum calls the causal LM's ``forward`` directly, past its hooks."""

    def __init__(self, module):
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        self.rows += int(ids.shape[0]) if ids is not None else 1

    def close(self):
        self.handle.remove()


class Bench:
    """The loaded model and what every method of one case shares."""

    def __init__(self, lm, budget: int, seed: int):
        from gsmile.inputs import CONTEXT_TEMPLATE, ModelInput
        from gsmile.units import Segmentation

        self.lm, self.budget, self.seed = lm, budget, seed
        self.template = CONTEXT_TEMPLATE
        self._Segmentation, self._ModelInput = Segmentation, ModelInput

    def setup(self, case: dict, response: str):
        self.case = case
        self.response = response
        self.response_ids = self.lm.encode_response(response)
        self.seg = self._Segmentation.from_text(case["context"], "sentence")
        self.inp = self._ModelInput(self.seg, case["question"], case["context"], self.template)
        self.n = len(self.seg)

    # One consistent scorer for the log-prob drops: plain teacher forcing, summed log p(response).
    def logp(self, texts: list[str]) -> np.ndarray:
        ids = np.asarray(self.response_ids)
        out = []
        for t in texts:
            lp = self.lm.logprobs([t], self.response_ids)[0]
            out.append(float(lp[np.arange(len(ids)), ids].sum()))
        return np.asarray(out)

    def drops(self, scores: np.ndarray, full_logp: float, ks=(1, 3)) -> dict:
        order = np.argsort(-scores, kind="stable")
        texts = []
        for k in ks:
            mask = np.ones(self.n, dtype=bool)
            mask[order[:k]] = False
            texts.append(self.inp.render(mask))
        lps = self.logp(texts)
        return {f"drop@{k}": float(full_logp - lp) for k, lp in zip(ks, lps)}


# ------------------------------------------------------------------ methods
def gsmile_runner(method: str, target: str = "wasserstein", surrogate: str = "least_squares", half_budget=True):
    def run(b: Bench):
        from gsmile import Explainer

        kwargs = {}
        if half_budget:
            kwargs["max_evals"] = b.budget // 2
        exp = Explainer(b.lm, method=method, target=target, surrogate=surrogate, context_unit="sentence",
                        random_state=b.seed, **kwargs).explain(b.case["question"], b.response, context=b.case["context"])
        units = [u.text for u in exp.units]
        assert units == [u.text for u in b.seg.units], "gsmile split the context differently"
        note = f"target {target}" + (f", surrogate {surrogate}" if method == "gsmile" else "")
        return np.asarray(exp.coefficients, dtype=float), int(exp.n_unique), note

    return run


def _import_context_cite():
    """context_cite with its import-time ``nltk.download("punkt_tab")`` made a no-op."""
    import nltk

    saved = nltk.download
    nltk.download = lambda *a, **k: True
    try:
        import context_cite
        from context_cite.context_partitioner import BaseContextPartitioner
    finally:
        nltk.download = saved
    return context_cite, BaseContextPartitioner


def contextcite_runner(ablations: int):
    def run(b: Bench):
        import torch

        context_cite, BaseContextPartitioner = _import_context_cite()

        class GsmilePartitioner(BaseContextPartitioner):
            """The context's sentences as gsmile splits and renders them."""

            def __init__(self, context, seg):
                super().__init__(context)
                self.seg = seg

            @property
            def num_sources(self):
                return len(self.seg)

            def split_context(self):
                pass

            def get_source(self, index):
                return self.seg.units[index].text

            def get_context(self, mask=None):
                return self.seg.render(self.seg.full_mask if mask is None else np.asarray(mask, dtype=bool))

        tok = b.lm.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # ContextCite batches with left padding (as in its from_pretrained)
        template = b.template.replace("{prompt}", "{query}")
        # Its forward keeps the logits at every position (and a copy): about 8 rows of 200
        # tokens, but 1 row of 1,000+ tokens (200 sentences: ~2,200 tokens, 0.4 GB per row).
        batch = max(1, min(8, 2048 // len(b.lm.prompt_ids(b.inp.original))))
        cc = context_cite.ContextCiter(b.lm.model, tok, b.case["context"], b.case["question"],
                                       num_ablations=ablations, batch_size=batch, prompt_template=template,
                                       partitioner=GsmilePartitioner(b.case["context"], b.seg))
        _, chat_prompt = cc._get_prompt_ids(return_prompt=True)
        cc._cache["output"] = chat_prompt + b.response  # the forced response: no generation
        counter = RowCounter(b.lm.model.model)
        autocast = torch.cuda.amp.autocast
        torch.cuda.amp.autocast = lambda *a, **k: contextlib.nullcontext()  # CPU: its cuda autocast is a no-op anyway
        try:
            with contextlib.redirect_stderr(open(os.devnull, "w")):
                scores = cc.get_attributions(verbose=False)
        finally:
            torch.cuda.amp.autocast = autocast
            counter.close()
            tok.padding_side = side
        same = list(cc._response_ids) == list(b.response_ids)
        note = (f"{ablations} ablations, batch {batch}, {len(cc._response_ids)} response tokens"
                + ("" if same else " (tokenized unlike gsmile's)"))
        return np.asarray(scores, dtype=float), counter.rows, note

    return run


def _captum_input(b: Bench):
    """A TextTemplateInput over the context's sentences, in the chat template and CONTEXT_TEMPLATE."""
    from captum.attr import TextTemplateInput

    marker = "\x00USER\x00"
    chat = b.lm.tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                              add_generation_prompt=True)
    before, after = chat.split(marker)
    user_before, user_after = b.template.split("{context}")
    user_after = user_after.format(prompt=b.case["question"])

    def esc(s):
        return s.replace("{", "{{").replace("}", "}}")

    context = b.case["context"]
    parts, last = [esc(before + user_before)], 0
    for u in b.seg.units:
        parts.append(esc(context[last : u.start]) + "{}")
        last = u.end
    parts.append(esc(context[last:] + user_after + after))
    return TextTemplateInput("".join(parts), values=[u.text for u in b.seg.units], baselines=[""] * b.n)


def captum_runner(name: str):
    def run(b: Bench):
        import captum.attr as ca
        import torch

        torch.manual_seed(b.seed)
        model = b.lm.model
        llm = ca.LLMAttribution(getattr(ca, name)(model), b.lm.tokenizer)
        kwargs = {"n_samples": b.budget // 2} if name == "KernelShap" else {}
        counter = RowCounter(model.model)
        try:
            with torch.inference_mode():
                res = llm.attribute(_captum_input(b), target=torch.tensor(b.response_ids), forward_in_tokens=False,
                                    **kwargs)
        finally:
            counter.close()
        note = "forward_in_tokens=False" + (f", n_samples {kwargs['n_samples']}" if kwargs else "")
        return res.seq_attr.detach().float().numpy().reshape(-1), counter.rows, note

    return run


RUNNERS = {
    "gsmile": gsmile_runner("gsmile"),
    "gsmile-lasso": gsmile_runner("gsmile", surrogate="lasso"),
    "occlusion": gsmile_runner("occlusion", half_budget=False),
    "loo-js": gsmile_runner("occlusion", target="js", half_budget=False),
    "contextcite-64": contextcite_runner(64),
    "contextcite-128": contextcite_runner(128),
    "captum-fa": captum_runner("FeatureAblation"),
    "captum-kshap": captum_runner("KernelShap"),
}
def _import_peer(method: str) -> None:
    """Import what a method needs before it is timed (context_cite pulls datasets, pyarrow and
    spacy: seconds of import that are no part of its attribution)."""
    if method.startswith("contextcite"):
        _import_context_cite()
    elif method.startswith("captum"):
        import captum.attr  # noqa: F401
    else:
        import gsmile.explainer  # noqa: F401
        import gsmile.targets  # noqa: F401


BUDGET_NOTE = {"gsmile": "B/2", "gsmile-lasso": "B/2", "occlusion": "N+1", "loo-js": "N+1 (gsmile occlusion, js target)",
               "contextcite-64": "64", "contextcite-128": "128", "captum-fa": "N+1", "captum-kshap": "B/2"}


# ------------------------------------------------------------------ records
def load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"cases": {}, "records": {}}


def save(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def table(data: dict, methods: list[str]) -> str:
    rows = ["| variant | size | method | cases | dropped | top-1 | recall@3 | drop@1 | drop@3 | calls | wall s | peak MB | +MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cases = data["cases"].values()
    keys = sorted({(c["variant"], c["size"]) for c in cases}, key=lambda k: (k[0] != "single", k[1]))
    for variant, size in keys:
        these = [c for c in cases if c["variant"] == variant and c["size"] == size]
        kept = [c["id"] for c in these if c["kept"]]
        dropped = len(these) - len(kept)
        for m in methods:
            recs = [data["records"][f"{cid}/{m}"] for cid in kept if f"{cid}/{m}" in data["records"]]
            ok = [r for r in recs if "error" not in r]
            if not recs:
                continue
            if not ok:
                err = recs[0]["error"].replace("|", "/")[:80]
                rows.append(f"| {variant} | {size} | {m} | 0 | {dropped} | failed: {err} |||||||| ")
                continue

            def mean(k, fmt="{:.2f}"):
                return fmt.format(statistics.fmean(r[k] for r in ok))

            rows.append(f"| {variant} | {size} | {m} | {len(ok)} | {dropped} | {mean('top1')} | {mean('recall@3')} | "
                        f"{mean('drop@1')} | {mean('drop@3')} | {mean('calls', '{:.0f}')} | {mean('wall_s', '{:.1f}')} | "
                        f"{mean('peak_mb', '{:.0f}')} | {mean('above_mb', '{:.0f}')} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,50,100,200", help="context sizes in sentences")
    parser.add_argument("--cases", type=int, default=4, help="cases per size and variant")
    parser.add_argument("--variants", default="single,pair")
    parser.add_argument("--methods", default=",".join(RUNNERS), help="subset of: " + ", ".join(RUNNERS))
    parser.add_argument("--budget", type=int, default=64, help="ContextCite's ablations B; gsmile and KernelShap get B/2")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="1 case of 20 sentences (single variant)")
    parser.add_argument("--report", action="store_true", help="only write the table from --out's records, running nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.cases, args.variants = "20", 1, "single"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown methods: {sorted(unknown)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]

    data = load(args.out)
    if args.report:
        return report(data, methods, args)

    import torch

    torch.manual_seed(args.seed)
    from gsmile.backends.local import HFCausalLM

    lm = HFCausalLM.embedded().load()
    bench = Bench(lm, args.budget, args.seed)
    data.setdefault("settings", {}).update({"budget": args.budget, "max_new_tokens": args.max_new_tokens,
                                           "seed": args.seed, "template": bench.template, "model": lm.model_id,
                                           "budgets": BUDGET_NOTE})

    for variant in variants:
        for size in sizes:
            for index in range(args.cases):
                case = make_case(size, index, variant, args.seed)
                cid = case["id"]
                info = data["cases"].get(cid)
                if info is None:
                    tic = time.perf_counter()
                    from gsmile.inputs import user_turn

                    response = lm.decode(lm.generate(user_turn(case["question"], case["context"], bench.template),
                                                     args.max_new_tokens))
                    info = {k: case[k] for k in ("id", "variant", "size", "index", "question", "answer", "gold")}
                    info.update(response=response, kept=copied(case["answer"], response),
                                generate_s=time.perf_counter() - tic, chars=len(case["context"]))
                    data["cases"][cid] = info
                    save(args.out, data)
                print(f"{cid}: {'kept' if info['kept'] else 'DROPPED'} answer {info['answer']!r} response "
                      f"{info['response']!r}", file=sys.stderr)
                if not info["kept"]:
                    continue
                bench.setup(case, info["response"])
                info.setdefault("n_units", bench.n)
                info.setdefault("prompt_tokens", len(lm.prompt_ids(bench.inp.original)))
                full_logp = None
                for m in methods:
                    key = f"{cid}/{m}"
                    if key in data["records"]:
                        continue
                    if full_logp is None:
                        full_logp = float(bench.logp([bench.inp.original])[0])
                    rec = {"case": cid, "method": m}
                    try:
                        _import_peer(m)
                        with PeakRSS() as mem:
                            tic = time.perf_counter()
                            scores, calls, note = RUNNERS[m](bench)
                            wall = time.perf_counter() - tic
                        if scores.shape != (bench.n,):
                            raise RuntimeError(f"{m} gave {scores.shape} scores for {bench.n} units")
                        order = np.argsort(-scores, kind="stable")
                        gold = set(case["gold"])
                        rec.update(top1=float(order[0] in gold),
                                   **{"recall@3": len(gold & set(order[:3].tolist())) / len(gold)},
                                   calls=int(calls), wall_s=wall, peak_mb=mem.peak_mb, above_mb=mem.above_mb,
                                   note=note, top=order[:5].tolist(), gold_rank=[int(np.where(order == g)[0][0]) for g in gold],
                                   **bench.drops(scores, full_logp))
                    except Exception as exc:  # a peer that cannot run: say why, go on with the others
                        rec["error"] = f"{type(exc).__name__}: {exc}"
                    print(f"  {m}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                                   for k, v in rec.items() if k not in ("case", "method")}),
                          file=sys.stderr)
                    data["records"][key] = rec
                    save(args.out, data)

    return report(data, methods, args)


def report(data: dict, methods: list[str], args) -> int:
    """Print the table of ``data``'s records and write it next to ``args.out`` (.md)."""
    settings = data.get("settings", {})
    md = table(data, methods)
    dropped = {}
    for c in data["cases"].values():
        dropped.setdefault(f"{c['variant']} {c['size']}", [0, 0])
        dropped[f"{c['variant']} {c['size']}"][0] += not c["kept"]
        dropped[f"{c['variant']} {c['size']}"][1] += 1
    header = (f"Context attribution on long retrieval contexts (bench/long_context.py), {settings.get('model')}; "
              f"budget B = {settings.get('budget')} (ContextCite's ablations); calls: "
              + ", ".join(f"{k} {v}" for k, v in BUDGET_NOTE.items() if k in methods)
              + ".\nDropped cases (the model did not copy the answer), per variant and size: "
              + ", ".join(f"{k}: {d}/{n}" for k, (d, n) in sorted(dropped.items())) + "\n")
    print(header)
    print(md)
    write_text(args.out.with_suffix(".md"), header + "\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
