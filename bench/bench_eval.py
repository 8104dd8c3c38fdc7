"""Evaluation throughput: batched option scoring and generation vs one prompt at a time (same run).

Run: python bench/bench_eval.py [--model smollm2-135m-instruct] [--n 16] [--batch 8] [--gen-tokens 32]

Prints seconds and the speed-up ratio of ``LocalLM`` with ``batch_size`` vs ``batch_size=1`` on the first
``n`` sample MCQ prompts (option log-likelihood) and open questions (greedy generation).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HYPNOS_NO_PROGRESS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=32)
    args = ap.parse_args()

    from hypnos.eval.backends import LocalLM
    from hypnos.eval.tasks import get_tasks

    mcq_task, qa_task = get_tasks(["anesthesia_mcq", "anesthesia_openqa"])
    mcq_docs = mcq_task.load(limit=args.n)[0]
    mcq = [mcq_task.hook("doc_to_text")(d) for d in mcq_docs]
    choices = [list(d["options"]) for d in mcq_docs]
    qa = [d["instruction"] for d in qa_task.load(limit=args.n)[0]]
    model = LocalLM(args.model, batch_size=1)
    model.choice_logprobs(mcq[:1], choices[:1])  # warm-up
    for name, fn in (("loglik", lambda: model.choice_logprobs(mcq, choices)),
                     ("generate", lambda: model.generate(qa, args.gen_tokens))):
        times = {}
        for bs in (1, args.batch):
            model.batch_size = bs
            t = time.perf_counter()
            fn()
            times[bs] = time.perf_counter() - t
        print(f"{name:9s} n={args.n} batch 1: {times[1]:.2f} s  batch {args.batch}: {times[args.batch]:.2f} s  "
              f"speed-up x{times[1] / times[args.batch]:.2f}")


if __name__ == "__main__":
    main()
