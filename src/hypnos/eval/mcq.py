"""Multiple-choice evaluation: option log-likelihood for local models, answer extraction for endpoints.

A local model scores each option letter as the next token after the prompt (which ends in ``答案：``):
one batched forward per batch of questions, the highest log-probability wins, so no answer is ever
unparseable. An endpoint model generates a short answer; ``extract_choice`` reads the letter from the
usual ways of writing one (``答案：C``, ``选C``, ``C.``, ``（C）``, full-width ``Ｃ``, the option's text).
Scores: accuracy overall and per category, each with a seeded bootstrap 95% CI, and the count of
answers no letter could be read from (counted wrong).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

from hypnos.eval.backends import is_local
from hypnos.eval.stats import mean_ci
from hypnos.eval.tasks import Task

DEFAULT_PROMPT = "以下是单项选择题，请直接给出正确答案的选项。\n\n{question}\n{options}\n答案："
# Ordered: the most explicit statements first, a bare letter last.
_PATTERNS = [
    r"(?:正确)?答案(?:应该|应|是|为|选|:|：|\s)*[\(（【\[]?([A-H])(?![A-Za-z])",
    r"(?:选择|选项|应选|选)\s*[\(（【\[]?([A-H])(?![A-Za-z])",
    r"^\s*[\(（【\[]?([A-H])[\)）】\]]?(?:[\s.、．:：,，。]|$)",
    r"[\(（【\[]([A-H])[\)）】\]]",
    r"(?<![A-Za-z])([A-H])\s*(?:项|选项)?(?:正确|是正确|为正确|最合适|最恰当)",
]


def default_text(doc: dict) -> str:
    """The default prompt: question, ``A. option`` lines, then ``答案：`` (CMMLU/C-Eval style)."""
    options = "\n".join(f"{k}. {v}" for k, v in doc["options"].items())
    return DEFAULT_PROMPT.format(question=doc["question"].strip(), options=options)


def extract_choice(text: str, letters: str | list[str] = "ABCDE", options: dict[str, str] | None = None) -> str | None:
    """The option letter an answer names, or None when it names none (or several, ambiguously).

    Args:
        text: the model's answer.
        letters: the valid letters.
        options: letter -> option text; used when the answer quotes exactly one option's text.
    """
    if not text:
        return None
    t = unicodedata.normalize("NFKC", text).strip()  # full-width Ｃ -> C, （ stays （
    valid = set(letters)
    for pat in _PATTERNS:
        for m in re.finditer(pat, t, flags=re.MULTILINE):
            if m.group(1) in valid:
                return m.group(1)
    # a lone letter anywhere (e.g. "我认为是C") when exactly one valid letter occurs as a standalone letter
    lone = {c for c in re.findall(r"(?<![A-Za-z])([A-H])(?![A-Za-z])", t) if c in valid}
    if len(lone) == 1:
        return lone.pop()
    if options:
        quoted = [k for k, v in options.items() if v and unicodedata.normalize("NFKC", v) in t]
        if len(quoted) == 1:
            return quoted[0]
    return None


def evaluate(task: Task, docs: list[dict], model, max_new_tokens: int = 16, seed: int = 0) -> tuple[dict, list[dict]]:
    """Score a model on multiple-choice docs.

    Returns:
        (scores, predictions): ``scores`` has accuracy with CI, per-category accuracy, unparseable count;
        ``predictions`` one row per doc (id, gold, pred, correct, and the raw answer or option logprobs).
    """
    to_text = task.hook("doc_to_text") or default_text
    to_target = task.hook("doc_to_target") or (lambda d: d["answer"])
    to_choice = task.hook("doc_to_choice") or (lambda d: list(d["options"]))
    prompts = [to_text(d) for d in docs]
    choices = [list(to_choice(d)) for d in docs]
    preds = []
    if is_local(model):
        logps = model.choice_logprobs(prompts, choices, desc=f"{task.task}")
        for d, ch, lp in zip(docs, choices, logps):
            best = max(range(len(ch)), key=lambda i: lp[i])
            preds.append({"pred": ch[best], "logprobs": dict(zip(ch, [round(x, 4) for x in lp]))})
    else:
        max_new = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
        answers = model.generate(prompts, max_new, desc=task.task)
        for d, ch, a in zip(docs, choices, answers):
            preds.append({"pred": extract_choice(a, ch, d.get("options")), "answer_text": a})
    rows = []
    for d, p in zip(docs, preds):
        gold = to_target(d)
        rows.append({"id": d["id"], "category": d.get(task.category_field, ""), "gold": gold,
                     "correct": p["pred"] == gold, **p})
    return score(rows, seed), rows


def score(rows: list[dict], seed: int = 0) -> dict:
    """Accuracy (CI), per-category accuracy (CI) and unparseable answers from prediction rows."""
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_cat[r["category"] or "all"].append(float(r["correct"]))
    acc = mean_ci([float(r["correct"]) for r in rows], seed)
    return {"metric": "accuracy", "accuracy": acc["mean"], "ci": acc["ci"], "n": acc["n"],
            "unparseable": sum(r["pred"] is None for r in rows),
            "per_category": {c: mean_ci(v, seed) for c, v in sorted(by_cat.items())}}
