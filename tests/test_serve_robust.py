"""``hypnos serve`` under the conditions of issue 15: CJK logprobs, long runs, long prompts, seeds, bad
parameters, backpressure, keys, shutdown. Real HTTP on loopback; tiny models unless the real tokenizer's
behaviour on Chinese is the point (then SmolLM2-135M, a few tokens)."""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from hypnos.serve.app import run_server
from hypnos.serve.engine import Engine, SamplingParams

MSGS = [{"role": "user", "content": "术后恶心呕吐如何预防？"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = Engine(str(tiny_model_dir))
    yield e
    e.close()


@pytest.fixture(scope="module")
def tiny(engine):
    with run_server({"tiny": engine}) as url:
        yield url


def _complete_prefix(raw: bytes) -> int:
    """Characters of ``raw`` that are whole UTF-8 characters (an incomplete tail is held back)."""
    return len(codecs.getincrementaldecoder("utf-8")().decode(raw))


# ------------------------------------------------------------------------------------ CJK and logprobs
def test_cjk_logprobs_bytes_offsets_and_cut_characters(smollm2_dir):
    """SmolLM2 writes Chinese in byte pieces: every piece keeps its bytes and its own top_logprobs entry,
    text_offset points at the character a piece belongs to, and a cut character is never sent as U+FFFD."""
    with run_server({"s": str(smollm2_dir)}) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        prompt = "中文：麻醉学是"
        full = client.completions.create(model="s", prompt=prompt, max_tokens=10, temperature=0, logprobs=5)
        lp = full.choices[0].logprobs
        assert len(lp.tokens) == full.usage.completion_tokens == 10
        assert any(t.startswith("bytes:") for t in lp.tokens)  # the case under test: byte pieces
        assert [len(d) for d in lp.top_logprobs] == [5] * 10  # byte tokens are not merged into one "�"
        assert not any("\ufffd" in name for d in lp.top_logprobs for name in d)  # named by their bytes
        assert "\ufffd" not in "".join(lp.tokens)
        raw = b""
        for token, offset in zip(lp.tokens, lp.text_offset):
            assert offset == _complete_prefix(raw)  # the character this token starts or continues
            raw += (eval("b'" + token[6:] + "'") if token.startswith("bytes:") else token.encode())
        assert full.choices[0].text == raw.decode("utf-8", errors="ignore")
        for k in range(1, 7):
            text = client.completions.create(model="s", prompt=prompt, max_tokens=k, temperature=0).choices[0].text
            assert "\ufffd" not in text and full.choices[0].text.startswith(text)

        chat = client.chat.completions.create(model="s", messages=[{"role": "user", "content": "用中文介绍麻醉学"}],
                                              max_tokens=12, temperature=0, logprobs=True, top_logprobs=5)
        content = chat.choices[0].logprobs.content
        assert len(content) == chat.usage.completion_tokens == 12
        assert all(len(t.top_logprobs) == 5 and all(isinstance(x.bytes, list) for x in t.top_logprobs)
                   for t in content)
        joined = b"".join(bytes(t.bytes) for t in content)
        assert joined.decode("utf-8", errors="ignore") == chat.choices[0].message.content
        assert "\ufffd" not in chat.choices[0].message.content


# ------------------------------------------------------------------------------------ engine over time
def test_mask_width_stays_bounded_while_the_batch_never_empties(engine):
    """8 clients keep the batch busy with short answers; joins and removals must not widen the KV cache."""
    engine.live["max_mask_width"] = 0
    longest_prompt = 0

    async def client(i):
        nonlocal longest_prompt
        for j in range(10):
            prompt = engine.encode_chat([{"role": "user", "content": f"问题{i}-{j}" + "麻醉" * (j % 4)}])
            longest_prompt = max(longest_prompt, len(prompt))
            async for _ in engine.generate(prompt, SamplingParams(max_tokens=4 + (i * 7 + j * 3) % 20,
                                                                  temperature=1.0, seed=i * 100 + j)):
                pass

    async def main():
        await asyncio.gather(*(client(i) for i in range(8)))

    steps = engine.stats["steps"]
    asyncio.run(main())
    assert engine.stats["steps"] - steps > 100
    # the widest a live row can be: its prompt, its 23 tokens, and the step's new column
    assert engine.live["max_mask_width"] <= longest_prompt + 24, engine.live


def test_long_prompt_is_prefilled_in_chunks_between_decode_steps(tiny_model_dir):
    """A long prompt must not stall a running stream: no forward pass takes more than ``prefill_chunk``
    prompt tokens, and the running row keeps decoding while the long prompt is fed."""
    engine = Engine(str(tiny_model_dir), prefill_chunk=64)
    calls: list[tuple[int, int]] = []
    forward = engine.model.forward

    def spy(*args, **kw):
        calls.append(tuple(kw["input_ids"].shape))
        return forward(*args, **kw)

    engine.model.forward = spy

    async def main():
        short = engine.encode_chat(MSGS)
        long = engine.encode_chat([{"role": "user", "content": "麻醉" * 130}])
        assert 600 < len(long) < 1000  # within the tiny model's context of 1024
        first = asyncio.Event()

        async def run(prompt, max_tokens, started=None):
            async for _ in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0)):
                if started:
                    started.set()

        a = asyncio.create_task(run(short, 80, first))
        await first.wait()
        await asyncio.gather(a, run(long, 4))
        return len(long)

    n_long = asyncio.run(main())
    engine.close()
    assert max(width for _, width in calls) <= 64
    chunks = [i for i, (rows, width) in enumerate(calls) if rows == 1 and width > 1]
    chunks = chunks[1:]  # the short prompt's own prefill comes first
    assert len(chunks) >= n_long // 64
    between = calls[chunks[0]:chunks[-1]]
    assert sum(1 for c in between if c[1] == 1) >= len(chunks) - 1  # a decode step after every chunk


