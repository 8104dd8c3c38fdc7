"""Prompt-based NER: the model lists entities by type, we find them in the text and score spans.

The prompt (``prompts/ner_v1.jinja``) asks for one ``类型：实体1，实体2`` line per type; a JSON answer
(``{"疾病和诊断": ["..."]}`` or ``[{"type": ..., "entity": ...}]``) is read too. Each extracted string is
located in the sentence (left to right, each occurrence used once) to become a span; strings not in the
text count as false positives with no span. Scores are entity-level micro precision/recall/F1 on exact
(start, end, type) matches, the same quantity ``seqeval`` computes on BIO tags of non-overlapping spans.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from hypnos.eval.stats import bootstrap_ci
from hypnos.eval.tasks import Task

PROMPTS = Path(__file__).parent / "prompts"
_LINE = re.compile(r"^\s*[-*•]?\s*([^:：\n]{1,12})\s*[:：]\s*(.*)$")
_SEP = re.compile(r"[，,、;；]\s*")
_NONE = {"无", "没有", "无。", "none", "None", "-", "—"}


def parse_entities(answer: str, types: dict[str, str]) -> list[tuple[str, str]]:
    """(type, entity text) pairs from a model's answer.

    Args:
        answer: the model's text: ``类型：实体，实体`` lines or JSON.
        types: record type -> prompt name (``{"disease": "疾病和诊断"}``); both names are accepted.
    """
    by_name = {v: k for k, v in types.items()} | {k: k for k in types}
    data = _json(answer)
    pairs: list[tuple[str, str]] = []
    if isinstance(data, dict):
        pairs = [(k, e) for k, v in data.items() for e in (v if isinstance(v, list) else [v])]
    elif isinstance(data, list):
        pairs = [(d.get("type", ""), d.get("entity", d.get("text", ""))) for d in data if isinstance(d, dict)]
    else:
        for line in answer.splitlines():
            if m := _LINE.match(line):
                pairs += [(m.group(1).strip(), e) for e in _SEP.split(m.group(2))]
    out = []
    for t, e in pairs:
        e = str(e).strip().strip("。.\"'“”")
        if t.strip() in by_name and e and e not in _NONE:
            out.append((by_name[t.strip()], e))
    return out


def _json(text: str):
    m = re.search(r"[\[{].*[\]}]", text, flags=re.DOTALL)
    if not m:
        return None
    try:
        return json.loads(m.group(0))
    except json.JSONDecodeError:
        return None


def locate(text: str, entities: list[tuple[str, str]]) -> tuple[list[tuple[int, int, str]], int]:
    """Spans (start, end exclusive, type) of extracted strings in ``text``, and how many were not found.

    Each occurrence of a string is used once, left to right, so "麻醉…麻醉" listed twice gives two spans.
    """
    used: dict[str, int] = defaultdict(int)
    spans, missing = [], 0
    for typ, ent in entities:
        start = -1
        for _ in range(used[(typ, ent)] + 1):
            start = text.find(ent, start + 1)
            if start < 0:
                break
        if start < 0:
            missing += 1
            continue
        used[(typ, ent)] += 1
        spans.append((start, start + len(ent), typ))
    return sorted(set(spans)), missing


def prf(gold: list[set], pred: list[set]) -> dict:
    """Micro precision/recall/F1 over documents of exact spans (each element a set of (start, end, type))."""
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
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


def evaluate(task: Task, docs: list[dict], model, max_new_tokens: int = 128, seed: int = 0) -> tuple[dict, list[dict]]:
    """Extract entities with ``model`` and score them against the docs' spans.

    Returns:
        (scores, predictions): micro P/R/F1 with a bootstrap CI of F1 over documents, per-type F1,
        strings not found in the text; one prediction row per document.
    """
    types = task.entity_types or {t: t for t in sorted({e["type"] for d in docs for e in d["entities"]})}
    to_text = task.hook("doc_to_text") or (lambda d: render_prompt(d, types))
    max_new = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
    answers = model.generate([to_text(d) for d in docs], max_new, desc=task.task)
    gold, pred, rows, not_found = [], [], [], 0
    for d, a in zip(docs, answers):
        spans, missing = locate(d["text"], parse_entities(a, types))
        not_found += missing
        g = {(e["start"], e["end"], e["type"]) for e in d["entities"] if e["type"] in types}
        gold.append(g)
        pred.append(set(spans))
        rows.append({"id": d["id"], "answer": a, "pred": [list(s) for s in spans], "gold": sorted(map(list, g))})
    scores = prf(gold, pred)
    scores["ci"] = list(_f1_ci(gold, pred, seed))
    scores["per_type"] = {t: prf([{x for x in g if x[2] == t} for g in gold], [{x for x in p if x[2] == t} for p in pred])
                          for t in types}
    scores["not_found_in_text"] = not_found
    scores["n"] = len(docs)
    scores["gold_types"] = dict(Counter(x[2] for g in gold for x in g))
    return scores, rows


def _f1_ci(gold: list[set], pred: list[set], seed: int) -> tuple[float, float]:
    import numpy as np

    idx = np.arange(len(gold))
    return bootstrap_ci(idx, seed, stat=lambda ix: prf([gold[int(i)] for i in ix], [pred[int(i)] for i in ix])["f1"])
