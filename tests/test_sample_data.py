"""The sample data the project ships: every file loads with zero errors, counts and balance hold,
and no benchmark item overlaps any training item."""

from collections import Counter
from pathlib import Path

import pytest

from hypnos.common.io import ReadReport
from hypnos.common.records import read_records
from hypnos.data.decontaminate import overlap_report
from hypnos.data.stats import file_stats

EX = Path(__file__).resolve().parents[1] / "examples"
FILES = {  # file, record kind, minimum rows
    "seeds/anesthesia_seed.jsonl": ("qa", 80),
    "general/general_medical_qa.jsonl": ("qa", 250),
    "general/general_dialogue.jsonl": ("dialogue", 20),
    "bench/anesthesia_mcq.jsonl": ("mcq", 150),
    "bench/anesthesia_openqa.jsonl": ("qa", 60),
    "bench/anesthesia_cases.jsonl": ("qa", 20),
    "corpus/medical_corpus.jsonl": ("text", 60),
    "preference/anesthesia_preference.jsonl": ("ranked", 40),
    "ner/medical_ner.jsonl": ("ner", 40),
}
TRAIN = ["seeds/anesthesia_seed.jsonl", "general/general_medical_qa.jsonl", "general/general_dialogue.jsonl",
         "corpus/medical_corpus.jsonl", "preference/anesthesia_preference.jsonl"]
BENCH = ["bench/anesthesia_mcq.jsonl", "bench/anesthesia_openqa.jsonl", "bench/anesthesia_cases.jsonl"]
ANE_CATEGORIES = {"preop", "airway", "induction", "maintenance", "regional", "monitoring", "complications",
                  "obstetric", "pediatric", "pacu_pain"}


@pytest.mark.parametrize("rel", FILES)
def test_file_loads_with_zero_errors_and_enough_rows(rel):
    kind, minimum = FILES[rel]
    report = ReadReport()
    recs = read_records(EX / rel, kind, report=report)
    assert not report.rejected
    assert len(recs) >= minimum
    assert len({r.id for r in recs}) == len(recs), "ids must be unique"


def _load(rel):
    return read_records(EX / rel, FILES[rel][0])


def test_seed_tasks_cover_every_category_with_cases():
    recs = _load("seeds/anesthesia_seed.jsonl")
    cats = Counter(r.category for r in recs)
    assert set(cats) == ANE_CATEGORIES and min(cats.values()) >= 6
    cases = [r for r in recs if r.kind == "case"]
    assert 0.15 <= len(cases) / len(recs) <= 0.3 and all(r.input for r in cases)


def test_general_qa_covers_the_general_specialties():
    cats = Counter(r.category for r in _load("general/general_medical_qa.jsonl"))
    assert set(cats) == {"internal_medicine", "surgery", "pediatrics", "obstetrics", "pharmacology", "emergency"}
    assert min(cats.values()) >= 30


def test_mcq_benchmark_shape():
    recs = _load("bench/anesthesia_mcq.jsonl")
    assert all(list(r.options) == list("ABCDE") and r.explanation for r in recs)
    assert Counter(r.split for r in recs)["dev"] >= 20 and Counter(r.split for r in recs)["test"] >= 120
    assert {r.category for r in recs} == ANE_CATEGORIES
    assert {r.difficulty for r in recs} == {"easy", "medium", "hard"}
    letters = Counter(r.answer for r in recs)
    assert max(letters.values()) / len(recs) < 0.3, f"answer letters unbalanced: {letters}"


def test_corpus_size_and_domains():
    recs = _load("corpus/medical_corpus.jsonl")
    chars = Counter()
    for r in recs:
        chars[r.domain] += len(r.text)
    assert sum(chars.values()) >= 80_000
    assert chars["anesthesiology"] >= 35_000 and chars["general"] >= 35_000


def test_preference_and_ner_shapes():
    prefs = _load("preference/anesthesia_preference.jsonl")
    assert all(len(r.responses) == 3 and r.labels == ["good", "weak", "unsafe"] for r in prefs)
    types = Counter(e.type for r in _load("ner/medical_ner.jsonl") for e in r.entities)
    assert set(types) == {"drug", "disease", "procedure", "symptom", "test"}


def test_benchmarks_do_not_overlap_training_data():
    report = overlap_report([EX / t for t in TRAIN], [EX / b for b in BENCH], ngram=13)
    assert report["train_rows"] > 500
    leaks = {name: b["examples"] for name, b in report["benchmarks"].items() if b["train_rows_flagged"]}
    assert report["flagged_rows"] == 0, f"contaminated: {leaks}"


def test_stats_reports_category_balance():
    s = file_stats(EX / "seeds/anesthesia_seed.jsonl")
    assert s["kind"] == "qa" and set(s["balance"]["category"]) == ANE_CATEGORIES
    assert sum(s["balance"]["category"].values()) == s["rows"]
