"""Small, fast, deterministic models for the server tests (no torch)."""

from __future__ import annotations

import re
import zlib

import numpy as np

WORD = re.compile(r"\S+")


class ToyLM:
    """A bag-of-words language model that implements the LanguageModel protocol.

    Tokens are whitespace-separated words (hashed into a small vocabulary). At every
    response position the next-token logits are 0, plus ``boost`` for each vocabulary
    entry whose word occurs in the user turn: a response made of words that appear in the
    prompt (or context) is likely, so a context sentence holding the response's words
    raises log p(response | context, prompt) exactly where expected.
    """

    model_id = "toy-lm"

    def __init__(self, vocab: int = 4096, boost: float = 3.0, dim: int = 8):
        self.vocab = vocab
        self.boost = boost
        self.words: dict[int, str] = {}
        self.embeddings = np.random.default_rng(0).normal(size=(vocab, dim))
        self.scored = 0

    def _id(self, word: str) -> int:
        key = word.strip(".,?!").lower()
        i = zlib.crc32(key.encode()) % self.vocab
        self.words.setdefault(i, word)
        return i

    def encode_response(self, response):
        return [self._id(w) for w in WORD.findall(response)]

    def generate(self, prompt, max_new_tokens):
        return self.encode_response(prompt)[: min(4, max_new_tokens)]

    def decode(self, token_ids):
        return " ".join(self.words.get(int(t), "?") for t in token_ids)

    def token_strings(self, token_ids):
        return [self.words.get(int(t), "?") for t in token_ids]

    def token_spans(self, text):
        return [m.span() for m in WORD.finditer(text)]

    def token_embeddings(self):
        return self.embeddings

    def logprobs(self, prompts, response_ids):
        out = np.zeros((len(prompts), len(response_ids), self.vocab))
        for b, prompt in enumerate(prompts):
            logits = np.zeros(self.vocab)
            for w in WORD.findall(prompt):
                logits[self._id(w)] = self.boost
            out[b, :, :] = logits - np.log(np.exp(logits).sum())
        self.scored += len(prompts)
        return out


class Additive:
    """f(text) = bias + Σ weight[word] over the distinct known words present (a scalar model)."""

    model_id = "additive"

    def __init__(self, weights: dict[str, float], bias: float = 0.0):
        self.weights = dict(weights)
        self.bias = bias

    def __call__(self, texts):
        out = []
        for t in texts:
            present = set(WORD.findall(t.replace("?", " ").replace(",", " ")))
            out.append(self.bias + sum(w for word, w in self.weights.items() if word in present))
        return out
