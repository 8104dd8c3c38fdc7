"""A small fault-injecting OpenAI-compatible server for tests of LLM clients and data steps.

Real HTTP on loopback (stdlib ``ThreadingHTTPServer`` in a background thread), no mocks:

    from faulty_server import Faults, FaultyServer        # tests/ is on sys.path under pytest

    with FaultyServer(Faults(rate_429=0.2, rate_500=0.1, seed=1)) as server:
        endpoint = Endpoint(base_url=server.base_url, model="echo", retry_backoff_s=0.01)
        ...
        assert server.count("the prompt") == 1            # requests received for that prompt
        assert max(server.answered.values()) <= 1          # nothing was answered twice

Answers are a deterministic function of the request: by default ``"echo: <last user message>"`` (choice
``i > 0`` gets a `` #i`` suffix), or whatever ``FaultyServer(responder=fn)`` returns for the request body
(e.g. a judge's JSON). Usage counts characters as tokens.

Faults are drawn per attempt from a hash of (seed, prompt, attempt number for that prompt), so which
attempt fails does not depend on the order in which concurrent requests arrive. Kinds: HTTP 429 (with
``Retry-After`` if configured), HTTP 500, a slow answer (``slow_s``, meant to exceed the client's timeout),
malformed JSON, empty content. ``fail_first=k`` fails the first ``k`` attempts of every prompt with 500;
a prompt containing ``always_fail`` (default ``[[fail]]``) always gets 500.

Beyond transport faults it plays the API features clients must handle: ``max_tokens`` enforced
(``Faults.enforce_max_tokens``: characters count as tokens; a longer answer is cut with
``finish_reason: "length"``), ``response_format`` refused with a 400 (``reject_response_format``),
parameters refused like reasoning models do (``reject_params``, e.g. ``{"max_tokens", "temperature"}``),
and ``Retry-After`` as seconds, an HTTP date or ``retry-after-ms`` (``retry_after_format``). A responder
may return a dict ``{"content", "logprobs", "finish_reason"}`` instead of a string, to answer with
token logprobs (OpenAI format, ``bytes`` as lists of ints).

``judge_responder`` answers judge prompts with per-aspect scores that differ: by default every aspect
scores 9; markers in the judged answer change that (``[[harmlessness=0]]`` sets one aspect,
``[[omit=professionalism]]`` leaves it out). With ``response_format`` in the request it answers the
JSON object, without it "连贯性：9" lines.

Run standalone for manual tests: ``python tests/faulty_server.py --port 8001 --rate-429 0.2``.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Faults:
    """What goes wrong, per attempt. Rates are probabilities; their sum must be at most 1."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_malformed: float = 0.0
    rate_empty: float = 0.0
    slow_s: float = 5.0
    """How long a slow answer takes (set it above the client's timeout)."""
    delay_s: float = 0.0
    """Every answer waits this long first (to make a run last long enough to interrupt it)."""
    fail_first: int = 0
    """The first ``fail_first`` attempts of every prompt get HTTP 500."""
    always_fail: str = "[[fail]]"
    """A prompt containing this marker always gets HTTP 500."""
    retry_after: float | None = None
    """``Retry-After`` sent with 429s (seconds; see ``retry_after_format``)."""
    retry_after_format: str = "seconds"
    """How ``retry_after`` is sent: "seconds", "date" (an HTTP date) or "ms" (``retry-after-ms``)."""
    enforce_max_tokens: bool = False
    """Cut answers longer than ``max_tokens``/``max_completion_tokens`` characters, with finish_reason length."""
    reject_response_format: bool = False
    """Answer a request carrying ``response_format`` with 400 (a server without structured outputs)."""
    reject_params: frozenset[str] = frozenset()
    """Parameters answered with a 400 naming them (``max_tokens`` asks for ``max_completion_tokens``)."""
    seed: int = 0


