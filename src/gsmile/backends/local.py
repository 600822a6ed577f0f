"""A local Hugging Face causal LM (the embedded SmolLM2 by default), used through the
:class:`~gsmile.backends.LanguageModel` protocol.

The user's text is placed in the chat template as the user turn (the template's own
system prompt and markup are never units); the response follows the generation prompt
and is scored teacher-forced: one forward pass per perturbed prompt gives the next-token
distribution at every response position. Batches are right-padded with an attention
mask, so a sequence's result does not depend on what it is batched with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelError

#: Shared tokens beyond the template after which a batch's own common start is cached too.
MIN_SHARED_EXTENSION = 3
#: Tokens per forward pass aimed at by :meth:`HFCausalLM.suggest_batch_size`.
TOKENS_PER_BATCH = 2048

# Never reach a hub: every load is from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class HFCausalLM:
    """A causal LM loaded from a local directory (``save_pretrained`` layout)."""

    def __init__(self, path: str | os.PathLike, model_id: str | None = None, system_prompt: str | None = None):
        self.path = Path(path)
        self.model_id = model_id or f"hf:{self.path}"
        self.system_prompt = system_prompt
        self._model = None
        self._tokenizer = None
        #: Reuse the key/value cache of the shared template prefix (same results, less work).
        self.prefix_cache = True
        self._prefix = None

    @classmethod
    def embedded(cls) -> "HFCausalLM":
        from .embedded import EMBEDDED_ID, ensure_converted

        return cls(ensure_converted(), model_id=EMBEDDED_ID)

    @classmethod
    def from_path(cls, path: str) -> "HFCausalLM":
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ModelError(f"hf:{path}: no config.json there; give a directory saved with save_pretrained")
        return cls(p)

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
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32, local_files_only=True)
        except Exception as exc:
            raise ModelError(f"could not load the model from {self.path}: {type(exc).__name__}: {exc}") from exc
        model.eval()
        self._model = model
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        return self

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
        return self.model.get_input_embeddings().weight.detach().float().numpy()

    # ---------------------------------------------------------- generation
    def generate(self, prompt: str, max_new_tokens: int = 48) -> list[int]:
        import torch

        ids = torch.tensor([self.prompt_ids(prompt)])
        with torch.inference_mode():
            out = self.model.generate(
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
        ``TOKENS_PER_BATCH`` tokens per pass, at most 64. Measured on a 2-core CPU for the
        example prompt (91 tokens, 200 samples): 13.8 s at batch 8, 12.3 s at 16, 11.9 s at
        24, 12.2 s at 32, 13.7 s at 48."""
        return int(min(64, max(1, round(TOKENS_PER_BATCH / max(1, n_tokens)))))

    def logprobs(self, prompts: Sequence[str], response_ids: Sequence[int]) -> np.ndarray:
        """Log-probs at the response positions (see the protocol). The key/value cache of the
        prefix every prompt shares (system prompt and template up to the user's text) is
        computed once and reused; with ``prefix_cache=False`` every pass starts from scratch.

        The last response token is not fed: it predicts nothing the response contains."""
        response = list(response_ids)
        rows = [self.prompt_ids(p) + response[:-1] for p in prompts]
        return self._score_rows(rows, len(response), self.prefix_cache)

    def _score_rows(self, rows: list[list[int]], n_resp: int, use_prefix: bool = True) -> np.ndarray:
        """Log-probs ``(len(rows), n_resp, vocab)`` predicted at the last ``n_resp`` positions
        of each row (a row is the prompt followed by all but the last response token)."""
        import torch

        prefix_len = 0
        past = None
        if use_prefix:
            prefix_len, past = self._shared_prefix(rows, n_resp)
        n = len(rows)
        rest = [r[prefix_len:] for r in rows]
        width = max(len(r) for r in rest)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        attention = torch.zeros((n, prefix_len + width), dtype=torch.long)
        attention[:, :prefix_len] = 1
        # Position j of a row predicts token j+1: the response tokens are predicted at the
        # row's last n_resp positions, here counted after the prefix.
        gather = torch.empty((n, n_resp), dtype=torch.long)
        for b, r in enumerate(rest):
            input_ids[b, : len(r)] = torch.tensor(r)
            attention[b, prefix_len : prefix_len + len(r)] = 1
            gather[b] = torch.arange(len(r) - n_resp, len(r))
        with torch.inference_mode():
            kwargs = {}
            if past is not None:
                from transformers import DynamicCache

                kwargs["past_key_values"] = DynamicCache(
                    ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in past]
                )
                kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + width)[None].expand(n, -1)
            hidden = self.model.model(input_ids=input_ids, attention_mask=attention, use_cache=past is not None, **kwargs).last_hidden_state
            picked = torch.gather(hidden, 1, gather[:, :, None].expand(-1, -1, hidden.shape[-1]))
            logits = self.model.lm_head(picked).float()
            # log-softmax in place: one (rows, positions, vocab) array instead of two.
            logits -= torch.logsumexp(logits, dim=-1, keepdim=True)
            return logits.numpy()

    def _shared_prefix(self, rows: list[list[int]], n_resp: int):
        """(length, per-layer (key, value)) of the template prefix shared by every row, computed
        once per backend and kept; (0, None) when the rows do not all start with it."""
        import torch

        if self._prefix is None:
            # The template up to the user's text: the common start of two unrelated prompts.
            a, b = self.prompt_ids("Alpha"), self.prompt_ids("7 zeta")
            length = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            ids = a[:length]
            past = None
            if ids:
                with torch.inference_mode():
                    cache = self.model.model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
                past = [(layer.keys, layer.values) for layer in cache.layers]
            self._prefix = (ids, past)
        ids, past = self._prefix
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
                    input_ids=torch.tensor([first[length:extra]]),
                    past_key_values=DynamicCache(ddp_cache_data=list(past)),
                    position_ids=torch.arange(length, extra)[None],
                    use_cache=True,
                ).past_key_values
            return extra, [(layer.keys, layer.values) for layer in cache.layers]
        return length, past
