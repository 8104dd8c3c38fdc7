"""Vocabulary extension without losing held-out quality: initialisations and warm-ups, in bits per character.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_heldout.py [--out runs/bench_heldout] [--seeds 0 1 2]
[--steps 60] [--variants base mean fused mean+lm mean+distill]``

The extension is the demo's (recipes/demo.yaml): SmolLM2-135M-Instruct + a SentencePiece BPE (vocabulary
3,000) trained on examples/corpus and examples/general, at most 1,500 new tokens. Variants, each measured
on the same texts:

* ``base``: no extension.
* ``mean`` / ``fused``: new rows initialised by the mean / the paper's order-weighted fusion, no training.
* ``mean+lm``: then ``--steps`` steps training only the new rows with the causal-LM loss on the corpus.
* ``mean+distill``: the same steps and rows, loss = LM + KL to the base model reading the same text in its
  own tokenization (tokenizer/warmup.py).

Held-out sets (none is in the warm-up corpus): ``anesthesia`` (examples/bench/anesthesia_openqa.jsonl,
question + answer), ``online`` (examples/heldout/online_qa.jsonl, patients' questions and online doctors'
answers written for the project) and, when ../shared/data (or $HYPNOS_DATA) is present, ``real``: public
Chinese medical QA (Zhongjing's Huatuo-26M test sample and MedicalGPT's SFT sample), used by path only.

Per-text bits are cached in ``--out/results.json``, so an interrupted run resumes and more seeds can be added.
The table gives bits/char with a bootstrap 95% CI over texts and the paired difference to ``base``; warm-up
variants are averaged over seeds (mean, min-max).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HYPNOS_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYPNOS_DATA") or ROOT.parent / "shared" / "data")
CORPUS = [ROOT / "examples/corpus/medical_corpus.jsonl", ROOT / "examples/general/general_medical_qa.jsonl"]
VARIANTS = ("base", "mean", "fused", "mean+lm", "mean+distill", "mean+lm+lora", "base+lora")


def heldout_sets(n: int) -> dict[str, list]:
    """name -> held-out items (question + answer text, each cut to 300 characters)."""
    from hypnos.eval.heldout import load_items

    sets = {"anesthesia": load_items([ROOT / "examples/bench/anesthesia_openqa.jsonl"], "text", n),
            "online": load_items([ROOT / "examples/heldout/online_qa.jsonl"], "text", n)}
    real = [DATA / "zhongjing/huatuo26M_test_shared.json", DATA / "medicalgpt/medical_sft_1K_format.jsonl"]
    if all(p.is_file() for p in real):
        sets["real"] = [it for p in real for it in load_items([p], "text", n // 2)]
    else:
        print(f"no shared data under {DATA}: the 'real' set is skipped", file=sys.stderr)
    return sets


def build_extension(out: Path, args) -> tuple[Path, Path]:
    """The demo's extended tokenizer and the base model dir (built once into --out)."""
    from hypnos.common.models import resolve_model
    from hypnos.tokenizer.extend import NEW_PIECES_FILE, extend_tokenizer
    from hypnos.tokenizer.train_spm import spm_pieces, train_spm

    base = resolve_model("smollm2-135m-instruct")
    if not (out / "spm/spm.model").is_file():
        train_spm(CORPUS, out / "spm", args.vocab)
    if not (out / "tok" / NEW_PIECES_FILE).is_file():
        extend_tokenizer(base, spm_pieces(out / "spm/spm.model"), out / "tok", args.max_new, corpus=CORPUS)
    return base, out / "tok"


