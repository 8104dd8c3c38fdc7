"""Dedup: exact and near duplicates of Chinese questions, against references and within the set."""

import json
import textwrap

import numpy as np
import pytest

from hypnos.common.io import DataError
from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.dedup import MinHasher, candidate_pairs, candidate_probability, find_duplicates, lsh_params
from hypnos.data.text import char_ngrams, normalize

BASE = "全身麻醉诱导时丙泊酚的常用剂量是多少，老年患者应如何调整？"


def test_exact_duplicate_ignores_width_spacing_and_punctuation():
    texts = [BASE, "全身麻醉诱导时 丙泊酚的常用剂量是多少, 老年患者应如何调整?", "椎管内麻醉后低血压应如何处理？"]
    r = find_duplicates(texts)
    assert list(r.duplicate_of) == [-1, 0, -1]
    assert r.reason == ["", "exact", ""]


def test_near_duplicate_points_to_the_kept_item_and_distinct_questions_stay():
    texts = [
        "椎管内麻醉后出现低血压的常见原因是什么？",
        BASE,
        "全身麻醉诱导时丙泊酚的常用剂量是多少，高龄患者应如何调整？",  # 2 characters differ from BASE
        "全身麻醉诱导时七氟烷的吸入浓度是多少，小儿患者应如何调整？",  # shares the frame, different content
        "术后恶心呕吐的高危因素有哪些？",
    ]
    r = find_duplicates(texts, threshold=0.6)
    assert r.duplicate_of[2] == 1 and r.reason[2] == "near"
    assert 0.6 <= r.similarity[2] < 1.0
    assert [r.duplicate_of[i] for i in (0, 1, 3, 4)] == [-1, -1, -1, -1]


def test_references_always_win_and_are_never_dropped():
    texts = [BASE, BASE, "全身麻醉诱导时丙泊酚的常用剂量是多少，高龄患者应如何调整？", "完全不同的问题：什么是恶性高热？"]
    r = find_duplicates(texts, threshold=0.6, protected=2)
    assert list(r.duplicate_of) == [-1, -1, 0, -1]  # the repeated reference stays (it is a reference)


def test_signature_similarity_estimates_jaccard():
    rng = np.random.default_rng(0)
    chars = list("麻醉镇痛丙泊酚芬太尼瑞芬七氟烷地氟烷罗库溴铵肌松监测气管插管喉罩血压心率")
    hasher = MinHasher(num_perm=256, ngram=3)
    for _ in range(10):
        a = "".join(rng.choice(chars, 60))
        b = a[: rng.integers(10, 50)] + "".join(rng.choice(chars, 20))
        A, B = set(char_ngrams(a, 3)), set(char_ngrams(b, 3))
        true = len(A & B) / len(A | B)
        sig = hasher.signatures([a, b])
        assert abs((sig[0] == sig[1]).mean() - true) < 0.1


def test_batches_give_the_same_signatures_as_one_by_one():
    texts = [normalize(BASE[: k + 1]) for k in range(len(BASE))]  # includes texts shorter than a gram
    h = MinHasher(num_perm=32)
    together = h.signatures(texts)
    alone = np.stack([h.signatures([t])[0] for t in texts])
    assert (together == alone).all()


