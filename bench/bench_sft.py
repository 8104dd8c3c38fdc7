"""SFT throughput on short Chinese medical QA: where any gain over TRL comes from, variant by variant.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_sft.py [--steps 10] [--data PATH]``

Same data (single-turn chats of 40–90 tokens from MedicalGPT's medical_sft_1K, ``$HYPNOS_DATA`` or
``../shared/data``), rendered with SmolLM2's ChatML template; same model (random 4-layer, 256-wide Llama with
the SmolLM2 tokenizer, vocab 49,152, sdpa attention); same batch of 8 chats, same order; loss on answer tokens
only, fp32, no activation checkpointing. Each variant runs in its own process. The first-step loss must agree
across variants (same batch, same init): the table shows it.

Variants (what differs, one thing at a time):
- ``trl_padded`` / ``trl_padding_free``: TRL's SFTTrainer with completion-only loss (prompt/completion rows),
  bf16 and activation checkpointing off; ``padding_free=True`` flattens the batch into one row (under sdpa
  transformers then builds a dense mask over it). TRL 1.16 always computes its entropy/token-accuracy metrics
  in its chunked LM head: there is no switch to turn them off, so they are part of its cost.
- ``hf_padded_full``: the HF Trainer, padded rows, the model's own loss over full logits (the classic baseline).
- ``ours_padded``: the same with ``logits_to_keep`` (LM head only at target positions) — the CPU default.
- ``ours_rows``: rows packed to a 256-token budget (per-row mask), ``logits_to_keep``.
- ``ours_onerow`` / ``ours_onerow_full``: the whole batch as one row (the old default; a dense mask under
  sdpa, padding-free only with flash-attention on GPUs), with and without ``logits_to_keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYPNOS_DATA") or ROOT.parent / "shared" / "data") / "medicalgpt" / "medical_sft_1K_format.jsonl"
TOKENIZER = "smollm2-135m-instruct"
BATCH = 8
VARIANTS = ["trl_padded", "trl_padding_free", "hf_padded_full", "ours_padded", "ours_rows", "ours_onerow",
            "ours_onerow_full"]


def load_chats(path: str, tok) -> list[list[dict]]:
    """Single-turn chats whose rendered length is 40–90 tokens."""
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        conv = json.loads(line)["conversations"]
        if len(conv) != 2:
            continue
        msgs = [{"role": role[t["from"]], "content": t["value"]} for t in conv]
        n = len(tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"])
        if 40 <= n <= 90:
            out.append(msgs)
    return out


def make_model(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation="sdpa"))


def common_args(steps: int) -> dict:
    return {"output_dir": tempfile.mkdtemp(prefix="hypnos_bench_sft_"), "max_steps": steps, "per_device_train_batch_size": BATCH,
            "learning_rate": 1e-4, "logging_steps": 1, "save_strategy": "no", "report_to": [], "seed": 0,
            "data_seed": 0, "disable_tqdm": True, "use_cpu": True, "dataloader_num_workers": 0,
            "bf16": False, "gradient_checkpointing": False}


def run_variant(name: str, steps: int, data: str) -> dict:
    """Train one variant; returns tokens/s of non-pad tokens, first/last loss and peak RSS."""
    from hypnos.train.common import load_tokenizer_for_training
    from hypnos.train.sft import tokenize_chat

    tok = load_tokenizer_for_training(TOKENIZER)
    chats = load_chats(data, tok)
    examples = [{k: v for k, v in tokenize_chat(tok, c, 1024).items() if k != "truncated"} for c in chats]
    model = make_model(tok)
    trainer = _trl_trainer(name, model, tok, chats, steps) if name.startswith("trl") else \
        _hf_trainer(name, model, tok, examples, steps)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # Non-pad tokens consumed: steps x batch examples of the mean length (all variants sample the same way).
    seen = trainer.state.global_step * BATCH
    mean_len = sum(len(e["input_ids"]) for e in examples) / len(examples)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"variant": name, "tokens_per_s": round(seen * mean_len / seconds, 1), "seconds": round(seconds, 2),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4), "examples": len(examples),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _hf_trainer(name, model, tok, examples, steps):
    from transformers import Trainer, TrainingArguments

    from hypnos.train.packing import PaddedCollator, PaddingFreeCollator, RowPackedCollator, causal_lm_loss

    args = TrainingArguments(**common_args(steps), remove_unused_columns=False)
    collate = {"hf_padded_full": PaddedCollator(tok.pad_token_id), "ours_padded": PaddedCollator(tok.pad_token_id),
               "ours_rows": RowPackedCollator(tok.pad_token_id, 256), "ours_onerow": PaddingFreeCollator(),
               "ours_onerow_full": PaddingFreeCollator()}[name]
    if name.endswith("_full"):  # full logits and the model's own (shifted, mean) loss
        def full(features):
            batch = collate(features)
            batch.pop("logits_to_keep")
            return batch

        return Trainer(model=model, args=args, train_dataset=examples, data_collator=full)
    return Trainer(model=model, args=args, train_dataset=examples, data_collator=collate,
                   compute_loss_func=causal_lm_loss)


def _trl_trainer(name, model, tok, chats, steps):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in chats]  # completion-only loss, like ours
    free = name == "trl_padding_free"
    # padding_free without packing refuses to truncate: these chats are <= 90 tokens, so no max_length is needed
    args = SFTConfig(**common_args(steps), max_length=None if free else 1024, completion_only_loss=True,
                     padding_free=free)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--variant", choices=VARIANTS, help="(internal) run one variant and print its JSON")
    a = ap.parse_args()
    if a.variant:
        print("RESULT " + json.dumps(run_variant(a.variant, a.steps, a.data)))
        return
    if not Path(a.data).exists():
        sys.exit(f"{a.data}: not found; set HYPNOS_DATA or pass --data")
    results = {}
    for v in a.variants.split(","):
        proc = subprocess.run([sys.executable, __file__, "--variant", v, "--steps", str(a.steps), "--data", a.data],
                              capture_output=True, text=True, env={**os.environ, "HYPNOS_NO_PROGRESS": "1"}, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{v} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        results[v] = json.loads(line[0][7:])
        print(json.dumps(results[v]), flush=True)
    base = results.get("trl_padded") or next(iter(results.values()))
    print(f"\n| variant | non-pad tokens/s | vs {base['variant']} | peak RSS MB | 1st loss | last loss |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for v, r in results.items():
        print(f"| {v} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              f"{r['peak_rss_mb']:,.0f} | {r['first_loss']:.4f} | {r['last_loss']:.4f} |")


if __name__ == "__main__":
    main()
