"""Models behind an OpenAI-compatible HTTP API (OpenAI, vLLM, llama.cpp, Ollama...).

Two ways to explain such a model; :func:`gsmile.backends.prepare_backend` picks one per
explanation and records which and why in ``Explanation.extras``:

**Log-prob path** (the server returns log-probabilities of a given text: the legacy
``/completions`` endpoint with ``echo`` and ``logprobs``, as llama.cpp's and vLLM's servers
offer). The chat markup is built here, not by the server: the prompt text sent is
``prompt_template`` with ``{prompt}`` replaced by the (perturbed) user text, followed by the
response text, e.g. ChatML ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``.
The server echoes every token of it with its log-probability and its ``top_logprobs``
most likely alternatives; the tokens from the end of the prompt text on are the response,
scored teacher-forced exactly as the local backend does.

The API returns only the top-k of each next-token distribution, so this backend presents
a small vocabulary to the targets, fixed by the *reference* (the first :meth:`logprobs`
call after :meth:`generate`/:meth:`encode_response`): the response's tokens, every token in
the reference's top-k at any position, and one last "rest" atom. A row's known tokens (its
top-k and the response token, whose log-probability the server always returns) keep
their exact probability; a vocabulary token not in the row's top-k gets
``min(p_k, R / (n + 1))`` (``p_k`` the row's smallest top-k probability, ``R`` the mass not
listed, ``n`` the number of such tokens): its true probability is at most ``p_k``; the
rest atom holds what remains, so each row sums to 1. Consequences: the ``logprob`` target is
exact; ``kl``/``js``/``tv`` and ``wasserstein`` compare the distributions over the
returned top-k plus the rest. The Wasserstein ground cost uses MiniLM embeddings of the
token strings (the rest atom is at cost 1 from every token); without MiniLM installed it
falls back to one-hot embeddings (cost 1 between any two distinct tokens), recorded in
``extras``.

**Text-only path** (no log-probs: chat-only APIs, servers without ``echo``): each perturbed
prompt is sent to ``/chat/completions`` (the server applies its own chat template) at
temperature 0 and the regenerated text is compared with the original response by the
``embedding`` target (see :class:`gsmile.backends.text.TextModel`).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelError, check_int
from .cache import CallCache
from .http import CallStats, JSONClient, RequestRejected

DEFAULT_BASE_URL = "https://api.openai.com/v1"

PROMPT_TEMPLATES: dict[str, str] = {
    "chatml": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
    # The embedded SmolLM2's own template with its default system prompt (the local backend's text).
    "smollm2": (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "raw": "{prompt}",
}
REST = "\x00<rest>"  # the vocabulary's last atom: probability mass outside the listed tokens
_FLOOR = 1e-12


class APIClient:
    """The HTTP client of a backend behind an OpenAI-compatible API, made from its settings
    (``base_url``, ``api_key``/``api_key_env``, ``timeout``, ``max_retries``, ``backoff``,
    ``max_backoff``, ``concurrency``, ``cache_dir``/``use_cache``, ``random_state``, and
    ``sleep`` for tests) on first use, once, under ``_client_lock``. Shared by the text and
    the images backends."""

    sleep = None  # injected by tests: the wait between retries

    def _store_connection(self, model, base_url, api_key, api_key_env, concurrency, max_retries, timeout, backoff,
                          max_backoff, cache_dir, use_cache, random_state, model_id: str) -> None:
        """Store the settings every API backend has (constructors store, nothing is checked)."""
        self.model, self.base_url, self.api_key, self.api_key_env = model, base_url, api_key, api_key_env
        self.concurrency, self.max_retries = concurrency, max_retries
        self.timeout, self.backoff, self.max_backoff = timeout, backoff, max_backoff
        self.cache_dir, self.use_cache, self.random_state = cache_dir, use_cache, random_state
        self.model_id = model_id
        self._client: JSONClient | None = None
        self._client_lock = threading.Lock()

    def _validate_connection(self, example: str) -> None:
        """Refuse bad connection settings (InvalidInputError naming the field, one line each).
        ``example``: the model spelling shown when the name is missing."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidInputError(f"{self.model_id.split(':')[0]}:NAME needs a model name, e.g. {example}", field="model")
        check_int("concurrency", self.concurrency, 1)
        check_int("max_retries", self.max_retries, 0)
        url = self.effective_base_url
        if not url.startswith(("http://", "https://")) or len(url.rstrip("/")) <= len(url.split("://")[0]) + 3:
            raise InvalidInputError(f"the base URL must start with http:// or https:// and name a host, got {url!r}", field="base_url")
        if any(ch.isspace() for ch in url):
            raise InvalidInputError(f"the base URL must not contain spaces, got {url!r}", field="base_url")
        for name in ("timeout", "backoff", "max_backoff"):
            value = getattr(self, name)
            positive = name == "timeout"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise InvalidInputError(f"{name} must be a {'positive' if positive else 'non-negative'} number of seconds, got {value!r}", field=name)

    @property
    def effective_base_url(self) -> str:
        """``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's own API."""
        return str(self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)

    @property
    def client(self) -> JSONClient:
        """The HTTP client, made on first use (once, under a lock); shared by every explanation."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> JSONClient:
        """A new client from the settings (the key from the environment when not given)."""
        self.validate()
        base_url = self.effective_base_url
        key = self.api_key
        if key is None:
            env = self.api_key_env or "OPENAI_API_KEY"
            key = os.environ.get(env)
            if key is None and self.api_key_env:
                raise InvalidInputError(f"environment variable {env} (from --api-key-env) is not set")
            if key is None and base_url.rstrip("/") == DEFAULT_BASE_URL:
                raise InvalidInputError("set OPENAI_API_KEY (or name another variable with --api-key-env) to call the OpenAI API")
        extra = {} if self.sleep is None else {"sleep": self.sleep}
        return JSONClient(
            base_url,
            label=self.model_id,
            api_key=key,
            timeout=float(self.timeout),
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            concurrency=self.concurrency,
            cache=CallCache(self.cache_dir) if self.use_cache else None,
            random_state=self.random_state,
            **extra,
        )


class OpenAIBackend(APIClient):
    """``openai:MODEL``: a model behind an OpenAI-compatible API.

    model: the model name the server expects.
    base_url: e.g. ``http://127.0.0.1:8080/v1``; default ``$OPENAI_BASE_URL`` or OpenAI's.
    api_key: the key itself; default: the environment variable ``api_key_env``
        (``OPENAI_API_KEY``); none is sent when it is unset (local servers).
    prompt_template: "chatml", "smollm2", "raw", or a string containing ``{prompt}``: the
        raw text sent to ``/completions`` on the log-prob path.
    top_logprobs: alternatives returned per position (servers cap it, OpenAI at 5).
    concurrency, max_retries, timeout, backoff: call behaviour (see :mod:`gsmile.backends.http`).
    batch_prompts: prompts sent per log-prob request (a list in `"prompt"`), for servers that
        accept batches (OpenAI, vLLM); 1 (default) for those that do not (llama.cpp).
    cache_dir / use_cache: the persistent call cache (default ``<gsmile cache>/calls``).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        prompt_template: str = "chatml",
        top_logprobs: int = 5,
        concurrency: int = 4,
        batch_prompts: int = 1,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        random_state: int | None = None,
    ):
        self._store_connection(model, base_url, api_key, api_key_env, concurrency, max_retries, timeout, backoff,
                               max_backoff, cache_dir, use_cache, random_state, model_id=f"openai:{model}")
        self.prompt_template = prompt_template
        self.top_logprobs = top_logprobs
        self.batch_prompts = batch_prompts
        self.text_endpoint: str | None = None

    # --------------------------------------------------------------- set-up
    def validate(self) -> "OpenAIBackend":
        self._validate_connection("openai:gpt-4o-mini")
        check_int("batch_prompts", self.batch_prompts, 1)
        check_int("top_logprobs", self.top_logprobs, 1)
        self.template
        return self

    @property
    def template(self) -> str:
        t = PROMPT_TEMPLATES.get(self.prompt_template, self.prompt_template)
        if not isinstance(t, str) or t.count("{prompt}") != 1:
            raise InvalidInputError(
                f"prompt template must be one of {', '.join(PROMPT_TEMPLATES)} or a text with one {{prompt}}; got {self.prompt_template!r}"
            )
        return t

    def format_prompt(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def for_explanation(self) -> "APIExplanation":
        """The object one explanation scores with: it holds that explanation's token
        vocabulary and call counters; this backend (client, cache, settings) is shared."""
        return APIExplanation(self)

    def call_stats(self, stats: CallStats) -> dict[str, Any]:
        c = self.client
        return {
            **stats.as_dict(),
            "base_url": c.base_url,
            "concurrency": self.concurrency,
            "batch_prompts": self.batch_prompts,
            "cache": str(c.cache.path) if c.cache is not None else None,
        }

    # ------------------------------------------------------- request bodies
    def _echo_body(self, text: str) -> dict[str, Any]:
        # max_tokens=1: some servers (llama.cpp) read 0 as "no limit"; the one token is ignored.
        return {"model": self.model, "prompt": text, "echo": True, "logprobs": self.top_logprobs, "max_tokens": 1, "temperature": 0.0}

    def echo(self, texts: Sequence[str], stats: CallStats | None = None) -> list[dict[str, Any]]:
        """The echoed tokens and log-probs of each text (``stats``: the caller's counters)."""
        answers = self.client.post_batched("/completions", [self._echo_body(t) for t in texts], self.batch_prompts, stats)
        return [_echo_logprobs(a, t, self.model_id) for a, t in zip(answers, texts)]

    # ------------------------------------------------------ path detection
    def supports_logprobs(self, prompt: str, stats: CallStats | None = None) -> tuple[bool, str]:
        """Ask ``/completions`` to echo the formatted prompt with log-probs (one call, cached)."""
        try:
            lp = self.echo([self.format_prompt(prompt)], stats)[0]
        except RequestRejected as exc:
            return False, f"the server refused /completions with echo and logprobs ({exc})"
        if sum(v is not None for v in lp["token_logprobs"]) == 0 or not any(lp["top_logprobs"][1:]):
            return False, "the server's /completions answer carried no log-probabilities for the echoed prompt"
        if lp["generated"] and _generated_entries(lp) == 0:
            # The generated token is missing from the echoed lists: the server pairs each token
            # with the distribution of the next one (llama-cpp-python without a leading BOS).
            return False, "the server's echoed log-probabilities are not aligned with their tokens (the generated token is missing)"
        return True, "the server's /completions endpoint returns echoed prompt log-probabilities (echo + logprobs)"

    # ----------------------------------------------------------- text path
    def complete_texts(self, prompts: Sequence[str], max_new_tokens: int, stats: CallStats | None = None) -> list[str]:
        """Greedy (temperature 0) replies via ``/chat/completions`` (the server applies its chat
        template); a server without that endpoint (404/405) is asked on ``/completions`` with
        the prompt template instead. ``text_endpoint`` records which was used (a fact about
        the server, the same for every explanation)."""
        if self.text_endpoint != "/completions":
            try:
                out = self._chat(prompts, max_new_tokens, stats)
                self.text_endpoint = "/chat/completions"
                return out
            except RequestRejected as exc:
                if exc.status not in (404, 405) or self.text_endpoint == "/chat/completions":
                    raise
                self.text_endpoint = "/completions"
        bodies = [{"model": self.model, "prompt": self.format_prompt(p), "max_tokens": int(max_new_tokens), "temperature": 0.0} for p in prompts]
        return [_field(a, ("choices", 0, "text"), self.model_id, "/completions") for a in self.client.post_many("/completions", bodies, stats)]

    def _chat(self, prompts: Sequence[str], max_new_tokens: int, stats: CallStats | None) -> list[str]:
        bodies = [
            {"model": self.model, "messages": [{"role": "user", "content": p}], "temperature": 0.0, "max_tokens": int(max_new_tokens)}
            for p in prompts
        ]
        answers = self.client.post_many("/chat/completions", bodies, stats)
        return [_field(a, ("choices", 0, "message", "content"), self.model_id, "/chat/completions") or "" for a in answers]

    def complete(self, prompt: str, max_new_tokens: int, stats: CallStats | None = None) -> str:
        """The greedy continuation of the formatted prompt on ``/completions``."""
        body = {"model": self.model, "prompt": self.format_prompt(prompt), "max_tokens": int(max_new_tokens), "temperature": 0.0}
        answer = self.client.post("/completions", body, stats=stats)
        try:
            return answer["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise ModelError(f"{self.model_id}: /completions answered without choices[0].text") from None

    def token_spans(self, text: str, stats: CallStats | None = None) -> list[tuple[int, int]]:
        lp = self.echo([text], stats)[0]
        tokens = lp["tokens"][: len(lp["tokens"]) - _generated_entries(lp)]
        if "".join(tokens) != text:
            raise ModelError(f"{self.model_id}: the server's tokens do not spell the prompt exactly; use --unit word or sentence")
        spans, pos = [], 0
        for tok in tokens:
            if tok:
                spans.append((pos, pos + len(tok)))
                pos += len(tok)
        return spans


class APIExplanation:
    """One explanation's view of an :class:`OpenAIBackend`: a LanguageModel whose token ids
    index this explanation's own vocabulary, and whose calls are counted for it alone.

    The vocabulary is fixed by the *reference* (the first :meth:`logprobs` call after
    :meth:`generate`/:meth:`encode_response`): the response's tokens, every token in the
    reference's top-k at any position, and the rest atom (see the module's docstring)."""

    def __init__(self, backend: OpenAIBackend):
        self.backend = backend
        self.model_id = backend.model_id
        self.stats = CallStats()
        self.embedding_note: str | None = None
        self._strings: list[str] = []
        self._ids: dict[str, int] = {}
        self._frozen = False

    # the API's own questions, counted for this explanation
    @property
    def template(self) -> str:
        return self.backend.template

    @property
    def text_endpoint(self) -> str | None:
        return self.backend.text_endpoint

    def supports_logprobs(self, prompt: str) -> tuple[bool, str]:
        return self.backend.supports_logprobs(prompt, self.stats)

    def complete_texts(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return self.backend.complete_texts(prompts, max_new_tokens, self.stats)

    def explanation_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"calls": self.backend.call_stats(self.stats)}
        if self.embedding_note is not None:
            extras["ground_cost"] = self.embedding_note
        return extras

    # ------------------------------------------------- LanguageModel protocol
    def _reset_vocab(self, strings: Sequence[str]) -> None:
        self._strings, self._ids, self._frozen = [], {}, False
        for s in strings:
            self._add(s)

    def _add(self, s: str) -> int:
        if s not in self._ids:
            self._ids[s] = len(self._strings)
            self._strings.append(s)
        return self._ids[s]

    def _response_tokens(self, prompt_text: str, response: str) -> list[str]:
        lp = self.backend.echo([prompt_text + response], self.stats)[0]
        tokens, _ = _split_response(lp, response, self.model_id)
        return tokens

    def generate(self, prompt: str, max_new_tokens: int = 48) -> list[int]:
        text = self.backend.complete(prompt, max_new_tokens, self.stats)
        if not text.strip():
            return []
        # The tokens of the response are those the server finds when it echoes prompt + response
        # (the same request as the reference scoring that follows: answered from the cache).
        tokens = self._response_tokens(self.backend.format_prompt(prompt), text)
        self._reset_vocab(tokens)
        return [self._ids[t] for t in tokens]

    def encode_response(self, response: str) -> list[int]:
        # The response's tokens after the template's assistant header (prompt text left empty:
        # the header ends the prompt's tokens, so the split is the same for any prompt).
        tokens = self._response_tokens(self.backend.format_prompt(""), response)
        # Added to the vocabulary, not replacing it: a contrast's tokens join the response's
        # (both are encoded before the reference fixes the vocabulary).
        return [self._add(t) for t in tokens]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(self._strings[int(i)] for i in token_ids)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [self._strings[int(i)] for i in token_ids]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.backend.token_spans(text, self.stats)

    def logprobs(self, prompts: Sequence[str], response_ids: Sequence[int]) -> np.ndarray:
        response_ids = [int(i) for i in response_ids]
        expected = [self._strings[i] for i in response_ids]
        response = "".join(expected)
        texts = [self.backend.format_prompt(p) for p in prompts]
        rows = []
        for text, lp in zip(texts, self.backend.echo([t + response for t in texts], self.stats)):
            tokens, positions = _split_response(lp, response, self.model_id)
            if tokens != expected:
                raise ModelError(
                    f"{self.model_id}: the server split the response into different tokens after a perturbed prompt "
                    f"({len(tokens)} vs {len(expected)}); use a prompt template that ends with a special token or newline"
                )
            rows.append([(lp["token_logprobs"][j], lp["top_logprobs"][j] or {}) for j in positions])
        if not self._frozen:
            for row in rows:
                for _, top in row:
                    for s in top:
                        self._add(s)
            self._add(REST)
            self._frozen = True
        out = np.empty((len(rows), len(response_ids), len(self._strings)), dtype=np.float64)
        for b, row in enumerate(rows):
            for t, (actual, top) in enumerate(row):
                out[b, t] = self._row(expected[t], actual, top)
        return out

    def _row(self, token: str, actual: float | None, top: dict[str, float]) -> np.ndarray:
        V = len(self._strings)
        rest_id = self._ids[REST]
        known = {s: float(v) for s, v in top.items() if v is not None and math.isfinite(float(v))}
        if actual is not None:
            known[token] = float(actual)
        probs = np.zeros(V)
        listed = 0.0
        for s, lp in known.items():
            p = math.exp(lp)
            listed += p
            i = self._ids.get(s)
            if i is not None and i != rest_id:
                probs[i] = p
        unlisted = max(0.0, 1.0 - listed)
        missing = [i for i in range(V) if i != rest_id and probs[i] == 0.0]
        p_k = min((math.exp(v) for v in known.values()), default=unlisted)
        share = min(p_k, unlisted / (len(missing) + 1)) if missing else 0.0
        probs[missing] = share
        probs[rest_id] = max(0.0, 1.0 - probs.sum())
        probs = np.maximum(probs, _FLOOR)
        return np.log(probs / probs.sum())

    def token_embeddings(self) -> np.ndarray:
        from . import minilm

        V = len(self._strings)
        if minilm.available():
            self.embedding_note = "MiniLM embeddings of the token strings; the rest atom is at cost 1 from every token"
            words = [s for s in self._strings if s != REST]
            emb = minilm.embed_texts([w.strip() or w for w in words])
            out = np.zeros((V, emb.shape[1]))
            out[[self._ids[w] for w in words]] = emb
            return out
        self.embedding_note = "one-hot token embeddings (MiniLM not installed): every two distinct tokens are at cost 1"
        return np.eye(V)


def _field(answer: Any, path: tuple, label: str, endpoint: str):
    value = answer
    try:
        for key in path:
            value = value[key]
    except (KeyError, IndexError, TypeError):
        raise ModelError(f"{label}: {endpoint} answered without {'.'.join(map(str, path))}") from None
    return value


def _echo_logprobs(answer: dict[str, Any], sent: str, label: str) -> dict[str, Any]:
    """The logprobs lists of an echo answer, plus ``generated``: the text generated after
    ``sent`` (None when the answer does not echo ``sent``)."""
    try:
        choice = answer["choices"][0]
        lp = choice["logprobs"]
        out: dict[str, Any] = {k: list(lp[k]) for k in ("tokens", "token_logprobs", "top_logprobs")}
    except (KeyError, IndexError, TypeError):
        raise RequestRejected(f"{label}: /completions answered without logprobs (tokens, token_logprobs, top_logprobs)") from None
    n = len(out["tokens"])
    if n == 0 or any(len(v) != n for v in out.values()) or not all(isinstance(t, str) for t in out["tokens"]):
        raise RequestRejected(f"{label}: /completions returned malformed logprobs lists")
    text = choice.get("text")
    out["generated"] = text[len(sent) :] if isinstance(text, str) and text.startswith(sent) else None
    return out


def _generated_entries(lp: dict[str, Any]) -> int:
    """How many trailing entries of the echoed lists are the generated text (0 if absent)."""
    g = lp["generated"]
    if not g:
        return 0
    tokens = lp["tokens"]
    for m in range(1, min(len(tokens), 16) + 1):
        tail = "".join(tokens[len(tokens) - m :])
        if tail == g:
            return m
        if len(tail) > len(g):
            break
    return 0


def _split_response(lp: dict[str, Any], response: str, label: str) -> tuple[list[str], list[int]]:
    """The response's tokens (the echoed tokens that spell ``response`` at the end of the
    sent text, before the generated ones) and their positions in the lists.

    Matched by the token strings, not by ``text_offset``: servers count offsets differently
    (llama.cpp leaves special tokens out of them). Empty strings (special tokens) are skipped."""
    tokens = lp["tokens"]
    end = len(tokens) - _generated_entries(lp)
    start, size = end, 0
    while size < len(response) and start > 0:
        start -= 1
        size += len(tokens[start])
    if size != len(response) or "".join(tokens[start:end]) != response:
        raise ModelError(
            f"{label}: the server's tokens do not end with the response text exactly (a token crosses the end of the "
            f"prompt text?); use a prompt template that ends with a special token or a newline"
        )
    positions = [j for j in range(start, end) if tokens[j] != ""]
    return [tokens[j] for j in positions], positions