def test_seeded_requests_do_not_depend_on_batch_mates(tiny_model_dir, tmp_path):
    """12 seeded sampled requests give the same text alone and in a full batch with 12 strangers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a flat next-token distribution (small weights) makes every sampling step a close call
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.15)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    engine = Engine(str(tmp_path), max_batch_rows=24)
    prompts = [engine.encode_chat([{"role": "user", "content": f"第{i}个问题：" + "麻醉" * i}]) for i in range(12)]

    async def run(prompt, seed):
        text = ""
        async for deltas in engine.generate(prompt, SamplingParams(max_tokens=30, temperature=1.0, seed=seed)):
            text += "".join(d.text for d in deltas)
        return text

    async def main():
        alone = [await run(p, 1000 + i) for i, p in enumerate(prompts)]
        crowd = [run(prompts[(i * 5) % 12][: 5 + i], None) for i in range(12)]  # unseeded strangers
        together = await asyncio.gather(*(run(p, 1000 + i) for i, p in enumerate(prompts)), *crowd)
        return alone, list(together[:12])

    alone, together = asyncio.run(main())
    engine.close()
    assert together == alone


# ------------------------------------------------------------------------------------ the HTTP surface
@pytest.mark.parametrize(("param", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]), ("tool_choice", "required"),
    ("logit_bias", {"42": 5}), ("presence_penalty", 0.5), ("frequency_penalty", -1.0), ("top_k", 5),
])
def test_unsupported_parameters_are_a_400_naming_them(tiny, param, value):
    r = httpx.post(tiny + "/chat/completions", json={"model": "tiny", "messages": MSGS, "max_tokens": 2, param: value})
    assert r.status_code == 400 and param in r.json()["error"]["message"], r.text


def test_neutral_values_of_unsupported_parameters_are_fine(tiny):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 2, "presence_penalty": 0, "frequency_penalty": 0.0,
            "tool_choice": "none", "logit_bias": {}, "response_format": {"type": "text"}}
    assert httpx.post(tiny + "/chat/completions", json=body).status_code == 200


def test_health_reports_the_engine(tiny):
    h = httpx.get(tiny.removesuffix("/v1") + "/health").json()
    assert h["status"] == "ok"
    assert {"queued", "rows", "mask_width", "step_ms", "alive"} <= set(h["models"]["tiny"])


def test_default_max_tokens_is_the_room_left(tiny, engine):
    prompt = "麻醉" * 2000
    n = len(engine.encode_text(prompt[:1015 * 2]))
    text = prompt[:1015 * 2]
    while n > 1018:
        text = text[:-1]
        n = len(engine.encode_text(text))
    r = httpx.post(tiny + "/completions", json={"model": "tiny", "prompt": text, "max_tokens": None,
                                                 "temperature": 0}).json()
    assert r["usage"]["prompt_tokens"] == n
    assert r["usage"]["completion_tokens"] <= 1024 - n
    if r["choices"][0]["finish_reason"] == "length":
        assert r["usage"]["completion_tokens"] == 1024 - n


def test_huge_prompt_is_refused_before_tokenizing(tiny):
    t0 = time.monotonic()
    r = httpx.post(tiny + "/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "麻" * 1_000_000}]}, timeout=60)
    assert r.status_code == 400 and "characters" in r.json()["error"]["message"], r.text
    assert time.monotonic() - t0 < 3.0


def test_full_queue_answers_429_with_retry_after(tiny_model_dir):
    engine = Engine(str(tiny_model_dir), max_batch_rows=1)
    with run_server({"tiny": engine}, max_queue=1) as url, httpx.Client(timeout=60) as http:
        body = {"model": "tiny", "messages": MSGS, "max_tokens": 950, "temperature": 0, "stream": True}
        with http.stream("POST", url + "/chat/completions", json=body) as first:
            # wait until the engine has taken the first request off the queue: on a loaded machine the second
            # could otherwise arrive while the first still waits there, and be the one refused
            deadline = time.monotonic() + 30
            while engine.queued() and time.monotonic() < deadline:
                time.sleep(0.02)
            with http.stream("POST", url + "/chat/completions", json=body) as second:
                assert first.status_code == second.status_code == 200  # one decoding, one queued
                r = http.post(url + "/chat/completions", json={**body, "stream": False})
                assert engine.queued() == 1
        time.sleep(0.5)
        ok = http.post(url + "/chat/completions", json={**body, "stream": False, "max_tokens": 2})
    engine.close()
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
    assert r.json()["error"]["code"] == "queue_full"
    assert ok.status_code == 200  # the hung-up streams left, the queue drained


def test_api_key_guards_the_page_and_the_schema(tiny_model_dir, serve_model):
    with serve_model(tiny_model_dir, name="tiny", api_key="s3cret") as url:
        root = url.removesuffix("/v1")
        for path in ("/", "/openapi.json"):
            r = httpx.get(root + path)
            assert r.status_code == 401, path
            assert httpx.get(root + path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(root + "/").headers["www-authenticate"].startswith("Basic")  # the browser asks
        basic = base64.b64encode(b"me:s3cret").decode()
        assert httpx.get(root + "/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert httpx.get(root + "/health").status_code == 200  # liveness probes carry no key


# ------------------------------------------------------------------------------------ graceful shutdown
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_ends_streams_with_a_finish_reason_and_done(tiny_model_dir):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hypnos.cli", "serve", str(tiny_model_dir), "--name", "tiny",
                             "--port", str(port), "--shutdown-timeout", "0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)
        body = {"model": "tiny", "messages": MSGS, "max_tokens": 950, "temperature": 0, "stream": True}
        events = []
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once shut down, so the exit is the conventional "killed by SIGTERM"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])["choices"][0]
    assert last["finish_reason"] == "length", events[-3:]
    assert len(events) < 900  # cut by the shutdown, not decoded to the end


def test_a_chunked_prompt_that_finishes_at_once_does_not_break_the_batch(tiny_model_dir):
    """A long prompt with max_tokens=1 ends in its last prefill chunk; the rows decoding beside it go on."""
    engine = Engine(str(tiny_model_dir), prefill_chunk=16)

    async def run(prompt, max_tokens, started=None):
        n = 0
        async for deltas in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0)):
            n += sum(len(d.tokens) for d in deltas)
            if started:
                started.set()
        return n

    async def main():
        started = asyncio.Event()
        a = asyncio.create_task(run(engine.encode_chat(MSGS), 40, started))
        await started.wait()
        b = await run(engine.encode_chat([{"role": "user", "content": "麻醉" * 20}]), 1)
        return await a, b

    try:
        assert asyncio.run(main()) == (40, 1)
    finally:
        engine.close()


def test_a_short_prompt_is_not_queued_behind_a_long_prefill(tiny_model_dir):
    """While a long prompt is fed chunk by chunk, a short request that arrives is prefilled and answered
    at once instead of waiting for the long prompt's last chunk."""
    engine = Engine(str(tiny_model_dir), prefill_chunk=8)  # the long prompt takes ~100 chunks
    order: list[str] = []

    async def run(name, prompt, max_tokens, first=None):
        async for _ in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0)):
            if first is not None and not first.is_set():
                first.set()
        order.append(name)

    async def main():
        long, short = engine.encode_text("麻醉" * 130), engine.encode_text("短")
        assert len(short) <= 8 < len(long) // 50
        keep_busy = asyncio.Event()
        a = asyncio.create_task(run("busy", short, 60, keep_busy))  # a running row, so the batch is live
        await keep_busy.wait()
        b = asyncio.create_task(run("long", long, 1))
        while not engine.live["prefilling"]:  # wait until the long prompt is being fed
            await asyncio.sleep(0.001)
        await run("short", short, 2)
        await asyncio.gather(a, b)

    try:
        asyncio.run(main())
    finally:
        engine.close()
    assert order.index("short") < order.index("long"), order
