"""The async client every stage uses to call an OpenAI-compatible LLM endpoint.

    client = LLMClient(Endpoint(base_url="http://127.0.0.1:8000/v1", model="smollm2-135m-instruct"),
                       cache_path=out_dir / "llm_cache.sqlite")
    results = client.chat_many_sync([{"messages": [...], "temperature": 0.7}, ...], progress=True)

- **Failures are results.** 429, 5xx, timeouts, connection errors and malformed or empty answers are retried
  with exponential backoff and full jitter; past ``max_retries`` the request's ``ChatResult`` carries
  ``error`` (a 4xx other than 408/429 is not retried). Nothing is raised for a single request and nothing is
  dropped: ``chat_many`` returns one result per request, in order.
- **Every answer is persisted as it arrives** in a SQLite cache (stdlib ``sqlite3``, WAL journal), keyed by
  the sha256 of (endpoint, model, messages, params): one indexed lookup per request, never loaded whole
  (logprob answers are hundreds of KB each), and safe with several processes writing at once. A cached
  request is answered from disk without any network call, so a run killed with SIGKILL re-sends nothing
  already answered (a commit is durable or absent, never torn). Identical requests are answered once (also
  when in flight at the same time): to draw several samples for one prompt, ask for ``n`` or vary ``seed``.
  Loopback endpoints (127.0.0.1, localhost, ::1) key as ``loopback`` whatever their port, because a local
  ``hypnos serve`` gets a new free port each run and its answers must survive a restart. A legacy
  ``.jsonl`` cache path is read once into ``.sqlite`` beside it.
- **A cut-off answer is never a silent success.** With ``on_length="retry"`` (what the data engine asks
  for) ``finish_reason: length`` is retried with twice the ``max_tokens`` (``length_retries`` times);
  still cut off, the result has ``truncated`` set and is not cached, so callers count it as truncated and
  a rerun asks again. With ``on_length="accept"`` (the endpoint default: an eval answer cut at
  ``max_new_tokens`` is the answer) it is returned and cached once, flagged ``truncated``.
- **Structured outputs where the endpoint has them.** A ``response_format`` (``json_schema``) in the
  params is sent as is (``structured_outputs: auto|json_schema``), reduced to ``json_object`` or dropped
  per endpoint; with ``auto``, a 400 naming ``response_format`` drops it for the rest of the run and the
  caller falls back to parsing text. ``ChatResult.structured`` says whether the schema was sent.
- **Models that reject parameters.** Reasoning models want ``max_completion_tokens`` instead of
  ``max_tokens`` and refuse ``temperature``/``top_p``: ``max_tokens_param`` chooses, and with ``auto`` a
  400 naming the parameter switches (or drops it) and retries at once.
- **Retry-After** is honoured in seconds, as an HTTP date, and as ``retry-after-ms``.
- **Credentials stay out of files.** ``Endpoint.api_key_env`` names the variable; the key is read when a
  request is sent and never stored, logged or written. A credential inside ``base_url`` (``user:pass@`` or
  a ``key=``/``token=`` query parameter) is stripped (``redact_url``) before the URL goes into the cache,
  a manifest or a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_BACKOFF_S = 60.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Endpoint(BaseModel):
    """An OpenAI-compatible chat endpoint and how to call it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    base_url: str
    """Up to and including ``/v1``, e.g. ``http://127.0.0.1:8000/v1`` or ``https://api.openai.com/v1``."""
    model: str
    """Model name sent in every request."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (None: no key is sent)."""
    max_concurrency: int = Field(8, ge=1)
    """Most requests in flight at once."""
    timeout_s: float = Field(120.0, gt=0)
    """Per attempt; a timed-out attempt is retried."""
    max_retries: int = Field(5, ge=0)
    """Retries after the first attempt."""
    retry_backoff_s: float = Field(1.0, ge=0)
    """First retry waits up to this long (full jitter); each further retry doubles it, up to 60 s."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Default request parameters (``temperature``, ``max_tokens``, ...); per-call params override them."""
    structured_outputs: Literal["auto", "json_schema", "json_object", "off"] = "auto"
    """``response_format`` handling: send the JSON schema (``auto``: stop sending it after a 400 that names
    it), only ``{"type": "json_object"}``, or nothing (``off``; answers are then parsed from text)."""
    max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    """Name of the length limit; reasoning models want ``max_completion_tokens`` (``auto``: switch on a 400)."""
    on_length: Literal["retry", "accept"] = "accept"
    """A ``finish_reason: length`` answer: ask again with more room and never cache it cut (``retry``), or
    return and cache it flagged ``truncated`` (``accept``). ``chat(..., on_length=...)`` overrides it."""
    length_retries: int = Field(1, ge=0)
    """A ``finish_reason: length`` answer is asked again with twice the ``max_tokens``, this many times."""

    def api_key(self) -> str | None:
        """The API key from the environment (None if no variable is configured).

        Raises:
            ValueError: the configured variable is not set.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"environment variable {self.api_key_env} (api_key_env of {redact_url(self.base_url)}) is not set")
        return key


class ChatResult(BaseModel):
    """The outcome of one chat request; ``error`` is set instead of raising when it failed."""

    text: str | None = None
    """The first choice's content (None on error)."""
    texts: list[str] = Field(default_factory=list)
    """Every choice's content (``n`` > 1)."""
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None
    """First choice, OpenAI chat format: ``[{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]``."""
    usage: dict[str, int] = Field(default_factory=dict)
    """``prompt_tokens`` and ``completion_tokens`` as reported by the server."""
    model: str | None = None
    """The model name the server reported."""
    truncated: bool = False
    """Cut off by the length limit (with ``on_length="retry"``: even after the retries, and not cached)."""
    structured: bool = False
    """The request carried a ``response_format`` (the answer should match its schema)."""
    cached: bool = False
    """Answered from the cache (or by an identical request in flight) without a network call of its own."""
    error: str | None = None
    attempts: int = 0
    key: str = ""
    """sha256 of the request: the cache key."""


