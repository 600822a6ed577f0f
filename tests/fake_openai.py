"""A small, deterministic OpenAI-compatible server for the API tests (stdlib only).

The "model" is a toy: tokens are words (with their leading space), newlines and ChatML
markers; the log-probability of a token depends on the set of words before it, so dropping
a prompt word moves the response's distributions. ``/chat/completions`` answers with a text
built from the prompt's words. Faults can be injected: a queue of actions consumed one per
request ("429" with Retry-After, "500", "stall", "drop"), and a gate that holds every
request after the first ``gate_after`` until released. ``max_in_flight`` counts the most
requests answered at once (``delay_s`` makes each answer take that long).

``/images/generations`` draws the prompt with the procedural model of
tests/image_models.py (``draw(prompt, seed)``) and answers with base64 PNG; ``generations``
counts the images sent per (prompt, seed), and ``image_answer`` makes it answer without an
image ("none"), with a URL instead ("url") or with bytes that are no image ("corrupt").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN = re.compile(r"<\|[a-z_]+\|>|\n| ?[^\s<]+|\s|<")
WORD = re.compile(r"[A-Za-z]+")
CANDIDATES = [" Paris", " London", " capital", " city", " history", " France", " is", " the", ".", " river", " king", " art"]


def _u(*parts: str) -> float:
    """A deterministic number in [-1, 1) from strings."""
    h = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**63 - 1.0


def tokenize(text: str) -> list[tuple[str, int]]:
    return [(m.group(), m.start()) for m in TOKEN.finditer(text)]


def next_logprobs(context: str, extra: str) -> dict[str, float]:
    """log p(c | context) over the candidates plus ``extra`` (the actual next token)."""
    words = sorted({w.lower() for w in WORD.findall(context)})
    cands = list(dict.fromkeys(CANDIDATES + [extra]))
    logits = [2.0 * _u("bias", c) + sum(1.5 * _u(w, c) for w in words) / max(1.0, math.sqrt(len(words))) for c in cands]
    m = max(logits)
    z = m + math.log(sum(math.exp(x - m) for x in logits))
    return {c: x - z for c, x in zip(cands, logits)}


def chat_reply(message: str) -> str:
    words = WORD.findall(message)
    ranked = sorted(words, key=lambda w: _u("reply", w.lower()))
    return "The answer involves " + " and ".join(ranked[:2]) + "."


class FakeOpenAI:
    def __init__(self, *, logprobs: bool = True, chat: bool = True, retry_after: str = "1", stall_s: float = 3.0, misaligned: bool = False, batches: bool = True):
        self.logprobs = logprobs
        self.batches = batches  # accept a list of prompts in /completions (OpenAI, vLLM do)
        self.batch_sizes: list[int] = []
        self.misaligned = misaligned  # echo lists without the generated token, as llama-cpp-python without BOS
        self.chat = chat
        self.retry_after = retry_after
        self.stall_s = stall_s
        self.faults: list[str] = []
        self.gate_after: int | None = None
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0  # every request received
        self.ok = 0  # 200 answers actually sent in time (stalled ones excluded)
        self.faulted = 0
        self.bodies: list[dict] = []
        self.delay_s = 0.0  # each answer takes this long (to make concurrent requests overlap)
        self.generations: Counter = Counter()  # images sent, by (prompt, seed)
        self.image_answer = "b64"  # or "none", "url", "corrupt"
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most at once
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()

    def run_until_gate_and_kill(self, cmd: list[str], env: dict, cache_dir, after: int, timeout: float = 60.0) -> int:
        """Start ``cmd``, hold every request after the first ``after``, and kill the process
        (SIGKILL) once those ``after`` answers are in its disk cache at ``cache_dir``; then
        release the gate. Returns the cache's row count after the kill (the test's own
        asserts say what it must be). The kill-and-resume tests of text and images use it."""
        import signal
        import subprocess

        from gsmile.backends.cache import CallCache  # the server itself needs only the stdlib

        self.gate_after = after  # later requests hang until the process is killed
        proc = subprocess.Popen(cmd, env=env)
        cache_file = Path(cache_dir) / "calls.sqlite3"
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                if self.requests > after and cache_file.exists() and len(CallCache(cache_dir)) == after:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"the run did not reach the gate after {after} requests within {timeout:.0f} s")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
            self.gate.set()
            self.gate_after = None
        return len(CallCache(cache_dir))

    # ----------------------------------------------------------- answers
    def completions(self, body: dict) -> tuple[int, dict]:
        if isinstance(body["prompt"], list):  # a batch of prompts: one choice per prompt
            if not self.batches:
                return 400, {"error": {"message": "prompt must be a string"}}
            self.batch_sizes.append(len(body["prompt"]))
            choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
            for i, prompt in enumerate(body["prompt"]):
                status, answer = self.completions({**body, "prompt": prompt})
                if status != 200:
                    return status, answer
                choices.append({**answer["choices"][0], "index": i})
                for k in usage:
                    usage[k] += answer["usage"][k]
            return 200, {"choices": choices[::-1], "usage": usage}  # any order: clients sort by index
        text = body["prompt"]
        if body.get("echo") or body.get("logprobs") is not None:
            if not self.logprobs:
                return 400, {"error": {"message": "echo and logprobs are not supported"}}
            k = int(body.get("logprobs") or 0)
            toks = tokenize(text)
            gen = "."  # the one generated token
            out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            seq = toks + [(gen, len(text))] if body.get("echo") else [(gen, len(text))]
            if self.misaligned and body.get("echo"):
                seq = toks
            for j, (tok, off) in enumerate(seq):
                dist = next_logprobs(text[:off], tok)
                first = body.get("echo") and j == 0
                out["tokens"].append(tok)
                out["text_offset"].append(off)
                out["token_logprobs"].append(None if first else dist[tok])
                top = sorted(dist.items(), key=lambda kv: -kv[1])[:k]
                out["top_logprobs"].append(None if first else dict(top))
            completion = (text if body.get("echo") else "") + gen
            return 200, {"choices": [{"text": completion, "logprobs": out, "index": 0}], "usage": {"prompt_tokens": len(toks), "completion_tokens": 1}}
        words = WORD.findall(text)
        reply = " " + chat_reply(" ".join(words[-6:]))
        return 200, {"choices": [{"text": reply, "index": 0}], "usage": {"prompt_tokens": len(tokenize(text)), "completion_tokens": len(tokenize(reply))}}

    def chat_completions(self, body: dict) -> tuple[int, dict]:
        if not self.chat:
            return 404, {"error": {"message": "not found"}}
        message = body["messages"][-1]["content"]
        reply = chat_reply(message)
        return 200, {"choices": [{"message": {"role": "assistant", "content": reply}, "index": 0}], "usage": {"prompt_tokens": len(tokenize(message)), "completion_tokens": len(tokenize(reply))}}

    def images_generations(self, body: dict) -> tuple[int, dict]:
        import base64
        import io

        from image_models import draw

        prompt, seed = body.get("prompt"), body.get("seed", 0)
        if not isinstance(prompt, str) or body.get("n", 1) != 1:
            return 400, {"error": {"message": "prompt must be a string and n must be 1"}}
        if self.image_answer == "none":
            return 200, {"created": 0, "data": []}
        if self.image_answer == "url":
            return 200, {"created": 0, "data": [{"url": "https://example.invalid/image.png"}]}
        if self.image_answer == "corrupt":
            return 200, {"created": 0, "data": [{"b64_json": base64.b64encode(b"not an image").decode()}]}
        width, height = (int(v) for v in body["size"].split("x")) if body.get("size") else (64, 64)
        image = draw(prompt, int(seed), size=width)
        if height != width:
            image = image.resize((width, height))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        with self.lock:
            self.generations[(prompt, seed)] += 1
        return 200, {"created": 0, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode("ascii"), "revised_prompt": prompt}]}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake.lock:
                    fake.requests += 1
                    n = fake.requests
                    fault = fake.faults.pop(0) if fake.faults else None
                    gated = fake.gate_after is not None and n > fake.gate_after
                if gated:
                    fake.gate.wait()
                    self.close_connection = True
                    return
                if fault == "429":
                    fake.faulted += 1
                    return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": fake.retry_after})
                if fault and fault.isdigit():
                    fake.faulted += 1
                    return self._send(int(fault), {"error": {"message": "injected failure"}})
                if fault == "drop":
                    fake.faulted += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "stall":
                    fake.faulted += 1
                    time.sleep(fake.stall_s)
                    self.close_connection = True
                    return
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                time.sleep(fake.delay_s)
                with fake.lock:
                    fake.in_flight -= 1
                if self.path.endswith("/images/generations"):
                    status, payload = fake.images_generations(body)
                elif self.path.endswith("/chat/completions"):
                    status, payload = fake.chat_completions(body)
                elif self.path.endswith("/completions"):
                    status, payload = fake.completions(body)
                else:
                    status, payload = 404, {"error": {"message": "not found"}}
                with fake.lock:
                    if status == 200:
                        fake.ok += 1
                        fake.bodies.append(body)
                self._send(status, payload)

        return Handler
