"""Steady load on `hypnos serve`: does per-step time and KV/mask width stay flat over a long run?

Run: ``.venv/bin/python bench/bench_serve_steady.py [--minutes 10] [--clients 8] [--max-tokens 24]
[--model smollm2-135m-instruct]``

Starts ``hypnos serve MODEL`` on loopback; ``--clients`` clients each send short chat requests back to
back (so the batch never empties and requests keep joining and leaving it) for ``--minutes``. Once a
second it reads the engine's live state from ``GET /health`` (decode step time, mask width, batch rows).
Prints a line per window and then the first window against the last: with the KV/mask trimming the width
stays at the longest live row and the step time stays flat (issue 15 #5: width 40 -> 374 over 335 steps
and step time 124 -> 735 ms before it).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

QUESTIONS = ["全身麻醉诱导时丙泊酚的常用剂量是多少？", "椎管内麻醉后出现低血压应如何处理？", "术前禁食禁饮的时间要求是什么？",
             "困难气道的预测指标有哪些？", "What is the mechanism of action of propofol?",
             "How is postoperative nausea and vomiting prevented?", "局麻药中毒的早期表现有哪些？",
             "Describe the ASA physical status classification."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(base: str, stop: threading.Event, max_tokens: int, seed: int, counts: dict) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=300) as http:
        while not stop.is_set():
            body = {"model": "m", "max_tokens": rng.randint(max(1, max_tokens // 2), max_tokens), "temperature": 0.7,
                    "seed": rng.randrange(2**31), "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]}
            r = http.post(base + "/v1/chat/completions", json=body)
            if r.status_code == 200:
                counts["requests"] += 1
                counts["tokens"] += r.json()["usage"]["completion_tokens"]
            else:
                counts["errors"] += 1


def _summary(samples: list[dict]) -> str:
    busy = [s for s in samples if s["rows"]]
    if not busy:
        return "idle"
    med = lambda k: statistics.median(s[k] for s in busy)
    return (f"step {med('step_ms'):7.1f} ms  width median {med('mask_width'):5.0f} max "
            f"{max(s['mask_width'] for s in busy):5d}  rows {med('rows'):4.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=24, help="answers get max_tokens in [n/2, n]")
    ap.add_argument("--window-s", type=float, default=60.0, help="seconds per printed window")
    args = ap.parse_args()

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    server = subprocess.Popen([sys.executable, "-m", "hypnos.cli", "serve", args.model, "--name", "m",
                               "--port", str(port), "--shutdown-timeout", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"hypnos serve {args.model} exited with {server.returncode}")
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        stop, counts = threading.Event(), {"requests": 0, "tokens": 0, "errors": 0}
        clients = [threading.Thread(target=_client, args=(base, stop, args.max_tokens, i, counts), daemon=True)
                   for i in range(args.clients)]
        for c in clients:
            c.start()
        start, windows, window = time.monotonic(), [], []
        print(f"{args.clients} clients, max_tokens <= {args.max_tokens}, {args.minutes} min against {args.model}")
        while (now := time.monotonic()) - start < args.minutes * 60:
            h = httpx.get(base + "/health").json()["models"]["m"]
            window.append(h)
            if len(window) * 1.0 >= args.window_s:
                windows.append(window)
                print(f"[{(now - start) / 60:5.1f} min] {_summary(window)}  done {counts['requests']} requests, "
                      f"{counts['tokens']} tokens, {counts['errors']} errors", flush=True)
                window = []
            time.sleep(1.0)
        if window:
            windows.append(window)
        stop.set()
        for c in clients:
            c.join(timeout=120)
        elapsed = time.monotonic() - start
        print(f"start: {_summary(windows[0])}")
        print(f"end:   {_summary(windows[-1])}")
        print(f"{counts['requests']} requests, {counts['tokens'] / elapsed:.1f} completion tokens/s, "
              f"{counts['errors']} errors over {elapsed / 60:.1f} min")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
