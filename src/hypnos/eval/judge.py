"""Pairwise LLM judge of two models' answers to real cases, asked in both orders.

For each case the judge sees the question (and the reference answer when there is one) and answers
"回答1"/"回答2"/"平局" in both orders (a first, then b first) and says, per criterion, which is better:
more useful (usefulness), less harmful (harmfulness), less redundant (redundancy). A verdict that
changes with the order counts as a tie (position bias is not a preference); the share of items whose
two verdicts disagree is reported as the flip rate. The request carries a JSON schema
(``response_format``; the client drops it for endpoints that refuse it) and the text is parsed robustly
either way; an unreadable verdict is asked again (``prompts/judge_retry_v1.jinja``) up to twice, and
verdicts unreadable at first, recovered and still unreadable are reported. Calls go through the stage's
cached client, so a killed run re-sends nothing already answered.
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
_WORD = {"1": 1, "2": 2, "回答1": 1, "回答2": 2, "answer1": 1, "answer2": 2, "response1": 1, "response2": 2,
         "a": 1, "b": 2, "平局": 0, "相同": 0, "tie": 0, "一样": 0, "0": 0}
MAX_TOKENS = 512  # room for a sentence of reasoning before the JSON; 128 cut verdicts off
RETRIES = 2  # unreadable verdicts are asked again (with the bad answer shown) this many times
SCHEMA = {"type": "json_schema", "json_schema": {"name": "pairwise_verdict", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": list(CRITERIA.values()),
    "properties": {zh: {"type": "string", "enum": ["回答1", "回答2", "平局"]} for zh in CRITERIA.values()}}}}


def render(question: str, reference: str, first: str, second: str) -> str:
    """The judge prompt for one ordered pair of answers."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(PROMPTS))
    return env.get_template("judge_pairwise_v1.jinja").render(
        question=question, reference=reference, answer1=first, answer2=second, criteria=CRITERIA)


def parse_verdict(text: str | None) -> dict[str, int] | None:
    """criterion -> 1 (first answer better), 2 (second) or 0 (tie); None if any criterion is unreadable.

    Reads the last JSON object holding the criteria (reasoning with braces before it is fine), else lines
    like ``有用性：回答 1`` / ``Usefulness: Answer 2``. A value naming both answers (``回答1和回答2都…``) is
    unreadable: a verdict is never guessed.
    """
    if not text:
        return None
    found: dict[str, int] = {}
    data = _last_json(text)
    if data:
        for en, zh in CRITERIA.items():
            v = data.get(en, data.get(zh, data.get(en.capitalize())))
            if v is not None and (w := _value(str(v))) is not None:
                found[en] = w
    for en, zh in CRITERIA.items():
        if en not in found:
            m = re.search(rf"(?:{zh}|{en})\W{{0,3}}[:：]?\s*(.*)", text, flags=re.IGNORECASE)
            if m and (w := _value(m.group(1))) is not None:
                found[en] = w
    return found if len(found) == len(CRITERIA) else None


_ANSWER = re.compile(r"(?:回答|答案|answer|response|assistant)\s*([12])", re.IGNORECASE)
_TIE = re.compile(r"平局|相同|一样|相当|tie|equal", re.IGNORECASE)


def _value(v: str) -> int | None:
    """1, 2 or 0 (tie) from one criterion's value; None when it names no answer or both."""
    v = v.split("\n")[0]
    bare = re.sub(r"[\s\"'“”。.,，*]", "", v).lower()
    if bare in _WORD:
        return _WORD[bare]
    named = {int(x) for x in _ANSWER.findall(v)}
    tie = bool(_TIE.search(v))
    if len(named) == 1 and not tie:
        return named.pop()
    if not named and tie:
        return 0
    return None


def _last_json(text: str) -> dict | None:
    """The last ``{...}`` in the text that parses as a JSON object naming a criterion."""
    decoder = json.JSONDecoder()
    best = None
    for i in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            obj, _ = decoder.raw_decode(text[i:])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and any(k in obj for c in CRITERIA.items() for k in (*c, c[0].capitalize())):
            best = obj
    return best


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
                         "temperature": 0.0, "seed": 0, "max_tokens": MAX_TOKENS, "response_format": SCHEMA})
    verdicts, stats = ask(client, reqs)
    per_item, unparsed = [], 0
    for k, (ra, _) in enumerate(items):
        v1, v2 = verdicts[2 * k], verdicts[2 * k + 1]
        if v1 is None or v2 is None:
            unparsed += 1
            per_item.append({"id": ra["id"], "outcome": None})
            continue
        res = {c: combine(v1[c], v2[c]) for c in CRITERIA}
        per_item.append({"id": ra["id"], "outcome": {c: o for c, (o, _) in res.items()},
                         "flipped": {c: f for c, (_, f) in res.items()}})
    return {**summarize(per_item, unparsed, seed), **stats}


def ask(client, reqs: list[dict], retries: int = RETRIES) -> tuple[list[dict | None], dict]:
    """Verdicts of the judge for every request; an unreadable one is asked again, its bad answer shown.

    Returns:
        (verdicts, stats): None where still unreadable after ``retries``; stats count verdicts unreadable at
        first, recovered by a retry, still unreadable, failed requests, and answers under a JSON schema.
    """
    from jinja2 import Environment, FileSystemLoader

    retry_text = Environment(loader=FileSystemLoader(PROMPTS)).get_template("judge_retry_v1.jinja").render()
    answers = client.chat_many_sync(reqs, progress=True)
    verdicts = [parse_verdict(a.text) for a in answers]
    first_bad = sum(v is None for v in verdicts)
    structured = sum(bool(getattr(a, "structured", False)) for a in answers)
    errors = sum(bool(a.error) for a in answers)
    convo = [list(r["messages"]) for r in reqs]
    for _ in range(retries):
        todo = [i for i, v in enumerate(verdicts) if v is None and answers[i].text]
        if not todo:
            break
        for i in todo:  # a different conversation, so the client's cache does not hand back the same answer
            convo[i] = [*convo[i], {"role": "assistant", "content": answers[i].text},
                        {"role": "user", "content": retry_text}]
        again = client.chat_many_sync([{**reqs[i], "messages": convo[i]} for i in todo], progress=False)
        for i, a in zip(todo, again):
            answers[i], verdicts[i] = a, parse_verdict(a.text)
    return verdicts, {"unparsed_first_try": first_bad, "recovered_by_retry": first_bad - sum(v is None for v in verdicts),
                      "unparsed_verdicts": sum(v is None for v in verdicts), "request_errors": errors,
                      "structured_answers": structured, "max_tokens": MAX_TOKENS}


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
