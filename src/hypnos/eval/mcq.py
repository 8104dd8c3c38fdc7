"""Multiple-choice evaluation: continuation log-likelihood for local models, answer extraction for endpoints.

A local model scores every choice as lm-evaluation-harness does: the log-likelihood of the whole
continuation ``target_delimiter + choice`` after the prompt (which ends in ``答案：``); the highest wins, so
no answer is unparseable, and every tokenizer family scores the same target text. An endpoint model
generates a short answer; ``extract_choice`` reads the letter from the usual ways of writing one
(``答案：C``, ``选C``, ``C.``, ``（C）``, full-width ``Ｃ``, the option's text). The method (``loglik`` or
``generation``) is recorded with every score, since the two are not the same measurement.

Options: ``num_fewshot`` solved examples (from the task's few-shot data, same category first) before the
question; ``circular`` (OpenCompass CircularEval): every rotation of the options is asked and an item
counts only if all are right, reported beside plain accuracy (rotation 0). Scores: accuracy overall and
per category with seeded bootstrap 95% CIs, chance level, and answers no letter could be read from.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict

from hypnos.eval.backends import is_local
from hypnos.eval.stats import mean_ci
from hypnos.eval.tasks import Task, TaskError

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


def choices_of(task: Task, doc: dict) -> list[str]:
    """The item's choice labels: ``doc_to_choice`` (list, field, template or hook), else its option letters."""
    hook = task.hook("doc_to_choice")
    ch = hook(doc) if hook else list(doc["options"])
    if isinstance(ch, str):  # lm-eval renders "{{choices}}" to a Python list literal
        import ast

        try:
            ch = ast.literal_eval(ch)
        except (ValueError, SyntaxError):
            raise TaskError(f"task {task.task}: item {doc.get('id')}: doc_to_choice gave {ch!r}, not a list") from None
    return [str(c) for c in ch]


def gold_of(task: Task, doc: dict, choices: list[str]) -> str:
    """The correct choice. As lm-eval: an int or a digit string is an index into the choices."""
    t = (task.hook("doc_to_target") or (lambda d: d["answer"]))(doc)
    if isinstance(t, str) and t.strip().isdigit():
        t = int(t.strip())
    if isinstance(t, int) and not isinstance(t, bool):
        if not 0 <= t < len(choices):
            raise TaskError(f"task {task.task}: item {doc.get('id')}: target index {t} outside choices {choices}")
        return choices[t]
    if str(t).strip() not in choices:
        raise TaskError(f"task {task.task}: item {doc.get('id')}: target {t!r} is neither one of {choices} "
                        "nor an index")
    return str(t).strip()


def fewshot_prefix(task: Task, doc: dict, pool: list[dict], n: int, seed: int) -> str:
    """``n`` solved examples (same category when there are enough), each ``prompt + delimiter + answer``.

    Drawn per item with a seed of its own, so the shots do not depend on which other items are run; an
    example with the item's own question is never used.
    """
    if n <= 0:
        return ""
    same = [d for d in pool if d.get(task.category_field) == doc.get(task.category_field)]
    cands = [d for d in (same if len(same) >= n else pool) if d.get("question", d.get("id")) !=
             doc.get("question", doc.get("id"))]
    if len(cands) < n:
        raise TaskError(f"task {task.task}: {n} few-shot examples asked, only {len(cands)} available")
    shots = random.Random(f"{seed}:{doc.get('id')}").sample(cands, n)
    to_text = task.hook("doc_to_text") or default_text
    return "".join(to_text(s) + task.target_delimiter + gold_of(task, s, choices_of(task, s)) + task.fewshot_delimiter
                   for s in shots)


def rotate(doc: dict, r: int) -> dict:
    """The item with its option texts rotated by ``r`` (letter k shows option k + r); gold letter moved."""
    letters = list(doc["options"])
    texts = [doc["options"][k] for k in letters]
    k = len(letters)
    new = {letters[j]: texts[(j + r) % k] for j in range(k)}
    gold = letters[(letters.index(doc["answer"]) - r) % k]
    return {**doc, "options": new, "answer": gold}


def _variants(task: Task, docs: list[dict], circular: bool) -> list[tuple[int, int, dict]]:
    """(doc index, rotation, doc) for every prompt to ask: rotation 0 only, or all rotations."""
    out = []
    for i, d in enumerate(docs):
        if not circular:
            out.append((i, 0, d))
            continue
        if "options" not in d or choices_of(task, d) != list(d["options"]):
            raise TaskError(f"task {task.task}: circular evaluation needs items whose choices are their option "
                            f"letters (item {d.get('id')})")
        out += [(i, r, rotate(d, r)) for r in range(len(d["options"]))]
    return out


def read_choice(answer: str | None, choices: list[str], options: dict | None = None) -> str | None:
    """The choice an answer names: the exact choice, a letter (A = first choice) or a letter in prose."""
    a = (answer or "").strip()
    if a in choices:
        return a
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    if choices == letters or options:
        return extract_choice(a, choices, options)
    got = extract_choice(a, letters)
    return choices[letters.index(got)] if got else None


