"""Score predictions produced elsewhere (an API run, vLLM, another toolkit) with the task's own metric.

Run: ``hypnos eval score cmexam_anesthesia answers.jsonl [--out scores.json]``

One JSON line per item: ``{"id": ..., "prediction": ...}``: the letter (or choice text) for multiple
choice, the raw text for generation and NER, the scale point for Likert items. Ids are the task's item
ids (``hypnos eval score TASK --list-ids`` prints them). A malformed line, a duplicate or unknown id is an
error naming the file and line; an item without a prediction counts as wrong and is reported as missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypnos.common.io import DataError
from hypnos.eval.tasks import Task


def read_predictions(path: str | Path, known_ids: set[str]) -> dict[str, str | None]:
    """``id -> prediction`` from a JSONL file.

    Raises:
        DataError: naming the file and line of a malformed row, a duplicate id or an id the task lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "predictions file not found")
    out: dict[str, str | None] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, n, f"invalid JSON: {e.msg}") from None
        if not isinstance(row, dict) or "id" not in row or "prediction" not in row:
            raise DataError(path, n, 'a line is {"id": ..., "prediction": ...}')
        pid = str(row["id"])
        if pid in out:
            raise DataError(path, n, f"duplicate id {pid!r}")
        if pid not in known_ids:
            raise DataError(path, n, f"id {pid!r} is not an item of the task")
        p = row["prediction"]
        out[pid] = None if p is None else str(p)
    return out


def score_file(task: Task, path: str | Path, seed: int = 0, tokenization: str = "char") -> tuple[dict, list[dict]]:
    """Scores and per-item rows of a predictions file on every item of ``task``."""
    from hypnos.eval import bias, mcq, ner, openqa

    if task.output_type == "likert":
        scale = bias.load_scale(task.data_files()[0])
        answers = read_predictions(path, {it["id"] for it in scale["items"]})
        points = {k: bias.parse_point(v or "", scale["points"]) for k, v in answers.items()}
        scores = bias.score_scale(scale, points)
        scores.update({"method": "external", "missing": len(scale["items"]) - len(answers)})
        return scores, [{"id": k, "answer": v} for k, v in points.items()]
    docs, rejected = load_docs(task)
    answers = read_predictions(path, {d["id"] for d in docs})
    if task.output_type == "multiple_choice":
        scores, rows = mcq.score_predictions(task, docs, answers, seed)
    elif task.output_type == "ner":
        scores, rows = ner.score_answers(task, docs, answers, seed)
    elif task.output_type == "dialogue":
        from hypnos.eval import dialogue

        scores, rows = dialogue.score_answers(task, docs, answers, tokenization, seed)
    else:
        scores, rows = openqa.score_answers(task, docs, answers, tokenization, seed)
    scores.update({"method": "external", "rejected_rows": rejected})
    return scores, rows


def load_docs(task: Task) -> tuple[list[dict], dict[str, int]]:
    """Every item of the task as the eval stage reads it: rows an importer rejects (e.g. CMExam
    multiple-answer questions) are left out and counted by reason, as in the stage's results."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        docs, report = task.load(quarantine_dir=Path(tmp))
    return docs, report.reasons
