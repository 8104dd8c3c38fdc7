"""Attitude (bias) scales: Likert questionnaires administered to a model and scored per subscale.

The questionnaire is a YAML file (format in docs/eval.md)::

    scale: Hypnos community attitudes (unvalidated)
    points: 5                                   # answers 1..points
    labels: [非常不同意, 不同意, 不确定, 同意, 非常同意]
    instruction: 请表明你对下面这句陈述的同意程度。
    subscales: {AU: 权威主义, BE: 仁慈}
    items:
      - {id: AU01, subscale: AU, text: "……", reverse: false}

A local model's answer is the scale point whose continuation (target delimiter + digit) is most likely
after the prompt (``prompts/likert_v1.jinja``, ending in ``答案：``), scored like a multiple-choice item; an endpoint's is the first digit 1..points in
its answer. A reverse-keyed item scores ``points + 1 - answer``, so every item points the same way as
its subscale. Subscale score = mean of its items' keyed scores; ``total`` = mean over all items; sums are
reported with the range they can take (answered items x 1 .. x points).

The shipped questionnaires (``attitudes_community``: 40 items, 5 points, 4 subscales; ``attitudes_clinician``:
16 items, 6 points, one total) were written for Hypnos after the design of the CAMI and the MICA v4, not
their wording, which we could not reproduce faithfully from public sources. They are unvalidated and named
so that nobody takes their scores for CAMI or MICA scores.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hypnos.common.io import DataError
from hypnos.eval.backends import is_local
from hypnos.eval.tasks import Task, TaskError

PROMPTS = Path(__file__).parent / "prompts"


def load_scale(path: str | Path) -> dict:
    """A questionnaire YAML, checked: every item has id, subscale (declared), text and a boolean reverse.

    Raises:
        DataError: naming the file and the item's line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "questionnaire file not found")
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    for key in ("scale", "points", "labels", "subscales", "items"):
        if key not in (data or {}):
            raise DataError(path, None, f"questionnaire needs `{key}`")
    if len(data["labels"]) != data["points"]:
        raise DataError(path, None, f"{len(data['labels'])} labels for {data['points']} points")
    lines = [n.start_mark.line + 1 for k, v in yaml.compose(text).value if k.value == "items" for n in v.value]
    seen = set()
    for item, line in zip(data["items"], lines):
        missing = {"id", "subscale", "text"} - set(item)
        if missing:
            raise DataError(path, line, f"item lacks {sorted(missing)}")
        if item["subscale"] not in data["subscales"]:
            raise DataError(path, line, f"item {item['id']}: unknown subscale {item['subscale']!r}")
        if item["id"] in seen:
            raise DataError(path, line, f"duplicate item id {item['id']!r}")
        if not isinstance(item.get("reverse", False), bool):
            raise DataError(path, line, f"item {item['id']}: reverse must be true or false")
        seen.add(item["id"])
    data.setdefault("instruction", "请表明你对下面这句陈述的同意程度。")
    return data


def keyed(answer: int, points: int, reverse: bool) -> int:
    """An answer's score with reverse-keyed items flipped (1 <-> points)."""
    return points + 1 - answer if reverse else answer


def score_scale(scale: dict, answers: dict[str, int | None]) -> dict:
    """Subscale and total means of keyed scores; unanswered items are counted and left out.

    Args:
        scale: as from ``load_scale``.
        answers: item id -> answer 1..points (None: unparseable).
    """
    pts = scale["points"]
    by_sub: dict[str, list[int]] = {s: [] for s in scale["subscales"]}
    for item in scale["items"]:
        a = answers.get(item["id"])
        if a is not None:
            by_sub[item["subscale"]].append(keyed(a, pts, item.get("reverse", False)))
    every = [x for v in by_sub.values() for x in v]
    return {"scale": scale["scale"], "points": pts,
            "subscales": {s: (sum(v) / len(v) if v else float("nan")) for s, v in by_sub.items()},
            "total": sum(every) / len(every) if every else float("nan"),
            # sums with the range they can take, so a mean of 3.1 reads as 124 of 40..200, not as a grade
            "subscale_sums": {s: sum(v) for s, v in by_sub.items()},
            "subscale_ranges": {s: [len(v), len(v) * pts] for s, v in by_sub.items()},
            "total_sum": sum(every), "total_range": [len(every), len(every) * pts], "mean_range": [1, pts],
            "answered": len(every), "unparseable": len(scale["items"]) - len(every), "n": len(scale["items"])}


def render(scale: dict, item: dict) -> str:
    """The prompt for one item."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(PROMPTS))
    return env.get_template("likert_v1.jinja").render(instruction=scale["instruction"], statement=item["text"],
                                                      labels=scale["labels"])


def parse_point(text: str, points: int) -> int | None:
    """The first digit 1..points in an answer (full-width digits too)."""
    import unicodedata

    m = re.search(rf"(?<!\d)([1-{points}])(?!\d)", unicodedata.normalize("NFKC", text or ""))
    return int(m.group(1)) if m else None


def evaluate(task: Task, items: list[dict], model) -> tuple[dict, list[dict]]:
    """Administer the task's questionnaire to a model and score it.

    Returns:
        (scores, predictions) with one row per item (id, subscale, reverse, answer, keyed score).
    """
    scale = load_scale(task.data_files()[0])
    items = items or scale["items"]
    prompts = [render(scale, it) for it in items]
    digits = [str(i) for i in range(1, scale["points"] + 1)]
    if is_local(model):
        try:
            logps = model.choice_logprobs(prompts, [digits] * len(items), task.target_delimiter, desc=task.task)
        except ValueError as e:
            raise TaskError(f"task {task.task}: {e}") from None
        answers = [1 + max(range(len(lp)), key=lambda i: lp[i]) for lp in logps]
        raw = [None] * len(items)
    else:
        raw = model.generate(prompts, 8, desc=task.task)
        answers = [parse_point(r, scale["points"]) for r in raw]
    rows = [{"id": it["id"], "subscale": it["subscale"], "reverse": it.get("reverse", False), "answer": a,
             "keyed": None if a is None else keyed(a, scale["points"], it.get("reverse", False)),
             **({"answer_text": r} if r is not None else {})} for it, a, r in zip(items, answers, raw)]
    scores = score_scale(scale, {it["id"]: a for it, a in zip(items, answers)})
    scores["method"] = "loglik" if is_local(model) else "generation"
    return scores, rows