def test_candidate_pairs_come_from_shared_bands():
    sigs = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 6, 7, 8]], dtype=np.uint32)
    pairs = candidate_pairs(sigs, bands=2, rows=2)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 2)]
    b, r = lsh_params(0.7, 128)
    assert b * r <= 128


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_stage_writes_kept_dropped_and_clusters(tmp_path):
    _write(tmp_path / "seeds.jsonl", [{"id": "s1", "instruction": BASE, "output": "1.5-2.5mg/kg。"}])
    _write(tmp_path / "gen.jsonl", [
        {"id": "g1", "instruction": "全身麻醉诱导时丙泊酚的常用剂量是多少，高龄患者应如何调整？", "output": "减量。"},
        {"id": "g2", "instruction": "术后恶心呕吐的高危因素有哪些？", "output": "女性、不吸烟。"},
        {"id": "g3", "instruction": "术后恶心呕吐的高危因素有哪些?", "output": "晕动病史。"},
    ])
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: d
        stages:
          - name: dedup
            input: gen.jsonl
            references: [seeds.jsonl]
            threshold: 0.6
        """), encoding="utf-8")
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    assert m["counts"] == {"in": 3, "references": 1, "kept": 1, "dropped": 2}
    assert m["dropped"] == {"near_of_reference": 1, "exact": 1}
    out = tmp_path / "runs" / "d" / "dedup"
    assert [json.loads(x)["id"] for x in (out / "kept.jsonl").read_text().splitlines()] == ["g2"]
    dropped = {json.loads(x)["id"]: json.loads(x)["dedup"] for x in (out / "dropped.jsonl").read_text().splitlines()}
    assert dropped["g1"]["duplicate_of"] == "s1" and dropped["g3"]["duplicate_of"] == "g2"
    clusters = [json.loads(x) for x in (out / "clusters.jsonl").read_text().splitlines()]
    assert {c["kept"]: c["duplicates"] for c in clusters} == {"s1": ["g1"], "g2": ["g3"]}


def test_stage_reports_bad_row_with_file_and_line(tmp_path):
    (tmp_path / "gen.jsonl").write_text('{"id": "a", "instruction": "问题一"}\n{"id": "b", "answer": 1}\n')
    (tmp_path / "r.yaml").write_text("name: d\nstages:\n  - {name: dedup, input: gen.jsonl}\n")
    with pytest.raises(DataError, match=r"gen.jsonl:2: no text field"):
        run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))


def _pair_with_jaccard(rng, target: float, length: int = 120, ngram: int = 3) -> tuple[str, str, float]:
    """Two random Han texts whose 3-gram Jaccard is close to ``target`` (b = a with a suffix replaced)."""
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    a = "".join(rng.choice(alphabet, length))
    # replacing the last k characters removes ~k grams of n-... from a's set and adds as many new ones
    best = None
    for k in range(1, length):
        b = a[: length - k] + "".join(rng.choice(alphabet, k))
        A, B = set(char_ngrams(a, ngram)), set(char_ngrams(b, ngram))
        j = len(A & B) / len(A | B)
        if best is None or abs(j - target) < abs(best[2] - target):
            best = (a, b, j)
        if j < target - 0.05:
            break
    return best


def test_recall_at_the_threshold_is_at_least_95_percent():
    """Controlled pairs with true Jaccard in [0.70, 0.75]: the old 16x8 bands + estimated-Jaccard check found 62%."""
    rng = np.random.default_rng(0)
    pairs = [p for p in (_pair_with_jaccard(rng, t) for t in np.linspace(0.70, 0.75, 200)) if 0.70 <= p[2] <= 0.75]
    assert len(pairs) >= 150
    texts = [t for a, b, _ in pairs for t in (a, b)]
    r = find_duplicates(texts, threshold=0.7)
    found = sum(r.duplicate_of[2 * k + 1] == 2 * k for k in range(len(pairs)))
    assert found / len(pairs) >= 0.95, f"recall {found / len(pairs):.3f}"
    # exact verification: similarities are the true Jaccard, never below the threshold
    sims = [r.similarity[2 * k + 1] for k in range(len(pairs)) if r.duplicate_of[2 * k + 1] == 2 * k]
    assert all(s >= 0.7 for s in sims)
    b, rows = lsh_params(0.7, 128)
    assert candidate_probability(0.7, b, rows) >= 0.97 and b * rows <= 128
    assert candidate_probability(0.7, 16, 8) < 0.7  # the old optimiser's choice: why recall was 62%


def test_a_50_mb_row_is_hashed_in_bounded_memory(tmp_path):
    """One huge row must not allocate (grams x num_perm) x 8 bytes (a 50 MB row: 17M x 128 x 8 = 17 GB before the
    fix; this 6 MB one needed 2 GB per temporary)."""
    import subprocess
    import sys

    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from hypnos.data.dedup import MinHasher, find_duplicates
        rng = np.random.default_rng(0)
        big = rng.integers(0x4E00, 0x4E00 + 3000, 2_000_000, dtype=np.uint32).tobytes().decode("utf-32-le")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = find_duplicates([big, big[:-5] + "甲乙丙丁戊", "术后恶心呕吐的高危因素有哪些？"], threshold=0.7)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print([int(x) for x in r.duplicate_of], (peak - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    dups, extra_mb = out.stdout.split("]")
    assert dups.strip("[ ") == "-1, 0, -1"
    assert int(extra_mb) < 2000, f"{extra_mb} MB above the input"


def test_pairs_just_below_the_threshold_are_kept():
    """Precision at the threshold: pairs with true Jaccard 0.60-0.68 are candidates (LSH tuned for recall) but
    the exact check keeps both. Disabling that check passed every other test."""
    rng = np.random.default_rng(1)
    pairs = [p for p in (_pair_with_jaccard(rng, t) for t in np.linspace(0.60, 0.68, 80)) if 0.60 <= p[2] < 0.69]
    assert len(pairs) >= 60
    r = find_duplicates([t for a, b, _ in pairs for t in (a, b)], threshold=0.7)
    assert (r.duplicate_of == -1).all(), f"{(r.duplicate_of != -1).sum()} false duplicates"
    assert r.params["candidates"] > 0  # they were candidates: the exact check is what kept them
