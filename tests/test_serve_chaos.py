"""Server-side chaos, bounded for CI: 100 concurrent requests, then a storm of clients hanging up.

Everything runs against the real app on loopback with the tiny model; the engine's live state comes from
``GET /health`` as an operator would read it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

from hypnos.serve.app import run_server
from hypnos.serve.engine import Engine


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    engine = Engine(str(tiny_model_dir), max_batch_rows=16)
    with run_server({"tiny": engine}, max_queue=1000) as url:
        yield url, engine
    engine.close()


def _body(i: int, rng: random.Random) -> tuple[str, dict]:
    question = f"病例{i}：" + "麻醉前评估" * rng.randint(0, 6)
    common = {"model": "tiny", "max_tokens": rng.randint(4, 16), "temperature": rng.choice([0, 1.0]),
              "seed": i, "stream": rng.random() < 0.5}
    if i % 4 == 3:
        return "/completions", {**common, "prompt": question}
    return "/chat/completions", {**common, "messages": [{"role": "user", "content": question}]}


async def _ask(http: httpx.AsyncClient, url: str, path: str, body: dict) -> str | None:
    """The finish_reason of one answer (None: no proper ending)."""
    if not body["stream"]:
        r = await http.post(url + path, json=body)
        r.raise_for_status()
        return r.json()["choices"][0]["finish_reason"]
    finish, done = None, False
    async with http.stream("POST", url + path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                finish = (choices[0]["finish_reason"] if choices else None) or finish
    return finish if done else None


def _wave(url: str, seed: int, n: int = 100) -> list[str | None]:
    rng = random.Random(seed)
    bodies = [_body(seed * 1000 + i, rng) for i in range(n)]

    async def main():
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            return await asyncio.gather(*(_ask(http, url, p, b) for p, b in bodies))

    return asyncio.run(main())


def _health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health").json()


def test_100_concurrent_requests_all_answered_width_bounded_memory_flat(served):
    url, engine = served
    assert set(_wave(url, 0)) <= {"stop", "length"}  # warm-up wave: every answer properly finished
    rss = _rss_mb()
    engine.live["max_mask_width"] = 0
    finishes = _wave(url, 1)
    assert len(finishes) == 100 and set(finishes) <= {"stop", "length"}, finishes
    h = _health(url)["models"]["tiny"]
    # the widest a live row can be: the longest prompt, 16 new tokens, the step's column
    longest = len(engine.encode_chat([{"role": "user", "content": "病例99999：" + "麻醉前评估" * 6}]))
    assert 0 < h["max_mask_width"] <= longest + 17, h
    assert _rss_mb() - rss < 60, f"RSS grew {_rss_mb() - rss:.0f} MB over 100 requests"


def test_disconnect_storm_leaves_the_server_healthy(served):
    url, _ = served

    async def hang_up_stream(http, i):
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"问{i}"}], "max_tokens": 500,
                "stream": True}
        async with http.stream("POST", url + "/chat/completions", json=body) as r:
            async for _ in r.aiter_lines():
                break  # first event, then gone

    async def time_out(http, i):
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"问{i}"}], "max_tokens": 500}
        try:
            await http.post(url + "/chat/completions", json=body, timeout=0.05 + 0.01 * (i % 5))
        except httpx.TimeoutException:
            pass

    async def storm():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:
            await asyncio.gather(*(hang_up_stream(http, i) for i in range(60)), *(time_out(http, i) for i in range(40)))

    asyncio.run(storm())
    deadline = time.monotonic() + 20
    while (h := _health(url)["models"]["tiny"])["rows"] or h["queued"] or h["prefilling"]:
        assert time.monotonic() < deadline, f"abandoned requests still decoding: {h}"
        time.sleep(0.1)
    assert _health(url)["status"] == "ok"
    r = httpx.post(url + "/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": "还在吗？"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
