"""Vocabulary extension benchmark: tokens per character and bits per character on held-out medical text.

Run: ``.venv/bin/python bench/bench_tokenizer.py [--out runs/bench_tokenizer] [--steps 24] [--skip-bits]``

Part 1 (tokenizers, ~1 min): tokens/char, coverage and round-trips of LLaMA, Chinese-LLaMA-2 (a
general-domain extension: +23,296 pieces), Qwen2, SmolLM2, and our medical extensions of LLaMA and SmolLM2.
The held-out text is the doctors' answers of medicalgpt/medical_sft_1K_format.jsonl; the extensions are
trained on other medical text in ../shared/data (Huatuo instruction data and liver-cancer QA, the
MedicalGPT infectious-disease textbook chapter, Toyhom doctor answers, ChatMed answers) plus examples/corpus.
Ratios are against LLaMA, measured in the same run.

Part 2 (bits/char, a few minutes on 2 cores): SmolLM2-135M-Instruct extended with ``--small-new`` pieces from
the same medical model; bits/char right after extension and after ``--steps`` steps of causal-LM training
(plain HF Trainer, fp32, same data and seed for every init) for fused (increasing weights, our default
weighting), fused with decreasing weights, mean and random, next to the unextended model given the same budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HYPNOS_NO_PROGRESS", "1")
# The shared data sits next to the checkout (../shared/data) or wherever $HYPNOS_DATA points.
DATA = Path(os.environ.get("HYPNOS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
ROOT = Path(__file__).resolve().parents[1]
TOK = DATA / "tokenizers"


def heldout_answers(n: int | None = None) -> list[str]:
    """Doctors' answers of MedicalGPT's SFT sample (never used for training here), cut to 300 characters."""
    out = []
    for line in (DATA / "medicalgpt/medical_sft_1K_format.jsonl").read_text(encoding="utf-8").splitlines():
        for turn in json.loads(line)["conversations"]:
            if turn["from"] == "gpt" and turn["value"].strip():
                out.append(turn["value"].strip()[:300])
    return out[:n]


def training_corpus(path: Path) -> Path:
    """Write the extension's training corpus (text records) from medical files disjoint from the held-out set."""
    from hypnos.tokenizer.train_spm import iter_corpus_texts

    texts = list(iter_corpus_texts([DATA / "huatuo_llama_med/llama_data.json", DATA / "huatuo_llama_med/liver_cancer.json",
                                    DATA / "medicalgpt/pretrain_fever.txt", ROOT / "examples/corpus/medical_corpus.jsonl"]))
    with open(DATA / "toyhom_cmd/IM_sample_shared.csv", encoding="utf-8") as f:
        texts += [t for row in csv.DictReader(f) for t in (row["ask"], row["answer"])]
    chatmed = (DATA / "chatmed/ChatMed-Consult_test.json").read_text(encoding="utf-8").splitlines()
    texts += [json.loads(line)["response"] for line in chatmed if line.strip()]
    texts = [t.replace("<user>:", "").replace("<bot>:", "").strip() for t in texts]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, t in enumerate(t for t in texts if t):
            f.write(json.dumps({"id": f"c{i}", "text": t}, ensure_ascii=False) + "\n")
    return path


def tokenizer_part(out: Path, args) -> list[dict]:
    from transformers import AutoTokenizer, LlamaTokenizer

    from hypnos.common.models import resolve_model
    from hypnos.tokenizer.analyze import tokenizer_stats
    from hypnos.tokenizer.extend import extend_tokenizer, load_bytelevel
    from hypnos.tokenizer.train_spm import spm_pieces, train_spm

    texts = heldout_answers()
    corpus = training_corpus(out / "corpus.jsonl")
    smol = resolve_model("smollm2-135m-instruct")
    toks = {"LLaMA": LlamaTokenizer.from_pretrained(TOK / "llama"),
            "Chinese-LLaMA-2": LlamaTokenizer.from_pretrained(TOK / "chinese_llama2_alpaca2"),
            "Qwen2": load_bytelevel(TOK / "qwen2"), "SmolLM2": AutoTokenizer.from_pretrained(smol)}
    added: dict[str, int] = {"Chinese-LLaMA-2": 55296 - 32000}
    for jieba in (False, True):
        t0 = time.perf_counter()
        spm = train_spm([corpus], out / f"spm_{args.vocab}{'_jieba' if jieba else ''}", args.vocab, jieba)
        print(f"trained SentencePiece BPE vocab {args.vocab} jieba={jieba} in {time.perf_counter() - t0:.0f} s")
        tag = " (jieba)" if jieba else ""
        for name, base in (("LLaMA", TOK / "llama"), ("SmolLM2", smol)):
            d = out / f"{name}_med{'_jieba' if jieba else ''}"
            s = extend_tokenizer(base, spm_pieces(spm), d, args.max_new)
            toks[f"{name}+med{tag}"] = AutoTokenizer.from_pretrained(d)
            added[f"{name}+med{tag}"] = s["added"]
    rows = []
    for name, tok in toks.items():
        rows.append({"name": name, "added": added.get(name, 0), **tokenizer_stats(tok, texts)})
    base = rows[0]["tokens_per_char"]
    print(f"\nheld-out: {len(texts)} answers, {rows[0]['chars']} characters (medical_sft_1K_format.jsonl)")
    print(f"{'tokenizer':24} {'vocab':>7} {'added':>6} {'tok/char':>9} {'vs LLaMA':>9} {'char cov':>9} "
          f"{'word cov':>9} {'roundtrip':>9}")
    for r in rows:
        print(f"{r['name']:24} {r['vocab_size']:7d} {r['added']:6d} {r['tokens_per_char']:9.4f} "
              f"{r['tokens_per_char'] / base:9.3f} {r['char_coverage']:9.4f} {r['word_coverage']:9.4f} "
              f"{r['roundtrip']:9.4f}")
    return rows


