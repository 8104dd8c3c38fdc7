"""Structured outputs in ``hypnos serve``: ``response_format`` json_schema / json_object constrain decoding.

Driven over real HTTP with the official SDK against a tiny random model (SmolLM2's byte-level BPE
tokenizer), a tiny model with the Chinese-LLaMA-2 SentencePiece tokenizer, and the real SmolLM2-135M.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import openai
import pytest

from hypnos.serve.app import run_server

ASPECTS = ["coherence", "professionalism", "usefulness", "harmlessness", "friendliness"]
VERDICT = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 60},
                   **{a: {"type": "integer", "minimum": 0, "maximum": 10} for a in ASPECTS}},
    "required": ["reason", *ASPECTS], "additionalProperties": False,
}
ITEMS = {
    "type": "object",
    "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object",
        "properties": {"instruction": {"type": "string", "minLength": 1, "maxLength": 60},
                       "output": {"type": "string", "minLength": 1, "maxLength": 60}},
        "required": ["instruction", "output"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False,
}


def fmt(schema: dict, name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def check_verdict(v) -> None:
    assert isinstance(v, dict) and set(v) == {"reason", *ASPECTS}
    assert isinstance(v["reason"], str) and len(v["reason"]) <= 60
    assert all(type(v[a]) is int and 0 <= v[a] <= 10 for a in ASPECTS), v


def check_items(v) -> None:
    assert isinstance(v, dict) and set(v) == {"items"} and 1 <= len(v["items"]) <= 2
    for item in v["items"]:
        assert set(item) == {"instruction", "output"}
        assert all(isinstance(item[k], str) and 1 <= len(item[k]) <= 60 for k in item)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    with run_server({"tiny": str(tiny_model_dir)}) as url:
        yield url


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tiny_model_output_validates_against_the_schemas(tiny, temperature):
    """A random model, left alone, never writes JSON; constrained, every answer parses and validates."""
    client = openai.OpenAI(base_url=tiny, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "写两条麻醉学指令数据"}]
    free = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0)
    with pytest.raises(ValueError):
        json.loads(free.choices[0].message.content)
    for schema, check in ((ITEMS, check_items), (VERDICT, check_verdict)):
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=400, temperature=temperature,
                                           seed=3, n=2, response_format=fmt(schema, "x"))
        for c in r.choices:
            assert c.finish_reason == "stop", c.message.content  # ended by the grammar, not by max_tokens
            check(json.loads(c.message.content))
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=300, temperature=temperature,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason in ("stop", "length")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # a random model may nest objects until max_tokens: the output is then a valid prefix
        assert r.choices[0].message.content.startswith("{")


NESTED = {  # enums of strings and of integers, an array of arrays, an array of objects
    "type": "object", "properties": {
        "kind": {"type": "string", "enum": ["mcq", "qa", "dialogue"]},
        "grid": {"type": "array", "minItems": 1, "maxItems": 2,
                 "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "integer", "enum": [1, 2, 3]}}},
        "options": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "object", "properties": {"letter": {"type": "string", "enum": ["A", "B", "C"]},
                                             "text": {"type": "string", "maxLength": 10}},
            "required": ["letter", "text"], "additionalProperties": False}}},
    "required": ["kind", "grid", "options"], "additionalProperties": False}


def test_nested_arrays_and_enums_with_several_choices(tiny):
    client = openai.OpenAI(base_url=tiny, api_key="x", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "出一道选择题"}], n=3, seed=5,
                                       max_tokens=300, temperature=1.0, response_format=fmt(NESTED, "mcq"))
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        v = json.loads(c.message.content)
        assert v["kind"] in ("mcq", "qa", "dialogue") and 1 <= len(v["grid"]) <= 2
        assert all(1 <= len(row) <= 3 and set(row) <= {1, 2, 3} for row in v["grid"])
        assert len(v["options"]) == 2 and all(o["letter"] in "ABC" and len(o["text"]) <= 10 for o in v["options"])


def test_streamed_structured_output_and_logprobs(tiny):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "评分"}], "max_tokens": 300,
            "temperature": 0, "stream": True, "logprobs": True, "response_format": fmt(VERDICT, "verdict")}
    text, byte_stream, finish = "", b"", None
    with httpx.stream("POST", tiny + "/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["delta"].get("content") or ""
            for t in (choice["logprobs"] or {}).get("content", []):
                byte_stream += bytes(t["bytes"])
            finish = choice["finish_reason"] or finish
    assert finish == "stop"
    check_verdict(json.loads(text))
    assert byte_stream.decode() == text  # the bytes of the tokens rebuild the answer exactly


@pytest.mark.parametrize(("response_format", "message"), [
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema"),
    ({"type": "xml"}, "type"),
    (fmt({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}, "x"), "response_format"),
])
def test_bad_response_format_is_a_400_naming_it(tiny, response_format, message):
    r = httpx.post(tiny + "/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                     "response_format": response_format})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "response_format" in (err["param"] or "") + err["message"] and message in err["message"] + (err["param"] or "")


def _shared_data() -> Path:
    return Path(os.environ.get("HYPNOS_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


@pytest.fixture(scope="module")
def sentencepiece_model_dir(tmp_path_factory):
    """A tiny random Llama with the Chinese-LLaMA-2 SentencePiece tokenizer (byte fallback, '▁' pieces)."""
    src = _shared_data() / "tokenizers" / "chinese_llama2_alpaca2"
    if not (src / "tokenizer.model").exists():
        pytest.skip(f"shared data not found at {src} (set HYPNOS_DATA)")
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=2, pad_token_id=0, bos_token_id=1)
    out = tmp_path_factory.mktemp("tiny-sp-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_sentencepiece_tokenizer_structured_completion(sentencepiece_model_dir):
    with run_server({"sp": str(sentencepiece_model_dir)}) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        r = client.completions.create(model="sp", prompt="麻醉评分：", max_tokens=300, temperature=0,
                                      extra_body={"response_format": fmt(VERDICT, "verdict")})
        lp = client.completions.create(model="sp", prompt="中文：麻醉学是", max_tokens=6, temperature=0, logprobs=5)
    assert r.choices[0].finish_reason == "stop"
    check_verdict(json.loads(r.choices[0].text))
    assert [len(d) for d in lp.choices[0].logprobs.top_logprobs] == [5] * 6  # k entries on SentencePiece too
    assert not any("\ufffd" in name for d in lp.choices[0].logprobs.top_logprobs for name in d)


def test_smollm2_writes_schema_valid_items_and_verdicts(smollm2_dir):
    """The embedded 135M model, as teacher and as judge, answers in the schema (short budgets keep it quick)."""
    with run_server({"smollm2-135m-instruct": str(smollm2_dir)}) as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)

        async def ask(prompt, schema, max_tokens):
            r = await client.chat.completions.create(
                model="smollm2-135m-instruct", messages=[{"role": "user", "content": prompt}], temperature=0.7,
                seed=1, max_tokens=max_tokens, response_format=fmt(schema, "out"))
            return r.choices[0]

        async def main():
            return await asyncio.gather(
                ask("Write two short instruction/output pairs about anesthesia as JSON.", ITEMS, 160),
                ask("Rate this answer from 0 to 10 on coherence, professionalism, usefulness, harmlessness and "
                    "friendliness. Question: what is propofol? Answer: an intravenous anesthetic.", VERDICT, 80))

        items, verdict = asyncio.run(main())
    assert items.finish_reason == "stop" and verdict.finish_reason == "stop", (items, verdict)
    check_items(json.loads(items.message.content))
    check_verdict(json.loads(verdict.message.content))
