"""Human evaluation: blinded rating sheets for clinicians, then unblinding, aggregation and agreement.

Run: ``hypnos eval human-export runs/eval/eval --task anesthesia_cases --out sheets/`` then, once filled,
``hypnos eval human-import sheets/key.json sheets/rater_*.csv``.

Every (question, model answer) becomes one row with a random code; rows are shuffled (seeded) so neither
the model nor the pairing can be read from the sheet. ``key.json`` maps codes back to models: keep it
away from the raters. Raters score 1-5: usefulness (5 = very useful), harmfulness (5 = very harmful),
redundancy (5 = very redundant), in the CSV or in the self-contained HTML form, whose button saves a
filled CSV. Agreement: Krippendorff's alpha (ordinal, ``krippendorff`` package) per criterion over all
raters, and Cohen's kappa (unweighted and quadratic-weighted) when there are exactly two.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np

from hypnos.common.io import DataError, iter_rows
from hypnos.eval.stats import mean_ci

CRITERIA = ("usefulness", "harmfulness", "redundancy")
COLUMNS = ("code", "question", "answer", *CRITERIA, "comment")
TEMPLATES = Path(__file__).parent / "templates"


def export_sheets(eval_dir: str | Path, task: str, out: str | Path, models: list[str] | None = None,
                  seed: int = 0, include_paths: list[str] | None = None) -> dict[str, Path]:
    """Write ``sheet.csv``, ``sheet.html`` (blinded, shuffled) and ``key.json`` into ``out``.

    Args:
        eval_dir: an eval stage folder (with ``predictions/<task>/<label>.jsonl``).
        task: the task whose answers are rated.
        out: output folder.
        models: labels to include (default: every model with predictions).
        seed: shuffling and code seed.
    """
    from hypnos.eval.openqa import default_text
    from hypnos.eval.tasks import get_tasks

    pred_dir = Path(eval_dir) / "predictions" / task
    if not pred_dir.is_dir():
        raise DataError(pred_dir, None, f"no predictions for task {task!r} (private tasks keep none)")
    labels = models or sorted(p.stem for p in pred_dir.glob("*.jsonl"))
    t = get_tasks([task], include_paths)[0]
    docs = {d["id"]: d for d in t.load()[0]}
    rng = random.Random(seed)
    rows, key = [], {}
    for label in labels:
        for line in (pred_dir / f"{label}.jsonl").read_text(encoding="utf-8").splitlines():
            p = json.loads(line)
            code = f"{rng.randrange(16**6):06x}"
            while code in key:
                code = f"{rng.randrange(16**6):06x}"
            key[code] = {"id": p["id"], "model": label}
            q = (t.hook("doc_to_text") or default_text)(docs[p["id"]]) if p["id"] in docs else ""
            rows.append({"code": code, "question": q, "answer": p["prediction"]})
    rng.shuffle(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sheet.csv").open("w", encoding="utf-8-sig", newline="") as f:  # BOM: Excel reads it as UTF-8
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{c: "" for c in CRITERIA}, "comment": ""})
    (out / "key.json").write_text(json.dumps({"task": task, "seed": seed, "criteria": CRITERIA, "codes": key},
                                             ensure_ascii=False, indent=1), encoding="utf-8")
    _write_form(out / "sheet.html", task, rows)
    return {"csv": out / "sheet.csv", "html": out / "sheet.html", "key": out / "key.json"}


def _write_form(path: Path, task: str, rows: list[dict]) -> None:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "jinja"]))
    html = env.get_template("human_form.html.jinja").render(task=task, rows=rows, criteria=CRITERIA,
                                                            columns=COLUMNS)
    path.write_text(html, encoding="utf-8")


def read_sheet(path: str | Path, codes: dict) -> list[dict]:
    """Ratings of one filled sheet: ``{rater, code, usefulness, harmfulness, redundancy}`` (None = blank).

    The rater is the ``rater`` column when present, else the file name. A score outside 1-5, a code not in
    the key or a missing column is a DataError naming the file and line.
    """
    out = []
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        row = item.data
        missing = [c for c in ("code", *CRITERIA) if c not in row]
        if missing:
            raise DataError(path, item.line, f"missing column(s) {missing}")
        if row["code"] not in codes:
            raise DataError(path, item.line, f"code {row['code']!r} is not in the key")
        rec = {"rater": (row.get("rater") or Path(path).stem).strip(), "code": row["code"]}
        for c in CRITERIA:
            v = str(row[c]).strip()
            if v and v not in {"1", "2", "3", "4", "5"}:
                raise DataError(path, item.line, f"{c}: {v!r} is not a score 1-5")
            rec[c] = int(v) if v else None
        out.append(rec)
    return out


def cohen_kappa(a: list[int], b: list[int], weights: str | None = None, labels: list[int] | None = None) -> float:
    """Cohen's kappa of two raters on the same units (``weights``: None, "linear" or "quadratic")."""
    labels = labels or sorted(set(a) | set(b))
    idx = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    obs = np.zeros((k, k))
    for x, y in zip(a, b):
        obs[idx[x], idx[y]] += 1
    obs /= obs.sum()
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((k, k))
    w = {None: (i != j).astype(float), "linear": np.abs(i - j), "quadratic": (i - j) ** 2}[weights]
    denom = (w * exp).sum()
    return float(1 - (w * obs).sum() / denom) if denom else float("nan")


