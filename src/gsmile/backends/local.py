"""A local Hugging Face causal LM (the embedded SmolLM2 by default), used through the
:class:`~gsmile.backends.LanguageModel` protocol.

The user's text is placed in the chat template as the user turn (the template's own
system prompt and markup are never units); the response follows the generation prompt
and is scored teacher-forced: one forward pass per perturbed prompt gives the next-token
distribution at every response position. A sequence's result does not depend on what it is
batched with (to float rounding): for Llama-architecture models the lean body of
:mod:`.llama_fast` scores a batch over a token tree of its perturbed prompts, so what they
share is computed once (see ``HFCausalLM._tree_hidden``); other models go through
transformers' forward over right-padded rows with an attention mask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelError

#: Shared tokens beyond the template after which a batch's own common start is cached too
#: (transformers' forward; the lean body shares starts through its token tree instead).
MIN_SHARED_EXTENSION = 3
#: Most token-tree nodes in one sequence of the tree scorer's first pass (their attention
#: grows with the square of it); a batch whose tree is larger is split into several.
TREE_NODES = 256
#: Stems (the perturbed part of a row) longer than this are scored row after row
#: (``HFCausalLM._chain_hidden``) instead of over a token tree: a tree of TREE_NODES nodes
#: holds one or two of them, so it would share only what the row after row path shares, and
#: less (only within its group). Occlusion over a 20-sentence context (21 rows, stems of about
#: 180 tokens) fed the body 3,270 tokens over trees (batches of 9) and 2,339 row after row
#: (batches of CHAIN_BATCH).
CHAIN_STEMS = 128
#: Most tokens of one row computed in one pass when rows are scored one after another (long
#: stems, see ``HFCausalLM._chain_hidden``): a longer row is computed in pieces, each after the
#: keys and values of the pieces before it, so a pass's memory does not grow with the row.
ROW_CHUNK = 512
#: Rows per batch when they are scored one after another: each row reuses the start it shares
#: with the row before it in the batch, so larger batches share more (memory is per row).
CHAIN_BATCH = 32
#: Tokens per forward pass aimed at by :meth:`HFCausalLM.suggest_batch_size`.
TOKENS_PER_BATCH = 2048
#: Positions per product with the output layer: one row's 48 gave 200 GFLOP/s on a 2-core
#: CPU, 8 rows' 384 gave 280 (a square product's peak there: 305).
HEAD_POSITIONS = 512

# Never reach a hub: every load is from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def check_batch_tokens(value) -> int:
    """``max_batch_tokens`` checked: an integer from 64."""
    from ..errors import check_int

    check_int("max_batch_tokens", value, 64, 10_000_000)
    return int(value)


def not_local(needs: str, name: str, advice: str = "", field: str = "model") -> InvalidInputError:
    """The one error for a model whose internals gsmile cannot read (white-box methods,
    activation patching): "{needs} a local model (local, hf:PATH) whose internals gsmile can
    read; {name} is not one{advice}"."""
    return InvalidInputError(f"{needs} a local model (local, hf:PATH) whose internals gsmile can read; {name} is not one{advice}",
                             field=field)


def require_local(lm, needs: str, *, one_device: bool = False, advice: str = "", field: str = "model") -> "HFCausalLM":
    """``lm`` loaded, when it is a local model (:class:`HFCausalLM`); else :func:`not_local`.
    one_device: refuse a model whose layers auto-map spread over several devices."""
    if not isinstance(lm, HFCausalLM):
        raise not_local(needs, getattr(lm, "model_id", None) or type(lm).__name__, advice, field)
    if one_device and lm.device == "auto-map":
        raise InvalidInputError(f"{needs} a model on one device; {lm.model_id} is spread by auto-map", field="device")
    return lm.load()