@dataclass
class Usage:
    """What a client spent; goes into stage manifests. Token counts are for network answers only."""

    requests: int = 0
    """chat() calls."""
    http_requests: int = 0
    """Attempts sent over the network (first tries and retries)."""
    retries: int = 0
    cache_hits: int = 0
    errors: int = 0
    """Requests that failed past the retry budget (or with a non-retryable 4xx)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    """Answers still cut off by the length limit after the retries with more room (not cached)."""
    adapted: int = 0
    """Requests resent at once after a 400 about a parameter (response_format, max_tokens, temperature)."""


def request_key(base_url: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """The cache key of a request: sha256 over canonical JSON of endpoint, model, messages and params."""
    payload = {"base_url": _cache_scope(base_url), "model": model, "messages": messages, "params": params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def endpoint_identity(base_url: str, model: str) -> str:
    """Which model answers: scheme://host[/path] (loopback for any local port, no credentials) + model name.

    Two recipe endpoints with the same identity are the same model, whatever they are called, and
    however the URL is spelled (host case, an explicit default port, a trailing slash).
    """
    parts = urlsplit(base_url.strip().rstrip("/"))
    if parts.hostname in LOOPBACK:
        host = "loopback"
    else:
        port = parts.port if parts.port not in (None, {"http": 80, "https": 443}.get(parts.scheme)) else None
        host = (parts.hostname or "") + (f":{port}" if port else "")
    return f"{urlunsplit((parts.scheme, host, parts.path.rstrip('/'), '', ''))}|{model}"


_SECRET_PARAM = re.compile(r"key|token|secret|password|passwd|sig|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without credentials: no ``user:pass@``, secret-looking query values replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _cache_scope(base_url: str) -> str:
    parts = urlsplit(base_url.rstrip("/"))
    host = "loopback" if parts.hostname in LOOPBACK else parts.netloc.rpartition("@")[2]  # never credentials
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_CACHE_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, time REAL NOT NULL, request TEXT NOT NULL, result TEXT NOT NULL)"""