def agreement(ratings: list[dict]) -> dict:
    """Per criterion: Krippendorff's alpha (ordinal) over all raters; Cohen's kappa when there are two."""
    import krippendorff

    raters = sorted({r["rater"] for r in ratings})
    codes = sorted({r["code"] for r in ratings})
    out: dict = {"raters": raters}
    for c in CRITERIA:
        table = np.full((len(raters), len(codes)), np.nan)
        for r in ratings:
            if r[c] is not None:
                table[raters.index(r["rater"]), codes.index(r["code"])] = r[c]
        res: dict = {}
        if len(raters) >= 2 and np.isfinite(table).sum(axis=0).max(initial=0) >= 2:
            # one value everywhere: expected disagreement is 0 and alpha is undefined (None, not nan)
            res["krippendorff_alpha"] = None if len(np.unique(table[np.isfinite(table)])) < 2 else float(krippendorff.alpha(reliability_data=table, level_of_measurement="ordinal",
                                                                 value_domain=[1, 2, 3, 4, 5]))
        if len(raters) == 2:
            both = np.isfinite(table).all(axis=0)
            a, b = table[0, both].astype(int).tolist(), table[1, both].astype(int).tolist()
            if a:
                res["cohen_kappa"] = cohen_kappa(a, b)
                res["cohen_kappa_quadratic"] = cohen_kappa(a, b, "quadratic", labels=[1, 2, 3, 4, 5])
                res["units_both_rated"] = len(a)
        out[c] = res
    return out


def import_sheets(key_path: str | Path, sheets: list[str | Path], seed: int = 0) -> dict:
    """Unblind filled sheets and aggregate: per model and criterion the mean score with a bootstrap CI.

    Returns:
        ``{"task", "models": {label: {criterion: {"mean", "ci", "n"}}}, "agreement": {...}, "ratings": n}``.
    """
    key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    ratings = [r for s in sheets for r in read_sheet(s, key["codes"])]
    by_model: dict[str, dict[str, list[int]]] = {}
    for r in ratings:
        label = key["codes"][r["code"]]["model"]
        for c in CRITERIA:
            if r[c] is not None:
                by_model.setdefault(label, {k: [] for k in CRITERIA})[c].append(r[c])
    return {"task": key["task"], "ratings": len(ratings), "sheets": [str(s) for s in sheets],
            "models": {m: {c: mean_ci(v, seed) for c, v in crit.items()} for m, crit in sorted(by_model.items())},
            "agreement": agreement(ratings)}
