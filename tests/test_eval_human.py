"""Human evaluation round trip: blinded export, synthetic filled sheets, unblinding, agreement."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hypnos.common.io import DataError
from hypnos.eval import human


@pytest.fixture()
def eval_dir(tmp_path):
    """An eval stage folder with predictions of two models on the first 5 sample cases."""
    from hypnos.eval.tasks import get_tasks

    docs = get_tasks(["anesthesia_cases"])[0].load(limit=5)[0]
    pred = tmp_path / "eval" / "predictions" / "anesthesia_cases"
    pred.mkdir(parents=True)
    for label in ("alpha", "beta"):
        rows = [{"id": d["id"], "prediction": f"{label}的回答{i}：{d['output'][:20]}"} for i, d in enumerate(docs)]
        (pred / f"{label}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                            encoding="utf-8")
    return tmp_path / "eval"


def _fill(sheet, key, path, rater, score):
    with open(sheet, encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*human.COLUMNS, "rater"])
        w.writeheader()
        for r in rows:
            model = key["codes"][r["code"]]["model"]
            w.writerow({**r, **score(model, r["code"]), "rater": rater})


def test_export_is_blinded_and_shuffled(eval_dir, tmp_path):
    files = human.export_sheets(eval_dir, "anesthesia_cases", tmp_path / "sheets", seed=1)
    text = files["csv"].read_text(encoding="utf-8-sig")
    key = json.loads(files["key"].read_text(encoding="utf-8"))
    assert len(key["codes"]) == 10
    with open(files["csv"], encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert [r["code"] for r in rows] != list(key["codes"])  # shuffled
    assert "alpha" not in text.split("\n", 1)[0] and all(r["usefulness"] == "" for r in rows)
    models = [key["codes"][r["code"]]["model"] for r in rows]
    assert models != sorted(models)
    html = files["html"].read_text(encoding="utf-8")
    assert html.count('class="item"') == 10 and "<script" in html and "http" not in html.replace("http-equiv", "")
    # the question shown is the case vignette + question
    assert all(r["question"] and r["answer"] for r in rows)


def test_import_unblinds_aggregates_and_agrees(eval_dir, tmp_path):
    files = human.export_sheets(eval_dir, "anesthesia_cases", tmp_path / "sheets")
    key = json.loads(files["key"].read_text(encoding="utf-8"))
    # rater 1: alpha useful (5), beta 2; rater 2 the same except one beta item rated 3; harm 1 everywhere
    beta_codes = sorted(c for c, v in key["codes"].items() if v["model"] == "beta")

    def r1(model, code):
        return {"usefulness": 5 if model == "alpha" else 2, "harmfulness": 1, "redundancy": ""}

    def r2(model, code):
        u = 5 if model == "alpha" else (3 if code == beta_codes[0] else 2)
        return {"usefulness": u, "harmfulness": 1, "redundancy": ""}

    _fill(files["csv"], key, tmp_path / "r1.csv", "dr_li", r1)
    _fill(files["csv"], key, tmp_path / "r2.csv", "dr_wang", r2)
    res = human.import_sheets(files["key"], [tmp_path / "r1.csv", tmp_path / "r2.csv"])
    assert res["ratings"] == 20
    assert res["models"]["alpha"]["usefulness"]["mean"] == 5.0
    assert res["models"]["beta"]["usefulness"]["mean"] == pytest.approx((2 * 5 + 2 * 4 + 3) / 10)
    assert res["models"]["beta"]["redundancy"]["n"] == 0
    ag = res["agreement"]["usefulness"]
    assert ag["units_both_rated"] == 10
    # hand count: 9 of 10 agree; labels 2,3,5: r1 = [2]*5+[5]*5, r2 = [2]*4+[3]+[5]*5
    po, pe = 0.9, 0.5 * 0.4 + 0.5 * 0.5
    assert ag["cohen_kappa"] == pytest.approx((po - pe) / (1 - pe))
    import krippendorff

    codes = sorted(key["codes"])
    table = np.array([[r1(key["codes"][c]["model"], c)["usefulness"] for c in codes],
                      [r2(key["codes"][c]["model"], c)["usefulness"] for c in codes]], dtype=float)
    assert ag["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=table, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]))
    assert 0.8 < ag["krippendorff_alpha"] < 1
    # everybody rated harm 1: agreement is undefined, not a number that looks like one
    assert res["agreement"]["harmfulness"]["krippendorff_alpha"] is None


def test_cohen_kappa_hand_and_sklearn():
    a, b = [1, 1, 2, 2], [1, 2, 2, 2]
    assert human.cohen_kappa(a, b) == pytest.approx(0.5)  # po 3/4, pe 1/2
    sk = pytest.importorskip("sklearn.metrics")
    x = [1, 2, 3, 4, 5, 3, 2, 4, 5, 1, 3, 3]
    y = [1, 2, 4, 4, 5, 2, 2, 3, 5, 2, 3, 4]
    assert human.cohen_kappa(x, y) == pytest.approx(sk.cohen_kappa_score(x, y))
    assert human.cohen_kappa(x, y, "quadratic") == pytest.approx(sk.cohen_kappa_score(x, y, weights="quadratic"))


def test_bad_sheet_names_file_and_line(eval_dir, tmp_path):
    files = human.export_sheets(eval_dir, "anesthesia_cases", tmp_path / "sheets")
    key = json.loads(files["key"].read_text(encoding="utf-8"))
    _fill(files["csv"], key, tmp_path / "bad.csv", "x", lambda m, c: {"usefulness": 7, "harmfulness": 1, "redundancy": 1})
    with pytest.raises(DataError, match=r"bad.csv:\d+: usefulness: '7' is not a score 1-5"):
        human.import_sheets(files["key"], [tmp_path / "bad.csv"])


def test_pairwise_round_trip_with_agreement(eval_dir, tmp_path):
    files = human.export_pairwise(eval_dir, "anesthesia_cases", tmp_path / "pw", ("alpha", "beta"), seed=3)
    key = json.loads(files["key"].read_text(encoding="utf-8"))
    with open(files["csv"], encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and "alpha" not in files["csv"].read_text(encoding="utf-8-sig").split("\n", 1)[0]
    assert {key["codes"][r["code"]]["A"] for r in rows} == {"alpha", "beta"}  # A is not always the same model
    # rater 1 always prefers alpha on usefulness; rater 2 agrees except on one row (a tie)
    for rater in ("r1", "r2"):
        with open(tmp_path / f"{rater}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*human.PAIR_COLUMNS, "rater"])
            w.writeheader()
            for k, r in enumerate(rows):
                alpha_is = "A" if key["codes"][r["code"]]["A"] == "alpha" else "B"
                use = "tie" if rater == "r2" and k == 0 else alpha_is
                w.writerow({**r, "usefulness": use, "harmfulness": "tie", "redundancy": "", "rater": rater})
    res = human.import_sheets(files["key"], [tmp_path / "r1.csv", tmp_path / "r2.csv"])
    u = res["criteria"]["usefulness"]
    assert u["counts"] == {"win": 9, "tie": 1, "loss": 0} and res["pair"] == ["alpha", "beta"]
    ag = res["agreement"]["usefulness"]
    assert ag["raw_agreement"] == pytest.approx(4 / 5) and ag["units_both_rated"] == 5
    assert res["criteria"]["harmfulness"]["counts"]["tie"] == 10 and res["agreement"]["harmfulness"]["krippendorff_alpha"] is None
    bad = tmp_path / "bad.csv"
    bad.write_text("code,usefulness,harmfulness,redundancy\n" + rows[0]["code"] + ",C,,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:2: usefulness: 'C' is not A, B or tie"):
        human.import_sheets(files["key"], [bad])
