"""Oracle tests on the real dev sets in ../shared/data, through ``hypnos eval score``.

Perfect predictions must give exactly perfect scores; random letters must land at chance within the CI.
The old NER scorer located each predicted string at its first unused occurrence and gave a perfect oracle
F1 0.892 on CCKS-2019 and 0.938 on CMeEE.
"""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from hypnos.cli import app
from hypnos.eval import mcq, ner
from hypnos.eval.external import load_docs
from hypnos.eval.tasks import expand, get_tasks

SHARED = expand("${HYPNOS_DATA}", expand(".", __import__("pathlib").Path(".")))
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data (HYPNOS_DATA) not present")


def _score(task: str, rows: list[dict], tmp_path) -> dict:
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / f"{task}.scores.json"
    res = CliRunner().invoke(app, ["eval", "score", task, str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text(encoding="utf-8"))["scores"]


def _ner_oracle(task: str) -> list[dict]:
    t = get_tasks([task])[0]
    rows = []
    for d in t.load()[0]:
        by_type: dict[str, list[str]] = {}
        for e in d["entities"]:
            by_type.setdefault(t.entity_types[e["type"]], []).append(e["text"])
        rows.append({"id": d["id"], "prediction": json.dumps(by_type, ensure_ascii=False)})
    return rows


@pytest.mark.parametrize("task", ["ccks2019_ner", "cmeee_ner"])
def test_perfect_ner_scores_one(task, tmp_path):
    s = _score(task, _ner_oracle(task), tmp_path)
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    assert s["unparseable"] == 0 and s["missing"] == 0 and s["n_gold"] > 3000


def test_cmeee_has_nested_spans_and_they_count():
    docs = get_tasks(["cmeee_ner"])[0].load()[0]
    nested = sum(1 for d in docs for a in d["entities"] for b in d["entities"]
                 if a is not b and a["start"] <= b["start"] and b["end"] <= a["end"])
    assert nested > 0
    types = get_tasks(["cmeee_ner"])[0].entity_types
    assert sum(sum(ner.gold_multiset(d, types).values()) for d in docs) == sum(len(d["entities"]) for d in docs)


@pytest.mark.parametrize("task", ["cmexam", "cmmlu_medical"])
def test_perfect_letters_score_one_and_random_letters_land_at_chance(task, tmp_path):
    t = get_tasks([task])[0]
    docs = load_docs(t)[0]
    golds = [mcq.gold_of(t, d, mcq.choices_of(t, d)) for d in docs]
    s = _score(task, [{"id": d["id"], "prediction": g} for d, g in zip(docs, golds)], tmp_path)
    assert s["accuracy"] == 1.0 and s["n"] == len(docs) and s["unparseable"] == 0
    rng = random.Random(0)
    guesses = [{"id": d["id"], "prediction": rng.choice(mcq.choices_of(t, d))} for d in docs]
    s = _score(task, guesses, tmp_path)
    assert s["ci"][0] <= s["chance"] <= s["ci"][1] and s["accuracy"] < 0.4
    # the gold letters shuffled across items: chance is the sum of squared letter shares
    shuffled = golds[:]
    random.Random(1).shuffle(shuffled)
    s = _score(task, [{"id": d["id"], "prediction": g} for d, g in zip(docs, shuffled)], tmp_path)
    shares = [golds.count(x) / len(golds) for x in set(golds)]
    assert s["ci"][0] <= sum(p * p for p in shares) <= s["ci"][1]


def test_missing_and_bad_lines(tmp_path):
    docs = load_docs(get_tasks(["cmexam_anesthesia"])[0])[0]
    s = _score("cmexam_anesthesia", [{"id": docs[0]["id"], "prediction": "答案：" + docs[0]["answer"]}], tmp_path)
    assert s["missing"] == len(docs) - 1 and s["accuracy"] == pytest.approx(1 / len(docs))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": docs[0]["id"], "prediction": "A"}) + "\n" + '{"id": "nope", "prediction": "A"}\n',
                   encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "score", "cmexam_anesthesia", str(bad)])
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output and "'nope' is not an item" in res.output