def make_model(variant: str, seed: int, base: Path, tok_dir: Path, args) -> tuple:
    """(model, tokenizer, warm-up stats) of one variant."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.tokenizer.analyze import load_texts
    from hypnos.tokenizer.extend import read_new_tokens
    from hypnos.tokenizer.init_embeddings import resize_and_init
    from hypnos.tokenizer.warmup import WarmupConfig, warmup_new_rows

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if variant == "base":
        return model, AutoTokenizer.from_pretrained(base), None
    if variant == "base+lora":  # the control: no extension, LoRA on the same corpus for the same steps
        tok = AutoTokenizer.from_pretrained(base)
        return model, tok, base_lora(model, tok, seed, args)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    sub = read_new_tokens(tok_dir)
    init, _, warm = variant.partition("+")
    warm, _, lora = warm.partition("+")
    resize_and_init(model, len(tok), sub, init)
    if not warm:
        return model, tok, None
    torch.manual_seed(seed)
    cfg = WarmupConfig(steps=args.steps, learning_rate=args.lr, seed=seed, distill=1.0 if warm == "distill" else 0.0,
                       lora_steps=args.lora_steps if lora else 0, lora_learning_rate=args.lora_lr)
    teacher = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32) if cfg.distill else None
    texts = load_texts(CORPUS, None, max_chars=10**9)
    stats = warmup_new_rows(model, tok, texts, sorted(sub), args.out / "trainer", cfg, teacher,
                            AutoTokenizer.from_pretrained(base), sub)
    return model, tok, stats


def base_lora(model, tok, seed: int, args) -> dict:
    """The unextended model trained with a LoRA adapter (merged) for steps + lora_steps on the corpus."""
    import torch

    from hypnos.tokenizer.analyze import lm_blocks, load_texts
    from hypnos.tokenizer.warmup import WarmupConfig, lora_phase

    torch.manual_seed(seed)
    cfg = WarmupConfig(steps=0, seed=seed, lora_steps=args.steps + args.lora_steps, lora_learning_rate=args.lora_lr)
    model.requires_grad_(False)
    blocks = lm_blocks(tok, load_texts(CORPUS, None, max_chars=10**9), cfg.seq_len)
    _, losses = lora_phase(model, blocks, args.out / "trainer-base-lora", cfg, rows=False)
    return {"steps": cfg.lora_steps, "first_loss": losses[0], "last_loss": losses[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench_heldout")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lora-steps", type=int, default=0, help="'+lora' variants: steps of the rows + LoRA phase")
    p.add_argument("--lora-lr", type=float, default=3e-4)
    p.add_argument("--texts", type=int, default=32, help="held-out texts per set (real: half from each file)")
    p.add_argument("--vocab", type=int, default=3000)
    p.add_argument("--max-new", type=int, default=1500)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--merge", nargs="*", type=Path, default=[],
                   help="more results.json files (runs split over processes) to include in the table")
    p.add_argument("--report-only", action="store_true", help="print the table of the results found, run nothing")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    logging.basicConfig(level=logging.WARNING)
    import torch

    from hypnos.eval.heldout import item_bits

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    res_path = args.out / "results.json"
    results = json.loads(res_path.read_text(encoding="utf-8")) if res_path.is_file() else {}
    for other in args.merge:
        results.update({k: v for k, v in json.loads(other.read_text(encoding="utf-8")).items() if k not in results})
    base, tok_dir = build_extension(args.out, args)
    sets = heldout_sets(args.texts)
    for variant in [] if args.report_only else args.variants:
        for seed in (args.seeds if "+" in variant else [0]):
            key = f"{variant}@{seed}" if "+" in variant else variant
            if "+" in variant:
                key += f"/steps{args.steps}/lr{args.lr:g}"
            if variant.endswith("+lora"):
                key += f"/lora{args.lora_steps}/lr{args.lora_lr:g}"
            if key in results:
                continue
            t0 = time.perf_counter()
            model, tok, stats = make_model(variant, seed, base, tok_dir, args)
            row = {"variant": variant, "seed": seed, "warmup": stats, "sets": {}}
            for name, items in sets.items():
                bits = item_bits(model, tok, items)
                n_tok = sum(len(x) for x in tok([it.target for it in items], add_special_tokens=False)["input_ids"])
                row["sets"][name] = {"bits": bits.tolist(), "tokens": n_tok}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            results[key] = row
            res_path.write_text(json.dumps(results, indent=0), encoding="utf-8")
            print(f"{key}: " + "  ".join(f"{n} {sum(v['bits']) / sum(len(it.target) for it in sets[n]):.3f}"
                                         for n, v in row["sets"].items()) + f"  ({row['seconds']:.0f} s)", flush=True)
    print(table(results, sets))


def table(results: dict, sets: dict) -> str:
    """Markdown: per variant (seeds pooled by averaging per-text bits) bits/char [CI], diff to base [paired CI]."""
    import numpy as np

    from hypnos.eval.heldout import bits_per_char, item_chars, paired_difference

    groups: dict[str, list[dict]] = {}
    for key, row in results.items():
        groups.setdefault(key.split("@")[0] + (f" ({key.split('/', 1)[1]})" if "/" in key else ""), []).append(row)
    names = list(sets)
    head = "| variant | seeds | " + " | ".join(f"{n}: bits/char [95% CI] | {n}: − base [paired CI]"
                                                for n in names) + " | tokens/char (" + names[0] + ") |"
    lines = [head, "|" + " --- |" * (3 + 2 * len(names))]
    base = groups.get("base", [None])[0]
    for g, rows in groups.items():
        cells = []
        for n in names:
            chars = item_chars(sets[n])
            per_seed = [np.array(r["sets"][n]["bits"]) for r in rows if n in r["sets"]]
            if not per_seed:
                cells += ["", ""]
                continue
            bits = np.mean(per_seed, axis=0)  # average over seeds per text, then CI over texts
            s = bits_per_char(bits, chars)
            spread = [float(b.sum() / chars.sum()) for b in per_seed]
            seed_txt = f" (seeds {min(spread):.2f}–{max(spread):.2f})" if len(spread) > 1 else ""
            cells.append(f"{s['bits_per_char']:.3f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]{seed_txt}")
            if base is not None and g != "base":
                d = paired_difference(bits, np.array(base["sets"][n]["bits"]), chars)
                cells.append(f"{d['difference']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]")
            else:
                cells.append("")
        tpc = rows[0]["sets"][names[0]]["tokens"] / item_chars(sets[names[0]]).sum()
        lines.append(f"| {g} | {len(rows)} | " + " | ".join(cells) + f" | {tpc:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
