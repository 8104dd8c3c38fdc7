"""The async LLM client against real servers on loopback: the fault-injecting one and ``hypnos serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from faulty_server import Faults, FaultyServer, prompt_hash

from hypnos.data.clients import Endpoint, LLMClient, request_key

FAST = {"retry_backoff_s": 0.005, "timeout_s": 5.0}


def requests_for(prompts):
    return [{"messages": [{"role": "user", "content": p}]} for p in prompts]


def test_retries_get_through_every_kind_of_fault(tmp_path):
    faults = Faults(rate_429=0.15, rate_500=0.15, rate_slow=0.05, rate_malformed=0.1, rate_empty=0.1, slow_s=2,
                    retry_after=0.01, seed=3)
    prompts = [f"问题 {i}" for i in range(30)]
    with FaultyServer(faults) as server:
        client = LLMClient(Endpoint(base_url=server.base_url, model="echo", max_retries=12, max_concurrency=4,
                                    **{**FAST, "timeout_s": 0.3}), tmp_path / "cache.jsonl")
        results = client.chat_many_sync(requests_for(prompts))
        assert set(server.faults_sent) == {"429", "500", "slow", "malformed", "empty"}
        assert max(server.answered.values()) == 1  # every prompt answered exactly once
    assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
    assert all(r.error is None and not r.cached for r in results)
    usage = client.usage_dict()
    assert usage["retries"] == sum(server.faults_sent.values()) == usage["http_requests"] - len(prompts)
    assert usage["errors"] == 0 and usage["completion_tokens"] > 0


def test_concurrency_limit_is_respected():
    with FaultyServer(Faults(delay_s=0.05)) as server:
        client = LLMClient(Endpoint(base_url=server.base_url, model="echo", max_concurrency=3, **FAST))
        client.chat_many_sync(requests_for([str(i) for i in range(12)]))
        assert server.max_inflight == 3


def test_permanent_failures_are_recorded_not_raised(tmp_path):
    prompts = ["fine", "broken [[fail]]", "also fine"]
    with FaultyServer() as server:
        client = LLMClient(Endpoint(base_url=server.base_url, model="echo", max_retries=2, **FAST),
                           tmp_path / "cache.jsonl")
        results = client.chat_many_sync(requests_for(prompts))
        assert server.count("broken [[fail]]") == 3
    assert [r.text for r in results] == ["echo: fine", None, "echo: also fine"]
    assert "HTTP 500" in results[1].error and results[1].attempts == 3
    assert client.usage.errors == 1
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 2  # failures are not cached: retried later


def test_client_errors_are_not_retried(tiny_model_dir, serve_model):
    with serve_model(tiny_model_dir, name="tiny") as url:
        client = LLMClient(Endpoint(base_url=url, model="not-served", max_retries=5, **FAST))
        result = client.chat_sync([{"role": "user", "content": "hi"}], max_tokens=2)
        assert result.attempts == 1 and "HTTP 404" in result.error and "not-served" in result.error
        ok = LLMClient(Endpoint(base_url=url, model="tiny", extra={"max_tokens": 4, "temperature": 0}))
        r = ok.chat_sync([{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2)
        assert r.error is None and r.usage["completion_tokens"] == len(r.logprobs) == 4
        assert len(r.logprobs[0]["top_logprobs"]) == 2


def test_cache_answers_without_network_and_dedupes_in_flight(tmp_path):
    cache = tmp_path / "cache.jsonl"
    reqs = requests_for(["a", "b", "a", "c", "b"])
    with FaultyServer(Faults(delay_s=0.05)) as server:
        endpoint = Endpoint(base_url=server.base_url, model="echo", max_concurrency=8, **FAST)
        first = LLMClient(endpoint, cache).chat_many_sync(reqs)
        assert server.requests == 3 and sum(r.cached for r in first) == 2  # duplicates shared the answer
        again = LLMClient(endpoint, cache)
        second = again.chat_many_sync(reqs + requests_for(["a"]))
        assert server.requests == 3 and all(r.cached for r in second)
        assert again.usage.cache_hits == 6 and again.usage.http_requests == 0
    assert [r.text for r in second[:5]] == [r.text for r in first]
    # params are part of the key; the key is stable
    k = request_key(endpoint.base_url, "echo", reqs[0]["messages"], {})
    assert k == first[0].key != request_key(endpoint.base_url, "echo", reqs[0]["messages"], {"seed": 1})


def test_loopback_port_does_not_change_the_key():
    msgs = [{"role": "user", "content": "x"}]
    assert request_key("http://127.0.0.1:8000/v1", "m", msgs, {}) == request_key("http://localhost:9/v1", "m", msgs, {})
    assert request_key("https://a.example/v1", "m", msgs, {}) != request_key("https://b.example/v1", "m", msgs, {})


def test_torn_last_line_is_dropped_and_appending_continues(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with FaultyServer() as server:
        endpoint = Endpoint(base_url=server.base_url, model="echo", **FAST)
        LLMClient(endpoint, cache).chat_many_sync(requests_for(["a", "b"]))
        with open(cache, "ab") as f:
            f.write(b'{"key": "deadbeef", "result": {"text": "half')  # killed mid-write
        client = LLMClient(endpoint, cache)
        assert client.chat_many_sync(requests_for(["a", "b", "c"]))[2].text == "echo: c"
        assert server.requests == 3
    lines = cache.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["result"]["text"] for line in lines)
    assert LLMClient(endpoint, cache).usage.requests == 0 and len(LLMClient(endpoint, cache)._cache) == 3


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch, tiny_model_dir, serve_model):
    monkeypatch.setenv("HYPNOS_TEST_KEY", "sk-very-secret")
    cache = tmp_path / "cache.jsonl"
    with serve_model(tiny_model_dir, name="tiny", api_key="sk-very-secret") as url:
        client = LLMClient(Endpoint(base_url=url, model="tiny", api_key_env="HYPNOS_TEST_KEY",
                                    extra={"max_tokens": 3}), cache)
        assert client.chat_sync([{"role": "user", "content": "hi"}]).error is None
        monkeypatch.setenv("HYPNOS_TEST_KEY", "wrong")
        assert "HTTP 401" in client.chat_sync([{"role": "user", "content": "hey"}]).error
        monkeypatch.delenv("HYPNOS_TEST_KEY")
        with pytest.raises(ValueError, match="HYPNOS_TEST_KEY"):
            client.chat_sync([{"role": "user", "content": "hello"}])
    assert "sk-very-secret" not in cache.read_text() + json.dumps(client.usage_dict())
    assert "sk-very-secret" not in client.endpoint.model_dump_json()


def test_progress_callback_and_reuse_across_event_loops(tmp_path):
    seen = []
    with FaultyServer() as server:
        client = LLMClient(Endpoint(base_url=server.base_url, model="echo", max_concurrency=2, **FAST))
        client.chat_many_sync(requests_for(["a", "b", "c"]), progress=lambda done, total: seen.append((done, total)))
        assert client.chat_many_sync(requests_for(["d"]))[0].text == "echo: d"  # a second asyncio.run
    assert seen == [(1, 3), (2, 3), (3, 3)]


WORKER = textwrap.dedent("""
    import json, sys
    from hypnos.data.clients import Endpoint, LLMClient
    base_url, cache, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = LLMClient(Endpoint(base_url=base_url, model="echo", max_concurrency=4, max_retries=8,
                                retry_backoff_s=0.005), cache)
    results = client.chat_many_sync([{"messages": [{"role": "user", "content": f"prompt {i}"}], "temperature": 0}
                                     for i in range(n)])
    json.dump([[r.text, r.error] for r in results], open(out, "w"))
