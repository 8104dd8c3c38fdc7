"""Prompt-based NER: the model lists entities by type; (type, entity) multisets are scored per sentence.

The prompt (``prompts/ner_v1.jinja``) asks for one ``类型：实体1，实体2`` line per type. Also read: numbered
(``1. 疾病和诊断：…``), bulleted (``- 药物：…``) and bold (``**药物**：…``) lines, a type header followed by
one bulleted entity per line, and JSON (``{"疾病和诊断": ["..."]}`` or ``[{"type": ..., "entity": ...}]``).
An answer in none of these shapes is *unparseable*: counted and reported (it scores no entities), never
read silently as "no entities"; ``类型：无`` is a parsed empty answer.

Scoring follows generation-based NER (ChiMed-GPT): per sentence, the multiset of predicted (type, entity)
pairs against the multiset of gold ones (every gold span counts, nested and overlapping ones included; an
entity mentioned twice is two gold items); micro precision/recall/F1 over sentences, with a bootstrap CI of
F1 over sentences. Predicted strings that do not occur in the sentence are counted too. Where gold spans
do not overlap and each entity string occurs once per sentence, this equals span-level ``seqeval`` F1.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from hypnos.eval.stats import bootstrap_ci
from hypnos.eval.tasks import Task

PROMPTS = Path(__file__).parent / "prompts"
# optional list marker (1. / 1、/ (1) / 一、/ - / * / •), optional bold around the type, ":" or "："
_LINE = re.compile(r"^\s*(?:(?:\d+|[一二三四五六七八九十]+)\s*[.、．)）]|[(（]\d+[)）]|[-*•·])?\s*"
                   r"(?:\*\*|__)?\s*([^:：\n*]{1,12}?)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*(.*)$")
_ITEM = re.compile(r"^\s*(?:\d+\s*[.、．)）]|[(（]\d+[)）]|[-*•·])\s*(.+)$")
_SEP = re.compile(r"[，,、;；]\s*")
_NONE = {"无", "没有", "无。", "none", "None", "-", "—", "暂无", "未提及"}


def parse_entities(answer: str, types: dict[str, str]) -> tuple[list[tuple[str, str]], bool]:
    """(type, entity text) pairs from a model's answer, and whether the answer had a readable shape.

    Args:
        answer: the model's text: ``类型：实体，实体`` lines (numbered, bulleted, bold) or JSON.
        types: record type -> prompt name (``{"disease": "疾病和诊断"}``); both names are accepted.
    """
    by_name = {v: k for k, v in types.items()} | {k: k for k in types}
    data = _json(answer)
    pairs: list[tuple[str, str]] = []
    parsed = False
    if isinstance(data, dict):
        pairs, parsed = [(k, e) for k, v in data.items() for e in (v if isinstance(v, list) else [v])], True
    elif isinstance(data, list) and all(isinstance(d, dict) for d in data):
        pairs, parsed = [(d.get("type", ""), d.get("entity", d.get("text", ""))) for d in data], True
    else:
        header = None  # a "类型：" line with nothing after it collects the bulleted lines below it
        for line in (answer or "").splitlines():
            m = _LINE.match(line)
            if m and _clean_type(m.group(1)) in by_name:
                parsed = True
                header = _clean_type(m.group(1)) if not m.group(2).strip() else None
                pairs += [(_clean_type(m.group(1)), _unbold(e)) for e in _SEP.split(m.group(2))]
            elif header and (item := _ITEM.match(line)):
                pairs += [(header, _unbold(e)) for e in _SEP.split(item.group(1))]
            elif line.strip():
                header = None
        parsed = parsed or (answer or "").strip().strip("。.") in _NONE
    out = []
    for t, e in pairs:
        e = normalize_entity(str(e))
        if _clean_type(str(t)) in by_name and e and e not in _NONE:
            out.append((by_name[_clean_type(str(t))], e))
    return out, parsed


def normalize_entity(e: str) -> str:
    """Entity text as compared: outer spaces and closing punctuation/quotes dropped, on gold and predicted
    alike (some gold spans carry a space: ``' CEA'``)."""
    return e.strip().strip("。.\"'“”").strip()


def _clean_type(t: str) -> str:
    return _unbold(t)


def _unbold(t: str) -> str:
    return re.sub(r"^\s*(?:\*\*|__)|(?:\*\*|__)\s*$", "", t).strip()


def _json(text: str):
    m = re.search(r"[\[{].*[\]}]", text or "", flags=re.DOTALL)
    if not m:
        return None
    try:
        return json.loads(m.group(0))
    except json.JSONDecodeError:
        return None


def prf(gold: list, pred: list) -> dict:
    """Micro precision/recall/F1 over sentences; each element a Counter (multiset) or a set of items."""
    gold, pred = [Counter(g) for g in gold], [Counter(p) for p in pred]
    tp = sum(sum((g & p).values()) for g, p in zip(gold, pred))
    n_pred, n_gold = sum(sum(p.values()) for p in pred), sum(sum(g.values()) for g in gold)
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp,
            "n_pred": n_pred, "n_gold": n_gold}


def to_bio(length: int, spans: list[tuple[int, int, str]]) -> list[str]:
    """Character BIO tags for non-overlapping spans (for checking against seqeval)."""
    tags = ["O"] * length
    for s, e, t in sorted(spans):
        if any(tag != "O" for tag in tags[s:e]):
            continue  # an overlapping span cannot be written in BIO; the first one wins
        tags[s] = f"B-{t}"
        for i in range(s + 1, e):
            tags[i] = f"I-{t}"
    return tags


def render_prompt(doc: dict, types: dict[str, str]) -> str:
    """The NER prompt for one sentence."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(PROMPTS), keep_trailing_newline=False)
    return env.get_template("ner_v1.jinja").render(text=doc["text"], types=list(types.values()))


