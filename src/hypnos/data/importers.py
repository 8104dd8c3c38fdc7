"""Importers for public Chinese medical data formats -> Hypnos records.

Run: hypnos data import cmexam ../shared/data/cmexam/cmexam_val_sample.csv out.jsonl

Each importer maps one raw row (a dict from ``hypnos.common.io.iter_rows``) to a record dict;
``import_file`` validates it into a typed record. A row that does not fit raises ``ValueError`` with
the reason; it is reported as ``file:line: reason`` and stops the import, or goes to the quarantine
file with ``on_error="quarantine"``. Nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from hypnos.common.io import DataError, OnError, ReadReport, Row, iter_rows, quarantine_path, write_quarantine
from hypnos.common.records import Record, parse_row

_OPTION = re.compile(r"^\s*([A-H])[\s.、．:：)）]+(.*)$")


def _need(row: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"missing column(s) {missing}; found {sorted(row)}")


def cmexam(row: dict, i: int) -> dict:
    """CMExam CSV: Question, Options ("A text\\nB text ..."), Answer, Explanation."""
    _need(row, "Question", "Options", "Answer")
    options = {}
    for line in row["Options"].replace("\\n", "\n").splitlines():
        if m := _OPTION.match(line):
            options[m.group(1)] = m.group(2).strip()
        elif line.strip():
            raise ValueError(f"option line {line[:30]!r} does not start with a letter")
    answer = row["Answer"].strip()
    if len(answer) != 1:
        # Multi-answer items can't be scored by single-letter log-likelihood: say so, don't guess.
        raise ValueError(f"multiple-answer question not supported by single-choice scoring: {answer!r}")
    return {"id": f"cmexam-{i}", "question": row["Question"].strip(), "options": options, "answer": answer,
            "explanation": row.get("Explanation", "").strip(), "source": "cmexam", "split": "test"}


def cmmlu(row: dict, i: int, subject: str = "") -> dict:
    """CMMLU CSV: (index), Question, A, B, C, D, Answer."""
    _need(row, "Question", "A", "B", "C", "D", "Answer")
    return {"id": f"cmmlu-{subject}-{i}", "question": row["Question"].strip(),
            "options": {k: row[k].strip() for k in "ABCD"}, "answer": row["Answer"].strip(),
            "category": subject, "source": "cmmlu", "split": "test"}


def _text(v) -> str:
    # Huatuo-26M style rows hold lists of strings.
    return "\n".join(v) if isinstance(v, list) else str(v or "")


def huatuo(row: dict, i: int) -> dict:
    """Huatuo / Zhongjing JSON: instruction, input, output (strings or lists of strings)."""
    _need(row, "instruction", "output")
    return {"id": row.get("id") or f"huatuo-{i}", "instruction": _text(row["instruction"]).strip(),
            "input": _text(row.get("input", "")).strip(), "output": _text(row["output"]).strip(),
            "source": "huatuo"}


_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


def _turns(conv: list[dict]) -> list[dict]:
    out = []
    for t in conv:
        who = t.get("from", t.get("role"))
        if who not in _ROLES:
            raise ValueError(f"unknown speaker {who!r}")
        out.append({"from": _ROLES[who], "value": t.get("value", t.get("content", ""))})
    return out


def sharegpt(row: dict, i: int) -> dict:
    """ShareGPT / MedicalGPT SFT JSONL and DISC-Med multi-turn: conversations or conversation lists."""
    conv = row.get("conversations", row.get("conversation"))
    if not isinstance(conv, list):
        raise ValueError("no conversations list")
    return {"id": str(row.get("_id") or row.get("id") or f"dialogue-{i}"), "conversations": _turns(conv),
            "source": row.get("source", "sharegpt")}


def medicalgpt_reward(row: dict, i: int) -> dict:
    """MedicalGPT reward JSONL (question, response_chosen, response_rejected) or DPO JSONL
    (conversations, chosen, rejected) -> a two-answer ranking."""
    if "question" in row:
        _need(row, "response_chosen", "response_rejected")
        q, chosen, rejected = row["question"], row["response_chosen"], row["response_rejected"]
    else:
        _need(row, "conversations", "chosen", "rejected")
        q = _turns(row["conversations"])[-1]["value"]
        chosen, rejected = row["chosen"], row["rejected"]
    return {"id": f"pref-{i}", "question": q, "responses": [chosen, rejected], "labels": ["chosen", "rejected"],
            "source": "medicalgpt"}


# CCKS-2019 / CMeEE label-merged types -> the sample data's type names.
NER_TYPES = {"药物": "drug", "疾病和诊断": "disease", "治疗和手术": "procedure", "症状和体征": "symptom",
             "检验和检查": "test", "解剖部位": "anatomy"}


def span_ner(row: dict, i: int) -> dict:
    """CCKS/CMeEE span JSON: text, entities with start_idx, end_idx (inclusive), type, entity."""
    _need(row, "text", "entities")
    ents = []
    for e in row["entities"]:
        start, end = int(e["start_idx"]), int(e["end_idx"]) + 1
        ents.append({"start": start, "end": end, "type": NER_TYPES.get(e["type"], e["type"]),
                     "text": e.get("entity", row["text"][start:end])})
    return {"id": f"ner-{i}", "text": row["text"], "entities": ents, "source": "span_ner"}


def toyhom(row: dict, i: int) -> dict:
    """Toyhom Chinese-medical-dialogue CSV: department, title, ask, answer."""
    _need(row, "department", "title", "ask", "answer")
    return {"id": f"toyhom-{i}", "instruction": (row["ask"] or row["title"]).strip(), "output": row["answer"].strip(),
            "category": row["department"].strip(), "kind": "patient", "source": "toyhom", "meta": {"title": row["title"]}}


def chatmed(row: dict, i: int) -> dict:
    """ChatMed-Consult JSON: query, response."""
    _need(row, "query", "response")
    return {"id": f"chatmed-{i}", "instruction": row["query"].strip(), "output": row["response"].strip(),
            "kind": "patient", "source": "chatmed"}


IMPORTERS: dict[str, tuple[Callable[..., dict], str]] = {
    "cmexam": (cmexam, "mcq"),
    "cmmlu": (cmmlu, "mcq"),
    "huatuo": (huatuo, "qa"),
    "sharegpt": (sharegpt, "dialogue"),
    "medicalgpt_sft": (sharegpt, "dialogue"),
    "medicalgpt_reward": (medicalgpt_reward, "ranked"),
    "span_ner": (span_ner, "ner"),
    "toyhom": (toyhom, "qa"),
    "chatmed": (chatmed, "qa"),
}


def import_file(fmt: str, path: str | Path, on_error: OnError = "raise",
                quarantine_dir: str | Path | None = None) -> tuple[list[Record], ReadReport]:
    """Import a whole file; returns the records and a report of rejected rows.

    Args:
        fmt: a key of ``IMPORTERS``.
        path: the source file (UTF-8, UTF-8 with BOM or GB18030; JSON, JSONL or CSV).
        on_error: "raise" stops at the first bad row; "quarantine" writes it to a side file.
        quarantine_dir: where the quarantine file goes (default: next to the source).
    """
    fn, kind = IMPORTERS[fmt]
    extra = {"subject": Path(path).stem} if fmt == "cmmlu" else {}
    report, records, bad = ReadReport(), [], []
    for item in iter_rows(path):
        try:
            if isinstance(item, DataError):
                raise item
            try:
                data = fn(item.data, item.line, **extra)
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(item.path, item.line, str(e)) from None
            records.append(parse_row(Row(data, item.path, item.line), kind))
        except DataError as e:
            if on_error == "raise":
                raise
            bad.append(e)
    report.read = len(records) + len(bad)
    report.rejected = bad
    if bad:
        write_quarantine(bad, quarantine_path(path, quarantine_dir))
    return records, report