def prompt_hash(prompt: str) -> str:
    """How the server names a prompt in ``counts``/``answered``: sha256 of the last user message, 16 hex."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def echo(body: dict[str, Any]) -> str:
    """The default answer: ``echo: <last user message>``."""
    return f"echo: {_last_user(body)}"


def _last_user(body: dict[str, Any]) -> str:
    users = [m.get("content") for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


class FaultyServer:
    """Start with ``with FaultyServer(faults) as server:``; ``server.base_url`` ends in ``/v1``.

    Attributes:
        counts: requests received per prompt hash (every attempt counts).
        answered: successful answers (HTTP 200 with content) sent per prompt hash.
        faults_sent: how many of each fault kind were injected.
        max_inflight: the most requests handled at the same time (to check a client's concurrency limit).
    """

    def __init__(self, faults: Faults | None = None, responder: Callable[[dict[str, Any]], str] = echo,
                 host: str = "127.0.0.1", port: int = 0):
        self.faults = faults or Faults()
        self.responder = responder
        self.counts: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.faults_sent: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.inflight = self.max_inflight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self.base_url = f"http://{host}:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="faulty-server", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # wakes handlers sleeping in slow answers
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def requests(self) -> int:
        """Requests received in total."""
        return sum(self.counts.values())

    def count(self, prompt: str) -> int:
        """Requests received for the prompt whose last user message is ``prompt``."""
        return self.counts[prompt_hash(prompt)]

    def reset(self) -> None:
        """Forget all counts."""
        with self._lock:
            self.counts.clear()
            self.answered.clear()
            self.faults_sent.clear()
            self.bodies.clear()
            self.max_inflight = 0

    def _fault(self, prompt: str, attempt: int) -> str | None:
        f = self.faults
        if f.always_fail and f.always_fail in prompt:
            return "500"
        if attempt < f.fail_first:
            return "500"
        u = int(hashlib.sha256(f"{f.seed}:{prompt}:{attempt}".encode()).hexdigest()[:8], 16) / 2**32
        for kind, rate in (("429", f.rate_429), ("500", f.rate_500), ("slow", f.rate_slow),
                           ("malformed", f.rate_malformed), ("empty", f.rate_empty)):
            if u < rate:
                return kind
            u -= rate
        return None

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return self._respond(body)
        finally:
            with self._lock:
                self.inflight -= 1

    def _respond(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        prompt = _last_user(body)
        key = prompt_hash(prompt)
        with self._lock:
            attempt = self.counts[key]
            self.counts[key] += 1
            self.bodies.append(body)
        fault = self._fault(prompt, attempt)
        if self.faults.delay_s:
            self._stop.wait(self.faults.delay_s)
        if fault is not None:
            with self._lock:
                self.faults_sent[fault] += 1
        refused = self._refused(body)
        if refused is not None:
            return 400, {}, _error(refused)
        if fault == "429":
            return 429, self._retry_after_headers(), _error("rate limited (injected)")
        if fault == "500":
            return 500, {}, _error("internal error (injected)")
        if fault == "slow":
            self._stop.wait(self.faults.slow_s)
        if fault == "malformed":
            return 200, {}, b'{"choices": [{"message": {"content": "trunc'
        n = int(body.get("n") or 1)
        answer = self.responder(body)
        if not isinstance(answer, dict):
            answer = {"content": answer}
        content = "" if fault == "empty" else answer["content"]
        finish, logprobs = answer.get("finish_reason", "stop"), answer.get("logprobs")
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if self.faults.enforce_max_tokens and isinstance(limit, int) and len(content) > limit:
            content, finish = content[:limit], "length"
        choices = [{"index": i, "message": {"role": "assistant", "content": content + (f" #{i}" if i and content else "")},
                    "logprobs": {"content": logprobs} if logprobs else None, "finish_reason": finish}
                   for i in range(n)]
        if fault is None:
            with self._lock:
                self.answered[key] += 1
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        out = {"id": f"chatcmpl-{key}-{attempt}", "object": "chat.completion", "created": int(time.time()),
               "model": body.get("model", "echo"), "choices": choices,
               "usage": {"prompt_tokens": prompt_chars, "completion_tokens": len(content) * n,
                         "total_tokens": prompt_chars + len(content) * n}}
        return 200, {}, json.dumps(out, ensure_ascii=False).encode()


    def _refused(self, body: dict[str, Any]) -> str | None:
        """The 400 message for a parameter this server refuses, or None."""
        if self.faults.reject_response_format and "response_format" in body:
            return "response_format is not supported by this server"
        for p in sorted(self.faults.reject_params):
            if p in body:
                if p == "max_tokens":
                    return ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                            "Use 'max_completion_tokens' instead.")
                return f"Unsupported parameter: '{p}' is not supported with this model."
        return None

    def _retry_after_headers(self) -> dict[str, str]:
        ra, fmt = self.faults.retry_after, self.faults.retry_after_format
        if ra is None:
            return {}
        if fmt == "ms":
            return {"retry-after-ms": str(int(ra * 1000))}
        if fmt == "date":
            return {"Retry-After": email.utils.formatdate(time.time() + ra, usegmt=True)}
        return {"Retry-After": str(ra)}


ASPECT_NAMES = {"coherence": "连贯性", "professionalism": "专业性", "usefulness": "有用性",
                "harmlessness": "无害性", "friendliness": "友好性"}


def judge_responder(default: int = 9) -> Callable[[dict[str, Any]], str]:
    """A judge whose per-aspect scores come from markers in the judged answer (see the module docstring)."""

    def respond(body: dict[str, Any]) -> str:
        prompt = _last_user(body)
        answer = prompt.split("【答案】", 1)[-1]
        scores: dict[str, int | None] = dict.fromkeys(ASPECT_NAMES, default)
        for aspect, value in re.findall(r"\[\[(\w+)=(\d+)\]\]", answer):
            if aspect in scores:
                scores[aspect] = int(value)
        for aspect in re.findall(r"\[\[omit=(\w+)\]\]", answer):
            scores[aspect] = None
        if body.get("response_format"):
            return json.dumps({"reasoning": "测试。", **{k: v for k, v in scores.items() if v is not None}},
                              ensure_ascii=False)
        lines = [f"{ASPECT_NAMES[k]}：{v}" for k, v in scores.items() if v is not None]
        return "理由：测试。\n" + "\n".join(lines)

    return respond


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}}).encode()


def _handler(server: FaultyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/v1/models"):
                self._send(200, {}, json.dumps({"object": "list", "data": [{"id": "echo", "object": "model"}]}).encode())
            else:
                self._send(404, {}, _error("not found"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not urlsplit(self.path).path.rstrip("/").endswith("/chat/completions"):  # as real servers: no query
                return self._send(404, {}, _error("not found"))
            try:
                body = json.loads(raw)
            except ValueError:
                return self._send(400, {}, _error("malformed JSON"))
            self._send(*server._answer(body))

        def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout) first
                self.close_connection = True

    return Handler


def main() -> None:
    """Serve until interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8001)
    for name in ("rate_429", "rate_500", "rate_slow", "rate_malformed", "rate_empty", "slow_s", "delay_s"):
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(Faults(), name))
    ap.add_argument("--seed", type=int, default=0)
    args = vars(ap.parse_args())
    port = args.pop("port")
    with FaultyServer(Faults(**args), port=port) as server:
        print(f"serving at {server.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
