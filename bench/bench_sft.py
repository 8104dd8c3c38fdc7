"""SFT throughput on short Chinese medical QA: our sft (packed Trainer) vs TRL's SFTTrainer and a padded Trainer.

Run: ``.venv/bin/python bench/bench_sft.py [--steps 30] [--data PATH]``

Same data (chats of 40–90 tokens from MedicalGPT's medical_sft_1K, rendered with SmolLM2's ChatML template),
same model (random 4-layer, 256-wide Llama with the SmolLM2 tokenizer, vocab 49,152), same batch of 8 chats,
loss on answer tokens only. Each variant runs in its own process so peak RSS is its own. Prints non-pad
tokens/s, peak RSS, the first-step loss (same batch, same init: the losses must agree) and ratios against
TRL configured for CPU (bf16 and activation checkpointing off).
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

# The shared data sits next to the checkout (../shared/data) or wherever $HYPNOS_DATA points.
SHARED = os.environ.get("HYPNOS_DATA") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                       "shared", "data")
DATA = os.path.join(SHARED, "medicalgpt", "medical_sft_1K_format.jsonl")
TOKENIZER = "smollm2-135m-instruct"
BATCH = 8
VARIANTS = ["ours_packed", "hf_trainer_padded", "trl_configured", "trl_defaults"]


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
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


def common_args(steps: int) -> dict:
    return {"output_dir": os.path.join(tempfile.gettempdir(), "hypnos_bench_sft"), "max_steps": steps, "per_device_train_batch_size": BATCH,
            "learning_rate": 1e-4, "logging_steps": 1, "save_strategy": "no", "report_to": [], "seed": 0,
            "data_seed": 0, "disable_tqdm": True, "use_cpu": True, "dataloader_num_workers": 0}


def run_variant(name: str, steps: int, data: str) -> dict:
    """Train one variant; returns tokens/s of non-pad tokens, first-step loss and peak RSS."""
    from hypnos.train.common import load_tokenizer_for_training
    from hypnos.train.sft import tokenize_chat

    tok = load_tokenizer_for_training(TOKENIZER)
    chats = load_chats(data, tok)
    examples = [{k: v for k, v in tokenize_chat(tok, c, 1024).items() if k != "truncated"} for c in chats]
    model = make_model(tok)
    if name.startswith("trl"):
        trainer = _trl_trainer(name, model, tok, chats, steps)
    else:
        trainer = _hf_trainer(name, model, tok, examples, steps)
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

    from hypnos.train.packing import PackedCollator, PaddedCollator, causal_lm_loss

    args = TrainingArguments(**common_args(steps), remove_unused_columns=False)
    if name == "ours_packed":
        return Trainer(model=model, args=args, train_dataset=examples, data_collator=PackedCollator(),
                       compute_loss_func=causal_lm_loss)
    padded = PaddedCollator(tok.pad_token_id)

    def plain(features):  # classic layout: padded batch, full logits, the model's own loss
        batch = padded(features)
        batch.pop("logits_to_keep")
        return batch

    return Trainer(model=model, args=args, train_dataset=examples, data_collator=plain)


def _trl_trainer(name, model, tok, chats, steps):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in chats]  # completion-only loss, like ours
    extra = {} if name == "trl_defaults" else {"bf16": False, "gradient_checkpointing": False}
    if name == "trl_defaults":
        steps = max(2, steps // 10)  # ≈14x slower: a few steps are enough to measure
    args = SFTConfig(**common_args(steps), max_length=1024, **extra)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--variant", choices=VARIANTS, help="(internal) run one variant and print its JSON")
    a = ap.parse_args()
    if not os.path.exists(a.data):
        sys.exit(f"{a.data} not found: put the shared data at ../shared/data next to the checkout, set "
                 "HYPNOS_DATA, or pass --data")
    if a.variant:
        print("RESULT " + json.dumps(run_variant(a.variant, a.steps, a.data)))
        return
    results = {}
    for v in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--variant", v, "--steps", str(a.steps), "--data", a.data],
                              capture_output=True, text=True, env={**os.environ, "HYPNOS_NO_PROGRESS": "1"}, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{v} failed:\n{proc.stderr[-3000:]}")
        results[v] = json.loads(line[0][7:])
        print(json.dumps(results[v]), flush=True)
    base = results["trl_configured"]
    print(f"\n{'variant':<20}{'tokens/s':>10}{'vs TRL cpu':>12}{'peak RSS MB':>13}{'1st loss':>10}")
    for v, r in results.items():
        print(f"{v:<20}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / base['tokens_per_s']:>11.2f}x"
              f"{r['peak_rss_mb']:>13.0f}{r['first_loss']:>10.4f}")


if __name__ == "__main__":
    main()
