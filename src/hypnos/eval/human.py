"""Human evaluation: blinded rating sheets for clinicians, then unblinding, aggregation and agreement.

Run: ``hypnos eval human-export runs/eval/eval --task anesthesia_cases --out sheets/`` then, once filled,
``hypnos eval human-import sheets/key.json sheets/rater_*.csv``.

Every (question, model answer) becomes one row with a random code; rows are shuffled (seeded) so neither
the model nor the pairing can be read from the sheet. ``key.json`` maps codes back to models: keep it
away from the raters. Raters score 1-5: usefulness (5 = very useful), harmfulness (5 = very harmful),
redundancy (5 = very redundant), in the CSV or in the self-contained HTML form, whose button saves a
filled CSV. Agreement: Krippendorff's alpha (ordinal, ``krippendorff`` package) per criterion over all
raters, and Cohen's kappa (unweighted and quadratic-weighted) when there are exactly two.

Pairwise form (the paper's): ``hypnos eval human-export ... --pair sft,base`` writes one row per question
with the two models' answers as "A" and "B" (which model is A is drawn per row and kept in the key); raters
write per criterion which answer is better: ``A``, ``B`` or ``tie`` (more useful, less harmful, less
redundant). ``human-import`` then reports the first model's win/tie/loss per criterion with CIs and the
raters' agreement (Krippendorff's alpha, nominal; Cohen's kappa for two raters; raw agreement).
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

    A pairwise key (``export_pairwise``) is handed to ``import_pairwise``.

    Returns:
        ``{"task", "models": {label: {criterion: {"mean", "ci", "n"}}}, "agreement": {...}, "ratings": n}``.
    """
    key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    if key.get("mode") == "pairwise":
        return import_pairwise(key_path, sheets, seed)
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


# ---- pairwise (blinded A vs B) -----------------------------------------------------------------

PAIR_COLUMNS = ("code", "question", "answer_A", "answer_B", *CRITERIA, "comment")
_CHOICE = {"a": "A", "b": "B", "tie": "tie", "平局": "tie", "=": "tie", "same": "tie"}


def export_pairwise(eval_dir: str | Path, task: str, out: str | Path, pair: tuple[str, str], seed: int = 0,
                    include_paths: list[str] | None = None) -> dict[str, Path]:
    """Write ``pairwise.csv`` (one row per question, answers blinded as A/B) and ``pairwise_key.json``."""
    from hypnos.eval.openqa import default_text
    from hypnos.eval.tasks import get_tasks

    pred_dir = Path(eval_dir) / "predictions" / task
    preds = {}
    for label in pair:
        f = pred_dir / f"{label}.jsonl"
        if not f.is_file():
            raise DataError(f, None, f"no predictions of model {label!r} for task {task!r}")
        preds[label] = {r["id"]: r["prediction"] for r in map(json.loads, f.read_text(encoding="utf-8").splitlines())}
    t = get_tasks([task], include_paths)[0]
    docs = {d["id"]: d for d in t.load()[0]}
    rng = random.Random(seed)
    rows, key = [], {}
    for pid in [i for i in preds[pair[0]] if i in preds[pair[1]]]:
        code = f"{rng.randrange(16**6):06x}"
        while code in key:
            code = f"{rng.randrange(16**6):06x}"
        first = pair[rng.randrange(2)]  # which model is shown as A: drawn per row
        second = pair[1] if first == pair[0] else pair[0]
        key[code] = {"id": pid, "A": first, "B": second}
        q = (t.hook("doc_to_text") or default_text)(docs[pid]) if pid in docs else ""
        rows.append({"code": code, "question": q, "answer_A": preds[first][pid], "answer_B": preds[second][pid]})
    rng.shuffle(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pairwise.csv").open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PAIR_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{c: "" for c in CRITERIA}, "comment": ""})
    (out / "pairwise_key.json").write_text(json.dumps(
        {"mode": "pairwise", "task": task, "pair": list(pair), "seed": seed, "criteria": CRITERIA, "codes": key},
        ensure_ascii=False, indent=1), encoding="utf-8")
    return {"csv": out / "pairwise.csv", "key": out / "pairwise_key.json"}


def read_pairwise(path: str | Path, key: dict) -> list[dict]:
    """Unblinded choices of one filled pairwise sheet: ``{rater, code, criterion: win|tie|loss|None}``,
    where win means the key's first model was chosen. A bad value is a DataError naming file and line."""
    first = key["pair"][0]
    out = []
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        row = item.data
        if row.get("code") not in key["codes"]:
            raise DataError(path, item.line, f"code {row.get('code')!r} is not in the key")
        shown = key["codes"][row["code"]]
        rec = {"rater": (row.get("rater") or Path(path).stem).strip(), "code": row["code"]}
        for c in CRITERIA:
            v = str(row.get(c, "")).strip()
            if v and v.lower() not in _CHOICE:
                raise DataError(path, item.line, f"{c}: {v!r} is not A, B or tie")
            choice = _CHOICE.get(v.lower()) if v else None
            rec[c] = None if choice is None else "tie" if choice == "tie" else (
                "win" if shown[choice] == first else "loss")
        out.append(rec)
    return out


def pairwise_agreement(ratings: list[dict]) -> dict:
    """Per criterion: Krippendorff's alpha (nominal) over raters, raw agreement, Cohen's kappa for two."""
    import krippendorff

    raters = sorted({r["rater"] for r in ratings})
    codes = sorted({r["code"] for r in ratings})
    value = {"loss": 0, "tie": 1, "win": 2}
    out: dict = {"raters": raters}
    for c in CRITERIA:
        table = np.full((len(raters), len(codes)), np.nan)
        for r in ratings:
            if r[c] is not None:
                table[raters.index(r["rater"]), codes.index(r["code"])] = value[r[c]]
        res: dict = {}
        both = np.isfinite(table).sum(axis=0) >= 2
        if len(raters) >= 2 and both.any():
            vals = np.unique(table[np.isfinite(table)])
            res["krippendorff_alpha"] = None if len(vals) < 2 else float(
                krippendorff.alpha(reliability_data=table, level_of_measurement="nominal"))
            agree = [len(set(table[np.isfinite(table[:, j]), j])) == 1 for j in np.where(both)[0]]
            res["raw_agreement"] = float(np.mean(agree))
        if len(raters) == 2:
            mask = np.isfinite(table).all(axis=0)
            a, b = table[0, mask].astype(int).tolist(), table[1, mask].astype(int).tolist()
            if a:
                res["cohen_kappa"] = cohen_kappa(a, b, labels=[0, 1, 2])
                res["units_both_rated"] = len(a)
        out[c] = res
    return out


def import_pairwise(key_path: str | Path, sheets: list[str | Path], seed: int = 0) -> dict:
    """Unblind filled pairwise sheets: the first model's win/tie/loss per criterion (CIs) and agreement."""
    from hypnos.eval.stats import rates_ci

    key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    ratings = [r for s in sheets for r in read_pairwise(s, key)]
    out: dict = {"task": key["task"], "pair": key["pair"], "ratings": len(ratings), "sheets": [str(s) for s in sheets],
                 "criteria": {}}
    for c in CRITERIA:
        outs = [r[c] for r in ratings if r[c] is not None]
        out["criteria"][c] = {"rates": rates_ci(outs, ("win", "tie", "loss"), seed),
                              "counts": {o: outs.count(o) for o in ("win", "tie", "loss")}}
    out["agreement"] = pairwise_agreement(ratings)
    return out