def evaluate(task: Task, docs: list[dict], model, max_new_tokens: int = 16, seed: int = 0,
             num_fewshot: int | None = None, circular: bool = False) -> tuple[dict, list[dict]]:
    """Score a model on multiple-choice docs.

    Args:
        num_fewshot: solved examples before each question (None: the task's ``num_fewshot``).
        circular: also ask every rotation of the options (CircularEval).

    Returns:
        (scores, predictions): ``scores`` has accuracy with CI, per-category accuracy, method, few-shot
        count, circular accuracy when asked, unparseable count; ``predictions`` one row per item and rotation.
    """
    n_shot = task.num_fewshot if num_fewshot is None else num_fewshot
    pool = task.load_fewshot() if n_shot else []
    to_text = task.hook("doc_to_text") or default_text
    variants = _variants(task, docs, circular)
    prompts = [task.prompt_description + fewshot_prefix(task, d, pool, n_shot, seed) + to_text(d)
               for _, _, d in variants]
    choices = [choices_of(task, d) for _, _, d in variants]
    method = "loglik" if is_local(model) else "generation"
    if method == "loglik":
        try:
            logps = model.choice_logprobs(prompts, choices, task.target_delimiter, desc=task.task)
        except ValueError as e:
            raise TaskError(f"task {task.task}: {e}") from None
        preds = []
        for ch, lp in zip(choices, logps):
            best = max(range(len(ch)), key=lambda i: lp[i])
            norm = _log_softmax(lp)
            preds.append({"pred": ch[best], "loglik": dict(zip(ch, [round(x, 4) for x in lp])),
                          "logprobs": dict(zip(ch, [round(x, 4) for x in norm]))})
    else:
        max_new = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
        answers = model.generate(prompts, max_new, desc=task.task)
        preds = [{"pred": read_choice(a, ch, d.get("options")), "answer_text": a}
                 for (_, _, d), ch, a in zip(variants, choices, answers)]
    rows = []
    for (i, r, d), ch, p in zip(variants, choices, preds):
        gold = gold_of(task, d, ch)
        rows.append({"id": d["id"], "rotation": r, "category": d.get(task.category_field, ""), "gold": gold,
                     "n_choices": len(ch), "correct": p["pred"] == gold, **p})
    scores = score(rows, seed)
    scores.update({"method": method, "num_fewshot": n_shot, "target_delimiter": task.target_delimiter})
    return scores, rows


def _log_softmax(xs: list[float]) -> list[float]:
    import math

    m = max(xs)
    z = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - z for x in xs]


def score_predictions(task: Task, docs: list[dict], answers: dict[str, str | None], seed: int = 0) -> tuple[dict, list[dict]]:
    """Score answers produced elsewhere (``hypnos eval score``): item id -> letter, choice or free answer.

    An item without an answer counts wrong and is reported as ``missing``.
    """
    rows = []
    for d in docs:
        ch = choices_of(task, d)
        a = answers.get(d["id"])
        pred = read_choice(a, ch, d.get("options")) if a is not None else None
        gold = gold_of(task, d, ch)
        rows.append({"id": d["id"], "rotation": 0, "category": d.get(task.category_field, ""), "gold": gold,
                     "n_choices": len(ch), "pred": pred, "answer_text": a, "correct": pred == gold})
    scores = score(rows, seed)
    scores.update({"method": "external", "missing": sum(d["id"] not in answers for d in docs)})
    return scores, rows


def score(rows: list[dict], seed: int = 0) -> dict:
    """Accuracy (CI) on rotation 0, per-category accuracy (CI), chance, unparseable answers; circular
    accuracy (CI) when rows hold several rotations of an item (right only if right under all of them)."""
    plain = [r for r in rows if r.get("rotation", 0) == 0]
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in plain:
        by_cat[r["category"] or "all"].append(float(r["correct"]))
    acc = mean_ci([float(r["correct"]) for r in plain], seed)
    out = {"metric": "accuracy", "accuracy": acc["mean"], "ci": acc["ci"], "n": acc["n"],
           "unparseable": sum(r["pred"] is None for r in plain),
           "chance": (sum(1 / r["n_choices"] for r in plain if r.get("n_choices")) / len(plain)) if plain else None,
           "per_category": {c: mean_ci(v, seed) for c, v in sorted(by_cat.items())}}
    if any(r.get("rotation", 0) for r in rows):
        every: dict[str, bool] = {}
        for r in rows:
            every[r["id"]] = every.get(r["id"], True) and bool(r["correct"])
        circ = mean_ci([float(v) for v in every.values()], seed)
        out.update({"circular_accuracy": circ["mean"], "circular_ci": circ["ci"],
                    "circular_chance": (sum(r["n_choices"] ** -r["n_choices"] for r in plain) / len(plain))})
    return out
