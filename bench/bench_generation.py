"""Generation + judging throughput: concurrent requests vs one at a time, against the same `hypnos serve`.

Run: ``.venv/bin/python bench/bench_generation.py [--model smollm2-135m-instruct] [--requests 8] [--concurrency 8]``
     ``.venv/bin/python bench/bench_generation.py --structured 8``   (schema-valid rate with response_format)
     ``.venv/bin/python bench/bench_generation.py --mask-only``      (llguidance mask time on the vocabulary)

Starts ``hypnos serve MODEL`` on loopback, then sends the generate stage's real requests (prompts from
prompts/generate_v1.jinja, ``--gen-tokens`` each) and the crossfilter stage's judge requests
(``--judge-tokens`` each) through ``LLMClient``: first with ``max_concurrency=1`` (sequential), then with
``--concurrency`` (the server batches concurrent requests). The two runs use different request seeds so
neither is answered from a cache. Prints requests/s, completion tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import httpx

from hypnos.common.records import QA
from hypnos.data.clients import Endpoint, LLMClient
from hypnos.data.crossfilter import Config as CFConfig
from hypnos.data.crossfilter import judge_request
from hypnos.data.generate import Config as GenConfig
from hypnos.data.generate import build_request

SEEDS = [QA(id=f"s{i}", instruction=q, output=a) for i, (q, a) in enumerate([
    ("全身麻醉诱导时丙泊酚的常用剂量是多少？", "成人1.5-2.5mg/kg，老年人酌情减量。"),
    ("椎管内麻醉后出现低血压应如何处理？", "补液、调整体位，必要时给予血管活性药物。"),
    ("术前禁食禁饮的时间要求是什么？", "固体食物6-8小时，清饮料2小时。"),
    ("困难气道的预测指标有哪些？", "Mallampati分级、甲颏距离、张口度、颈部活动度等。"),
])]


def _requests(n: int, gen_tokens: int, judge_tokens: int, offset: int) -> list[dict]:
    gcfg = GenConfig(seeds="x", generators=["g"], max_tokens=gen_tokens, seeds_per_prompt=2)
    ccfg = CFConfig(input="x", judges=["j"], max_tokens=judge_tokens)
    reqs = []
    for i in range(n):
        r = build_request(gcfg, SEEDS, "g", 0, offset + i, 0)
        r.pop("_meta")
        reqs.append(r)
        q = SEEDS[i % len(SEEDS)]
        reqs.append(judge_request(ccfg, {"instruction": q.instruction, "output": q.output}, False, offset + i))
    return reqs


def _measure(url: str, model: str, reqs: list[dict], concurrency: int) -> tuple[float, int]:
    client = LLMClient(Endpoint(base_url=url, model=model, max_concurrency=concurrency, timeout_s=600))
    t0 = time.perf_counter()
    results = client.chat_many_sync(reqs)
    secs = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return secs, sum(r.usage.get("completion_tokens", 0) for r in results)


ASPECTS = ["coherence", "professionalism", "usefulness", "harmlessness", "friendliness"]
VERDICT = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 60}, **{
    a: {"type": "integer", "minimum": 0, "maximum": 10} for a in ASPECTS}},
    "required": ["reason", *ASPECTS], "additionalProperties": False}
ITEMS = {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
    "type": "object", "properties": {"instruction": {"type": "string", "minLength": 1, "maxLength": 60},
                                     "output": {"type": "string", "minLength": 1, "maxLength": 60}},
    "required": ["instruction", "output"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False}


def _valid(schema: dict, text: str) -> bool:
    """Validate the two schemas above (no jsonschema dependency: they are small)."""
    import json

    try:
        v = json.loads(text)
    except ValueError:
        return False
    if schema is VERDICT:
        return (isinstance(v, dict) and set(v) == {"reason", *ASPECTS} and isinstance(v["reason"], str)
                and all(type(v[a]) is int and 0 <= v[a] <= 10 for a in ASPECTS))
    return (isinstance(v, dict) and set(v) == {"items"} and 1 <= len(v["items"]) <= 2 and all(
        set(i) == {"instruction", "output"} and all(isinstance(x, str) and 1 <= len(x) <= 60 for x in i.values())
        for i in v["items"]))


def structured(url: str, n: int) -> None:
    """n item-writing and n judging requests with response_format json_schema, all at once."""
    import asyncio

    judge = ("Rate this answer from 0 to 10 on coherence, professionalism, usefulness, harmlessness and "
             "friendliness. Question: what is propofol? Answer: an intravenous anesthetic.")
    prompts = [("Write two short instruction/output pairs about anesthesia as JSON.", ITEMS, 160), (judge, VERDICT, 80)]

    async def ask(http, i, prompt, schema, max_tokens):
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0.7, "seed": i,
                "max_tokens": max_tokens,
                "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}}
        r = (await http.post(url + "/chat/completions", json=body)).json()["choices"][0]
        return _valid(schema, r["message"]["content"]), r["finish_reason"]

    async def main():
        async with httpx.AsyncClient(timeout=1800) as http:
            return await asyncio.gather(*(ask(http, i, *p) for p in prompts for i in range(n)))

    t0 = time.perf_counter()
    results = asyncio.run(main())
    print(f"{sum(ok for ok, _ in results)}/{len(results)} schema-valid ({n} item lists + {n} verdicts), "
          f"finish reasons {sorted({f for _, f in results})}, {time.perf_counter() - t0:.1f} s")


def mask_only(model: str) -> None:
    """llguidance: tokenizer view, schema compile and per-token mask time along a valid verdict."""
    import json
    import statistics

    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    from hypnos.common.models import load_tokenizer

    tok = load_tokenizer(model)
    text = json.dumps({"reason": "回答准确，覆盖了术前评估的要点。", "coherence": 8, "professionalism": 9,
                       "usefulness": 7, "harmlessness": 10, "friendliness": 6}, ensure_ascii=False)
    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok)
    t1 = time.perf_counter()
    m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(VERDICT))
    t2 = time.perf_counter()
    bitmask, times = lt.allocate_token_bitmask(1, lltok.vocab_size), []
    for t in tok(text, add_special_tokens=False).input_ids:
        t3 = time.perf_counter()
        lt.fill_next_token_bitmask(m, bitmask, 0)
        times.append((time.perf_counter() - t3) * 1e3)
        assert m.consume_token(t), m.get_error()
    times.sort()
    print(f"llguidance on {lltok.vocab_size} tokens: tokenizer view {(t1 - t0) * 1e3:.0f} ms, schema compile "
          f"{(t2 - t1) * 1e3:.1f} ms, mask per token median {statistics.median(times):.3f} ms, p95 "
          f"{times[int(0.95 * len(times))]:.3f} ms, max {times[-1]:.3f} ms over {len(times)} tokens")


def tiny_model(out: str) -> str:
    """A random 2-layer Llama (hidden 64) with SmolLM2's tokenizer: model time ~0, so client and server
    overheads and batching decide the throughput."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hypnos.common.models import builtin_gguf_path

    gguf = builtin_gguf_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                                         eos_token_id=None, pad_token_id=tok.pad_token_id))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct", help='a model reference, or "tiny"')
    ap.add_argument("--requests", type=int, default=8, help="generation requests (plus as many judge requests)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--judge-tokens", type=int, default=32)
    ap.add_argument("--structured", type=int, default=0, metavar="N",
                    help="instead: N item lists + N verdicts with response_format, report the schema-valid rate")
    ap.add_argument("--mask-only", action="store_true", help="instead: time llguidance's token mask, no server")
    args = ap.parse_args()
    if args.mask_only:
        return mask_only(args.model)
    if args.model == "tiny":
        import tempfile

        args.model = tiny_model(tempfile.mkdtemp(prefix="hypnos-bench-tiny-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hypnos.cli", "serve", args.model, "--name", "m",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        if server.poll() is not None:
            raise SystemExit(f"hypnos serve {args.model} exited with {server.returncode}")
        if args.structured:
            return structured(url, args.structured)
        _measure(url, "m", _requests(1, 16, 16, 10_000), 1)  # warm-up
        n = args.requests
        seq_s, seq_tok = _measure(url, "m", _requests(n, args.gen_tokens, args.judge_tokens, 0), 1)
        con_s, con_tok = _measure(url, "m", _requests(n, args.gen_tokens, args.judge_tokens, 1000), args.concurrency)
    finally:
        server.terminate()
        server.wait()
    print(f"model {args.model}: {n} generation + {n} judge requests ({args.gen_tokens}/{args.judge_tokens} max tokens)")
    print(f"sequential      : {seq_s:7.1f} s  {2 * n / seq_s:6.2f} req/s  {seq_tok / seq_s:7.1f} completion tok/s")
    print(f"concurrency {args.concurrency:<4d}: {con_s:7.1f} s  {2 * n / con_s:6.2f} req/s  {con_tok / con_s:7.1f} "
          f"completion tok/s")
    print(f"speed-up (tokens/s, concurrent / sequential): {(con_tok / con_s) / (seq_tok / seq_s):.2f}x")


if __name__ == "__main__":
    main()
