"""bf16 autocast vs fp32 on this CPU: one full fine-tuning step and one forward pass of a SmolLM2-135M-sized model.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_cpu_bf16.py [--batch 4] [--len 400] [--steps 2]``

Why: training and evaluation turn bf16 autocast on where the CPU multiplies bf16 natively
(``hypnos.train.common.cpu_has_bf16``); this prints the ratio that decision rests on, in the same run, plus the
loss difference of the two precisions on the same batch. The model is SmolLM2-135M's architecture with random
weights (the speed does not depend on the weights); the vocabulary is the demo's extended one (50,650).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hypnos.train.common import cpu_has_bf16

    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--len", type=int, default=400)
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50650, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.len))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = {}
    for mode in ("fp32", "bf16", "fp32", "bf16"):  # the second pass of each is timed (the first warms up)
        t = time.perf_counter()
        for _ in range(a.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        step[mode] = (time.perf_counter() - t) / a.steps
    model.eval()
    fwd, losses = {}, {}
    with torch.no_grad():
        for mode in ("fp32", "bf16"):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                losses[mode] = model(input_ids=x, labels=x).loss.item()
            fwd[mode] = time.perf_counter() - t
    print(f"CPU has native bf16: {cpu_has_bf16()}; batch {a.batch} x {a.len} tokens, {torch.get_num_threads()} threads")
    print(f"train step: fp32 {step['fp32']:.1f} s, bf16 {step['bf16']:.1f} s -> {step['fp32'] / step['bf16']:.2f}x")
    print(f"forward:    fp32 {fwd['fp32']:.1f} s, bf16 {fwd['bf16']:.1f} s -> {fwd['fp32'] / fwd['bf16']:.2f}x")
    print(f"loss on the same batch: fp32 {losses['fp32']:.4f}, bf16 {losses['bf16']:.4f}")


if __name__ == "__main__":
    main()