def bits_part(out: Path, args) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.common.models import resolve_model
    from hypnos.tokenizer.analyze import bits_per_char, short_train
    from hypnos.tokenizer.extend import extend_tokenizer, read_new_tokens
    from hypnos.tokenizer.init_embeddings import resize_and_init
    from hypnos.tokenizer.train_spm import spm_pieces

    torch.set_num_threads(2)
    smol = resolve_model("smollm2-135m-instruct")
    tok_dir = out / "SmolLM2_small"
    extend_tokenizer(smol, spm_pieces(out / f"spm_{args.vocab}/spm.model"), tok_dir, args.small_new)
    new_tok, base_tok = AutoTokenizer.from_pretrained(tok_dir), AutoTokenizer.from_pretrained(smol)
    sub = read_new_tokens(tok_dir)
    held = heldout_answers(args.bits_texts)
    held = [t[:200] for t in held]
    train_texts = [json.loads(line)["text"] for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    train_texts = train_texts[:: max(1, len(train_texts) // 2000)]
    print(f"\nbits/char: SmolLM2-135M + {len(sub)} new tokens, {len(held)} held-out answers x <=200 chars, "
          f"{args.steps} steps x {args.batch} x {args.seq_len} tokens of training, lr {args.lr}")
    variants = [("base (no extension)", None, None), ("fused (increasing)", "fused", "increasing"),
                ("fused (decreasing)", "fused", "decreasing"), ("mean", "mean", None), ("random", "random", None)]
    rows = []
    for name, init, order in variants:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
        tok = base_tok
        if init is not None:
            resize_and_init(model, len(new_tok), sub, init, order or "increasing")
            tok = new_tok
        row = {"name": name, "tokens_per_char": sum(len(i) for i in tok(held)["input_ids"]) / sum(map(len, held)),
               "bits_per_char": bits_per_char(model, tok, held)}
        trained = ""
        if args.steps > 0:  # --steps 0: bits/char right after extension only
            row["train_loss"] = short_train(model, tok, train_texts, out / "trainer", args.steps, args.seq_len,
                                            args.batch, args.lr)
            row["bits_per_char_trained"] = bits_per_char(model, tok, held)
            trained = (f"  after {args.steps} steps {row['bits_per_char_trained']:.4f} "
                       f"(train loss {row['train_loss']:.3f})")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{name:22} tok/char {row['tokens_per_char']:.4f}  bits/char after extension "
              f"{row['bits_per_char']:.4f}{trained}  {row['seconds']:.0f} s", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench_tokenizer")
    p.add_argument("--vocab", type=int, default=20000, help="SentencePiece vocabulary trained on the corpus")
    p.add_argument("--max-new", type=int, default=20000, help="most tokens added to LLaMA / SmolLM2")
    p.add_argument("--small-new", type=int, default=2000, help="tokens added to SmolLM2 for the bits/char part")
    p.add_argument("--bits-texts", type=int, default=48)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--skip-bits", action="store_true", help="only the tokenizer part")
    p.add_argument("--skip-tokenizers", action="store_true", help="only the bits part (reuses --out from a run)")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"shared data not found at {DATA}: put it at ../shared/data next to the checkout or set HYPNOS_DATA")
    sys.path.insert(0, str(ROOT / "src"))
    logging.basicConfig(level=logging.WARNING)
    from hypnos.tokenizer.analyze import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_tokenizers:
        rows = tokenizer_part(args.out, args)
        paths = write_report(rows, args.out / "tokenizers", "Tokens per character on held-out medical answers")
        print("report:", paths["md"], paths["png"])
    if not args.skip_bits:
        rows = bits_part(args.out, args)
        paths = write_report(rows, args.out / "bits", "Bits per character: initialisations of new rows")
        print("report:", paths["md"], paths["png"])


if __name__ == "__main__":
    main()
