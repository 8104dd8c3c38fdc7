"""Readers and typed records: file:line errors, quarantine, BOM and GB18030, every record kind."""

import base64
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


# ---- decoding line by line (issue 15, findings 1 and 2) ------------------------------------------------
ROWS = [{"id": f"q{i}", "instruction": f"第{i}题：镇痛泵的常用药物有哪些？", "output": "舒芬太尼、氢吗啡酮。"} for i in range(6)]


def _jsonl_bytes(rows, encoding="utf-8") -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode(encoding) for r in rows]


def test_one_bad_byte_quarantines_one_line_and_keeps_the_rest_utf8(tmp_path):
    lines = _jsonl_bytes(ROWS)
    lines[2] = lines[2].replace("镇痛".encode(), b"\xff\xfe")  # one corrupted character, mid-file
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    report = ReadReport()
    recs = read_records(p, on_error="quarantine", quarantine_dir=tmp_path / "q", report=report)
    assert [r.id for r in recs] == ["q0", "q1", "q3", "q4", "q5"]
    assert all("镇痛泵" in r.instruction for r in recs)  # never re-decoded as GB18030 mojibake
    assert [e.line for e in report.rejected] == [3] and "UTF-8" in report.rejected[0].reason
    q = json.loads((tmp_path / "q/a.jsonl.quarantine.jsonl").read_text(encoding="utf-8"))
    assert q["line"] == 3 and base64.b64decode(q["raw_b64"]) == lines[2]
    with pytest.raises(DataError, match=r"a\.jsonl:3: .*UTF-8"):
        read_records(p)


def test_line_separators_inside_json_strings_do_not_split_rows(tmp_path):
    rows = [{**ROWS[0], "output": "第一段\u2028第二段\u0085第三段\u2029完"}, ROWS[1]]
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"\n".join(_jsonl_bytes(rows)) + b"\n" + b'{"id": "bad"\n')
    report = ReadReport()
    recs = read_records(p, on_error="quarantine", quarantine_dir=tmp_path, report=report)
    assert [r.output for r in recs] == [rows[0]["output"], rows[1]["output"]]
    assert [e.line for e in report.rejected] == [3]
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(_jsonl_bytes(rows)) + b"\n")
    assert read_jsonl_tolerant(log) == rows


def test_gbk_file_is_detected_and_a_bad_line_in_it_is_quarantined_alone(tmp_path):
    lines = _jsonl_bytes(ROWS, "gbk")
    lines[4] = lines[4].replace("镇痛".encode("gbk"), b"\x81\x20")  # an invalid GBK pair in line 5
    p = tmp_path / "g.jsonl"
    p.write_bytes(b"\r\n".join(lines) + b"\r\n")  # Windows line ends too
    report = ReadReport()
    recs = read_records(p, on_error="quarantine", quarantine_dir=tmp_path, report=report)
    assert [r.id for r in recs] == ["q0", "q1", "q2", "q3", "q5"]
    assert recs[0].instruction == ROWS[0]["instruction"] and recs[-1].output == ROWS[5]["output"]
    assert [e.line for e in report.rejected] == [5]


def test_declared_encoding_wins_and_unknown_encoding_is_a_clear_error(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"\n".join(_jsonl_bytes(ROWS[:2], "gb18030")) + b"\n")
    assert read_records(p, encoding="gb18030")[1].instruction == ROWS[1]["instruction"]
    with pytest.raises(DataError, match=r"a\.jsonl:1: not valid UTF-8"):
        read_records(p, encoding="utf-8")
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        read_records(p, encoding="klingon")


def test_a_huge_row_is_rejected_by_size_without_reading_it_whole(tmp_path):
    from hypnos.common.io import iter_rows

    p = tmp_path / "a.jsonl"
    big = {**ROWS[1], "output": "麻" * 400_000}  # 1.2 MB
    p.write_bytes(b"\n".join(_jsonl_bytes([ROWS[0], big, ROWS[2]])) + b"\n")
    items = list(iter_rows(p, max_row_bytes=1 << 20))
    assert [i.line for i in items] == [1, 2, 3]
    assert isinstance(items[1], DataError) and "over the 1 MiB row limit" in items[1].reason
    assert len(items[1].raw) <= 4096  # only a preview is kept
    assert [i.data["id"] for i in items if not isinstance(i, DataError)] == ["q0", "q2"]