class AnswerCache:
    """Answers by request key in SQLite: one indexed lookup per request, concurrent writers welcome.

    WAL journal: readers never block the writer; ``busy_timeout`` makes concurrent writers (two stages
    or processes on one cache) wait their turn instead of failing. Each answer is its own transaction:
    after a SIGKILL it is either fully there or absent.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kills
        self._db.execute(_CACHE_SCHEMA)

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT result FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, request: dict, result: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, time, request, result) VALUES (?, ?, ?, ?)",
                         (key, round(time.time(), 3), json.dumps(request, ensure_ascii=False),
                          json.dumps(result, ensure_ascii=False)))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def rows(self):
        """(key, request, result) of every answer, oldest first (for inspection and tests)."""
        for key, req, res in self._db.execute("SELECT key, request, result FROM answers ORDER BY time, rowid"):
            yield key, json.loads(req), json.loads(res)

    def import_jsonl(self, path: Path) -> int:
        """Read a legacy JSONL cache line by line (a torn or unreadable line is skipped); returns rows read."""
        n = 0
        with open(path, "rb") as f:
            for ln, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                    self.put(row["key"], row.get("request", {}), row["result"])
                    n += 1
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("%s:%d: unreadable cache line skipped (%s)", path, ln, e)
        return n

    def close(self) -> None:
        self._db.close()


class LLMClient:
    """Call one endpoint with bounded concurrency, retries, a persistent answer cache and usage accounting.

    Args:
        endpoint: where and how to call.
        cache_path: JSONL file of answers (created if missing); None keeps answers in memory only.
    """

    def __init__(self, endpoint: Endpoint, cache_path: Path | None = None):
        self.endpoint = endpoint
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.usage = Usage()
        self._cache: AnswerCache | None = None
        if self.cache_path is not None:
            legacy = None
            if self.cache_path.suffix == ".jsonl":  # the old format's name: keep it as the SQLite file's stem
                legacy, self.cache_path = self.cache_path, self.cache_path.with_suffix(".sqlite")
            fresh = not self.cache_path.exists()
            self._cache = AnswerCache(self.cache_path)
            if fresh and legacy is not None and legacy.exists():
                log.info("%s: imported %d answers from %s", self.cache_path, self._cache.import_jsonl(legacy), legacy)
        self._memory: dict[str, ChatResult] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._schema_refused = endpoint.structured_outputs == "off"
        self._token_param = endpoint.max_tokens_param if endpoint.max_tokens_param != "auto" else "max_tokens"
        self._dropped_params: set[str] = set()

    # ------------------------------------------------------------------------------------- public API
    async def chat(self, messages: list[dict[str, Any]], on_length: str | None = None, **params: Any) -> ChatResult:
        """Send one chat request (or answer it from the cache).

        Args:
            messages: OpenAI chat messages.
            on_length: "retry" or "accept" a ``finish_reason: length`` answer (default: the endpoint's).
            **params: request parameters (``temperature``, ``max_tokens``, ``n``, ``seed``, ``logprobs``,
                ``top_logprobs``, ``stop``, ``response_format``, ...), overriding ``endpoint.extra``.

        Returns:
            The result; on failure ``error`` is set and ``text`` is None; cut off by the length limit
            (after the retries with more room), ``truncated`` is set.
        """
        params = self._effective(params)
        key = request_key(self.endpoint.base_url, self.endpoint.model, messages, params)
        self.usage.requests += 1
        retry = (on_length or self.endpoint.on_length) == "retry"
        hit = self._lookup(key)
        if hit is not None and not (retry and hit.truncated):  # a retrying caller does not take a cut answer
            self.usage.cache_hits += 1
            return hit.model_copy(update={"cached": True})
        if key in self._inflight:  # the same request is on its way: share its answer
            result = await asyncio.shield(self._inflight[key])
            self.usage.cache_hits += 1
            return result.model_copy(update={"cached": True})
        http, slots = self._session()
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with slots:
                result = await (self._send_with_room(http, messages, params) if retry else
                                self._send(http, messages, params))
                result.truncated = result.error is None and result.finish_reason == "length"
            result.key = key
            if result.error is None:
                self.usage.prompt_tokens += result.usage.get("prompt_tokens", 0)
                self.usage.completion_tokens += result.usage.get("completion_tokens", 0)
            if result.error is None and not (retry and result.truncated):
                self._store(key, messages, params, result)
            if result.truncated:
                self.usage.truncated += 1
                log.log(logging.WARNING if retry else logging.DEBUG, "request %s cut off by the length limit "
                        "(max_tokens %s)", key[:12], params.get("max_tokens"))
            elif result.error is not None:
                self.usage.errors += 1
                log.warning("request %s failed: %s", key[:12], result.error)
            future.set_result(result)
            return result
        except BaseException as e:  # whoever waits on the same request must not hang
            if isinstance(e, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(e)
                future.exception()  # mark it retrieved: there may be nobody else waiting
            raise
        finally:
            del self._inflight[key]

    async def chat_many(self, requests: Sequence[dict[str, Any]],
                        progress: bool | Callable[[int, int], None] = False) -> list[ChatResult]:
        """Run many requests under the concurrency limit; one result per request, in order.

        Args:
            requests: dicts with ``messages`` and optional request params.
            progress: True for a progress bar on stderr, or a callback ``(done, total)`` called after each.
        """
        results: list[ChatResult | None] = [None] * len(requests)
        pending = iter(range(len(requests)))
        bar = None
        if progress is True:
            from hypnos.common.progress import bar as make_bar

            bar = make_bar(total=len(requests), desc=f"LLM {self.endpoint.model}", unit="req")
        done = 0

        async def worker() -> None:
            nonlocal done
            for i in pending:
                req = dict(requests[i])
                results[i] = await self.chat(req.pop("messages"), **req)
                done += 1
                if bar is not None:
                    bar.update()
                    bar.set_postfix(cached=self.usage.cache_hits, errors=self.usage.errors, refresh=False)
                elif callable(progress):
                    progress(done, len(requests))

        try:
            # cache hits need no slot, so more workers than slots keep the slots busy
            await asyncio.gather(*(worker() for _ in range(min(len(requests), 2 * self.endpoint.max_concurrency))))
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def chat_sync(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """``chat`` for synchronous code (not from inside a running event loop)."""
        return asyncio.run(self._then_close(self.chat(messages, **params)))

    def chat_many_sync(self, requests: Sequence[dict[str, Any]],
                       progress: bool | Callable[[int, int], None] = False) -> list[ChatResult]:
        """``chat_many`` for synchronous code (not from inside a running event loop)."""
        return asyncio.run(self._then_close(self.chat_many(requests, progress)))

    def usage_dict(self) -> dict[str, Any]:
        """Usage counters plus the endpoint (without any secret) for manifests."""
        return {"base_url": redact_url(self.endpoint.base_url), "model": self.endpoint.model,
                "structured_outputs": not self._schema_refused, **asdict(self.usage)}

    async def aclose(self) -> None:
        """Close the HTTP connections (the client stays usable; a later call reopens them)."""
        if self._http is not None:
            await self._http.aclose()
        self._http = self._slots = self._loop = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------- network
    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # asyncio objects belong to one loop; asyncio.run makes a new one
            limit = self.endpoint.max_concurrency
            self._http = httpx.AsyncClient(timeout=self.endpoint.timeout_s, limits=httpx.Limits(
                max_connections=limit, max_keepalive_connections=limit))
            self._slots, self._loop = asyncio.Semaphore(limit), loop
        return self._http, self._slots  # type: ignore[return-value]

    async def _then_close(self, coro):
        try:
            return await coro
        finally:
            await self.aclose()

    def _effective(self, params: dict[str, Any]) -> dict[str, Any]:
        """Endpoint defaults + call params, with this endpoint's configured response_format policy applied."""
        params = {**self.endpoint.extra, **params}
        rf = params.get("response_format")
        if rf is not None:
            # only the endpoint's configuration changes the key; a refusal found at run time does not
            # (``_wire`` drops it then), so a resumed run finds every answer under the key it had
            if self.endpoint.structured_outputs == "off":
                params.pop("response_format")
            elif self.endpoint.structured_outputs == "json_object":
                params["response_format"] = {"type": "json_object"}
        return params

    async def _send_with_room(self, http: httpx.AsyncClient, messages: list[dict], params: dict) -> ChatResult:
        """``_send``, asking again with twice the length limit while the answer is cut off."""
        result = await self._send(http, messages, params)
        room = params.get("max_tokens")
        for _ in range(self.endpoint.length_retries):
            if result.error is not None or result.finish_reason != "length" or not isinstance(room, int):
                break
            room *= 2
            log.info("answer cut off at the length limit: asking again with max_tokens %d", room)
            more = await self._send(http, messages, {**params, "max_tokens": room})
            if more.error is not None:  # e.g. no room left in the model's context: the cut answer stands
                log.info("asking with max_tokens %d failed (%s): keeping the cut-off answer", room, more.error)
                break
            more.usage = {k: more.usage.get(k, 0) + result.usage.get(k, 0) for k in ("prompt_tokens",
                                                                                      "completion_tokens")}
            result = more
        if result.error is None and result.finish_reason == "length":
            result.truncated = True
        return result

    def _wire(self, params: dict) -> dict:
        """Params as sent: the length limit under this endpoint's name for it, refused params left out."""
        body = {k: v for k, v in params.items() if k not in self._dropped_params}
        if self._token_param != "max_tokens" and "max_tokens" in body:
            body[self._token_param] = body.pop("max_tokens")
        if self._schema_refused:
            body.pop("response_format", None)
        return body

    def _adapt(self, message: str, body: dict) -> bool:
        """React to a 400 about a parameter of ``body``; True if resending can now succeed.

        Several requests in flight may get the same 400: each resends (the first one also logs).
        """
        low = message.lower()
        if ("response_format" in low or "json_schema" in low) and "response_format" in body:
            if self.endpoint.structured_outputs != "auto":
                return False  # asked for explicitly: no silent fallback
            if not self._schema_refused:
                log.warning("%s does not take response_format (%s): parsing answers from text instead",
                            redact_url(self.endpoint.base_url), message[:120])
            self._schema_refused = True
            return True
        if "max_completion_tokens" in low and "max_tokens" in body and self.endpoint.max_tokens_param == "auto":
            self._token_param = "max_completion_tokens"
            return True
        for p in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs"):
            if p in body and re.search(rf"['\"`]{p}['\"`]", low) and ("unsupported" in low or "not support" in low):
                if p not in self._dropped_params:
                    log.warning("%s refuses %s: sending requests without it", self.endpoint.model, p)
                self._dropped_params.add(p)
                return True
        return False

    async def _send(self, http: httpx.AsyncClient, messages: list[dict], params: dict) -> ChatResult:
        ep = self.endpoint
        url = _chat_url(ep.base_url)
        key = ep.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        error, wait_hint = "", None
        adaptations = 0
        attempt = 0
        while attempt <= ep.max_retries:
            if attempt:
                self.usage.retries += 1
                await asyncio.sleep(self._backoff(attempt, wait_hint))
            attempt += 1
            body = {**self._wire(params), "model": ep.model, "messages": messages}
            self.usage.http_requests += 1
            try:
                resp = await http.post(url, json=body, headers=headers)
            except httpx.TimeoutException:
                error, wait_hint = f"timeout after {ep.timeout_s} s", None
                continue
            except httpx.TransportError as e:
                error, wait_hint = f"connection error: {type(e).__name__}: {redact_url(str(e))}", None
                continue
            if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                error, wait_hint = f"HTTP {resp.status_code}: {_error_message(resp)}", _retry_after(resp)
                continue
            if resp.status_code >= 400:  # our request is wrong: retrying as is cannot help
                msg = _error_message(resp)
                if resp.status_code in (400, 422) and adaptations < 4 and self._adapt(msg, body):
                    adaptations += 1
                    self.usage.adapted += 1
                    attempt -= 1  # not a failure of the server: resend at once, without spending a retry
                    continue
                return ChatResult(error=f"HTTP {resp.status_code}: {msg}", attempts=attempt)
            try:
                res = _parse(resp)
            except ValueError as e:
                error, wait_hint = f"malformed response: {e}", None
                continue
            return res.model_copy(update={"attempts": attempt, "structured": "response_format" in body})
        return ChatResult(error=f"failed after {ep.max_retries + 1} attempts; last: {error}",
                          attempts=ep.max_retries + 1)

    def _backoff(self, attempt: int, hint: float | None) -> float:
        ceiling = min(MAX_BACKOFF_S, self.endpoint.retry_backoff_s * 2 ** (attempt - 1))
        wait = random.uniform(0, ceiling)  # full jitter: retries of many requests don't arrive in waves
        return max(wait, min(hint, MAX_BACKOFF_S)) if hint is not None else wait

    # ------------------------------------------------------------------------------------- cache
    def _lookup(self, key: str) -> ChatResult | None:
        if key in self._memory:
            return self._memory[key]
        if self._cache is None:
            return None
        row = self._cache.get(key)
        if row is None:
            return None
        hit = ChatResult.model_validate({**row, "key": key})
        # caches written before ``truncated`` existed hold cut answers as plain ones: their finish_reason says
        hit.truncated = hit.truncated or hit.finish_reason == "length"
        return hit

    def _store(self, key: str, messages: list[dict], params: dict, result: ChatResult) -> None:
        if self._cache is None:
            self._memory[key] = result
            return
        request = {"base_url": redact_url(self.endpoint.base_url), "model": self.endpoint.model,
                   "messages": messages, "params": params}
        self._cache.put(key, request, result.model_dump(exclude={"cached", "key", "error"}))


def _chat_url(base_url: str) -> str:
    """``<base_url>/chat/completions`` with a query of the base URL (``?api-version=``) kept after the path."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))


def _parse(resp: httpx.Response) -> ChatResult:
    """A chat completion response as a result; ValueError if it is not one (retried by the caller)."""
    try:
        data = resp.json()
    except ValueError as e:
        raise ValueError(f"not JSON: {resp.text[:200]!r}") from e
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list):
        raise ValueError(f"no choices: {resp.text[:200]!r}")
    texts = []
    for c in choices:
        content = (c.get("message") or {}).get("content") if isinstance(c, dict) else None
        if not isinstance(content, str) or not content.strip():
            raise ValueError("empty content")
        texts.append(content)
    first = choices[0]
    usage = data.get("usage") or {}
    return ChatResult(
        text=texts[0], texts=texts, finish_reason=first.get("finish_reason"),
        logprobs=(first.get("logprobs") or {}).get("content"), model=data.get("model"),
        usage={k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")},
    )


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    ms = resp.headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
