"""The OpenAI-compatible HTTP app of ``hypnos serve`` (FastAPI), and ``run_server`` to start it in-process.

Run: ``hypnos serve smollm2-135m-instruct --port 8000`` then point any OpenAI client at
``http://127.0.0.1:8000/v1`` (or open http://127.0.0.1:8000/ for the chat page).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (plain or
``stream: true`` server-sent events ending with ``data: [DONE]``), ``GET /`` (web chat). Every error is an
OpenAI-style JSON body; a bad request is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hypnos.serve import protocol as P
from hypnos.serve.engine import Delta, Engine, EngineShuttingDown, SamplingParams
from hypnos.serve.grammar import GrammarError, grammar_for

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class APIError(Exception):
    """An error answered as an OpenAI-style JSON body with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, P.error_body(message, type_, param, code), headers


def create_app(engines: Mapping[str, Engine], api_key: str | None = None, max_tokens_limit: int | None = None,
               max_body_bytes: int = 4 << 20, max_queue: int = 256) -> FastAPI:
    """Build the app serving ``engines`` (served model id -> engine).

    Args:
        engines: the models to serve; the request's ``model`` field picks one.
        api_key: when set, every route but ``/health`` requires ``Authorization: Bearer <api_key>`` (the
            chat page also takes HTTP Basic auth with the key as password, so a browser can open it).
        max_tokens_limit: the largest ``max_tokens`` a request may ask for; None: the model's context.
            A request without ``max_tokens`` gets the room left in the context (capped by this limit).
        max_body_bytes: larger request bodies are refused with 413.
        max_queue: requests waiting for room in a model's batch; past it new ones get 429 + Retry-After.
    """
    app = FastAPI(title="Hypnos", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":  # a browser opening the chat page: user anything, password the key
            with contextlib.suppress(ValueError):
                given = base64.b64decode(given.strip()).decode().partition(":")[2]
        elif scheme.lower() != "bearer":
            given = ""
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")

    def admit(engine: Engine) -> None:
        if engine.queued() >= max_queue:  # backpressure: a client retrying later beats a queue nobody drains
            rows = max(1, engine.live["rows"])
            wait = engine.queued() * max(engine.live["step_ms"], 1.0) * 32 / 1e3 / rows
            raise APIError(429, f"{engine.queued()} requests are queued; retry later", type_="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def encode(engine: Engine, what: str, encode_fn, arg, chars: int) -> list[int]:
        # A prompt that cannot fit is refused before tokenizing (a 4 MB body took 8.4 s to tokenize);
        # the rest is tokenized off the event loop so other streams keep flowing meanwhile.
        if chars > engine.max_prompt_chars:
            raise APIError(400, f"{what} has {chars} characters; this server takes at most "
                           f"{engine.max_prompt_chars} (the model's context is {engine.context_length} tokens)",
                           param=what, code="context_length_exceeded")
        return await asyncio.to_thread(encode_fn, arg)

    async def constrain(engine: Engine, response_format: P.ResponseFormat | None):
        if response_format is None:
            return None
        try:
            grammar = grammar_for(response_format.as_dict())
            return None if grammar is None else await asyncio.to_thread(engine.compile_grammar, grammar)
        except GrammarError as e:
            raise APIError(400, str(e), param="response_format") from e

    def engine_for(model: str) -> Engine:
        if model not in engines:
            raise APIError(404, f"model {model!r} does not exist; served: {', '.join(engines)}",
                           param="model", code="model_not_found")
        return engines[model]

    def sampling(req: P._Request, engine: Engine, prompt_len: int, top_logprobs: int) -> SamplingParams:
        room = engine.context_length - prompt_len
        if room < 1:
            raise APIError(400, f"prompt has {prompt_len} tokens; the model's context is {engine.context_length}",
                           param="messages", code="context_length_exceeded")
        limit = max_tokens_limit or engine.context_length
        max_tokens = req.max_tokens if req.max_tokens is not None else min(limit, room)
        if max_tokens > limit:
            raise APIError(400, f"max_tokens={max_tokens} exceeds this server's limit of {limit}",
                           param="max_tokens")
        if max_tokens > room:
            raise APIError(400, f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                           f"context of {engine.context_length}", param="max_tokens", code="context_length_exceeded")
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              stop=req.stop_list(), seed=req.seed, top_logprobs=top_logprobs)

    @app.get("/", include_in_schema=False, dependencies=[Depends(check_key)])
    async def chat_page() -> FileResponse:
        return FileResponse(STATIC / "chat.html", media_type="text/html; charset=utf-8")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(check_key)])
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        """Liveness and load, no key needed: per model the queue, batch rows, KV/mask width and the last
        decode step's time (what the chaos tests and bench/bench_serve_steady.py watch)."""
        models = {name: e.health() for name, e in engines.items()}
        ok = all(m["alive"] for m in models.values())
        return JSONResponse({"status": "ok" if ok else "error", "models": models}, status_code=200 if ok else 503)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "hypnos", "root": str(e.path)}
            for name, e in engines.items()]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(req: P.ChatCompletionRequest, request: Request):
        engine = engine_for(req.model)
        admit(engine)
        messages = [m.as_template_dict() for m in req.messages]
        try:
            prompt = await encode(engine, "messages", engine.encode_chat, messages,
                                  sum(len(m["content"]) for m in messages))
        except APIError:
            raise
        except Exception as e:  # the template rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from e
        params = sampling(req, engine, len(prompt), req.top_logprobs or 0)
        params.grammar = await constrain(engine, req.response_format)
        generation = engine.generate(prompt, params, req.n)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_chat_events(generation, req, len(prompt), include_usage))
        choices, completion_tokens = await _unless_gone(request, _collect(generation, req.n))
        for c in choices:
            c["tokens"] = c["tokens"] if req.logprobs else None
        return P.chat_response(P.new_id("chatcmpl"), req.model, choices, len(prompt), completion_tokens)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: P.CompletionRequest, request: Request):
        engine = engine_for(req.model)
        admit(engine)
        prompts = [await encode(engine, "prompt", engine.encode_text, p, len(p))
                   for p in ([req.prompt] if isinstance(req.prompt, str) else req.prompt)]
        params = [sampling(req, engine, len(p), req.logprobs or 0) for p in prompts]
        grammar = await constrain(engine, req.response_format)
        for s in params:
            s.grammar = grammar
        generations = [engine.generate(p, s, req.n) for p, s in zip(prompts, params)]
        prompt_tokens = sum(map(len, prompts))
        if req.stream:
            return _sse(_completion_events(generations, req, prompt_tokens))
        results = await _unless_gone(request, asyncio.gather(*(_collect(g, req.n) for g in generations)))
        choices = []
        for choice in (c for cs, _ in results for c in cs):
            lp = P.completion_logprobs(choice["tokens"], 0) if req.logprobs is not None else None
            choices.append(P.completion_choice(len(choices), choice["text"], choice["finish_reason"], lp))
        usage = P.usage(prompt_tokens, sum(n for _, n in results))
        return P.completion_response(P.new_id("cmpl"), req.model, int(time.time()), choices, usage)

    return app