def test_csv_with_a_field_over_128_kib_and_a_bad_line(tmp_path):
    long = "麻醉" * 70_000
    p = tmp_path / "a.csv"
    p.write_bytes(b"id,instruction,output\n" + f'a,"{long}",答\n'.encode()
                  + b"b,\xff\xfe,x\n" + "c,\"多行\n问题\",答\nd,问,答\n".encode())
    report = ReadReport()
    recs = read_records(p, "qa", on_error="quarantine", quarantine_dir=tmp_path, report=report)
    assert [r.id for r in recs] == ["a", "c", "d"] and recs[0].instruction == long
    assert recs[1].instruction == "多行\n问题"
    assert [e.line for e in report.rejected] == [3]
    from hypnos.common.io import iter_rows

    assert [r.line for r in iter_rows(p) if not isinstance(r, DataError)] == [2, 4, 6]


def test_binary_garbage_and_utf16_are_file_errors(tmp_path):
    p = tmp_path / "junk.jsonl"
    p.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(DataError, match=r"junk\.jsonl: binary data"):
        read_records(p, on_error="quarantine", quarantine_dir=tmp_path)
    u = tmp_path / "u.jsonl"
    u.write_bytes(QA_ROW.encode("utf-16"))
    with pytest.raises(DataError, match=r"u\.jsonl: UTF-16"):
        read_records(u)


def test_wrong_field_types_are_file_line_errors(tmp_path):
    from hypnos.common.io import iter_rows

    p = tmp_path / "a.jsonl"
    p.write_text("\n".join([QA_ROW, json.dumps({"id": "x", "instruction": 5}), json.dumps({"id": "y", "text": "t", "meta": "m"})]) + "\n")
    items = list(iter_rows(p, check_types=True))
    assert [str(i) for i in items if isinstance(i, DataError)] == [
        f"{p}:2: instruction: expected text, got int", f"{p}:3: meta: expected an object, got str"]
    with pytest.raises(DataError, match=r"a\.jsonl:2: instruction"):
        read_records(p)


