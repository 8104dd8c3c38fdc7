"""Generation + judging throughput: concurrent requests vs one at a time, against the same `hypnos serve`.

Run: ``.venv/bin/python bench/bench_generation.py [--model smollm2-135m-instruct] [--requests 8] [--concurrency 8]``

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
    args = ap.parse_args()
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
