"""The demo's models on real public Chinese medical QA none of them trained on, in bits per character.

Run (after ``make demo``): ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_demo_real.py [--run runs/demo]
[--texts 80] [--out runs/demo/real_qa.json]``

``make demo`` measures itself on two held-out sets of the project's own making (the anesthesia split and
examples/heldout/online_qa.jsonl). This benchmark adds real text from ../shared/data (or $HYPNOS_DATA), read
by path, never copied: Huatuo-26M test answers (Zhongjing's sample), MedicalGPT's SFT conversations and
Huatuo-LLaMA's anesthesia instructions. Question and answer are scored as one text (first 300 characters),
each model in its own tokenization, so bits/char compare across the base and the extended vocabulary.

Every model of the demo's eval stage is scored (base, general_only, specific_only, general_to_specific) plus
the extended + warmed-up model before SFT; the table gives bits/char [bootstrap 95% CI over texts] per source
and pooled, and each model minus base with a paired 95% CI (same texts, 2,000 resamples). A model is "not
worse than base" where the paired interval's upper end is <= 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HYPNOS_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYPNOS_DATA") or ROOT.parent / "shared" / "data")
SOURCES = {"huatuo26M_test": "zhongjing/huatuo26M_test_shared.json",
           "medicalgpt_sft": "medicalgpt/medical_sft_1K_format.jsonl",
           "huatuo_anesthesia": "huatuo_llama_med/llama_data_anesthesia.json"}


def demo_models(run: Path) -> dict[str, str]:
    """label -> model dir of the demo run (the eval stage's models + the warmed-up extension)."""
    models = {"base": "smollm2-135m-instruct"}
    for label, stage in (("extended_warmup", "tokenizer/warm"), ("general_only", "sft_general/model"),
                         ("specific_only", "sft_specific_only/model"),
                         ("general_to_specific", "sft_general_to_specific/model")):
        if (run / stage / "config.json").is_file():
            models[label] = str(run / stage)
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs/demo", help="the demo's run directory")
    p.add_argument("--texts", type=int, default=80, help="texts per source")
    p.add_argument("--out", type=Path, default=None, help="JSON with per-text bits (default: RUN/real_qa.json)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np

    from hypnos.eval.heldout import bits_per_char, evaluate, paired_difference

    missing = [str(DATA / f) for f in SOURCES.values() if not (DATA / f).is_file()]
    if missing:
        sys.exit(f"shared data missing ({', '.join(missing)}): set HYPNOS_DATA or put it at ../shared/data")
    models = demo_models(args.run)
    if len(models) == 1:
        sys.exit(f"no demo models under {args.run}: run `make demo` first")
    results = {name: evaluate(models, [DATA / f], "text", args.texts, 300) for name, f in SOURCES.items()}
    out = args.out or args.run / "real_qa.json"
    out.write_text(json.dumps({"models": models, "sources": SOURCES, "results": results}, indent=0), encoding="utf-8")

    cols = [*SOURCES, "pooled"]
    print("| model | " + " | ".join(f"{c}: bits/char | − base [paired 95% CI]" for c in cols) + " |")
    print("|" + " --- |" * (1 + 2 * len(cols)))
    def columns(values) -> dict:  # per source, then pooled over the sources
        per = {s: np.array(values(r)) for s, r in results.items()}
        return {**per, "pooled": np.concatenate(list(per.values()))}

    chars = columns(lambda r: r["chars"])
    bits = {m: columns(lambda r, m=m: r["per_text"][m]) for m in models}
    for m in models:
        cells = []
        for c in cols:
            s = bits_per_char(bits[m][c], chars[c])
            cells.append(f"{s['bits_per_char']:.3f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]")
            if m == "base":
                cells.append("")
                continue
            d = paired_difference(bits[m][c], bits["base"][c], chars[c])
            cells.append(f"{d['difference']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]")
        print(f"| {m} | " + " | ".join(cells) + " |")
    print(f"\n{sum(len(r['chars']) for r in results.values())} texts, {int(chars['pooled'].sum())} characters; "
          f"per-text bits in {out}")


if __name__ == "__main__":
    main()
