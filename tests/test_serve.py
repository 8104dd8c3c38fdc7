"""``hypnos serve`` over real HTTP on loopback, driven by the official ``openai`` SDK and raw httpx."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import openai
import pytest
import torch

from hypnos.serve.app import parse_model_specs, run_server
from hypnos.serve.engine import Engine, SamplingParams

MSGS = [{"role": "user", "content": "术后恶心呕吐如何预防？"}]
LIMIT = 256


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The tiny model served as ``tiny`` (max_tokens limit 256, bodies up to 64 KiB)."""
    with run_server({"tiny": str(tiny_model_dir)}, max_tokens_limit=LIMIT, max_body_bytes=64 << 10) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


def chat(sdk, **kw):
    return sdk.chat.completions.create(**{"model": "tiny", "messages": MSGS, "max_tokens": 12, **kw})


def test_models_and_chat_page(server, sdk):
    assert [m.id for m in sdk.models.list()] == ["tiny"]
    page = httpx.get(server.removesuffix("/v1") + "/")
    assert page.status_code == 200 and "<select" in page.text
    assert "本模型输出仅供参考，不能替代执业医师的诊断与治疗" in page.text


def test_plain_and_streamed_chat_agree(server, sdk):
    plain = chat(sdk, temperature=0)
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 12 and plain.usage.prompt_tokens > 5
    text = plain.choices[0].message.content
    assert isinstance(text, str) and text

    chunks = list(chat(sdk, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12

    body = {"model": "tiny", "messages": MSGS, "max_tokens": 3, "stream": True}
    raw = httpx.post(server + "/chat/completions", json=body).text
    assert raw.rstrip().endswith("data: [DONE]")
    assert all(line.startswith("data: ") for line in raw.split("\n\n") if line)


def test_n_choices_and_seed_reproducibility(sdk):
    a = chat(sdk, n=3, temperature=1.0, seed=7)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert a.usage.completion_tokens == 36
    b = chat(sdk, n=3, temperature=1.0, seed=7)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    c = chat(sdk, n=3, temperature=1.0, seed=8)
    assert [x.message.content for x in a.choices] != [x.message.content for x in c.choices]
    assert len({x.message.content for x in a.choices}) > 1  # each choice samples on its own
    greedy = chat(sdk, temperature=0).choices[0].message.content
    assert chat(sdk, temperature=1.0, top_p=1e-6, seed=7).choices[0].message.content == greedy


def test_sampling_follows_temperature_and_top_p():
    from types import SimpleNamespace

    def rows(temperature, top_p, n=4000):
        gen = torch.Generator().manual_seed(0)
        params = SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p)
        return [SimpleNamespace(job=SimpleNamespace(params=params), generator=gen) for _ in range(n)]

    logits = torch.tensor([0.1, 0.2, 0.7]).log().expand(4000, 3)
    freq = lambda tokens: torch.bincount(torch.tensor(tokens), minlength=3).float() / len(tokens)
    assert torch.allclose(freq(Engine._sample(None, logits, rows(1.0, 1.0))), torch.tensor([0.1, 0.2, 0.7]), atol=0.03)
    # top_p=0.75 keeps the 0.7 and 0.2 tokens, renormalised
    assert torch.allclose(freq(Engine._sample(None, logits, rows(1.0, 0.75))), torch.tensor([0, 2 / 9, 7 / 9]),
                          atol=0.03)
    # temperature 0.5 squares the odds: 1:4:49
    assert torch.allclose(freq(Engine._sample(None, logits, rows(0.5, 1.0))), torch.tensor([1, 4, 49]) / 54,
                          atol=0.03)
    assert set(Engine._sample(None, logits, rows(0.0, 1.0, n=10))) == {2}


def test_stop_strings_are_trimmed(sdk):
    full = chat(sdk, temperature=0, max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full.index(stop)
    for stream in (False, True):
        if stream:
            chunks = list(chat(sdk, temperature=0, max_tokens=24, stop=[stop, "never-seen"], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            r = chat(sdk, temperature=0, max_tokens=24, stop=stop).choices[0]
            text, reason = r.message.content, r.finish_reason
        assert (text, reason) == (full[:cut], "stop")


def test_logprobs_are_real_log_probabilities(sdk, server, tiny_model_dir):
    r = chat(sdk, temperature=0, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    for tok in content:
        tops = [t.logprob for t in tok.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert tok.logprob == pytest.approx(tops[0])  # greedy picks the top-1 token
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-5
        assert all(t <= 0 for t in tops)
        assert tok.bytes and bytes(tok.bytes).decode("utf-8", errors="replace") == tok.token

    # the same numbers as a forward pass of the model itself
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tok(tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    expected = [torch.log_softmax(step[0].float(), -1).max().item() for step in out.logits]
    assert [t.logprob for t in content] == pytest.approx(expected, abs=1e-4)


def test_legacy_completions(sdk):
    r = sdk.completions.create(model="tiny", prompt=["麻醉", "Anesthesia is"], max_tokens=5, n=2, logprobs=3,
                               temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices of a prompt agree
    lp = r.choices[2].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(len(t) <= 3 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    assert r.usage.completion_tokens == 20
    streamed = "".join(c.choices[0].text for c in sdk.completions.create(
        model="tiny", prompt="Anesthesia is", max_tokens=5, temperature=0, stream=True))
    assert streamed == r.choices[2].text


BAD_BODIES = [
    (b'{"model": "tiny", "messages": [', 400),                                          # malformed JSON
    (b'[1, 2]', 400),                                                                     # not an object
    ({"model": "tiny", "messages": "hello"}, 400),                                      # wrong type
    ({"model": "tiny", "messages": MSGS, "max_tokens": "ten"}, 400),                    # wrong type
    ({"model": "tiny", "messages": MSGS, "temperature": "hot"}, 400),
    ({"model": "tiny", "messages": []}, 400),                                           # empty messages
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ({"model": "tiny", "messages": MSGS, "max_tokens": LIMIT + 1}, 400),                # over the limit
    ({"model": "tiny", "messages": MSGS, "max_tokens": 0}, 400),
    ({"model": "tiny", "messages": MSGS, "n": 17}, 400),
    ({"model": "tiny", "messages": MSGS, "top_logprobs": 21, "logprobs": True}, 400),
    ({"model": "tiny", "messages": MSGS, "top_logprobs": 2}, 400),                      # needs logprobs
    ({"model": "tiny", "messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}, 400),
    ({"model": "tiny", "messages": [{"role": "user", "content": "长" * 2000}]}, 400),    # over the context
    ({"model": "nope", "messages": MSGS}, 404),                                         # unknown model
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * (70 << 10)}]}, 413),  # body too large
]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_requests_get_openai_style_4xx(server, body, status):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {
        "json": body}
    r = httpx.post(server + "/chat/completions", **kw)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"]["message"], str)


def test_other_4xx(server):
    assert httpx.post(server + "/completions", json={"model": "tiny", "prompt": 3}).status_code == 400
    assert httpx.get(server + "/nowhere").json()["error"]["type"] == "not_found_error"
    assert httpx.get(server + "/chat/completions").status_code == 405
    chunked = (b"x" * 1024 for _ in range(70))  # no content-length: counted while read
    assert httpx.post(server + "/chat/completions", content=chunked).status_code == 413


def test_api_key(tiny_model_dir, serve_model):
    with serve_model(tiny_model_dir, name="tiny", api_key="s3cret") as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(url + "/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert chat(ok, max_tokens=2).choices[0].message.content


def test_concurrent_requests_are_batched_and_match_sequential(tiny_model_dir):
    prompts = [f"问题{i}：麻醉前评估包括哪些内容？" * (1 + i % 3) for i in range(6)]  # different lengths: padding
    engine = Engine(tiny_model_dir)
    with run_server({"tiny": engine}) as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)

        async def ask(p):
            r = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p}],
                                                     max_tokens=8 + len(p) % 5, temperature=0)
            return r.choices[0].message.content

        async def main():
            sequential = [await ask(p) for p in prompts]
            steps, tokens = engine.stats["steps"], engine.stats["tokens"]
            concurrent = await asyncio.gather(*(ask(p) for p in prompts))
            return sequential, concurrent, engine.stats["steps"] - steps, engine.stats["tokens"] - tokens

        sequential, concurrent, steps, tokens = asyncio.run(main())
    engine.close()
    assert concurrent == sequential
    assert steps < tokens  # several rows per forward pass


def test_requests_join_a_running_batch(tiny_model_dir):
    """Requests arriving mid-generation join the running batch and answer exactly as they would alone."""
    engine = Engine(tiny_model_dir)
    jobs = [("长回答", 60, None), ("短问题一", 5, None), ("另一个稍长一点的问题？", 12, 3), ("q", 20, 11)]

    async def run(prompt, max_tokens, seed, started=None):
        params = SamplingParams(max_tokens=max_tokens, temperature=0 if seed is None else 1.0, seed=seed)
        text = ""
        async for deltas in engine.generate(engine.encode_chat([{"role": "user", "content": prompt}]), params):
            text += "".join(d.text for d in deltas)
            if started is not None:
                started.set()
        return text

    async def main():
        alone = [await run(*job) for job in jobs]
        before = dict(engine.stats)
        started = asyncio.Event()
        first = asyncio.create_task(run(*jobs[0], started))
        await started.wait()
        rest = await asyncio.gather(*(run(*job) for job in jobs[1:]))
        return alone, [await first, *rest], {k: engine.stats[k] - before[k] for k in before}

    alone, joined, stats = asyncio.run(main())
    engine.close()
    assert joined == alone
    assert stats["tokens"] == 97 and stats["steps"] <= 60 + stats["prefills"]  # the others rode along


def test_stream_disconnect_frees_the_engine(server, sdk):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": LIMIT, "stream": True}
    with httpx.stream("POST", server + "/chat/completions", json=body) as r:
        next(r.iter_lines())  # read one event, then hang up
    assert chat(sdk, max_tokens=2).choices[0].message.content  # answered, not stuck behind the abandoned stream


def test_several_models_and_specs(tiny_model_dir):
    assert parse_model_specs(["a=/x", "b"]) == {"a": "/x", "b": "b"}
    with pytest.raises(ValueError):
        parse_model_specs(["a=/x", "a=/y"])
    with run_server({"a": str(tiny_model_dir), "b": str(tiny_model_dir)}) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["a", "b"]
        assert all(chat(client, model=m, max_tokens=2).model == m for m in "ab")


def test_smollm2_answers_through_the_sdk(smollm2_dir, serve_model):
    with serve_model(smollm2_dir, name="smollm2-135m-instruct") as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=16,
                                           messages=[{"role": "user", "content": "What is anesthesia?"}])
    text = r.choices[0].message.content
    assert len(text.split()) >= 3 and json.dumps(text)  # fluent-ish English, not byte soup


def test_timed_out_plain_request_stops_decoding(tiny_model_dir):
    """A client that times out and hangs up (then retries) must not leave the engine decoding its answer."""
    engine = Engine(str(tiny_model_dir))
    with run_server({"tiny": engine}, max_tokens_limit=4096) as url:
        body = {"model": "tiny", "messages": MSGS, "max_tokens": 900, "temperature": 1.0, "seed": 1}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/chat/completions", json=body, timeout=0.3)
        import time

        time.sleep(1.5)
        steps = engine.stats["steps"]
        time.sleep(1.0)
        assert engine.stats["steps"] == steps  # nothing is being decoded any more
        assert steps < 800, f"{steps} steps: the abandoned answer was decoded to the end"
    engine.close()
