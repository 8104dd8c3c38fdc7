"""Multi-turn dialogue: the model answers the last doctor turn given the whole history before it.

As ChiMed-GPT scores dialogue: each record (``conversations``: human/gpt turns) is cut before its last
``gpt`` turn; the turns before it go to the model as chat messages (its chat template, or the endpoint's
messages), its greedy answer is scored against that last turn with the open-QA metrics (BLEU-1..4,
ROUGE-1/2/L, GLEU, Distinct; ``openqa.text_metrics``). Scores also give the number of history turns.
"""

from __future__ import annotations

from hypnos.eval.openqa import Tokenization, text_metrics, truncate
from hypnos.eval.tasks import Task, TaskError

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def split_last_turn(task: Task, doc: dict) -> tuple[list[dict], str]:
    """(chat messages before the last assistant turn, that turn's text)."""
    turns = doc.get("conversations") or []
    last = max((i for i, t in enumerate(turns) if t["from"] == "gpt"), default=None)
    if last is None or not any(t["from"] == "human" for t in turns[:last]):
        raise TaskError(f"task {task.task}: dialogue {doc.get('id')!r} has no assistant turn after a user turn")
    return [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns[:last]], turns[last]["value"]


def evaluate(task: Task, docs: list[dict], model, max_new_tokens: int = 128, how: Tokenization = "char",
             seed: int = 0) -> tuple[dict, list[dict]]:
    """Answer the last turn of every dialogue and score it against the reference turn."""
    histories = [split_last_turn(task, d)[0] for d in docs]
    max_new = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
    answers = model.generate(histories, max_new, desc=task.task)
    answers = [truncate(a, task.generation_kwargs.get("until")) for a in answers]
    scores, rows = score_answers(task, docs, dict(zip([d["id"] for d in docs], answers)), how, seed)
    scores.update({"method": "generation", "max_new_tokens": max_new})
    return scores, rows


def score_answers(task: Task, docs: list[dict], answers: dict[str, str | None], how: Tokenization = "char",
                  seed: int = 0) -> tuple[dict, list[dict]]:
    """Score last-turn answers (item id -> text); a missing answer scores as empty."""
    split = [split_last_turn(task, d) for d in docs]
    preds = [answers.get(d["id"]) or "" for d in docs]
    scores = text_metrics(preds, [ref for _, ref in split], how, seed)
    n_hist = [sum(m["role"] == "user" for m in h) for h, _ in split]
    scores.update({"n": len(docs), "empty_answers": sum(not p for p in preds),
                   "missing": sum(d["id"] not in answers for d in docs),
                   "multi_turn": sum(k > 1 for k in n_hist), "mean_user_turns": sum(n_hist) / len(docs) if docs else 0})
    rows = [{"id": d["id"], "turns": len(h), "prediction": p, "reference": ref, "rougeL": r}
            for d, (h, ref), p, r in zip(docs, split, preds, scores["rougeL_items"])]
    return scores, rows