def test_read_jsonl_keeps_line_separators_and_names_the_bad_line(tmp_path):
    from hypnos.common.io import read_jsonl

    p = tmp_path / "preds.jsonl"
    rows = [{"id": "a", "prediction": "甲\u2028乙\u0085丙"}, {"id": "b", "prediction": "丁"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_jsonl(p) == rows
    p.write_text(p.read_text(encoding="utf-8") + '{"id": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"preds\.jsonl:3: invalid JSON"):
        read_jsonl(p)


def test_lone_surrogates_and_nan_are_bad_rows_not_crashes_at_write_time(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"id": "a", "instruction": "x\\ud800y"}\n{"id": "b", "instruction": "ok \\ud83d\\ude00"}\n'
                 '{"id": "c", "instruction": "q", "meta": {"x": NaN}}\n', encoding="utf-8")
    report = ReadReport()
    recs = read_records(p, on_error="quarantine", quarantine_dir=tmp_path, report=report)
    assert [r.instruction for r in recs] == ["ok \U0001f600"]
    assert [(e.line, e.reason.split(":")[0]) for e in report.rejected] == [(1, "invalid JSON"), (3, "invalid JSON")]


def test_json_array_rows_carry_their_real_line_and_bad_values_are_reported(tmp_path):
    from hypnos.common.io import iter_rows

    p = tmp_path / "a.json"
    p.write_text('[\n  {"id": "a", "text": "甲"},\n\n  {"id": "b", "text": "x\\ud800"},\n  7,\n  {"id": "c", "text": "乙"}\n]\n',
                 encoding="utf-8")
    items = list(iter_rows(p))
    assert [(i.line, isinstance(i, DataError)) for i in items] == [(2, False), (4, True), (5, True), (6, False)]
    p.write_text('[{"id": "a", "text": "甲"},\n {"id": "b", "v": NaN}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json:2: invalid JSON: NaN"):
        list(iter_rows(p))


def test_csv_unclosed_quote_nul_and_duplicate_columns(tmp_path):
    from hypnos.common.io import iter_rows

    p = tmp_path / "a.csv"
    p.write_text('id,instruction,output\na,"unclosed,x\nb,ok,y\n', encoding="utf-8")
    (err,) = list(iter_rows(p))
    assert err.line == 2 and "a quoted field runs from line 2 to 3: an unclosed quote?" in err.reason
    p.write_bytes(b"id,instruction,output\na,q\x00q,x\nb,ok,y\n")
    assert [(i.line, type(i).__name__) for i in iter_rows(p)] == [(2, "DataError"), (3, "Row")]
    p.write_text("id,id,instruction\na,b,c\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.csv:1: duplicate column name\(s\) in the header: id"):
        list(iter_rows(p))


@pytest.mark.parametrize("shift", range(3))
def test_a_one_line_json_array_over_the_detection_sample_is_utf8(tmp_path, shift):
    """``json.dump(rows, f, ensure_ascii=False)`` writes one line; the 1 MiB sample then ends mid-character.

    It used to be refused as "binary data or an unknown text encoding" (2 cuts in 3).
    """
    from hypnos.common.io import SAMPLE_BYTES, iter_rows

    rows = [{"id": str(i), "instruction": "丙泊酚的常用诱导剂量是多少？" * 3, "output": "成人1.5-2.5mg/kg。" * 3}
            for i in range(SAMPLE_BYTES // 200)]
    p = tmp_path / "rows.json"
    p.write_text(" " * shift + json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert p.stat().st_size > SAMPLE_BYTES and b"\n" not in p.read_bytes()
    got = [r.data for r in iter_rows(p)]
    assert got == rows
    gbk = tmp_path / "rows_gbk.json"  # the same in GBK: still GB18030, not a single-byte code page
    gbk.write_bytes(p.read_text(encoding="utf-8").encode("gbk"))
    assert [r.data for r in iter_rows(gbk)] == rows


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl", "rows.tsv"])
def test_declared_utf8_reads_a_file_with_a_bom(tmp_path, name):
    """Excel's "CSV UTF-8" always starts with a BOM; declaring `encoding: utf-8` used to keep it in the first
    column's name ("\\ufeffinstruction": every row missing its instruction) or reject a JSONL's first row."""
    from hypnos.common.io import iter_rows, read_text

    p = tmp_path / name
    body = {"rows.csv": "instruction,output\r\n问题一？,答一\r\n问题二？,答二\r\n",
            "rows.tsv": "instruction\toutput\n问题一？\t答一\n问题二？\t答二\n",
            "rows.jsonl": '{"instruction": "问题一？", "output": "答一"}\n{"instruction": "问题二？", "output": "答二"}\n'}[name]
    p.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    for enc in (None, "utf-8", "UTF8"):
        got = [r.data if not isinstance(r, DataError) else str(r) for r in iter_rows(p, encoding=enc)]
        assert got == [{"instruction": "问题一？", "output": "答一"}, {"instruction": "问题二？", "output": "答二"}], enc
        assert not read_text(p, encoding=enc).startswith("\ufeff")


def test_data_check_reports_every_bad_row_without_quarantining(tmp_path):
    """`hypnos data check FILE` stopped at a file's first bad row; it names them all (and writes nothing)."""
    import subprocess
    import sys

    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a", "instruction": "问一？", "output": "答"}\nnot json\n'
                 '{"id": "b", "instruction": "问二？", "output": "答"}\n{"id": "c", "instruction": 3}\n', encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "hypnos.cli", "data", "check", str(p)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{p}:2:" in r.stdout and f"{p}:4:" in r.stdout, r.stdout
    assert "4 rows: 2 valid, 2 rejected" in r.stdout.replace("\n", " ")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["rows.jsonl"]  # no quarantine file unless asked


WRITER = """
import sys, time
from hypnos.common.io import write_jsonl
def rows():
    for i in range(4000):
        if i == 10:
            time.sleep(0.5)  # both writers are mid-file at once
        yield {"id": f"{sys.argv[2]}{i}", "text": sys.argv[2] * 40}
write_jsonl(sys.argv[1], rows())
"""


def test_two_processes_writing_one_output_leave_one_whole_file(tmp_path):
    """Both used the same temp name: the second one's rename failed (FileNotFoundError) or the file mixed both."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "rows.jsonl"
    env = {"PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), tag], env=env, stderr=subprocess.PIPE, text=True)
             for tag in "ab"]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    tags = {json.loads(x)["id"][0] for x in out.read_text(encoding="utf-8").splitlines()}
    assert len(tags) == 1 and len(out.read_text(encoding="utf-8").splitlines()) == 4000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
