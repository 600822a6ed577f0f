"""JSON-over-HTTP calls with retries, a persistent cache and call accounting.

Retried: HTTP 429, every 5xx, timeouts and dropped connections. The wait before retry
``n`` (0-based) is ``min(max_backoff, backoff · 2**n)`` times a jitter factor drawn
uniformly from [0.5, 1.0]; a ``Retry-After`` header (seconds or an HTTP date) replaces it
when present. Other 4xx answers are not retried: they raise :class:`RequestRejected`
(the server does not offer what was asked, e.g. no ``echo``/``logprobs``), which the
backend uses to pick the text-only path. A call that still fails after ``max_retries``
retries raises :class:`~gsmile.errors.ModelError` naming the backend, the URL and the
last status. Answers are cached as they arrive, so everything obtained before a failure
or a kill stays in the cache.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..errors import ModelError
from ..samplers import make_rng
from .cache import CallCache, call_key

log = logging.getLogger("gsmile")
RETRY_STATUS = frozenset({429}) | frozenset(range(500, 600))


class RequestRejected(ModelError):
    """The server answered a request with a non-retryable 4xx status or an unusable body."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class CallStats:
    """Counters of calls (thread-safe): a client's totals, or one explanation's own."""

    FIELDS = ("calls", "cache_hits", "retries", "prompt_tokens", "completion_tokens")

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.values = dict.fromkeys(self.FIELDS, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self.values[name] += int(n or 0)

    def as_dict(self) -> dict[str, int]:
        out = dict(self.values)
        out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        return out


class JSONClient:
    """POST JSON to ``base_url + path`` with retries; answers go through a :class:`CallCache`.

    ``label`` names the backend in error messages (e.g. ``openai:gpt-4o-mini``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        label: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        concurrency: int = 4,
        cache: CallCache | None = None,
        random_state: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.label = label
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.cache = cache
        self.stats = CallStats()
        self._rng = make_rng(random_state)
        self._rng_lock = threading.Lock()
        self._sleep = sleep
        self._memo: dict[str, dict] = {}
        self._client = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing
    def _http(self):
        with self._client_lock:
            if self._client is None:
                import httpx

                logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
                headers = {"Content-Type": "application/json"}
                if self.api_key:
                    headers["Authorization"] = f"Bearer {self.api_key}"
                limits = httpx.Limits(max_connections=max(1, self.concurrency), max_keepalive_connections=max(1, self.concurrency))
                self._client = httpx.Client(headers=headers, timeout=self.timeout, limits=limits)
            return self._client

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, max(self.max_backoff, 0.0))
        with self._rng_lock:
            jitter = float(self._rng.uniform(0.5, 1.0))
        return min(self.max_backoff, self.backoff * (2**attempt)) * jitter

    def request_key(self, path: str, body: dict[str, Any]) -> str:
        return call_key({"backend": self.label, "base_url": self.base_url, "path": path, "body": body})

    # ---------------------------------------------------------------- calls
    def _count(self, stats: CallStats | None, **counts: int) -> None:
        """Add to the client's totals and to the caller's own counters (one explanation's)."""
        self.stats.add(**counts)
        if stats is not None:
            stats.add(**counts)

    def post(self, path: str, body: dict[str, Any], *, use_cache: bool = True, stats: CallStats | None = None,
             check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The JSON answer to one request: from the cache, else from the server (then cached).
        ``stats``: the caller's own counters, besides the client's totals. ``check(answer,
        body)``: called on a new answer before it is cached; when it raises (the answer is
        unusable), nothing is cached, so a rerun asks the server again."""
        key = self.request_key(path, body)
        if use_cache:
            hit = self.cache.get(key) if self.cache is not None else self._memo.get(key)
            if hit is not None:
                self._count(stats, cache_hits=1)
                return hit
        answer = self._post_with_retries(path, body, stats)
        usage = answer.get("usage") or {}
        self._count(stats, calls=1, prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0)
        if check is not None:
            check(answer, body)
        if self.cache is not None:
            self.cache.put(key, answer)
        else:  # no persistent cache: still never repeat a request within this process
            with self._rng_lock:
                self._memo[key] = answer
        return answer

    def post_many(self, path: str, bodies: Sequence[dict[str, Any]], stats: CallStats | None = None,
                  check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Answers to several requests, up to ``concurrency`` in flight; order kept. The first
        failure is raised after the other requests finish (their answers are cached).
        ``check``: as in :meth:`post`."""
        if len(bodies) <= 1 or self.concurrency <= 1:
            return [self.post(path, b, stats=stats, check=check) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            futures = [pool.submit(self.post, path, b, stats=stats, check=check) for b in bodies]
            errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err
        return [f.result() for f in futures]

    def post_batched(self, path: str, bodies: Sequence[dict[str, Any]], batch: int,
                     stats: CallStats | None = None) -> list[dict[str, Any]]:
        """Like :meth:`post_many` for ``/completions`` bodies that differ only in ``prompt``, but
        sending up to ``batch`` prompts per request (``"prompt": [...]``, as OpenAI's and vLLM's
        servers accept). Each prompt's answer is cached under the key of its own one-prompt
        request, so batched and unbatched runs share the cache and a resumed run repeats no
        prompt. A server that answers a batch with the wrong number of choices is refused."""
        if batch <= 1 or len(bodies) <= 1:
            return self.post_many(path, bodies, stats)
        keys = [self.request_key(path, b) for b in bodies]
        answers: list[dict[str, Any] | None] = []
        for key in keys:
            hit = self.cache.get(key) if self.cache is not None else self._memo.get(key)
            answers.append(hit)
        hits = sum(a is not None for a in answers)
        if hits:
            self._count(stats, cache_hits=hits)
        missing = [i for i, a in enumerate(answers) if a is None]
        chunks = [missing[lo : lo + batch] for lo in range(0, len(missing), batch)]

        def send(chunk: list[int]) -> None:
            body = {**bodies[chunk[0]], "prompt": [bodies[i]["prompt"] for i in chunk]}
            answer = self._post_with_retries(path, body, stats)
            choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != len(chunk):
                raise RequestRejected(
                    f"{self.label} at {self.base_url + path}: sent {len(chunk)} prompts in one request but got "
                    f"{len(choices)} answers; this server does not batch prompts (use a batch of 1)"
                )
            usage = answer.get("usage") or {}
            self._count(stats, calls=1, prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0)
            for i, choice in zip(chunk, choices):
                single = {**{k: v for k, v in answer.items() if k not in ("choices", "usage")}, "choices": [{**choice, "index": 0}]}
                answers[i] = single
                if self.cache is not None:
                    self.cache.put(keys[i], single)
                else:
                    with self._rng_lock:
                        self._memo[keys[i]] = single

        if len(chunks) <= 1 or self.concurrency <= 1:
            for chunk in chunks:
                send(chunk)
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks))) as pool:
                errors = [f.exception() for f in [pool.submit(send, c) for c in chunks]]
            for err in errors:
                if err is not None:
                    raise err
        return answers

    def _post_with_retries(self, path: str, body: dict[str, Any], stats: CallStats | None = None) -> dict[str, Any]:
        import httpx

        url = self.base_url + path
        last = "no answer"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self._http().post(url, json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out after {self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code < 400:
                    try:
                        answer = resp.json()
                    except ValueError:
                        raise RequestRejected(f"{self.label} at {url}: HTTP {resp.status_code} with a body that is not JSON") from None
                    if not isinstance(answer, dict):
                        raise RequestRejected(f"{self.label} at {url}: the answer is not a JSON object")
                    return answer
                detail = _error_detail(resp)
                last = f"HTTP {resp.status_code}{': ' + detail if detail else ''}"
                if resp.status_code not in RETRY_STATUS:
                    raise RequestRejected(f"{self.label} at {url}: {last}", status=resp.status_code)
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
            if attempt < self.max_retries:
                self._count(stats, retries=1)
                delay = self._delay(attempt, retry_after)
                log.info("%s: %s; retry %d of %d in %.1f s", self.label, last, attempt + 1, self.max_retries, delay)
                self._sleep(delay)
        raise ModelError(
            f"{self.label} at {url}: giving up after {self.max_retries} retries; last attempt: {last}. "
            f"Answers obtained so far are cached; rerun to resume (or raise --max-retries)"
        )

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _error_detail(resp) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:200]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:200]
    return str(data)[:200]