class HFCausalLM:
    """A causal LM loaded from a local directory (``save_pretrained`` layout).

    max_batch_tokens: the most tokens one scoring pass computes (None: ``TOKENS_PER_BATCH``),
        which bounds its memory: the batch size picked for short rows is about this many
        tokens over the row length, and long rows are computed in pieces of at most
        ``min(ROW_CHUNK, max_batch_tokens)`` tokens. It never changes the results."""

    def __init__(self, path: str | os.PathLike, model_id: str | None = None, system_prompt: str | None = None, *,
                 device: str | None = None, dtype: str | None = None, max_batch_tokens: int | None = None):
        import torch

        from .devices import resolve_device

        self.path = Path(path)
        self.model_id = model_id or f"hf:{self.path}"
        self.system_prompt = system_prompt
        #: Where the model runs and in which precision (see :mod:`.devices`): ``device`` is
        #: concrete ("cpu", "cuda:0", "mps") or "auto-map" (layers spread by accelerate).
        self.device, self.dtype = resolve_device(device, dtype)
        self.max_batch_tokens = TOKENS_PER_BATCH if max_batch_tokens is None else check_batch_tokens(max_batch_tokens)
        #: The torch device inputs go to (the input embeddings'): set again by :meth:`load`.
        self.device_ = torch.device("cpu" if self.device == "auto-map" else self.device)
        self._model = None
        self._tokenizer = None
        #: Score through the fast path: the shared template prefix's key/value cache is reused
        #: and, for Llama-architecture models in float32 or bfloat16 on the CPU, the body runs as
        #: :mod:`.llama_fast` (same results, less work). False: transformers' own forward over
        #: each whole row.
        self.fast_path = True
        self._prefix = None
        self._body = None
        self._body_lock = threading.Lock()
        self._local = threading.local()  # per-thread scratch: explanations may run in parallel threads

    @classmethod
    def embedded(cls, device: str | None = None, dtype: str | None = None, max_batch_tokens: int | None = None) -> "HFCausalLM":
        from .devices import resolve_device
        from .embedded import EMBEDDED_ID, ensure_converted

        resolve_device(device, dtype)  # a device that is not here fails before the conversion
        return cls(ensure_converted(), model_id=EMBEDDED_ID, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)

    @classmethod
    def from_path(cls, path: str, device: str | None = None, dtype: str | None = None,
                  max_batch_tokens: int | None = None) -> "HFCausalLM":
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ModelError(f"hf:{path}: no config.json there; give a directory saved with save_pretrained")
        return cls(p, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)

    # ------------------------------------------------------------- loading
    def load(self) -> "HFCausalLM":
        if self._model is not None:
            return self
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from .embedded import quiet_transformers

            quiet_transformers()
            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            options = {"dtype": getattr(torch, self.dtype), "local_files_only": True}
            if self.device == "auto-map":
                options["device_map"] = "auto"  # accelerate spreads the layers over the GPUs (and the CPU)
            model = AutoModelForCausalLM.from_pretrained(self.path, **options)
            if self.device != "auto-map":
                model.to(self.device)
        except Exception as exc:
            raise ModelError(f"could not load the model from {self.path} on {self.device} in {self.dtype}: "
                             f"{type(exc).__name__}: {exc}") from exc
        model.eval()
        self.device_ = model.get_input_embeddings().weight.device
        self._model = model
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        return self

    def explanation_extras(self) -> dict:
        """Where the model ran for ``Explanation.extras``: ``device``, ``dtype`` and whether the
        lean Llama body scored (``fast_path``), with the reason when it did not; in bfloat16 on
        the CPU, ``bfloat16_hardware``: whether the CPU has bfloat16 instructions (False: torch
        emulates them, slower than float32; None: unknown)."""
        extras = {"device": str(self.load().device_), "dtype": self.dtype}
        if self.device == "cpu" and self.dtype == "bfloat16":
            from .devices import cpu_has_fast_bfloat16

            extras["bfloat16_hardware"] = cpu_has_fast_bfloat16()
        if self.device == "auto-map":  # the devices accelerate spread the layers over
            spread = sorted({str(d) for d in (getattr(self._model, "hf_device_map", None) or {}).values()})
            extras["device"] = "auto-map: " + ", ".join(spread or [str(self.device_)])  # no map: all on one device
        reason = self._no_fast_path_reason()
        extras["fast_path"] = reason is None
        if reason is not None:
            extras["fast_path_reason"] = reason
        return extras

    def _no_fast_path_reason(self) -> str | None:
        """Why the lean Llama body does not score with this model (transformers' forward does),
        or None when it does."""
        if not self.fast_path:
            return "fast_path is off: transformers' forward scores every row"
        if self._fast_body() is not None:
            return None
        from . import llama_fast

        how = ("transformers' forward scores (from the shared template cache"
               + ("; long inputs row after row, each from the start it shares with the row before)" if self._chains_without_body() else ")"))
        if self.dtype not in llama_fast.DTYPES or self.device != "cpu":
            return f"the lean Llama body runs on the cpu in {' or '.join(llama_fast.DTYPES)} only; on {self.device} in {self.dtype} {how}"
        return f"not a plain Llama-architecture model: {how}"

    @property
    def model(self):
        return self.load()._model

    @property
    def tokenizer(self):
        return self.load()._tokenizer

    # ------------------------------------------------------------- prompts
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the chat-formatted prompt, up to and including the assistant header."""
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_response(self, response: str) -> list[int]:
        return self.tokenizer(response, add_special_tokens=False)["input_ids"]

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(t)]) for t in token_ids]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in enc["offset_mapping"]]

    def token_embeddings(self) -> np.ndarray:
        return self.model.get_input_embeddings().weight.detach().float().cpu().numpy()

    def max_tokens(self) -> int | None:
        """The model's window: the most positions it was built for (None when unknown)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    # ---------------------------------------------------------- generation
    def generate(self, prompt: str, max_new_tokens: int = 48) -> list[int]:
        import torch

        model = self.model
        ids = torch.tensor([self.prompt_ids(prompt)], device=self.device_)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        stop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        for i, tok in enumerate(new):
            if tok in stop:
                return new[:i]
        return new

    # ------------------------------------------------------------- scoring
    def suggest_batch_size(self, n_tokens: int) -> int:
        """Prompts per forward pass for sequences of ``n_tokens`` tokens: about
        ``max_batch_tokens`` tokens per pass, at most 64. Measured on a 2-core CPU for the
        example prompt (91 tokens, 200 samples): 13.8 s at batch 8, 12.3 s at 16, 11.9 s at
        24, 12.2 s at 32, 13.7 s at 48."""
        chained = self.fast_path and (self._fast_body() is not None or self._chains_without_body())  # long stems row after row
        if chained and n_tokens - len(self._template_prefix()[0]) > CHAIN_STEMS:
            return CHAIN_BATCH  # memory is per row there
        return int(min(64, max(1, round(self.max_batch_tokens / max(1, n_tokens)))))

    def logprobs(self, prompts: Sequence[str], response_ids: Sequence[int]) -> np.ndarray:
        """Log-probs at the response positions (see the protocol). The key/value cache of the
        prefix every prompt shares (system prompt and template up to the user's text) is
        computed once and reused; with ``fast_path=False`` every row goes through transformers'
        forward from its first token.

        The last response token is not fed: it predicts nothing the response contains."""
        return self._score_rows(self._rows(prompts, response_ids), len(response_ids), self.fast_path)

    def reduced_logprobs(self, prompts: Sequence[str], response_ids: Sequence[int],
                         reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``reduce`` applied to the log-probs of a few prompts at a time (an array ``(rows,
        positions, vocab)``) as soon as they are computed; the results stacked. The same values
        as ``reduce(logprobs(...))``, without the batch's whole log-prob array (a few hundred
        MB): the rows are written to one scratch array, reused, which ``reduce`` must not keep."""
        return self._score_rows(self._rows(prompts, response_ids), len(response_ids), self.fast_path, reduce)

    def _rows(self, prompts: Sequence[str], response_ids: Sequence[int]) -> list[list[int]]:
        """Token ids fed for each prompt: the chat-formatted prompt, then every response token
        but the last."""
        response = list(response_ids)
        return [self.prompt_ids(p) + response[:-1] for p in prompts]

    def _score_rows(self, rows: list[list[int]], n_resp: int, fast: bool = True, reduce=None) -> np.ndarray:
        """Log-probs ``(len(rows), n_resp, vocab)`` predicted at the last ``n_resp`` positions
        of each row (a row is the prompt followed by all but the last response token), or
        ``reduce`` of each row's, stacked."""
        import torch

        body = self._fast_body() if fast else None
        if body is not None:
            with torch.inference_mode():
                picked = self._tree_hidden(body, rows, n_resp)
                if picked is not None:
                    return self._head_log_softmax(picked, reduce)
        if fast and body is None and self._chains_without_body():  # (the lean body's tree already chained what it could)
            split = self._stems_and_tail(rows, n_resp)
            if split is not None and max(map(len, split[2])) > CHAIN_STEMS:
                with torch.inference_mode():
                    return self._head_log_softmax(self._chain_hidden(_ForwardSteps(self.model), *split, n_resp), reduce)
        prefix_len = 0
        past = None
        if fast:
            prefix_len, past = self._shared_prefix(rows, n_resp)
        n = len(rows)
        rest = [r[prefix_len:] for r in rows]
        width = max(len(r) for r in rest)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        # Position j of a row predicts token j+1: the response tokens are predicted at the
        # row's last n_resp positions, here counted after the prefix.
        gather = torch.empty((n, n_resp), dtype=torch.long)
        for b, r in enumerate(rest):
            input_ids[b, : len(r)] = torch.tensor(r)
            gather[b] = torch.arange(len(r) - n_resp, len(r))
        with torch.inference_mode():
            if body is not None:
                # Right padding needs no mask here: a real position never attends to a later one.
                hidden = body(input_ids, past, prefix_len)
            else:
                attention = torch.zeros((n, prefix_len + width), dtype=torch.long)
                attention[:, :prefix_len] = 1
                for b, r in enumerate(rest):
                    attention[b, prefix_len : prefix_len + len(r)] = 1
                kwargs = {}
                if past is not None:
                    from transformers import DynamicCache

                    kwargs["past_key_values"] = DynamicCache(
                        ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in past]
                    )
                    kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + width, device=self.device_)[None].expand(n, -1)
                hidden = self.model.model(input_ids=input_ids.to(self.device_), attention_mask=attention.to(self.device_),
                                          use_cache=past is not None, **kwargs).last_hidden_state
            gather = gather.to(hidden.device)  # (built on the CPU; the model may run elsewhere)
            picked = torch.gather(hidden, 1, gather[:, :, None].expand(-1, -1, hidden.shape[-1]))
            return self._head_log_softmax(picked, reduce)

    def _chains_without_body(self) -> bool:
        """Whether transformers' forward scores long stems row after row (``_chain_hidden``)
        when the lean body does not run: on the CPU, where a model's time is its arithmetic
        and reusing each row's shared start saves it. Not on a GPU: there a batch of whole
        rows may beat one row at a time, and nothing has been measured there."""
        return self.device_.type == "cpu" and self.device != "auto-map"

    def _fast_body(self):
        """The lean Llama body for this model (built once), or None for other architectures."""
        with self._body_lock:
            if self._body is None:
                from . import llama_fast

                self._body = llama_fast.LlamaBody(self.model) if llama_fast.supports(self.model) else False
        return self._body or None

    def _head_log_softmax(self, picked, reduce=None) -> np.ndarray:
        """The output layer and log-softmax at ``picked`` hidden states ``(rows, positions,
        hidden)``, a few rows (about ``HEAD_POSITIONS`` positions) at a time: their logits are
        written to the result, or to a scratch array that is reused and given to ``reduce``,
        and turned into log-probs in place. No temporary the size of the batch's log-probs is
        made (a whole-batch ``logsumexp`` made two), and with ``reduce`` not even the result."""
        import torch

        head = self.model.lm_head
        n, positions, hidden = picked.shape
        vocab = head.out_features
        step = max(1, min(n, HEAD_POSITIONS // max(1, positions)))
        scratch = getattr(self._local, "scratch", None)
        if reduce is None:
            out = torch.from_numpy(np.empty((n, positions, vocab), dtype=np.float32))
        elif scratch is None or scratch.shape[1:] != (positions, vocab) or len(scratch) < step:
            scratch = self._local.scratch = torch.empty((step, positions, vocab))  # kept for the next batches
        # A float32 head on the CPU writes its product straight into the result; elsewhere (a GPU,
        # half precision) the logits are computed where the head is and copied to the CPU as float32.
        plain = head.weight.dtype == torch.float32 and head.bias is None and head.weight.device.type == "cpu"
        results = []
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            logits = out[lo:hi] if reduce is None else scratch[: hi - lo]
            if plain:
                torch.matmul(picked[lo:hi].reshape(-1, hidden), head.weight.t(), out=logits.view(-1, vocab))
            else:
                logits.copy_(head(picked[lo:hi].to(head.weight.device, head.weight.dtype)))
            torch.log_softmax(logits, dim=-1, out=logits)  # in place: each row is read before it is written
            if reduce is not None:
                results.append(np.asarray(reduce(logits.numpy())))
        if reduce is None:
            return out.numpy()
        return np.concatenate(results) if results else np.zeros((0, positions))

    def _tree_hidden(self, body, rows: list[list[int]], n_resp: int):
        """Hidden states ``(rows, n_resp, hidden)`` at the predicting positions, computed over a
        token tree so that what rows share is computed once; None when the rows do not all
        start with the template prefix (the caller then scores them row by row).

        Every row is the template prefix (its cache is kept), the row's own tokens (its
        *stem*: the perturbed user text) and a *tail* every row ends with (the template's end
        and the response). The stems of a batch form a tree of distinct prefixes: perturbed
        prompts sharing their first words share its first nodes. Two passes of the lean body:

        1. the tree's nodes as one sequence (or a few: see :func:`_stem_trees`), each at its
           depth's position, attending to the template prefix and to its own ancestors only:
           every node's keys and values;
        2. the tail for every row, after that row's path through the tree (its keys and
           values gathered from pass 1), at positions that continue the row.

        So a shared start is computed once per batch, and no row is padded: the tails are the
        same length. Each token sees exactly the tokens before it in its own row, so the
        results are those of a forward pass over each row, to float rounding."""
        import torch

        split = self._stems_and_tail(rows, n_resp)
        if split is None:
            return None
        past, start, stems, tail_ids = split
        tail = len(tail_ids)
        if max(map(len, stems)) > CHAIN_STEMS:
            return self._chain_hidden(body, past, start, stems, tail_ids, n_resp)
        # At most about max_batch_tokens per pass: a larger batch (given, or long rows with a
        # long response) is scored in balanced parts.
        fits = max(1, round(self.max_batch_tokens / max(map(len, rows))))
        if len(rows) > fits:
            parts = -(-len(rows) // fits)
            size = -(-len(rows) // parts)
            return torch.cat([self._tree_hidden(body, rows[lo : lo + size], n_resp) for lo in range(0, len(rows), size)])
        groups, paths = _stem_trees(stems)
        n, width = len(rows), max(len(g["tokens"]) for g in groups)
        depth = max(len(p) for _, p in paths)
        n_layers = len(past)
        if width:
            # Pass 1: the trees' nodes, one sequence per group (right-padded; pads see the prefix only).
            m = len(groups)
            node_ids = torch.zeros((m, width), dtype=torch.long)
            positions = torch.full((m, width), start, dtype=torch.long)
            mask = torch.zeros((m, 1, width, start + width), dtype=torch.bool)
            mask[..., :start] = True
            for gi, g in enumerate(groups):
                count = len(g["tokens"])
                node_ids[gi, :count] = torch.tensor(g["tokens"], dtype=torch.long)
                positions[gi, :count] += torch.tensor(g["depth"], dtype=torch.long)
                seen = mask[gi, 0, :, start:]
                for i, parent in enumerate(g["parents"]):  # a node sees its parent's view and itself
                    if parent >= 0:
                        seen[i] = seen[parent]
                    seen[i, i] = True
                seen[count:, count:] = torch.eye(width - count, dtype=torch.bool)
            tree_kv = body(node_ids, past, start, positions=positions, mask=mask, kv_only=True)
            # Each row's path: (group, node) of each of its tokens (pads: node 0, masked).
            group_of = torch.tensor([gi for gi, _ in paths], dtype=torch.long)[:, None].expand(n, depth).reshape(-1)
            node_of = torch.zeros((n, depth), dtype=torch.long)
            for b, (_, path) in enumerate(paths):
                node_of[b, : len(path)] = torch.tensor(path, dtype=torch.long)
            node_of = node_of.reshape(-1)
        # Pass 2: every row's tail after its own path.
        lengths = torch.tensor([len(p) for _, p in paths], dtype=torch.long)
        row_past = []
        for layer in range(n_layers):
            pk, pv = past[layer]
            if width:
                # (groups, kv_heads, width, head_dim) -> each row's path: (rows, kv_heads, depth, head_dim)
                k, v = (x[group_of, :, node_of].view(n, depth, *x.shape[1::2]).transpose(1, 2) for x in tree_kv[layer])
                row_past.append((torch.cat((pk.expand(n, -1, -1, -1), k), dim=2),
                                 torch.cat((pv.expand(n, -1, -1, -1), v), dim=2)))
            else:
                row_past.append((pk, pv))
        known = start + depth
        mask = torch.zeros((n, 1, tail, known + tail), dtype=torch.bool)
        mask[..., :start] = True
        mask[:, 0, :, start:known] = (torch.arange(depth)[None, :] < lengths[:, None])[:, None, :]
        mask[..., known:] = torch.ones((tail, tail), dtype=torch.bool).tril()
        positions = start + lengths[:, None] + torch.arange(tail)[None, :]
        hidden = body(torch.tensor(tail_ids, dtype=torch.long)[None].expand(n, -1), row_past, known, positions=positions, mask=mask)
        return hidden[:, tail - n_resp :]

    def _stems_and_tail(self, rows: list[list[int]], n_resp: int):
        """``(past, start, stems, tail)``: the template prefix's keys and values and length, each
        row's *stem* (its tokens after the prefix, up to the tail) and the *tail* every row ends
        with (the template's end and the response; at most a piece long unless the response is
        longer); None when the rows do not all start with the prefix or share no tail that
        holds the response (the caller then scores them as they are)."""
        ids, past = self._template_prefix()
        start = len(ids)
        if past is None or start == 0 or any(r[:start] != ids for r in rows):
            return None
        rest = [r[start:] for r in rows]
        first, shortest = rest[0], min(map(len, rest))
        tail = 0
        while tail < shortest and all(r[-1 - tail] == first[-1 - tail] for r in rest[1:]):
            tail += 1
        if tail < max(n_resp, 1):
            return None
        # The tail runs in one pass per row: at most a piece long (a lone row, or rows sharing a
        # long end, leave the rest to the stems and so to pieces), unless the response is longer.
        tail = min(tail, max(n_resp, min(ROW_CHUNK, self.max_batch_tokens)))
        return past, start, [row[: len(row) - tail] for row in rest], first[len(first) - tail :]

    def _chain_hidden(self, body, past, start: int, stems: list[list[int]], tail: list[int], n_resp: int):
        """Hidden states ``(rows, n_resp, hidden)`` at the predicting positions of rows
        ``template prefix + stem + tail`` whose stems are long (a retrieved context, a long
        prompt), computed one row after another in the stems' sorted order: a row starts from
        the keys and values of the start it shares with the row before it (all it shares with
        any earlier row, as they are sorted) and computes only the rest, at most ``ROW_CHUNK``
        tokens per pass. A perturbation that removes a late sentence leaves most of its row
        to be reused; a token tree over such stems would be one stem per tree. ``body``: the
        lean body, or :class:`_ForwardSteps` (transformers' forward) for other models."""
        import torch

        hidden_size = self.model.get_input_embeddings().embedding_dim
        out = torch.empty((len(stems), n_resp, hidden_size), dtype=self.model.dtype, device=self.device_)
        prev: list[int] | None = None
        kv = past  # keys and values of the template prefix and of the previous row's stem
        for i in sorted(range(len(stems)), key=stems.__getitem__):
            stem = stems[i]
            shared = 0
            if prev is not None:
                limit = min(len(stem), len(prev))
                while shared < limit and stem[shared] == prev[shared]:
                    shared += 1
            known = start + shared
            kv = [(k[:, :, :known], v[:, :, :known]) for k, v in kv]
            todo = stem[shared:] + tail
            outputs = []
            chunk = min(ROW_CHUNK, self.max_batch_tokens)
            for lo in range(0, len(todo), chunk):
                piece = torch.tensor([todo[lo : lo + chunk]], dtype=torch.long)
                hidden, kv = body(piece, kv, known + lo, keep_kv=True)
                if lo + piece.shape[1] > len(todo) - n_resp:  # holds predicting positions
                    outputs.append(hidden[0])
            out[i] = torch.cat(outputs)[-n_resp:]
            prev = stem
        return out

    def _template_prefix(self):
        """(token ids, per-layer (key, value)) of the chat template up to the user's text,
        computed once per backend and kept (past None when there is no such prefix)."""
        import torch

        if self._prefix is None:
            # The template up to the user's text: the common start of two unrelated prompts.
            a, b = self.prompt_ids("Alpha"), self.prompt_ids("7 zeta")
            length = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            ids = a[:length]
            past = None
            if ids:
                with torch.inference_mode():
                    cache = self.model.model(input_ids=torch.tensor([ids], device=self.device_), use_cache=True).past_key_values
                past = [(layer.keys, layer.values) for layer in cache.layers]
            self._prefix = (ids, past)
        return self._prefix

    def _shared_prefix(self, rows: list[list[int]], n_resp: int):
        """(length, per-layer (key, value)) of the template prefix shared by every row, extended
        over the batch's own common start when that is long enough; (0, None) when the rows do
        not all start with the template prefix."""
        import torch

        ids, past = self._template_prefix()
        length = len(ids)
        limit = min(len(r) for r in rows) - max(n_resp, 1)  # the rest must hold every predicting position
        if past is None or length > limit or any(r[:length] != ids for r in rows):
            return 0, None
        # Rows of one batch often share more than the template (the first words kept): extend
        # the cache over their common start with one short pass, when that is worth a call.
        extra = length
        first = rows[0]
        while extra < limit and all(r[extra] == first[extra] for r in rows[1:]):
            extra += 1
        if len(rows) > 1 and extra - length >= MIN_SHARED_EXTENSION:
            from transformers import DynamicCache

            with torch.inference_mode():
                cache = self.model.model(
                    input_ids=torch.tensor([first[length:extra]], device=self.device_),
                    past_key_values=DynamicCache(ddp_cache_data=list(past)),
                    position_ids=torch.arange(length, extra, device=self.device_)[None],
                    use_cache=True,
                ).past_key_values
            return extra, [(layer.keys, layer.values) for layer in cache.layers]
        return length, past


def _stem_trees(stems: list[list[int]]):
    """The stems' token trees: ``(groups, paths)``. A group is one tree over consecutive stems,
    with at most ``TREE_NODES`` nodes unless one stem alone is longer: ``tokens``, ``parents``
    (-1: the root, i.e. the template prefix) and ``depth`` per node, parents before their
    children, one node per distinct (parent, token). ``paths[i]`` is (group, node of each of
    stem i's tokens)."""
    groups, paths = [], []
    for stem in stems:
        new = len(stem)
        if groups:  # the nodes this stem adds to the current tree
            node = -1
            for tok in stem:
                node = groups[-1]["index"].get((node, tok))
                if node is None:
                    break
                new -= 1
        if not groups or (groups[-1]["tokens"] and len(groups[-1]["tokens"]) + new > TREE_NODES):
            groups.append({"index": {}, "tokens": [], "parents": [], "depth": []})
        g = groups[-1]
        node, path = -1, []
        for tok in stem:
            child = g["index"].get((node, tok))
            if child is None:
                child = g["index"][(node, tok)] = len(g["tokens"])
                g["tokens"].append(tok)
                g["parents"].append(node)
                g["depth"].append(len(path))
            node = child
            path.append(child)
        paths.append((len(groups) - 1, path))
    return groups, paths


class _ForwardSteps:
    """transformers' forward behind the call ``_chain_hidden`` makes of the lean body:
    ``steps(ids, kv, start, keep_kv=True)`` → ``(hidden, kv)``, the hidden states of ``ids``
    ``(1, width)`` continuing the per-layer (keys, values) ``kv`` at position ``start``, and
    the keys and values of both together."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, past, start: int, keep_kv: bool = True):
        import torch
        from transformers import DynamicCache

        device = self.model.get_input_embeddings().weight.device
        width = input_ids.shape[1]
        out = self.model.model(input_ids=input_ids.to(device), past_key_values=DynamicCache(ddp_cache_data=list(past)),
                               position_ids=torch.arange(start, start + width, device=device)[None], use_cache=True)
        return out.last_hidden_state, [(layer.keys, layer.values) for layer in out.past_key_values.layers]
