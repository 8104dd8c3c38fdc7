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

from hypnos.data.clients import AnswerCache, Endpoint, LLMClient, _retry_after, redact_url, request_key

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
    assert len(AnswerCache(tmp_path / "cache.sqlite")) == 2  # failures are not cached: retried later


def test_client_errors_are_not_retried(tiny_model_dir, serve_model):
    with serve_model(tiny_model_dir, name="tiny") as url:
        client = LLMClient(Endpoint(base_url=url, model="not-served", max_retries=5, **FAST))
        result = client.chat_sync([{"role": "user", "content": "hi"}], max_tokens=2)
        assert result.attempts == 1 and "HTTP 404" in result.error and "not-served" in result.error
        ok = LLMClient(Endpoint(base_url=url, model="tiny", extra={"max_tokens": 4, "temperature": 0},
                                length_retries=0))
        r = ok.chat_sync([{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2)
        assert r.error is None and r.usage["completion_tokens"] == len(r.logprobs) == 4 and r.truncated
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


def test_legacy_jsonl_cache_is_imported_line_by_line(tmp_path):
    legacy = tmp_path / "cache.jsonl"
    with FaultyServer() as server:
        endpoint = Endpoint(base_url=server.base_url, model="echo", **FAST)
        key = request_key(endpoint.base_url, "echo", [{"role": "user", "content": "a"}], {})
        legacy.write_text(json.dumps({"key": key, "result": {"text": "old answer", "texts": ["old answer"]}}) + "\n"
                          + '{"key": "deadbeef", "result": {"text": "half', encoding="utf-8")  # torn last line
        client = LLMClient(endpoint, legacy)
        assert client.cache_path == tmp_path / "cache.sqlite"
        results = client.chat_many_sync(requests_for(["a", "b"]))
        assert [r.text for r in results] == ["old answer", "echo: b"] and server.requests == 1
    assert len(AnswerCache(tmp_path / "cache.sqlite")) == 2


CONCURRENT = textwrap.dedent("""
    import sys
    from hypnos.data.clients import Endpoint, LLMClient
    client = LLMClient(Endpoint(base_url=sys.argv[1], model="echo", max_concurrency=8, retry_backoff_s=0.005),
                       sys.argv[2])
    rs = client.chat_many_sync([{"messages": [{"role": "user", "content": f"{sys.argv[3]} {i}"}]} for i in range(60)])
    assert all(r.error is None for r in rs)
""")


def test_concurrent_writers_share_one_cache(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(CONCURRENT)
    cache = tmp_path / "shared.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    with FaultyServer() as server:
        procs = [subprocess.Popen([sys.executable, str(script), server.base_url, str(cache), tag], env=env)
                 for tag in ("x", "y", "x")]  # two writers of the same requests, one of others
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    db = AnswerCache(cache)
    assert len(db) == 120  # every answer once, none lost to a lock or a race
    assert {r[1]["messages"][0]["content"] for r in db.rows()} == {f"{t} {i}" for t in "xy" for i in range(60)}


def test_credentials_in_the_url_are_never_written(tmp_path):
    assert redact_url("https://user:sk-123@api.example.com/v1?api-key=sk-456&region=eu") == \
        "https://api.example.com/v1?api-key=***&region=eu"
    with FaultyServer() as server:
        host = server.base_url.split("//")[1]
        url = f"http://alice:sk-in-url@{host}"
        client = LLMClient(Endpoint(base_url=url, model="echo", **FAST), tmp_path / "c.sqlite")
        assert client.chat_sync([{"role": "user", "content": "hi"}]).error is None
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir()) + json.dumps(client.usage_dict()).encode()
    assert b"sk-in-url" not in written and b"alice" not in written


def test_retry_after_in_seconds_http_date_and_ms(tmp_path):
    import httpx

    def wait(headers):
        return _retry_after(httpx.Response(429, headers=headers))

    import email.utils

    assert wait({"Retry-After": "7"}) == 7
    assert 25 < wait({"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)}) <= 30
    assert wait({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert wait({"Retry-After": "soon"}) is None and wait({}) is None
    for fmt in ("date", "ms"):
        with FaultyServer(Faults(rate_429=1.0, retry_after=0.3, retry_after_format=fmt)) as server:
            client = LLMClient(Endpoint(base_url=server.base_url, model="echo", max_retries=1, **FAST))
            t0 = time.monotonic()
            client.chat_sync([{"role": "user", "content": "x"}])
            assert time.monotonic() - t0 >= (0.25 if fmt == "ms" else 0.0)  # an HTTP date has 1 s resolution


def test_reasoning_model_parameters_are_adapted():
    faults = Faults(reject_params=frozenset({"max_tokens", "temperature"}))
    with FaultyServer(faults) as server:
        client = LLMClient(Endpoint(base_url=server.base_url, model="o-mini", **FAST))
        r = client.chat_sync([{"role": "user", "content": "hi"}], max_tokens=50, temperature=0.2)
        assert r.error is None and r.text == "echo: hi"
        last = server.bodies[-1]
        assert last["max_completion_tokens"] == 50 and "max_tokens" not in last and "temperature" not in last
        assert client.usage.adapted == 2 and client.usage.errors == 0
        client.chat_sync([{"role": "user", "content": "again"}], max_tokens=50, temperature=0.2)
        assert server.count("again") == 1  # remembered: no 400 the second time
    with FaultyServer(faults) as server:  # configured up front: not a single 400
        client = LLMClient(Endpoint(base_url=server.base_url, model="o-mini", max_tokens_param="max_completion_tokens",
                                    **FAST))
        assert client.chat_sync([{"role": "user", "content": "x"}], max_tokens=5).error is None


def test_length_finish_is_retried_with_room_and_never_cached_as_success(tmp_path):
    long = "一二三四五六七八九十" * 3
    with FaultyServer(Faults(enforce_max_tokens=True), responder=lambda body: long) as server:
        endpoint = Endpoint(base_url=server.base_url, model="echo", on_length="retry", **FAST)
        client = LLMClient(endpoint, tmp_path / "c.sqlite")
        ok = client.chat_sync([{"role": "user", "content": "fits after one retry"}], max_tokens=20)
        assert ok.text == long and ok.finish_reason == "stop" and not ok.truncated
        assert [b["max_tokens"] for b in server.bodies] == [20, 40]
        cut = client.chat_sync([{"role": "user", "content": "never fits"}], max_tokens=5)
        assert cut.truncated and cut.finish_reason == "length" and cut.text == long[:10]
        assert client.usage.truncated == 1
        assert len(AnswerCache(tmp_path / "c.sqlite")) == 1  # the cut-off answer is not stored
        again = LLMClient(endpoint, tmp_path / "c.sqlite").chat_sync([{"role": "user", "content": "never fits"}],
                                                                      max_tokens=5)
        assert again.truncated and not again.cached and server.count("never fits") == 4
        # accepting cut answers (an eval's max_new_tokens): one request, cached, flagged
        accept = LLMClient(Endpoint(base_url=server.base_url, model="echo", **FAST), tmp_path / "a.sqlite")
        cut = accept.chat_sync([{"role": "user", "content": "accepted"}], max_tokens=5)
        assert cut.truncated and cut.text == long[:5] and server.count("accepted") == 1
        again = LLMClient(Endpoint(base_url=server.base_url, model="echo", **FAST), tmp_path / "a.sqlite")
        assert again.chat_sync([{"role": "user", "content": "accepted"}], max_tokens=5).truncated
        assert server.count("accepted") == 1
        # a retrying caller does not take the accepted cut answer from the cache
        assert again.chat_sync([{"role": "user", "content": "accepted"}], max_tokens=5, on_length="retry").text == \
            long[:10] and server.count("accepted") == 3


def test_response_format_is_sent_reduced_or_dropped_per_endpoint(tmp_path):
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}
    msgs = [{"role": "user", "content": "q"}]
    with FaultyServer() as server:
        r = LLMClient(Endpoint(base_url=server.base_url, model="m", **FAST)).chat_sync(msgs, response_format=schema)
        assert r.structured and server.bodies[-1]["response_format"] == schema
        LLMClient(Endpoint(base_url=server.base_url, model="m", structured_outputs="json_object", **FAST)).chat_sync(
            msgs, response_format=schema, seed=1)
        assert server.bodies[-1]["response_format"] == {"type": "json_object"}
        r = LLMClient(Endpoint(base_url=server.base_url, model="m", structured_outputs="off", **FAST)).chat_sync(
            msgs, response_format=schema, seed=2)
        assert "response_format" not in server.bodies[-1] and not r.structured
    cache = tmp_path / "c.sqlite"
    with FaultyServer(Faults(reject_response_format=True)) as server:  # auto: a 400 turns it off, once
        client = LLMClient(Endpoint(base_url=server.base_url, model="m", **FAST), cache)
        r = client.chat_sync(msgs, response_format=schema)
        assert r.error is None and not r.structured and "response_format" not in server.bodies[-1]
        client.chat_sync([{"role": "user", "content": "q2"}], response_format=schema)
        assert server.requests == 3 and client.usage_dict()["structured_outputs"] is False
        # a resumed run (a new client) finds both answers under the keys they had, whatever was refused when
        again = LLMClient(Endpoint(base_url=server.base_url, model="m", **FAST), cache)
        n = server.requests
        assert [again.chat_sync([{"role": "user", "content": c}], response_format=schema).cached
                for c in ("q", "q2")] == [True, True] and server.requests == n
        strict = LLMClient(Endpoint(base_url=server.base_url, model="m", structured_outputs="json_schema", **FAST))
        assert "HTTP 400" in strict.chat_sync(msgs, response_format=schema).error  # asked for it: no silent fallback


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
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"sk-very-secret" not in written + json.dumps(client.usage_dict()).encode()
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


def cached_requests(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [req for _, req, _ in AnswerCache(path).rows()]


def test_sigkill_and_resume_resends_nothing_answered(tmp_path):
    n = 40
    faults = Faults(rate_500=0.2, delay_s=0.04, seed=5)
    with FaultyServer(faults) as server:  # reference: one uninterrupted run
        assert run_worker(tmp_path, server.base_url, tmp_path / "ref.jsonl", tmp_path / "ref.json", n).wait() == 0
    expected = json.loads((tmp_path / "ref.json").read_text())
    assert all(text and error is None for text, error in expected)

    cache, out = tmp_path / "cache.sqlite", tmp_path / "out.json"
    with FaultyServer(faults) as server:
        proc = run_worker(tmp_path, server.base_url, cache, out, n)
        deadline = time.monotonic() + 60
        while len(cached_requests(cache)) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()
        answered_before = {req["messages"][-1]["content"] for req in cached_requests(cache)}
        assert 12 <= len(answered_before) < n
        assert run_worker(tmp_path, server.base_url, cache, out, n).wait() == 0
        assert all(server.answered[prompt_hash(p)] == 1 for p in answered_before)  # not one of them re-sent
        assert sum(server.answered.values()) <= n + 4  # at most the requests in flight at the kill, twice
    assert json.loads(out.read_text()) == expected


def test_a_base_url_with_a_query_parameter_reaches_the_chat_path_and_is_never_written(tmp_path):
    """``https://gw.example/v1?api-key=...`` (gateways, Azure's api-version): the path is /v1/chat/completions
    with the query after it; it used to be appended after the query (``/v1?api-key=x/chat/completions``)."""
    with FaultyServer() as server:
        host = server.base_url.split("//")[1]
        url = f"http://alice:sk-in-url@{host}/?api-key=sk-in-query&api-version=2024-06-01"
        client = LLMClient(Endpoint(base_url=url, model="echo", **FAST), tmp_path / "c.sqlite")
        res = client.chat_sync([{"role": "user", "content": "hi"}])
        assert res.error is None and res.text == "echo: hi"
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir()) + json.dumps(client.usage_dict()).encode()
    assert b"sk-in-url" not in written and b"sk-in-query" not in written and b"alice" not in written


def test_a_cut_answer_in_a_legacy_cache_is_not_taken_as_a_success(tmp_path):
    """The old JSONL cache stored cut answers (finish_reason "length") with no ``truncated`` flag; a retrying
    caller (generate, crossfilter) resumed from it used to take them as complete answers."""
    legacy = tmp_path / "cache.jsonl"
    with FaultyServer() as server:
        endpoint = Endpoint(base_url=server.base_url, model="echo", **FAST)
        msgs = [{"role": "user", "content": "a"}]
        key = request_key(endpoint.base_url, "echo", msgs, {"max_tokens": 64})
        legacy.write_text(json.dumps({"key": key, "result": {"text": "old cut", "texts": ["old cut"],
                                                              "finish_reason": "length"}}) + "\n", encoding="utf-8")
        client = LLMClient(endpoint, legacy)
        res = client.chat_sync(msgs, max_tokens=64, on_length="retry")
        assert res.text == "echo: a" and not res.cached and server.requests == 1
        flagged = LLMClient(endpoint, tmp_path / "other.sqlite")
        flagged._cache.put(key, {}, {"text": "cut", "texts": ["cut"], "finish_reason": "length"})
        assert flagged.chat_sync(msgs, max_tokens=64).truncated  # accepted, but flagged


def test_a_missing_key_message_does_not_repeat_a_credential_of_the_url(monkeypatch):
    """The message goes to the terminal, run.log and the failed stage's manifest."""
    monkeypatch.delenv("HYPNOS_TEST_ABSENT_KEY", raising=False)
    ep = Endpoint(base_url="https://alice:sk-in-url@api.example.com/v1?api-key=sk-q", model="m",
                  api_key_env="HYPNOS_TEST_ABSENT_KEY")
    with pytest.raises(ValueError, match="HYPNOS_TEST_ABSENT_KEY") as e:
        ep.api_key()
    assert "sk-in-url" not in str(e.value) and "sk-q" not in str(e.value) and "alice" not in str(e.value)
