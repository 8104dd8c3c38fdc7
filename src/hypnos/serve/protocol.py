"""The OpenAI-compatible wire format of ``hypnos serve``: request schemas and response builders.

Requests are validated strictly (a string where a number belongs is a 400, not a guess); unknown fields
are ignored, as OpenAI-compatible servers do, so newer SDKs keep working. Responses are plain dicts in
the shapes of the OpenAI API reference (chat completions, chat completion chunks, legacy completions).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hypnos.serve.engine import TokenInfo

MAX_N = 16
MAX_TOP_LOGPROBS = 20


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with token counts and no choices."""

    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


# Parameters this server does not implement: a request that sets one to anything but its neutral value
# gets a 400 naming it, rather than a 200 that silently ignored it (issue 15 #7).
UNSUPPORTED = {
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
    "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0), "top_k": (None, -1, 0), "min_p": (None, 0, 0.0),
    "best_of": (None, 1), "suffix": (None, ""), "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "web_search_options": (None,), "guided_json": (None,), "guided_regex": (None,),
    "guided_grammar": (None,), "guided_choice": (None,),
}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, neutral in UNSUPPORTED.items():
                if name in data and not any(data[name] == v and type(data[name]) is type(v) for v in neutral):
                    raise ValueError(f"{name} is not supported by this server (got {data[name]!r:.60})")
        return data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return v

    def stop_list(self) -> tuple[str, ...]:
        """``stop`` as a tuple of strings."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class TextPart(BaseModel):
    """A text part of a multi-part message ``content``."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``content`` is a string or a list of text parts."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_template_dict(self) -> dict[str, str]:
        """The message as chat templates expect it (developer messages count as system)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class JsonSchemaSpec(BaseModel):
    """``response_format.json_schema``: the schema the answer must validate against."""

    model_config = ConfigDict(strict=True, extra="ignore")
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``{"type": "text" | "json_object"}`` or ``{"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": true}}`` (the OpenAI shapes)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a "json_schema": {"name": ..., "schema": {...}} object')
        return self

    def as_dict(self) -> dict[str, Any]:
        """The format as ``hypnos.serve.grammar.grammar_for`` takes it."""
        return self.model_dump(by_alias=True, exclude_none=True)


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        self.max_tokens = self.max_tokens or self.max_completion_tokens
        return self


class CompletionRequest(_Request):
    """``POST /v1/completions`` (legacy): one prompt string, or a list of them."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # the legacy API's default
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    response_format: ResponseFormat | None = None  # an extension (vLLM has it too): constrain completions

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= MAX_N:
            raise ValueError(f"prompt must be a string or a list of 1 to {MAX_N} strings")
        return v

    @field_validator("echo")
    @classmethod
    def _check_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v


# ------------------------------------------------------------------------------------------ responses
def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-1f0c...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(tokens: list[TokenInfo]) -> dict[str, Any]:
    """Chat-format logprobs: ``{"content": [{token, logprob, bytes, top_logprobs: [...]}]}``."""
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
         "top_logprobs": [{"token": s, "logprob": lp, "bytes": b} for s, b, lp in t.top]}
        for t in tokens
    ], "refusal": None}


def legacy_token(text: str, raw: list[int]) -> str:
    """A token as the legacy API names it: its text, or ``bytes:\\xe9\\xba`` when its bytes are not whole
    UTF-8 characters (what OpenAI sends for such pieces), so different byte tokens keep different names."""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _top_dict(top: list[tuple[str, list[int], float]]) -> dict[str, float]:
    """Legacy ``top_logprobs``: a dict, so two tokens with one name would merge; keep every one of them."""
    out: dict[str, float] = {}
    for text, raw, lp in top:
        name = legacy_token(text, raw)
        if name in out:  # e.g. SentencePiece's <0x41> next to "A": name it by its bytes
            name = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        while name in out:
            name += "\u200b"  # still equal (same bytes): distinct keys, and exactly k of them
        out[name] = lp
    return out


def completion_logprobs(tokens: list[TokenInfo], offset: int) -> dict[str, Any]:
    """Legacy logprobs: parallel lists; ``text_offset`` is the character offset in the completion where a
    token's text starts (the tokens of one Chinese character all point at that character); ``offset`` is
    the length of the text streamed before these tokens (unused: each token carries its own offset)."""
    return {"tokens": [legacy_token(t.token, t.bytes) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [_top_dict(t.top) for t in tokens], "text_offset": [t.offset for t in tokens]}


def chat_response(rid: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
                  ) -> dict[str, Any]:
    """A whole ``chat.completion``; ``choices`` hold ``text``, ``finish_reason``, ``tokens`` (or None)."""
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c["text"], "refusal": None},
             "logprobs": chat_logprobs(c["tokens"]) if c["tokens"] is not None else None,
             "finish_reason": c["finish_reason"]}
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict[str, Any],
               logprobs: list[TokenInfo] | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice."""
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta,
                     "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
                     "finish_reason": finish_reason}],
    }


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
    """One legacy completion choice (whole, or a streamed piece)."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_response(rid: str, model: str, created: int, choices: list[dict],
                        usage_: dict[str, int] | None) -> dict[str, Any]:
    """A ``text_completion`` object (whole, or one streamed chunk when ``usage_`` is None)."""
    body = {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body