async def _unless_gone(request: Request, work):
    """Await ``work``, cancelling it if the client goes away (a timed-out client retries: without this the
    engine would keep decoding answers nobody reads, and fall further behind with every retry)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise APIError(499, "client closed the request")


async def _collect(generation: AsyncIterator[list[Delta]], n: int) -> tuple[list[dict], int]:
    """Run a generation to the end: per choice ``text``, ``tokens``, ``finish_reason``; total tokens."""
    choices = [{"text": "", "tokens": [], "finish_reason": None} for _ in range(n)]
    completion_tokens = 0
    async with contextlib.aclosing(generation):
        async for deltas in generation:
            for d in deltas:
                choices[d.index]["text"] += d.text
                choices[d.index]["tokens"] += d.tokens
                if d.finish_reason:
                    choices[d.index]["finish_reason"] = d.finish_reason
                    completion_tokens += d.completion_tokens
    return choices, completion_tokens


async def _chat_events(generation: AsyncIterator[list[Delta]], req: P.ChatCompletionRequest, prompt_tokens: int,
                       include_usage: bool) -> AsyncIterator[dict]:
    rid, created, completion_tokens = P.new_id("chatcmpl"), int(time.time()), 0
    for i in range(req.n):
        yield P.chat_chunk(rid, req.model, created, i, {"role": "assistant", "content": ""},
                           [] if req.logprobs else None)
    async with contextlib.aclosing(generation):
        async for deltas in generation:
            for d in deltas:
                if d.text or d.tokens:
                    yield P.chat_chunk(rid, req.model, created, d.index, {"content": d.text},
                                       d.tokens if req.logprobs else None)
                if d.finish_reason:
                    completion_tokens += d.completion_tokens
                    yield P.chat_chunk(rid, req.model, created, d.index, {}, None, d.finish_reason)
    if include_usage:
        yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
               "system_fingerprint": None, "choices": [], "usage": P.usage(prompt_tokens, completion_tokens)}


async def _completion_events(generations: list[AsyncIterator[list[Delta]]], req: P.CompletionRequest,
                             prompt_tokens: int) -> AsyncIterator[dict]:
    rid, created, completion_tokens = P.new_id("cmpl"), int(time.time()), 0
    offsets = [0] * (len(generations) * req.n)
    async for p, deltas in _merge(generations):
        for d in deltas:
            index = p * req.n + d.index
            lp = P.completion_logprobs(d.tokens, offsets[index]) if req.logprobs is not None else None
            offsets[index] += len(d.text)
            completion_tokens += d.completion_tokens
            yield P.completion_response(rid, req.model, created,
                                        [P.completion_choice(index, d.text, d.finish_reason, lp)], None)
    if req.stream_options and req.stream_options.include_usage:
        yield P.completion_response(rid, req.model, created, [], P.usage(prompt_tokens, completion_tokens))


async def _merge(generations: list[AsyncIterator[list[Delta]]]) -> AsyncIterator[tuple[int, list[Delta]]]:
    """Interleave several generations as their deltas arrive, tagged with the generation's position."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, g: AsyncIterator[list[Delta]]) -> None:
        try:
            async with contextlib.aclosing(g):
                async for deltas in g:
                    await queue.put((i, deltas))
        except Exception as e:  # noqa: BLE001 - re-raised in the consumer
            await queue.put((i, e))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except Exception as e:  # headers are sent: report in-band, as OpenAI does
            log.exception("generation failed mid-stream")
            yield f"data: {json.dumps(P.error_body(f'generation failed: {e}', 'server_error'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status == 401:  # the page itself: let the browser ask for the key (API calls: no dialog)
            headers["WWW-Authenticate"] = 'Basic realm="hypnos"' if request.url.path == "/" else "Bearer"
        return JSONResponse(exc.body, status_code=exc.status, headers=headers)

    @app.exception_handler(EngineShuttingDown)
    async def shutting_down(request: Request, exc: EngineShuttingDown) -> JSONResponse:
        return JSONResponse(P.error_body(str(exc), "server_error", code="shutting_down"), status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:3]]
        param = ".".join(str(x) for x in errors[0]["loc"][1:]) or None if errors else None
        return JSONResponse(P.error_body("; ".join(parts) or "invalid request", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(P.error_body(str(exc.detail), type_), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(P.error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (by header, or by counting)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await _send_error(send, 413, f"request body over {self.max_bytes} bytes")
            return await self.app(scope, receive, send)
        # chunked upload: read it here (bounded), then replay it to the app
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # client went away: let the app see it
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _send_error(send, 413, f"request body over {self.max_bytes} bytes")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps(P.error_body(message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------ running it
def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``["NAME=REF", "REF"]`` -> ``{served id: model reference}``; a bare REF is served under its own name."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        name, ref = (name, ref) if sep else (spec, spec)
        if not name or not ref or name in out:
            raise ValueError(f"bad or duplicate model spec {spec!r} (use NAME=REF or REF)")
        out[name] = ref
    return out


def serve_forever(engines: Mapping[str, Engine], host: str, port: int, api_key: str | None = None,
                  shutdown_timeout_s: float = 30.0, **app_kwargs: Any) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully.

    On the first signal the server stops accepting connections and lets running answers finish for up to
    ``shutdown_timeout_s``; whatever still runs then is ended by the engine with ``finish_reason``
    ``length`` (streams get their last chunk and ``data: [DONE]``), queued requests get 503. A second
    Ctrl-C exits at once.
    """
    import uvicorn

    class Graceful(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                log.info("shutting down: finishing running answers (at most %.0f s)", shutdown_timeout_s)
                timer = threading.Timer(shutdown_timeout_s, lambda: [e.abort() for e in engines.values()])
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(engines, api_key=api_key, **app_kwargs), host=host, port=port,
                            log_level="info", timeout_graceful_shutdown=shutdown_timeout_s + 5)
    Graceful(config).run()
    for engine in engines.values():
        engine.abort()
        engine.close()


@contextlib.contextmanager
def run_server(models: Mapping[str, str | Engine], host: str = "127.0.0.1", port: int = 0,
               api_key: str | None = None, **app_kwargs: Any) -> Iterator[str]:
    """Serve models from a background thread for the duration of a ``with`` block.

    Args:
        models: served id -> model reference (loaded here and closed on exit) or a ready ``Engine``.
        host: interface to bind.
        port: 0 picks a free port (bound before the thread starts, so there is no race).
        api_key: require this bearer key.
        **app_kwargs: passed to ``create_app`` (``max_tokens_limit``, ``max_body_bytes``).

    Yields:
        The base URL for OpenAI clients, e.g. ``http://127.0.0.1:38211/v1``.
    """
    import uvicorn

    owned = {name: Engine(m) for name, m in models.items() if not isinstance(m, Engine)}
    engines = {name: owned.get(name, m) for name, m in models.items()}
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(create_app(engines, api_key, **app_kwargs), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hypnos-serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread exited during startup")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        for engine in owned.values():
            engine.close()
