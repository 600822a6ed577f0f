"""Activation patching: which layer at which position carries what makes a clean prompt's answer.

Given a clean prompt and a corrupted one of the same token length ("The capital of France is"
vs "The capital of Italy is"), the model runs on the corrupted prompt once per (layer,
position), with that one activation replaced by the clean run's, and each patched run says how
much of the clean answer's log-probability came back::

    restored(layer, pos) = (log p_patched(answer) - log p_corrupted(answer))
                           / (log p_clean(answer) - log p_corrupted(answer))

1 is the clean run's log p, 0 the corrupted run's; values outside [0, 1] happen (a patch can
overshoot, or push further away).

Choices:

- Both prompts go through the chat template as the user turn, as everywhere in gsmile
  (:meth:`HFCausalLM.prompt_ids`). Positions span the whole formatted sequence; each is marked
  ``user`` (the user's text) or ``template`` (system prompt and markup, the generation prompt
  after the user's text). Positions before the first token where the prompts differ hold the
  same activations in both runs (the model is causal), so patching them restores exactly 0:
  they are not run (``first_patched`` says where the runs start) and their keys and values are
  computed once and shared by every patched run.
- The answer: by default the clean prompt's greedy next token. A given ``answer`` text is
  encoded as the response (:meth:`HFCausalLM.encode_response`, after the generation prompt) and
  its log p is the sum over all its tokens, teacher-forced (one token: that token's log p);
  only prompt positions are patched, never the answer's own.
- Components: ``resid`` is the residual stream after each decoder layer (the output of
  ``model.model.layers[i]``), ``attn`` the attention block's output before it is added to the
  residual stream (``layers[i].self_attn``), ``mlp`` the MLP's (``layers[i].mlp``).

Why forward hooks, not a library: TransformerLens's ``HookedTransformer.from_pretrained`` loads
models by name from its list of supported hub checkpoints and re-creates their weights in its
own modules; the embedded model is a GGUF converted to a local directory on first use, not a
checkpoint on that list, so it cannot be loaded as it is without network access or a
conversion of our own (not checked here: newer TransformerLens versions that wrap any HF model).
nnsight would do it, but it adds a dependency with its own (astor, cloudpickle, httpx,
python-socketio, pydantic, accelerate, ipython, rich, zstandard... in the version read) for
what a few forward hooks on the model gsmile already holds do.

Thread safety: the model is shared by every explanation in the process (the server runs several
at once), and a forward hook registered on a shared module runs in every thread's forward
pass. So each hook acts only in the pass that registered it: a :class:`contextvars.ContextVar`
holds the token of the pass now running in this thread (set just around our own forward call),
and a hook whose token is not the current one returns None, leaving the output alone. Another
thread's pass, or a plain scoring call, sees the module's hooks fire and do nothing. The same
pattern transformers itself uses to record outputs (``utils/output_capturing.py``). Hooks are
registered for one forward pass and removed in ``finally``; with CPython's GIL the module's hook
dict is copied in one step by ``Module.__call__`` before it runs them, so adding or removing
hooks while another thread runs the module is safe (a removed hook still called from that copy
does nothing: its token is not current there). On the CPU in float32 gsmile's own scoring of
the embedded model runs the lean Llama body (:mod:`gsmile.backends.llama_fast`), which does not
call these modules at all; transformers' forward (other devices, ``fast_path=False``) does, and
is covered by the gate.
"""

from __future__ import annotations

import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .._io import check_record, parse_json
from ..errors import InvalidInputError, SchemaError, UnknownNameError

SCHEMA = "gsmile.patching"
VERSION = 1
#: What can be patched: the residual stream after a layer, the attention or the MLP output.
COMPONENTS = ("resid", "attn", "mlp")
COMPONENT_LABELS = {
    "resid": "residual stream after the layer",
    "attn": "attention output of the layer",
    "mlp": "MLP output of the layer",
}
#: Patched runs per forward pass at most (each is one row of the batch).
MAX_BATCH = 128
#: Below this many nats between the clean and the corrupted log p the shares amplify noise.
SMALL_DIFFERENCE = 0.5

#: The token of the patched or recorded forward pass running in this thread (None: none).
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("gsmile_patching_pass", default=None)