""")


def run_worker(tmp_path: Path, base_url: str, cache: Path, out: Path, n: int) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(script), base_url, str(cache), str(out), str(n)], env=env)


def read_complete_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # the torn last line
            pass
    return rows


def test_sigkill_and_resume_resends_nothing_answered(tmp_path):
    n = 40
    faults = Faults(rate_500=0.2, delay_s=0.04, seed=5)
    with FaultyServer(faults) as server:  # reference: one uninterrupted run
        assert run_worker(tmp_path, server.base_url, tmp_path / "ref.jsonl", tmp_path / "ref.json", n).wait() == 0
    expected = json.loads((tmp_path / "ref.json").read_text())
    assert all(text and error is None for text, error in expected)

    cache, out = tmp_path / "cache.jsonl", tmp_path / "out.json"
    with FaultyServer(faults) as server:
        proc = run_worker(tmp_path, server.base_url, cache, out, n)
        deadline = time.monotonic() + 60
        while (not cache.exists() or len(cache.read_bytes().splitlines()) < 12) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()
        answered_before = {row["request"]["messages"][-1]["content"] for row in read_complete_lines(cache)}
        assert 12 <= len(answered_before) < n
        assert run_worker(tmp_path, server.base_url, cache, out, n).wait() == 0
        assert all(server.answered[prompt_hash(p)] == 1 for p in answered_before)  # not one of them re-sent
        assert sum(server.answered.values()) <= n + 4  # at most the requests in flight at the kill, twice
    assert json.loads(out.read_text()) == expected
