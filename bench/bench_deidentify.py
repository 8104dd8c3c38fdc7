"""De-identification throughput: ``Deidentifier.scrub`` on 100k case notes, vs POS-tagging every note.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_deidentify.py [--notes 100000] [--baseline 2000]``

Notes are built from the hand-labelled sentences of ``tests/deid`` (3-6 per note, about 150-250
characters), with every labelled name, number and date replaced by a fresh random one, so the caches
inside the scrubber see as many distinct names as real notes would. The target (issue 13) is 2,000
notes/s on one core, so scrubbing never dominates a run. The baseline runs jieba's POS tagger over
every whole note (what the name finder would cost without candidate gating), on a subset, in the same
process; the ratio is printed. With ``HYPNOS_DATA`` (or ``../shared/data``) present, real doctor-patient
QA rows are timed too.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from pathlib import Path

from hypnos.data.deid_eval import load_parts
from hypnos.data.deidentify import Deidentifier

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁"
_GIVEN = "建国伟芳秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰海燕晓红春华志文玉梅子涵浩宇欣怡雨轩佳琪"


def _fresh(kind: str, value: str, rng: random.Random) -> str:
    if kind == "name":
        return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(max(0, len(value) - 1)))
    # numbers, dates, IDs, phones: same shape, new digits
    return "".join(rng.choice("0123456789") if c.isdigit() else c for c in value)


def synth_notes(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sents = [e for part in load_parts().values() for e in part]
    notes = []
    for _ in range(n):
        pieces = []
        for ex in rng.sample(sents, rng.randint(3, 6)):
            text, pos = [], 0
            for g in ex.spans:
                text += [ex.text[pos : g.start], _fresh(g.type, g.text, rng)]
                pos = g.end
            pieces.append("".join(text) + ex.text[pos:])
        notes.append("".join(pieces))
    return notes


def real_rows(limit: int) -> list[str]:
    base = Path(os.environ.get("HYPNOS_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    path = base / "toyhom_cmd" / "IM_sample_shared.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        rows = [" ".join(r) for r in csv.reader(f)]
    return rows[:limit]


def rate(deid: Deidentifier, notes: list[str]) -> tuple[float, float, float]:
    """Notes per wall-clock second, characters per wall-clock second, notes per CPU second of this process
    (the last one is what a shared, loaded machine still measures fairly)."""
    t, c = time.perf_counter(), time.process_time()
    for note in notes:
        deid.scrub(note)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    return len(notes) / dt, sum(map(len, notes)) / dt, len(notes) / dc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=2000, help="notes for the POS-tag-everything baseline")
    args = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for a one-core figure", file=sys.stderr)

    deid = Deidentifier(ages_over_89=True)
    t = time.perf_counter()
    deid.scrub("患者张三，男，56岁。")  # loads jieba's dictionary once (about a second)
    print(f"warm-up (jieba dictionary): {time.perf_counter() - t:.2f}s")

    notes = synth_notes(args.notes)
    mean = sum(map(len, notes)) / len(notes)
    nps, cps, cpu = rate(deid, notes)
    print(f"scrub: {len(notes):,} notes (mean {mean:.0f} chars): {nps:,.0f} notes/s wall, {cps / 1000:,.0f}k chars/s; "
          f"{cpu:,.0f} notes per CPU-second [target >= 2,000 notes/s: {'met' if nps >= 2000 else 'NOT met'} on wall "
          f"clock, {'met' if cpu >= 2000 else 'NOT met'} per CPU-second]; load average {os.getloadavg()[0]:.1f}")

    import jieba.posseg as pseg

    sub = notes[: args.baseline]
    c = time.process_time()
    for note in sub:
        pseg.lcut(note)
    base = len(sub) / (time.process_time() - c)
    print(f"baseline, jieba POS tagging of every whole note: {base:,.0f} notes per CPU-second -> scrub is "
          f"{cpu / base:.1f}x faster")

    real = real_rows(20_000)
    if real:
        nps, cps, cpu = rate(deid, real)
        print(f"real doctor-patient QA (toyhom_cmd, {len(real):,} rows, mean {sum(map(len, real)) / len(real):.0f} "
              f"chars): {nps:,.0f} rows/s wall, {cps / 1000:,.0f}k chars/s, {cpu:,.0f} rows per CPU-second")


if __name__ == "__main__":
    main()