@dataclass
class PatchingResult:
    """Restored shares per component, as a ``(layers, positions)`` matrix each.

    ``values[component][i, j]``: the share restored by patching layer ``layers[i]`` at position
    ``j`` of the formatted sequence (whose tokens are ``tokens`` for the clean prompt,
    ``corrupted_tokens`` for the corrupted one; ``kinds[j]`` is ``user`` or ``template``).
    Positions before ``first_patched`` are the same in both prompts: 0 by causality, not run."""

    clean: str
    corrupted: str
    model_id: str
    answer: str
    answer_ids: list[int]
    answer_source: str  # "greedy" (the clean prompt's greedy next token) or "given"
    clean_logp: float
    corrupted_logp: float
    layers: list[int]
    tokens: list[str]
    corrupted_tokens: list[str]
    kinds: list[str]
    first_patched: int
    values: dict[str, np.ndarray]
    n_forward: int
    n_patched: int
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.values = {name: np.asarray(v, dtype=float).reshape(len(self.layers), len(self.tokens))
                       for name, v in self.values.items()}

    @property
    def components(self) -> list[str]:
        return list(self.values)

    @property
    def difference(self) -> float:
        """``clean_logp - corrupted_logp``: the denominator of every share."""
        return self.clean_logp - self.corrupted_logp

    def user_positions(self) -> list[int]:
        return [j for j, kind in enumerate(self.kinds) if kind == "user"]

    def shown_positions(self) -> list[int]:
        """The positions worth showing: from the user's text on (its tokens and the generation
        prompt after it, where the answer is read); the template before it restores nothing."""
        users = self.user_positions()
        start = min(users[0] if users else self.first_patched, self.first_patched)
        return list(range(start, len(self.tokens)))

    def label(self, position: int) -> str:
        """The token at ``position``, as ``clean→corrupted`` where the prompts differ."""
        a, b = self.tokens[position], self.corrupted_tokens[position]
        return a if a == b else f"{a}→{b}"

    def top(self, component: str = "resid", k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` largest shares of a component as (layer, position, value)."""
        matrix = self.values[component]
        order = np.argsort(-matrix, axis=None, kind="stable")[:k]
        return [(self.layers[i], j, float(matrix[i, j])) for i, j in (np.unravel_index(o, matrix.shape) for o in order)]

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "model": self.model_id,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "answer": {"text": self.answer, "token_ids": [int(t) for t in self.answer_ids], "source": self.answer_source,
                       "clean_logp": float(self.clean_logp), "corrupted_logp": float(self.corrupted_logp)},
            "layers": [int(i) for i in self.layers],
            "positions": [{"clean": a, "corrupted": b, "kind": kind}
                          for a, b, kind in zip(self.tokens, self.corrupted_tokens, self.kinds)],
            "first_patched": int(self.first_patched),
            "restored": {name: [[float(x) for x in row] for row in matrix] for name, matrix in self.values.items()},
            "n_forward": int(self.n_forward),
            "n_patched": int(self.n_patched),
            "seconds": float(self.seconds),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "PatchingResult":
        """Rebuild a result from :meth:`to_dict` output; raises :class:`SchemaError`."""
        check_record(data, SCHEMA, VERSION, "patching result")
        try:
            answer, positions = data["answer"], data["positions"]
            return cls(
                clean=str(data["clean"]), corrupted=str(data["corrupted"]), model_id=str(data["model"]),
                answer=str(answer["text"]), answer_ids=[int(t) for t in answer["token_ids"]], answer_source=str(answer["source"]),
                clean_logp=float(answer["clean_logp"]), corrupted_logp=float(answer["corrupted_logp"]),
                layers=[int(i) for i in data["layers"]],
                tokens=[str(p["clean"]) for p in positions], corrupted_tokens=[str(p["corrupted"]) for p in positions],
                kinds=[str(p["kind"]) for p in positions], first_patched=int(data["first_patched"]),
                values={str(k): v for k, v in data["restored"].items()},
                n_forward=int(data["n_forward"]), n_patched=int(data["n_patched"]), seconds=float(data.get("seconds", 0.0)),
                warnings=[str(w) for w in data.get("warnings", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed patching result: {exc!s}") from None

    def to_json(self, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "PatchingResult":
        return cls.from_dict(parse_json(text))


def _progress(progress, total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(report(done), close()) for ``activation_patching``'s ``progress`` argument."""
    if callable(progress) and not isinstance(progress, bool):
        return (lambda done: progress(done, total)), (lambda: None)
    if not progress:
        return (lambda done: None), (lambda: None)
    import sys

    from tqdm import tqdm

    bar = tqdm(total=total, desc="patching", unit="run", file=sys.stderr, dynamic_ncols=True)
    return (lambda done: bar.update(done - bar.n)), bar.close


# ------------------------------------------------------------------- checks
def local_model(lm):
    """``lm`` as a loaded :class:`~gsmile.backends.local.HFCausalLM`: a model name (``local``,
    ``smollm2``, ``hf:PATH``) is resolved; anything else is an :class:`InvalidInputError`."""
    from ..backends.local import not_local, require_local

    if isinstance(lm, str):
        from ..backends import MODELS, resolve_model

        if lm not in MODELS and not lm.startswith("hf:"):
            raise not_local("activation patching needs", lm)
        lm = resolve_model(lm)
    return require_local(lm, "activation patching needs")


def check_components(components) -> tuple[str, ...]:
    if isinstance(components, str):
        components = [c.strip() for c in components.split(",") if c.strip()]
    components = tuple(components)
    if not components:
        raise InvalidInputError(f"give at least one component to patch: {', '.join(COMPONENTS)}", field="components")
    for name in components:
        if name not in COMPONENTS:
            raise UnknownNameError("component", name, COMPONENTS)
    if len(set(components)) != len(components):
        raise InvalidInputError(f"a component is named twice in {', '.join(components)}", field="components")
    return components


def _blocks(model):
    """The decoder layers of a causal LM (``model.model.layers``, or GPT-2's ``transformer.h``)."""
    for path in (("model", "layers"), ("transformer", "h"), ("gpt_neox", "layers")):
        obj = model
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None:
            return list(obj)
    raise InvalidInputError(f"activation patching cannot find the decoder layers of {type(model).__name__} "
                            "(looked for model.layers, transformer.h, gpt_neox.layers)", field="model")


def _module(block, component: str):
    if component == "resid":
        return block
    names = {"attn": ("self_attn", "attn", "attention"), "mlp": ("mlp",)}[component]
    for name in names:
        module = getattr(block, name, None)
        if module is not None:
            return module
    raise InvalidInputError(f"activation patching cannot find the {component} block of {type(block).__name__}", field="components")


def _template_span(lm, n: int) -> tuple[int, int]:
    """``(start, end)`` of the user's text in a formatted prompt of ``n`` tokens: the template
    before it is the common start of two unrelated prompts, the template after it their common end."""
    a, b = lm.prompt_ids("Alpha"), lm.prompt_ids("7 zeta")
    head = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return min(head, n), max(min(head, n), n - tail)


# --------------------------------------------------------------------- hooks
def _output_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _with_tensor(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _recorder(key, store: dict, n_positions: int):
    """A hook factory: given a pass's token, a hook that keeps the first ``n_positions``
    outputs of row 0 under ``key``, in that pass only."""

    return lambda token: _recording_hook(token, key, store, n_positions)


def _recording_hook(token, key, store: dict, n_positions: int):
    def hook(module, args, output):
        if _ACTIVE.get() is not token:
            return None
        store[key] = _output_tensor(output)[0, :n_positions].detach().clone()
        return None

    return hook


def _patcher(rows, cols, source):
    """A hook factory: given a pass's token, a hook that writes ``source[cols]`` (clean
    activations) at ``(rows, cols)`` of the output, in that pass only."""

    return lambda token: _patching_hook(token, rows, cols, source)


def _patching_hook(token, rows, cols, source):
    def hook(module, args, output):
        if _ACTIVE.get() is not token:
            return None
        hidden = _output_tensor(output)
        patched = hidden.clone()
        r, c = rows.to(hidden.device), cols.to(hidden.device)
        patched[r, c] = source.to(device=hidden.device, dtype=hidden.dtype)[c]
        return _with_tensor(output, patched)

    return hook


class _Runner:
    """Forward passes over the tokens after a shared prefix (whose keys and values are computed
    once), with hooks that act only in the pass that registered them."""

    def __init__(self, lm, prefix: list[int], n_answer: int):
        import torch

        self.lm, self.torch = lm, torch
        self.model = lm.model
        self.blocks = _blocks(self.model)
        self.start = len(prefix)
        self.n_answer = n_answer
        self.passes = 0
        self.past = None
        if prefix:
            with torch.inference_mode():
                cache = self.model.base_model(input_ids=torch.tensor([prefix], device=lm.device_), use_cache=True).past_key_values
            self.past = [(layer.keys, layer.values) for layer in cache.layers]
            self.passes += 1

    def run(self, rest: list[int], rows: int, hooks: list[tuple[Any, Any]], answer_ids: list[int] | None):
        """Log p of ``answer_ids`` (summed) per row of ``rows`` copies of ``rest`` (None: the
        log-softmax at the last position of row 0). ``hooks``: [(module, factory)]; each
        ``factory(token)`` is registered on its module for this pass only, and this pass runs
        with ``token`` current in this thread."""
        torch = self.torch
        device = self.lm.device_
        ids = torch.tensor([rest], dtype=torch.long, device=device).expand(rows, -1)
        kwargs: dict[str, Any] = {}
        if self.past is not None:
            from transformers import DynamicCache

            kwargs["past_key_values"] = DynamicCache(
                ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self.past])
            kwargs["position_ids"] = torch.arange(self.start, self.start + len(rest), device=device)[None].expand(rows, -1)
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        mask = torch.ones((rows, self.start + len(rest)), dtype=torch.long, device=device)
        token = object()
        handles = []
        context = _ACTIVE.set(token)
        try:
            for module, factory in hooks:
                handles.append(module.register_forward_hook(factory(token)))
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=self.n_answer, **kwargs).logits
        finally:
            for handle in handles:
                handle.remove()
            _ACTIVE.reset(context)
        self.passes += 1
        logp = torch.log_softmax(logits.float(), dim=-1)
        if answer_ids is None:
            return logp[0, -1]
        target = torch.tensor(answer_ids, dtype=torch.long, device=logp.device)[None, :, None].expand(rows, -1, -1)
        return logp.gather(2, target)[..., 0].sum(dim=1).cpu().numpy().astype(float)


# ------------------------------------------------------------------ patching
def activation_patching(lm, clean: str, corrupted: str, *, answer: str | None = None, components=("resid",),
                        layers: Sequence[int] | None = None, batch_size: int | None = None,
                        progress: "bool | Callable[[int, int], None]" = False) -> PatchingResult:
    """Patch each layer's activations at each position from the clean run into the corrupted
    run and measure the share of the clean answer's log p restored (see the module docstring).

    lm: a local model (:class:`~gsmile.backends.local.HFCausalLM`, or its name: local, hf:PATH).
    answer: the answer text, scored teacher-forced over all its tokens; None: the clean
        prompt's greedy next token.
    components: any of ``resid``, ``attn``, ``mlp`` (a list, or one comma-separated text).
    layers: the layer indices to patch (default: all).
    batch_size: patched runs per forward pass (default: about ``lm.max_batch_tokens`` tokens,
        at most ``MAX_BATCH`` runs); it does not change the results beyond float rounding.
    progress: True for a progress bar on stderr over the patched runs; a callable is called
        ``progress(done, total)`` after each forward pass of them.

    Raises InvalidInputError for prompts of different token lengths, identical prompts, an
    empty answer, an answer whose log p is the same after both prompts, or a model that is not local."""
    import torch

    began = time.perf_counter()
    for name, text in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"the {name} prompt is empty", field=name)
    if clean == corrupted:
        raise InvalidInputError("the clean and corrupted prompts are the same: patching needs prompts that differ "
                                "(swap a word, e.g. France for Italy)", field="corrupted")
    components = check_components(components)
    lm = local_model(lm)
    if batch_size is not None:
        from ..errors import check_int

        check_int("batch_size", batch_size, 1, 4096)
    blocks = _blocks(lm.model)
    n_layers = len(blocks)
    if layers is None:
        layers = list(range(n_layers))
    else:
        layers = [int(i) for i in layers]
        bad = [i for i in layers if not 0 <= i < n_layers]
        if not layers or bad or len(set(layers)) != len(layers):
            raise InvalidInputError(f"layers must be distinct indices from 0 to {n_layers - 1}, got {layers}", field="layers")

    ids_c, ids_k = lm.prompt_ids(clean), lm.prompt_ids(corrupted)
    if len(ids_c) != len(ids_k):
        raise InvalidInputError(f"patching needs prompts of the same token length: clean has {len(ids_c)} tokens, "
                                f"corrupted {len(ids_k)}; swap words that are one token each", field="corrupted")
    n = len(ids_c)
    diff = [i for i, (a, b) in enumerate(zip(ids_c, ids_k)) if a != b]
    if not diff:
        raise InvalidInputError("the clean and corrupted prompts have the same tokens: nothing to patch", field="corrupted")
    start = diff[0]
    if answer is not None:
        if not isinstance(answer, str) or not answer.strip():
            raise InvalidInputError("the answer is empty; give its text, or none for the clean prompt's greedy next token",
                                    field="answer")
        answer_ids = list(lm.encode_response(answer))
        if not answer_ids:
            raise InvalidInputError(f"the answer {answer!r} has no tokens", field="answer")
    else:
        answer_ids = None

    n_answer = 1 if answer_ids is None else len(answer_ids)
    feed = [] if answer_ids is None else answer_ids[:-1]  # teacher-forced: every answer token but the last is fed
    runner = _Runner(lm, ids_c[:start], n_answer)
    rest_c, rest_k = ids_c[start:] + feed, ids_k[start:] + feed
    n_patch = n - start  # patched positions: start .. n-1, i.e. 0 .. n_patch-1 after the prefix

    # The clean run, recording every activation to be patched.
    keys = [(c, layer) for c in components for layer in layers]
    modules = {key: _module(blocks[key[1]], key[0]) for key in keys}
    store: dict = {}
    greedy = None
    logp_c = runner.run(rest_c, 1, [(modules[key], _recorder(key, store, n_patch)) for key in keys], answer_ids)
    if answer_ids is None:
        greedy = int(torch.argmax(logp_c).item())
        answer_ids = [greedy]
        logp_c = np.array([float(logp_c[greedy])])
    missing = [key for key in keys if key not in store]
    if missing:
        raise InvalidInputError(f"could not record the activations of {missing[0][0]} at layer {missing[0][1]}", field="components")
    clean_logp = float(logp_c[0])
    logp_k = runner.run(rest_k, 1, [], answer_ids)
    corrupted_logp = float(logp_k[0])

    difference = clean_logp - corrupted_logp
    if not math.isfinite(difference) or abs(difference) < 1e-6:
        raise InvalidInputError(f"the answer has the same log p after both prompts ({clean_logp:.4f}): nothing to restore; "
                                "give another --answer, or prompts that change it", field="answer")
    warnings = []
    if abs(difference) < SMALL_DIFFERENCE:
        warnings.append(f"the answer's log p differs by only {abs(difference):.3f} nats between the prompts; "
                        "the restored shares are ratios over that and amplify noise")

    # The patched runs: one row per (component, layer, position), several rows per pass.
    jobs = [(c, layer, pos) for c in components for layer in layers for pos in range(n_patch)]
    if batch_size is None:
        batch_size = int(max(1, min(MAX_BATCH, lm.max_batch_tokens // max(1, len(rest_k)))))
    patched = np.empty(len(jobs))
    report, close = _progress(progress, len(jobs))
    try:
        for lo in range(0, len(jobs), batch_size):
            batch = jobs[lo : lo + batch_size]
            by_key: dict = {}
            for row, (c, layer, pos) in enumerate(batch):
                by_key.setdefault((c, layer), ([], []))
                by_key[(c, layer)][0].append(row)
                by_key[(c, layer)][1].append(pos)
            hooks = [(modules[key], _patcher(torch.tensor(r), torch.tensor(p), store[key])) for key, (r, p) in by_key.items()]
            patched[lo : lo + len(batch)] = runner.run(rest_k, len(batch), hooks, answer_ids)
            report(lo + len(batch))
    finally:
        close()

    shares = (patched - corrupted_logp) / difference
    values = {}
    index = {key: i for i, key in enumerate(layers)}
    for c in components:
        values[c] = np.zeros((len(layers), n))
    for (c, layer, pos), share in zip(jobs, shares):
        values[c][index[layer], start + pos] = share

    user_lo, user_hi = _template_span(lm, n)
    kinds = ["user" if user_lo <= j < user_hi else "template" for j in range(n)]
    return PatchingResult(
        clean=clean, corrupted=corrupted, model_id=lm.model_id,
        answer=lm.tokenizer.decode(answer_ids), answer_ids=answer_ids, answer_source="greedy" if greedy is not None else "given",
        clean_logp=clean_logp, corrupted_logp=corrupted_logp, layers=layers,
        tokens=lm.token_strings(ids_c), corrupted_tokens=lm.token_strings(ids_k), kinds=kinds, first_patched=start,
        values=values, n_forward=runner.passes, n_patched=len(jobs), seconds=time.perf_counter() - began, warnings=warnings,
    )