def gold_multiset(doc: dict, types: dict[str, str]) -> Counter:
    """The sentence's gold (type, entity text) multiset: every span, nested and overlapping ones included."""
    return Counter((e["type"], normalize_entity(e.get("text") or doc["text"][e["start"]:e["end"]]))
                   for e in doc["entities"] if e["type"] in types)


def task_types(task: Task, docs: list[dict]) -> dict[str, str]:
    """Record type -> prompt name: the task's ``entity_types``, else the types found in the data."""
    return task.entity_types or {t: t for t in sorted({e["type"] for d in docs for e in d["entities"]})}


def evaluate(task: Task, docs: list[dict], model, max_new_tokens: int = 128, seed: int = 0) -> tuple[dict, list[dict]]:
    """Extract entities with ``model`` and score them against the docs' gold entities."""
    from hypnos.eval.openqa import truncate

    types = task_types(task, docs)
    to_text = task.hook("doc_to_text") or (lambda d: render_prompt(d, types))
    max_new = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
    answers = model.generate([to_text(d) for d in docs], max_new, desc=task.task)
    answers = [truncate(a, task.generation_kwargs.get("until")) for a in answers]
    return score_answers(task, docs, dict(zip([d["id"] for d in docs], answers)), seed)


def score_answers(task: Task, docs: list[dict], answers: dict[str, str | None], seed: int = 0) -> tuple[dict, list[dict]]:
    """Score raw answers (item id -> text) against the docs.

    Returns:
        (scores, rows): micro P/R/F1 with a bootstrap CI of F1 over sentences, per-type P/R/F1, unparseable
        answers, missing answers, predicted strings not in the sentence; one row per sentence.
    """
    types = task_types(task, docs)
    gold, pred, rows = [], [], []
    unparseable, not_found = [], 0
    for d in docs:
        a = answers.get(d["id"])
        ents, ok = parse_entities(a or "", types)
        if not ok:
            unparseable.append(d["id"])
        not_found += sum(e not in d["text"] for _, e in ents)
        g, p = gold_multiset(d, types), Counter(ents)
        gold.append(g)
        pred.append(p)
        rows.append({"id": d["id"], "answer": a, "parsed": ok, "pred": sorted(map(list, p.elements())),
                     "gold": sorted(map(list, g.elements()))})
    scores = prf(gold, pred)
    scores["ci"] = list(_f1_ci(gold, pred, seed))
    scores["per_type"] = {t: prf([Counter({k: v for k, v in g.items() if k[0] == t}) for g in gold],
                                 [Counter({k: v for k, v in p.items() if k[0] == t}) for p in pred]) for t in types}
    scores.update({"unparseable": len(unparseable), "unparseable_ids": unparseable[:20],
                   "missing": sum(d["id"] not in answers for d in docs), "not_found_in_text": not_found,
                   "n": len(docs), "gold_types": dict(Counter(k[0] for g in gold for k in g.elements())),
                   "scoring": "micro P/R/F1 of (type, entity) multisets per sentence"})
    return scores, rows


def _f1_ci(gold: list, pred: list, seed: int) -> tuple[float, float]:
    import numpy as np

    idx = np.arange(len(gold))
    return bootstrap_ci(idx, seed, stat=lambda ix: prf([gold[int(i)] for i in ix], [pred[int(i)] for i in ix])["f1"])
