"""The async client every stage uses to call an OpenAI-compatible LLM endpoint.

    client = LLMClient(Endpoint(base_url="http://127.0.0.1:8000/v1", model="smollm2-135m-instruct"),
                       cache_path=out_dir / "llm_cache.jsonl")
    results = client.chat_many_sync([{"messages": [...], "temperature": 0.7}, ...], progress=True)

- **Failures are results.** 429, 5xx, timeouts, connection errors and malformed or empty answers are retried
  with exponential backoff and full jitter; past ``max_retries`` the request's ``ChatResult`` carries
  ``error`` (a 4xx other than 408/429 is not retried). Nothing is raised for a single request and nothing is
  dropped: ``chat_many`` returns one result per request, in order.
- **Every answer is persisted as it arrives.** Successful responses are appended to a JSONL cache (flushed
  and fsynced), keyed by the sha256 of (endpoint, model, messages, params). A cached request is answered
  from disk without any network call, so a run killed with SIGKILL re-sends nothing already answered. A
  torn last line (killed mid-write) is dropped on load. Identical requests are answered once (also when
  in flight at the same time): to draw several samples for one prompt, ask for ``n`` or vary ``seed``.
  Loopback endpoints (127.0.0.1, localhost, ::1) key as ``loopback`` whatever their port, because a local
  ``hypnos serve`` gets a new free port each run and its answers must survive a restart.
- **The API key stays in the environment.** ``Endpoint.api_key_env`` names the variable; the key is read
  when a request is sent and never stored, logged or written to the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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

    def api_key(self) -> str | None:
        """The API key from the environment (None if no variable is configured).

        Raises:
            ValueError: the configured variable is not set.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"environment variable {self.api_key_env} (api_key_env of {self.base_url}) is not set")
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


def request_key(base_url: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """The cache key of a request: sha256 over canonical JSON of endpoint, model, messages and params."""
    payload = {"base_url": _cache_scope(base_url), "model": model, "messages": messages, "params": params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _cache_scope(base_url: str) -> str:
    parts = urlsplit(base_url.rstrip("/"))
    host = "loopback" if parts.hostname in LOOPBACK else parts.netloc.rpartition("@")[2]  # never credentials
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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
        self._cache: dict[str, ChatResult] = self._load_cache() if self.cache_path else {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    # ------------------------------------------------------------------------------------- public API
    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """Send one chat request (or answer it from the cache).

        Args:
            messages: OpenAI chat messages.
            **params: request parameters (``temperature``, ``max_tokens``, ``n``, ``seed``, ``logprobs``,
                ``top_logprobs``, ``stop``, ...), overriding ``endpoint.extra``.

        Returns:
            The result; on failure ``error`` is set and ``text`` is None.
        """
        params = {**self.endpoint.extra, **params}
        key = request_key(self.endpoint.base_url, self.endpoint.model, messages, params)
        self.usage.requests += 1
        if key in self._cache:
            self.usage.cache_hits += 1
            return self._cache[key].model_copy(update={"cached": True})
        if key in self._inflight:  # the same request is on its way: share its answer
            result = await asyncio.shield(self._inflight[key])
            self.usage.cache_hits += 1
            return result.model_copy(update={"cached": True})
        http, slots = self._session()
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with slots:
                result = await self._send(http, messages, params)
            result.key = key
            if result.error is None:
                self._cache[key] = result
                self._append(key, messages, params, result)
                self.usage.prompt_tokens += result.usage.get("prompt_tokens", 0)
                self.usage.completion_tokens += result.usage.get("completion_tokens", 0)
            else:
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
        return {"base_url": self.endpoint.base_url, "model": self.endpoint.model, **asdict(self.usage)}

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

    async def _send(self, http: httpx.AsyncClient, messages: list[dict], params: dict) -> ChatResult:
        ep = self.endpoint
        url = ep.base_url.rstrip("/") + "/chat/completions"
        key = ep.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {**params, "model": ep.model, "messages": messages}
        error, wait_hint = "", None
        for attempt in range(ep.max_retries + 1):
            if attempt:
                self.usage.retries += 1
                await asyncio.sleep(self._backoff(attempt, wait_hint))
            self.usage.http_requests += 1
            try:
                resp = await http.post(url, json=body, headers=headers)
            except httpx.TimeoutException:
                error, wait_hint = f"timeout after {ep.timeout_s} s", None
                continue
            except httpx.TransportError as e:
                error, wait_hint = f"connection error: {type(e).__name__}: {e}", None
                continue
            if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                error, wait_hint = f"HTTP {resp.status_code}: {_error_message(resp)}", _retry_after(resp)
                continue
            if resp.status_code >= 400:  # our request is wrong: retrying cannot help
                return ChatResult(error=f"HTTP {resp.status_code}: {_error_message(resp)}", attempts=attempt + 1)
            try:
                return _parse(resp).model_copy(update={"attempts": attempt + 1})
            except ValueError as e:
                error, wait_hint = f"malformed response: {e}", None
        return ChatResult(error=f"failed after {ep.max_retries + 1} attempts; last: {error}",
                          attempts=ep.max_retries + 1)

    def _backoff(self, attempt: int, hint: float | None) -> float:
        ceiling = min(MAX_BACKOFF_S, self.endpoint.retry_backoff_s * 2 ** (attempt - 1))
        wait = random.uniform(0, ceiling)  # full jitter: retries of many requests don't arrive in waves
        return max(wait, min(hint, MAX_BACKOFF_S)) if hint is not None else wait

    # ------------------------------------------------------------------------------------- cache
    def _load_cache(self) -> dict[str, ChatResult]:
        path = self.cache_path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            return {}
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # torn last line: drop it so the next append starts cleanly
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - keep)
            with open(path, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        cache = {}
        for n, line in enumerate(data.splitlines(), 1):
            try:
                row = json.loads(line)
                cache[row["key"]] = ChatResult.model_validate({**row["result"], "key": row["key"]})
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s:%d: unreadable cache line skipped (%s)", path, n, e)
        return cache

    def _append(self, key: str, messages: list[dict], params: dict, result: ChatResult) -> None:
        if self.cache_path is None:
            return
        row = {"key": key, "time": round(time.time(), 3),
               "request": {"base_url": self.endpoint.base_url, "model": self.endpoint.model,
                           "messages": messages, "params": params},
               "result": result.model_dump(exclude={"cached", "key", "error"})}
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        # one O_APPEND write per line, then fsync: a kill leaves at most one torn line, at the end
        fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


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
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None
