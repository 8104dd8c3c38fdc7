"""Dedup at scale: vectorised MinHash LSH vs the Self-Instruct all-pairs ROUGE-L filter.

Run: ``.venv/bin/python bench/bench_dedup.py [--sizes 100000 1000000] [--rouge-subset 300] [--curve-pairs 200]``

First the recall curve: controlled pairs of random Han texts whose true character-3-gram Jaccard lies in
each 0.05-wide bin from 0.40 to 1.00, deduplicated at threshold 0.7; it prints the fraction of pairs
flagged per bin next to the LSH candidate probability 1-(1-J^r)^b. With exact verification a pair
below the threshold is never flagged, and pairs at or above it are flagged with the LSH probability
(>= 0.97 at the threshold by construction).

Synthesises Chinese anesthesiology instructions by recombining fragments, injects a known fraction of
near-duplicates (one character substituted, inserted or deleted, or punctuation changed, in a copy of
an earlier item), deduplicates them with ``hypnos.data.dedup.find_duplicates`` (each size in its own
subprocess, so peak RSS is that size's), and reports time, peak memory and the recall of the injected
near-duplicates. The baseline, all-pairs ROUGE-L with a character tokenizer (rouge_score's default
tokenizer scores Chinese as 0), is timed on a subset and extrapolated to n(n-1)/2 pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

PREFIX = ["", "请问", "请简述", "试述", "临床上", "在麻醉科，", "从药理学角度，", "结合指南，", "请详细说明", "简要回答："]
SUBJECT = ["丙泊酚", "七氟烷", "地氟烷", "瑞芬太尼", "舒芬太尼", "罗库溴铵", "顺式阿曲库铵", "右美托咪定", "依托咪酯",
           "氯胺酮", "咪达唑仑", "布比卡因", "罗哌卡因", "利多卡因", "新斯的明", "舒更葡糖钠", "去氧肾上腺素", "麻黄碱",
           "硬膜外麻醉", "腰麻", "喉罩", "气管插管", "神经阻滞", "控制性降压", "自体血回输", "术后镇痛泵", "BIS监测",
           "有创动脉压监测", "中心静脉置管", "经食管超声"]
ASPECT = ["的作用机制是什么", "的常用剂量是多少", "的主要不良反应有哪些", "的禁忌证有哪些", "的适应证是什么",
          "与其他方法相比有何优缺点", "使用时需要注意什么", "过量时如何处理", "对循环系统有什么影响",
          "对呼吸系统有什么影响", "在临床中如何选择", "的操作要点是什么"]
POPULATION = ["", "在老年患者中", "在小儿患者中", "在产妇中", "在肥胖患者中", "在心脏病患者中", "在肝功能不全患者中",
              "在肾功能不全患者中", "在日间手术中", "在急诊手术中", "在危重患者中", "在神经外科手术中"]
SUFFIX = ["？", "。", "，请举例说明。", "，并说明理由。", "？请结合病例分析。", "，有哪些最新进展？"]
FILLER = "的了在和是有对与及其"


def synth(n: int, dup_fraction: float, seed: int = 0) -> tuple[list[str], list[int]]:
    """n texts; returns them and the indices of the injected near-duplicates."""
    rng = random.Random(seed)
    texts, injected = [], []
    for i in range(n):
        if i > 10 and rng.random() < dup_fraction:
            src = list(texts[rng.randrange(i)])
            op = rng.randrange(4)
            pos = rng.randrange(1, len(src) - 1)
            if op == 0:
                src[pos] = rng.choice(FILLER)
            elif op == 1:
                src.insert(pos, rng.choice(FILLER))
            elif op == 2:
                del src[pos]
            else:
                src.append("？！" if src[-1] != "？" else "")
            texts.append("".join(src))
            injected.append(i)
        else:
            t = (rng.choice(PREFIX) + rng.choice(POPULATION) + rng.choice(SUBJECT) + rng.choice(ASPECT)
                 + rng.choice(SUFFIX) + f"（第{rng.randrange(10**7)}题）")  # the number keeps random items apart
            texts.append(t)
    return texts, injected


def run_minhash(n: int, dup_fraction: float) -> dict:
    """Dedup n synthetic texts in this process; returns timings, recall and peak RSS."""
    from hypnos.data.dedup import find_duplicates

    texts, injected = synth(n, dup_fraction)
    t0 = time.perf_counter()
    res = find_duplicates(texts, threshold=0.7, ngram=3, num_perm=128)
    secs = time.perf_counter() - t0
    found = sum(1 for i in injected if res.duplicate_of[i] >= 0)
    dropped = int((res.duplicate_of >= 0).sum())
    return {"n": n, "seconds": round(secs, 2), "items_per_s": round(n / secs),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "injected": len(injected), "recall": round(found / max(1, len(injected)), 4), "dropped": dropped,
            "dropped_not_injected": dropped - found, **res.params}


def _pair(rng: random.Random, target: float, length: int = 60) -> tuple[str, str, float]:
    """Two random Han texts whose 3-gram Jaccard is as close to ``target`` as a suffix replacement gets."""
    a = "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(length))
    best = (a, a, 1.0)
    grams_a = {a[i : i + 3] for i in range(length - 2)}
    for k in range(1, length):
        b = a[: length - k] + "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(k))
        gb = {b[i : i + 3] for i in range(length - 2)}
        j = len(grams_a & gb) / len(grams_a | gb)
        if abs(j - target) < abs(best[2] - target):
            best = (a, b, j)
        if j < target - 0.03:
            break
    return best


def recall_curve(pairs_per_bin: int, threshold: float = 0.7) -> list[dict]:
    """Fraction of controlled pairs flagged per true-Jaccard bin, with the LSH candidate probability."""
    from hypnos.data.dedup import candidate_probability, find_duplicates, lsh_params

    rng = random.Random(0)
    bins = [round(0.40 + 0.05 * k, 2) for k in range(12)]
    texts, truth = [], []
    for lo in bins:
        made = 0
        for _ in range(pairs_per_bin * 20):
            a, b, j = _pair(rng, lo + rng.random() * 0.05)
            if lo <= j < lo + 0.05 or (lo == 0.95 and j >= 0.95):
                texts += [a, b]
                truth.append(j)
                made += 1
            if made == pairs_per_bin:
                break
    res = find_duplicates(texts, threshold=threshold)
    b, r = lsh_params(threshold, 128)
    out = []
    for lo in bins:
        ks = [k for k, j in enumerate(truth) if lo <= j < lo + 0.05 or (lo == 0.95 and j >= 0.95)]
        flagged = sum(res.duplicate_of[2 * k + 1] == 2 * k for k in ks)
        mid = lo + 0.025
        out.append({"jaccard": f"{lo:.2f}-{lo + 0.05:.2f}", "pairs": len(ks),
                    "flagged": round(flagged / len(ks), 3) if ks else None,
                    "lsh_p": round(float(candidate_probability(mid, b, r)), 3), "bands": b, "rows": r})
    return out


class CharTokenizer:
    """One token per character: what makes rouge_score work on Chinese at all."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def rouge_pairs_per_s(m: int) -> float:
    """All-pairs ROUGE-L F over m synthetic texts, as Self-Instruct's filter does; pairs per second."""
    from rouge_score import rouge_scorer

    texts, _ = synth(m, 0.1, seed=1)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharTokenizer())
    t0 = time.perf_counter()
    pairs = 0
    for i in range(m):
        for j in range(i):
            scorer.score(texts[i], texts[j])
            pairs += 1
    return pairs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--rouge-subset", type=int, default=300)
    ap.add_argument("--curve-pairs", type=int, default=200, help="controlled pairs per Jaccard bin (0: no curve)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size, JSON out
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_minhash(args.one, args.dup_fraction)))
        return
    if args.curve_pairs:
        curve = recall_curve(args.curve_pairs)
        print(f"recall curve at threshold 0.7 (LSH {curve[0]['bands']} bands x {curve[0]['rows']} rows, exact "
              f"Jaccard verification), {args.curve_pairs} pairs per bin:")
        print("  true Jaccard   pairs   flagged   LSH candidate p")
        for c in curve:
            print(f"  {c['jaccard']:>11}  {c['pairs']:>6}  {c['flagged'] if c['flagged'] is not None else '-':>8}"
                  f"  {c['lsh_p']:>8}")
    pps = rouge_pairs_per_s(args.rouge_subset)
    print(f"ROUGE-L (char tokenizer) all pairs on {args.rouge_subset} texts: {pps:,.0f} pairs/s (1 core)")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dup-fraction", str(args.dup_fraction)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rouge_s = n * (n - 1) / 2 / pps
        print(f"n={n:>9,}: MinHash LSH {r['seconds']:8.1f} s ({r['items_per_s']:,} items/s), peak RSS "
              f"{r['peak_rss_mb']:,} MB, near-dup recall {r['recall']:.3f} ({r['injected']:,} injected), "
              f"other drops {r['dropped_not_injected']:,}, LSH {r['bands']}x{r['rows']}")
        print(f"             all-pairs ROUGE-L, extrapolated: {rouge_s:,.0f} s ({rouge_s / 86400:,.1f} days)"
              f"  ->  MinHash is {rouge_s / r['seconds']:,.0f}x faster")


if __name__ == "__main__":
    main()
