"""Importers, each on the real public files in ../shared/data (referenced by path, never copied)."""

import os
from pathlib import Path

import pytest

from hypnos.common.io import DataError
from hypnos.data.importers import import_file

# The real public data lives next to the checkout (../shared/data) or wherever HYPNOS_DATA points.
DATA = Path(os.environ.get("HYPNOS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="real data not present (../shared/data or $HYPNOS_DATA)")

CASES = [  # format, file, expected valid rows, expected rejected rows
    ("cmexam", "cmexam/cmexam_val_anesthesia.csv", 73, 4),
    ("cmmlu", "cmmlu_medical/test/anatomy.csv", 148, 0),
    ("huatuo", "huatuo_llama_med/llama_data_anesthesia.json", 10, 0),
    ("huatuo", "zhongjing/huatuo26M_test_shared.json", 1011, 0),
    ("medicalgpt_sft", "medicalgpt/medical_sft_1K_format.jsonl", 1000, 0),
    ("medicalgpt_reward", "medicalgpt/reward_medical_shared.jsonl", 80, 0),
    ("medicalgpt_reward", "medicalgpt/dpo_zh_500.jsonl", 500, 0),
    ("span_ner", "medical_ner/ccks2019_dev_span.json", 327, 0),
    ("span_ner", "medical_ner/cmeee_dev_span_part1.json", 977, 0),
    ("toyhom", "toyhom_cmd/IM_sample_shared.csv", 3826, 0),
    ("sharegpt", "disc_medllm/test_examples.jsonl", 163, 0),
    ("chatmed", "chatmed/ChatMed-Consult_test.json", 450, 0),
]


@pytest.mark.parametrize("fmt,rel,valid,rejected", CASES, ids=[c[1] for c in CASES])
def test_import_real_file(fmt, rel, valid, rejected, tmp_path):
    recs, report = import_file(fmt, DATA / rel, on_error="quarantine", quarantine_dir=tmp_path)
    assert (len(recs), len(report.rejected)) == (valid, rejected)
    assert report.read == valid + rejected  # nothing lost silently
    if rejected:
        assert (tmp_path / f"{Path(rel).name}.quarantine.jsonl").read_text().count("\n") == rejected


def test_cmexam_parses_options_and_rejects_multi_answer_loudly(tmp_path):
    recs, _ = import_file("cmexam", DATA / "cmexam/cmexam_val_anesthesia.csv", on_error="quarantine",
                          quarantine_dir=tmp_path)
    assert all(list(r.options) in (list("ABCD"), list("ABCDE")) and r.answer in r.options for r in recs)
    with pytest.raises(DataError, match=r"cmexam_val_anesthesia\.csv:\d+: multiple-answer question"):
        import_file("cmexam", DATA / "cmexam/cmexam_val_anesthesia.csv")


def test_span_ner_offsets_become_exclusive():
    recs, _ = import_file("span_ner", DATA / "medical_ner/cmeee_dev_span_part1.json")
    ents = [e for r in recs for e in r.entities]
    assert len(ents) > 3000
    assert {e.type for e in ents} >= {"drug", "disease", "procedure", "symptom", "test"}
    r = recs[0]
    assert all(r.text[e.start:e.end] == e.text for e in r.entities)
