"""Mix: weights, caps, seeded shuffle and validation split."""

import json
import random
import textwrap

from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.mix import row_key, take


def test_take_weights_and_caps():
    rows = [{"id": str(i)} for i in range(10)]
    rng = random.Random(0)
    assert len(take(rows, 1.0, None, rng)) == 10
    assert len(take(rows, 0.3, None, rng)) == 3
    twice = take(rows, 2.5, None, rng)
    assert len(twice) == 25 and all(sum(r["id"] == str(i) for r in twice) >= 2 for i in range(10))
    assert len(take(rows, 2.0, 7, rng)) == 7


def _recipe(tmp_path, seed):
    for name, n in (("a", 20), ("b", 50)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": f"{name}{i}", "text": f"{name}{i}"}) + "\n" for i in range(n)))
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: m
        seed: {seed}
        stages:
          - name: mix
            sources: [{{path: a.jsonl, weight: 2}}, {{path: b.jsonl, cap: 10, name: general}}]
            val_fraction: 0.2
        """))
    return load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / f"runs{seed}")


def test_stage_mixes_and_splits_reproducibly(tmp_path):
    [m] = run_recipe(_recipe(tmp_path, 0))
    out = tmp_path / "runs0/m/mix"
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    assert len(val) == 6 == m["counts"]["val"]  # 20% of the 30 distinct rows taken (20 of a, 10 of general)
    assert sum(r["meta"]["mix_source"] == "general" for r in train + val) == 10
    a_train = [r["id"] for r in train if r["meta"]["mix_source"] == "a.jsonl"]
    assert all(a_train.count(i) == 2 for i in a_train)  # weight 2: every training row of a twice
    assert len(a_train) == 2 * (20 - sum(r["id"].startswith("a") for r in val))
    run_recipe(_recipe(tmp_path, 0), force=True)
    assert (out / "train.jsonl").read_text() == (tmp_path / "runs0/m/mix/train.jsonl").read_text()
    run_recipe(_recipe(tmp_path, 1))
    assert (tmp_path / "runs1/m/mix/train.jsonl").read_text() != (out / "train.jsonl").read_text()


def test_file_stats_counts_balance_and_length(tmp_path):
    from hypnos.data.stats import file_stats

    rows = [{"id": "1", "instruction": "问题一", "output": "答案", "category": "airway", "kind": "knowledge"},
            {"id": "2", "instruction": "问题二", "output": "答", "category": "airway", "kind": "case"},
            {"id": "3", "question": "选哪个", "responses": ["好", "差"], "labels": ["good", "bad"]}]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    s = file_stats(tmp_path / "f.jsonl")
    assert s["rows"] == 3 and s["kind"] == "mixed"
    assert s["balance"] == {"category": {"airway": 2}, "kind": {"knowledge": 1, "case": 1},
                            "labels": {"good": 1, "bad": 1}}
    assert s["mean_chars"] == (len("问题一\n答案") + len("问题二\n答") + len("选哪个\n好")) / 3


def test_weighting_never_leaks_validation_rows_into_training(tmp_path):
    """Old mix repeated rows before the split: 38 of 40 validation ids were also in train."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "text": f"t{i}"}) + "\n" for i in range(100)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"anonymous {i}"}) + "\n" for i in range(30))
                                      + json.dumps({"id": "a7", "text": "t7"}) + "\n")  # the same row from another source
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: leak
        stages:
          - name: mix
            sources: [{path: a.jsonl, weight: 3.5}, {path: b.jsonl, weight: 2}]
            val_fraction: 0.3
        """))
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    out = tmp_path / "runs/leak/mix"
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    key = row_key
    train_keys = {key({k: v for k, v in r.items() if k != "meta"}) for r in train}
    val_keys = [key({k: v for k, v in r.items() if k != "meta"}) for r in val]
    assert val and not train_keys & set(val_keys)
    assert len(val_keys) == len(set(val_keys)) == round(130 * 0.3)  # one copy each, 30% of distinct rows
    assert m["counts"]["train"] == len(train) and len(train) > 3 * (100 - len(val))


def test_rows_sharing_an_id_with_different_content_are_all_kept_on_one_side(tmp_path):
    """Imported sets number their rows 1..n: two different rows with id "3" are two rows. Mix used to keep
    the first of a source and one per id in validation, silently losing the others."""
    rows_a = [{"id": str(i), "text": f"甲{i}"} for i in range(20)] + [{"id": "3", "text": "甲3的另一题"}] * 2
    rows_b = [{"id": str(i), "text": f"乙{i}"} for i in range(20)] + [{"id": "3", "text": "甲3的另一题"}]
    for name, rows in (("a", rows_a), ("b", rows_b)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                encoding="utf-8")
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: ids
        stages:
          - name: mix
            sources: [{path: a.jsonl}, {path: b.jsonl}]
            val_fraction: 0.5
        """))
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    out = tmp_path / "runs/ids/mix"
    sides = {s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
             for s in ("train", "val")}
    texts = sorted(r["text"] for s in sides.values() for r in s)
    # every distinct row once; the copy of "甲3的另一题" that both sources hold: once in val, twice in train
    # (two sources giving one row weigh it twice), never a copy on each side
    shared = 2 if any(r["id"] == "3" for r in sides["train"]) else 1
    assert texts == sorted([*{r["text"] for r in rows_a + rows_b}] + ["甲3的另一题"] * (shared - 1)), texts
    for i in range(20):  # one id, one side
        assert len({s for s, rs in sides.items() for r in rs if r["id"] == str(i)}) == 1
    assert m["metrics"]["duplicate_rows"] == 1
