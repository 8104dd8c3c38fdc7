"""Readers and typed records: file:line errors, quarantine, BOM and GB18030, every record kind."""

import json

import pytest

from hypnos.common.io import DataError, ReadReport, read_jsonl_tolerant
from hypnos.common.records import MCQ, NER, QA, Dialogue, Ranked, read_records


def _write(path, lines, encoding="utf-8"):
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


QA_ROW = json.dumps({"id": "q1", "instruction": "全麻诱导常用哪些药物？", "output": "丙泊酚、依托咪酯等。"}, ensure_ascii=False)


def test_bad_row_reported_with_file_and_line(tmp_path):
    p = _write(tmp_path / "a.jsonl", [QA_ROW, '{"id": "q2", "instruction": ', QA_ROW.replace("q1", "q3")])
    with pytest.raises(DataError) as e:
        read_records(p)
    assert str(e.value).startswith(f"{p}:2: invalid JSON")


def test_quarantine_keeps_going_and_loses_nothing(tmp_path):
    p = _write(tmp_path / "a.jsonl", [
        QA_ROW,
        json.dumps({"id": "q2", "instruction": ""}),            # empty instruction
        json.dumps({"id": "m1", "question": "?", "options": {"A": "x", "B": "y"}, "answer": "C"}),
        "[1, 2]",                                              # not an object
        QA_ROW.replace("q1", "q4"),
    ])
    report = ReadReport()
    recs = read_records(p, on_error="quarantine", quarantine_dir=tmp_path / "q", report=report)
    assert [r.id for r in recs] == ["q1", "q4"]
    assert report.read == 5 and len(report.rejected) == 3
    q = [json.loads(x) for x in (tmp_path / "q/a.jsonl.quarantine.jsonl").read_text().splitlines()]
    assert [x["line"] for x in q] == [2, 3, 4]
    assert "instruction" in q[0]["reason"] and "answer 'C' is not one of the options" in q[1]["reason"]


def test_bom_and_gb18030(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + QA_ROW.encode("utf-8") + b"\n")
    assert read_records(bom)[0].instruction == "全麻诱导常用哪些药物？"
    gbk = _write(tmp_path / "gbk.csv", ["id,instruction,output", "g1,硬膜外麻醉的并发症有哪些？,全脊麻等"], "gb18030")
    assert read_records(gbk, "qa")[0].instruction == "硬膜外麻醉的并发症有哪些？"


def test_csv_column_mismatch_is_reported(tmp_path):
    p = _write(tmp_path / "a.csv", ["id,instruction,output", "a,问,答", "b,问"])
    with pytest.raises(DataError, match=r"a\.csv:3: expected 3 columns, got 2"):
        read_records(p, "qa")


def test_record_kinds_validate_their_invariants():
    assert QA(id="x", instruction="问", input="病例").prompt() == "病例\n问"
    d = Dialogue.model_validate({"id": "d", "conversations": [{"from": "human", "value": "你好"},
                                                              {"from": "gpt", "value": "您好"}]})
    assert d.to_messages()[1] == {"role": "assistant", "content": "您好"}
    assert d.to_dict()["conversations"][0] == {"from": "human", "value": "你好"}
    with pytest.raises(ValueError, match="no assistant"):
        Dialogue.model_validate({"id": "d", "conversations": [{"from": "human", "value": "a"}] * 2})
    with pytest.raises(ValueError, match="keyed A, B, C"):
        MCQ(id="m", question="q", options={"A": "1", "C": "2"}, answer="A")
    assert Ranked(id="r", question="q", responses=["a", "b", "c"]).pairs() == [("a", "b"), ("a", "c"), ("b", "c")]
    with pytest.raises(ValueError, match="2 labels for 3"):
        Ranked(id="r", question="q", responses=["a", "b", "c"], labels=["x", "y"])
    NER.model_validate({"id": "n", "text": "静注丙泊酚", "entities": [{"start": 2, "end": 5, "type": "drug", "text": "丙泊酚"}]})
    with pytest.raises(ValueError, match="span 1:4"):
        NER.model_validate({"id": "n", "text": "静注丙泊酚", "entities": [{"start": 1, "end": 4, "type": "drug", "text": "丙泊酚"}]})


def test_tolerant_log_reader_ignores_only_a_torn_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl_tolerant(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(DataError, match="log.jsonl:2"):
        read_jsonl_tolerant(p)
