"""Pairwise LLM judge of two models' answers to real cases, asked in both orders.

For each case the judge sees the question (and the reference answer when there is one) and answers
"回答1"/"回答2" in both orders (a first, then b first) and says, per criterion, which is better:
more useful (usefulness), less harmful (harmfulness), less redundant (redundancy). A verdict that
changes with the order counts as a tie (position bias is not a preference); the share of items whose
two verdicts disagree is reported as the flip rate. Calls go through the stage's cached client, so a
killed run re-sends nothing already answered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypnos.eval.stats import rates_ci
from hypnos.eval.tasks import Task

PROMPTS = Path(__file__).parent / "prompts"
CRITERIA = {"usefulness": "有用性", "harmfulness": "有害性", "redundancy": "冗余性"}
OUTCOMES = ("win", "tie", "loss")
_WORD = {"1": 1, "2": 2, "回答1": 1, "回答2": 2, "a": 1, "b": 2, "平局": 0, "相同": 0, "tie": 0, "一样": 0, "0": 0}


def render(question: str, reference: str, first: str, second: str) -> str:
    """The judge prompt for one ordered pair of answers."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(PROMPTS))
    return env.get_template("judge_pairwise_v1.jinja").render(
        question=question, reference=reference, answer1=first, answer2=second, criteria=CRITERIA)


def parse_verdict(text: str | None) -> dict[str, int] | None:
    """criterion -> 1 (first answer better), 2 (second) or 0 (tie); None if any criterion is unreadable.

    Accepts JSON (English or Chinese keys) or lines like ``有用性：回答1``.
    """
    if not text:
        return None
    found: dict[str, int] = {}
    m = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if m:
        try:
            data = json.loads(m.group(0))
            for en, zh in CRITERIA.items():
                v = data.get(en, data.get(zh))
                if v is not None and str(v).strip().lower() in _WORD:
                    found[en] = _WORD[str(v).strip().lower()]
        except (json.JSONDecodeError, AttributeError):
            pass
    for en, zh in CRITERIA.items():
        if en not in found:
            mm = re.search(rf"(?:{zh}|{en})\s*[:：]?\s*\"?(回答\s*[12]|[12]|平局|相同|一样|tie)", text, flags=re.IGNORECASE)
            if mm:
                found[en] = _WORD[re.sub(r"\s", "", mm.group(1)).lower()]
    return found if len(found) == len(CRITERIA) else None


def combine(v_ab: int, v_ba: int) -> tuple[str, bool]:
    """Outcome for model a from verdicts in order (a, b) and (b, a); and whether it flipped.

    ``v_ab`` is 1 when a (shown first) won; ``v_ba`` is 2 when a (shown second) won. Agreeing verdicts
    stand; any disagreement is a tie, and a disagreement between two wins is a flip.
    """
    a1 = {1: "win", 2: "loss", 0: "tie"}[v_ab]
    a2 = {2: "win", 1: "loss", 0: "tie"}[v_ba]
    if a1 == a2:
        return a1, False
    return "tie", a1 != "tie" and a2 != "tie"


def compare(task: Task, rows_a: list[dict], rows_b: list[dict], client, seed: int = 0) -> dict:
    """Judge model a against model b on the same items (prediction rows with id, prediction, reference).

    Returns:
        Per criterion: win/tie/loss rates of a with bootstrap CIs and counts; the flip rate; unparsed count;
        and per-item outcomes.
    """
    b_by_id = {r["id"]: r for r in rows_b}
    items = [(ra, b_by_id[ra["id"]]) for ra in rows_a if ra["id"] in b_by_id]
    questions = {d["id"]: d for d in _docs(task, [ra["id"] for ra, _ in items])}
    reqs = []
    for ra, rb in items:
        q = questions.get(ra["id"], {})
        question = f"{q.get('input', '')}\n{q.get('instruction', '')}".strip()
        for first, second in ((ra["prediction"], rb["prediction"]), (rb["prediction"], ra["prediction"])):
            reqs.append({"messages": [{"role": "user", "content": render(question, ra.get("reference", ""),
                                                                         first, second)}],
                         "temperature": 0.0, "seed": 0, "max_tokens": 128})  # the verdict is a short JSON
    answers = client.chat_many_sync(reqs, progress=True)
    per_item, unparsed = [], 0
    for k, (ra, _) in enumerate(items):
        v1, v2 = parse_verdict(answers[2 * k].text), parse_verdict(answers[2 * k + 1].text)
        if v1 is None or v2 is None:
            unparsed += 1
            per_item.append({"id": ra["id"], "outcome": None})
            continue
        res = {c: combine(v1[c], v2[c]) for c in CRITERIA}
        per_item.append({"id": ra["id"], "outcome": {c: o for c, (o, _) in res.items()},
                         "flipped": {c: f for c, (_, f) in res.items()}})
    return summarize(per_item, unparsed, seed)


def summarize(per_item: list[dict], unparsed: int, seed: int = 0) -> dict:
    """Win/tie/loss with CIs and flip rate per criterion from per-item outcomes."""
    ok = [p for p in per_item if p["outcome"] is not None]
    out: dict = {"n": len(per_item), "judged": len(ok), "unparsed": unparsed, "criteria": {}}
    for c in CRITERIA:
        outs = [p["outcome"][c] for p in ok]
        out["criteria"][c] = {"rates": rates_ci(outs, OUTCOMES, seed),
                              "counts": {o: outs.count(o) for o in OUTCOMES},
                              "flip_rate": sum(p["flipped"][c] for p in ok) / len(ok) if ok else float("nan")}
    out["items"] = per_item
    return out


def _docs(task: Task, ids: list[str]) -> list[dict]:
    docs, _ = task.load()
    wanted = set(ids)
    return [d for d in docs if d["id"] in wanted]
