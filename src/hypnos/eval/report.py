"""The ``report`` stage: one self-contained HTML page (plus JSON) per run.

Run: ``hypnos eval report runs/demo`` or in a recipe::

    - name: report
      kind: report
      eval: "@eval"
      notes: ["One model (SmolLM2-135M) played teacher, judge and student: the judge scores are a smoke test."]

The page shows the models x tasks table with 95% CIs, per-task details, plots (matplotlib PNGs embedded as
base64: bars with error bars, ROUGE-L distributions, judge win/tie/loss), the data-engine funnel and
training curves read from the run's manifests, tokenizer efficiency from the tokenizer stage's
``analysis`` output, contamination, and the recipe's notes. Nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
from pathlib import Path

from pydantic import Field

from hypnos.common.stage import StageConfig, StageContext, StageResult

TEMPLATES = Path(__file__).parent / "templates"
# (score key, display scale, unit). ROUGE-L stays 0-1 everywhere (bars and per-answer box plots alike);
# a judge task's headline is the judge's win rate, not a reference metric.
MAIN_METRIC = {"multiple_choice": ("accuracy", 100, "acc %"), "generate_until": ("rougeL", 1, "ROUGE-L 0–1"),
               "dialogue": ("rougeL", 1, "ROUGE-L 0–1"), "judge": ("win", 100, "judge win %"),
               "ner": ("f1", 100, "F1 %"), "likert": ("total", 1, "mean 1–points")}
METHOD_MARK = {"generation": " (gen)", "external": " (ext)"}  # log-likelihood, the default, has no mark
FUNNEL_KINDS = ("generate", "crossfilter", "dedup", "decontaminate", "deidentify", "mix")


class Config(StageConfig):
    """The run's report."""

    eval: str = "@eval"
    """The eval stage's results (``"@eval"`` or a results.json path)."""
    notes: list[str] = Field(default_factory=list)
    """Lines printed at the top, e.g. "one model played both teacher and judge"."""
    title: str | None = None
    """Page title (default: "Hypnos report: <run>")."""

    def check(self, ctx: StageContext) -> list[str]:
        """The eval reference names an earlier stage (or an existing file)."""
        return ctx.check_ref(self.eval, "eval")


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write report.html and report.json into the stage folder."""
    results = ctx.resolve(cfg.eval)
    data = build_report(ctx.run_dir, results, ctx.out_dir / "report.html", cfg.notes, cfg.title)
    return StageResult(outputs={"report": "report.html", "json": "report.json"},
                       counts={"models": len(data["models"]), "tasks": len(data["tasks"]),
                               "plots": len(data["plots"])})


# ---- collecting -------------------------------------------------------------------------------

def _fmt(v: float, scale: float = 1, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.{digits}f}"


def headline_table(results: dict) -> tuple[list[str], dict[str, list[str]]]:
    """Column names (tasks) and one row of "value [low, high]" cells per model.

    A multiple-choice score from generated answers is marked "(gen)" (log-likelihood is the default and
    the two are different measurements); a judge task shows each model's win rate against its pair.
    """
    cols, rows = [], {m: [] for m in results["models"]}
    for task, info in results["tasks"].items():
        key, scale, unit = MAIN_METRIC[info["output_type"]]
        cols.append(f"{task} ({unit})")
        digits = 3 if key == "rougeL" else 2 if scale == 1 else 1
        for m in results["models"]:
            if info["output_type"] == "judge":
                rows[m].append(_judge_cell(results, task, m))
                continue
            s = results["scores"].get(task, {}).get(m, {})
            ci = s.get("ci") if key != "rougeL" else s.get("rougeL_ci")
            cell = _fmt(s.get(key, float("nan")), scale, digits)
            if ci and info["output_type"] != "likert":
                cell += f" [{_fmt(ci[0], scale, digits)}, {_fmt(ci[1], scale, digits)}]"
            if info["output_type"] == "multiple_choice":
                cell += METHOD_MARK.get(s.get("method"), "")
            rows[m].append(cell)
    return cols, rows


def heldout_rows(results: dict) -> tuple[list[str], dict[str, list[str]], list[dict]]:
    """Held-out bits/char: set names, one "value [low, high]" cell per set for each model, and the pairs.

    Each pair is ``{"set", "a", "b", "difference", "ci", "excludes_zero", "verdict"}`` (negative: a reads better).
    """
    sets = results.get("heldout") or {}
    models = list(dict.fromkeys(m for r in sets.values() for m in r["models"]))
    rows = {m: [] for m in models}
    pairs = []
    for name, r in sets.items():
        for m in models:
            s = r["models"].get(m)
            rows[m].append(f"{s['bits_per_char']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]" if s else "–")
        for p in r.get("pairs", []):
            verdict = (f"{p['a']} reads better" if p["ci"][1] < 0 else f"{p['b']} reads better") \
                if p["excludes_zero"] else "no difference shown"
            pairs.append({"set": name, **p, "verdict": verdict})
    return list(sets), rows, pairs


def summary_table(report: dict) -> tuple[list[str], dict[str, list[str]]]:
    """The terminal table after a run: models x (held-out bits/char per set, then the task headlines)."""
    hcols, hrows, _ = heldout_rows(report)
    models = list(dict.fromkeys([*report["models"], *hrows]))
    cols = [f"held-out {c} (bits/char)" for c in hcols] + list(report["columns"])
    rows = {m: (hrows.get(m) or ["–"] * len(hcols)) + (report["rows"].get(m) or ["–"] * len(report["columns"]))
            for m in models}
    return cols, rows


def _judge_cell(results: dict, task: str, model: str) -> str:
    """Usefulness win rate of ``model`` against each model it was judged with ("–" when none)."""
    parts = []
    for pair, r in (results.get("judge") or {}).get(task, {}).items():
        a, _, b = pair.partition(" vs ")
        if model in (a, b):
            rate = r["criteria"]["usefulness"]["rates"]["win" if model == a else "loss"]
            parts.append(f"{_fmt(rate['mean'], 100)} [{_fmt(rate['ci'][0], 100)}, {_fmt(rate['ci'][1], 100)}] "
                         f"vs {b if model == a else a}")
    return "; ".join(parts) or "–"


def _manifests(run_dir: Path) -> list[dict]:
    out = []
    for p in sorted(Path(run_dir).glob("*/manifest.json")):
        m = json.loads(p.read_text(encoding="utf-8"))
        m["_dir"] = str(p.parent)
        out.append(m)
    return sorted(out, key=lambda m: m.get("timings", {}).get("started", ""))


def funnel(manifests: list[dict]) -> list[dict]:
    """Data-engine steps in run order: stage, kind, rows in and kept (from manifest counts)."""
    steps = []
    for m in manifests:
        if m.get("kind") not in FUNNEL_KINDS or m.get("status") != "done":
            continue
        c = m.get("counts", {})
        if m["kind"] == "generate":
            n_in, kept = c.get("seeds"), c.get("generated")
        elif m["kind"] == "mix":
            n_in, kept = None, c.get("train", 0) + c.get("val", 0)
        else:
            n_in, kept = c.get("in"), c.get("kept")
        steps.append({"stage": m["stage"], "kind": m["kind"], "in": n_in, "kept": kept, "dropped": m.get("dropped", {})})
    return steps


def judge_cards(manifests: list[dict]) -> list[dict]:
    """The judge quality card of every crossfilter stage that ran one (``calibration``), one row per judge."""
    rows = []
    for m in manifests:
        card = (m.get("metrics") or {}).get("judge_card") if m.get("kind") == "crossfilter" else None
        if m.get("status") != "done" or not card:
            continue
        for judge, c in card.get("judges", {}).items():
            rows.append({"stage": m["stage"], "judge": judge, "questions": card.get("questions"), **c})
    return rows


def _find_curves(obj, prefix: str = "") -> dict[str, list]:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "loss_curve" and isinstance(v, list) and v:
                out[prefix or "train"] = v
            else:
                out.update(_find_curves(v, f"{prefix}.{k}" if prefix else k))
    return out


def training_curves(manifests: list[dict]) -> dict[str, list]:
    """stage name (+ sub-key) -> [[step, loss], ...] from every finished stage's metrics."""
    curves = {}
    for m in manifests:
        for key, curve in _find_curves(m.get("metrics", {})).items():
            curves[m["stage"] if key == "train" else f"{m['stage']}.{key}"] = curve
    return curves


def tokenizer_analysis(manifests: list[dict]) -> dict[str, list[dict]]:
    """stage -> rows of the tokenizer stage's analysis.json (before/after)."""
    out = {}
    for m in manifests:
        rel = (m.get("outputs") or {}).get("analysis")
        if m.get("kind") == "tokenizer" and rel and (Path(m["_dir"]) / rel).is_file():
            out[m["stage"]] = json.loads((Path(m["_dir"]) / rel).read_text(encoding="utf-8"))
    return out


def preference_results(manifests: list[dict]) -> list[dict]:
    """Before/after figures of reward and rejection-sampling stages, each measured on held-out data.

    Rows ``{"stage", "what", "before", "after", "n"}``: a reward stage's pairwise accuracy on held-out rankings,
    a rejection-sampling stage's mean reward of the start and final policy on held-out prompts.
    """
    rows = []
    for m in manifests:
        met, c = m.get("metrics") or {}, m.get("counts") or {}
        if m.get("kind") == "reward" and "heldout_accuracy_after" in met:
            rows.append({"stage": m["stage"], "what": "pairwise accuracy on held-out rankings",
                         "before": met.get("heldout_accuracy_before"), "after": met["heldout_accuracy_after"],
                         "n": f"{c.get('heldout_records', '?')} rankings",
                         **_paired_change(met.get("heldout_accuracy_change"))})
        if m.get("kind") == "rejection_sampling" and "mean_reward_after" in met:
            rows.append({"stage": m["stage"], "what": "mean reward on held-out prompts (policy before/after)",
                         "before": met.get("mean_reward_before"), "after": met["mean_reward_after"],
                         "n": f"{met.get('heldout_prompts', '?')} prompts",
                         **_paired_change(met.get("mean_reward_change"))})
    return rows


def _paired_change(change: dict | None) -> dict:
    """``{"difference", "ci"}`` of a stage's after − before (paired bootstrap over held-out items); None when
    the stage did not measure one (older manifests)."""
    change = change or {}
    return {"difference": change.get("difference"), "ci": change.get("ci")}


def auto_notes(results: dict, manifests: list[dict]) -> list[str]:
    """Notes the run itself implies: a judge that also produced or filtered training data."""
    judge = (results.get("settings") or {}).get("judge")
    notes = []
    if judge:
        used = [m["stage"] for m in manifests if m.get("kind") in ("generate", "crossfilter")
                and judge in json.dumps(m.get("config", {}))]
        if used:
            notes.append(f"The judge endpoint {judge!r} also served stages {', '.join(used)} "
                         "(teacher/filter): its verdicts may favour answers like its own.")
        if judge in results["models"].values():
            notes.append(f"The judge endpoint {judge!r} is also one of the compared models.")
    return notes


# ---- plots ------------------------------------------------------------------------------------

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bar_plot(task: str, info: dict, scores: dict, models: list[str]) -> str:
    return _png(bar_figure(task, info, scores, models))


def bar_figure(task: str, info: dict, scores: dict, models: list[str]):
    """One bar per model (a model without a score is shown as "no score", never dropped), with 95% CIs,
    a chance line for accuracy, and a 1..points axis without intervals for Likert means."""
    import matplotlib.pyplot as plt

    key, scale, unit = MAIN_METRIC[info["output_type"]]
    likert = info["output_type"] == "likert"
    vals = [scores.get(m, {}).get(key, float("nan")) * scale for m in models]
    cis = [None if likert else scores.get(m, {}).get("rougeL_ci" if key == "rougeL" else "ci") for m in models]
    err = [[max(v - c[0] * scale, 0) if c and not math.isnan(v) else 0 for v, c in zip(vals, cis)],
           [max(c[1] * scale - v, 0) if c and not math.isnan(v) else 0 for v, c in zip(vals, cis)]]
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(models) + 1.5), 2.8))
    shown = [0 if math.isnan(v) else v for v in vals]
    ax.bar(models, shown, yerr=None if likert else err, capsize=4, color="#4c78a8")
    if likert:
        points = next((s["points"] for s in scores.values() if "points" in s), 5)
        ax.set_ylim(1, points)  # a mean on a 1..points scale: the axis starts at 1, not 0
    else:
        top = max([1e-3, *[v + e for v, e in zip(shown, err[1])]])
        ax.set_ylim(0, 100 if scale == 100 else max(1.0, top * 1.1) if key == "rougeL" else top * 1.1)
    for i, v in enumerate(vals):
        if math.isnan(v):
            ax.text(i, ax.get_ylim()[0], "no score", ha="center", va="bottom", fontsize=8, color="#e15759")
    chance = [scores[m]["chance"] for m in models if scores.get(m, {}).get("chance") is not None]
    if info["output_type"] == "multiple_choice" and chance:
        ax.axhline(chance[0] * 100, ls="--", color="#888", lw=1)
        ax.text(len(models) - 0.5, chance[0] * 100, " chance", va="bottom", ha="right", fontsize=7, color="#666")
    ax.set_title(f"{task}: {unit}" + ("" if likert else " (95% CI)"), fontsize=10)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return fig


def _dist_plot(task: str, scores: dict) -> str | None:
    import matplotlib.pyplot as plt

    data = {m: s["rougeL_items"] for m, s in scores.items() if s.get("rougeL_items")}
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(data) + 1.5), 2.8))
    ax.boxplot(list(data.values()), tick_labels=list(data), showmeans=True)
    ax.set_title(f"{task}: per-answer ROUGE-L", fontsize=10)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _png(fig)


def _judge_plot(task: str, pairs: dict) -> str | None:
    import matplotlib.pyplot as plt

    rows = [(f"{p}\n{c}", r["criteria"][c]["rates"]) for p, r in pairs.items() for c in r["criteria"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1))
    left = [0.0] * len(rows)
    for outcome, color in (("win", "#59a14f"), ("tie", "#bab0ac"), ("loss", "#e15759")):
        vals = [r[outcome]["mean"] if not math.isnan(r[outcome]["mean"]) else 0 for _, r in rows]
        ax.barh([n for n, _ in rows], vals, left=left, color=color, label=outcome)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(ncol=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.set_title(f"{task}: judge, first model's win/tie/loss", fontsize=10, pad=22)
    return _png(fig)


def _funnel_plot(steps: list[dict]) -> str | None:
    import matplotlib.pyplot as plt

    bars = [(f"{s['stage']} ({s['kind']})", s["kept"]) for s in steps if s["kept"] is not None]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(bars) + 1))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color="#f28e2b")
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_title("data engine: rows kept after each step", fontsize=10)
    return _png(fig)


def _curve_plot(curves: dict[str, list]) -> str | None:
    import matplotlib.pyplot as plt

    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("training loss", fontsize=10)
    return _png(fig)


def make_plots(results: dict, steps: list[dict], curves: dict) -> list[dict]:
    """Every plot as ``{"title", "png"}`` (base64)."""
    import matplotlib

    matplotlib.use("Agg")
    plots = []
    for task, info in results["tasks"].items():
        scores = results["scores"].get(task, {})
        if info["output_type"] != "judge":  # a judge task's comparison is the win/tie/loss plot
            plots.append({"title": f"{task}", "png": _bar_plot(task, info, scores, list(results["models"]))})
        if info["output_type"] in ("generate_until", "judge", "dialogue") and (png := _dist_plot(task, scores)):
            plots.append({"title": f"{task}: ROUGE-L distribution", "png": png})
    for task, pairs in (results.get("judge") or {}).items():
        if png := _judge_plot(task, pairs):
            plots.append({"title": f"{task}: judge", "png": png})
    if png := _funnel_plot(steps):
        plots.append({"title": "data-engine funnel", "png": png})
    if png := _curve_plot(curves):
        plots.append({"title": "training curves", "png": png})
    return plots


# ---- page -------------------------------------------------------------------------------------

def build_report(run_dir: Path, results_path: Path, out: Path, notes: list[str] | None = None,
                 title: str | None = None) -> dict:
    """Write ``out`` (HTML) and ``out`` with .json next to it; return the data the page shows."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    manifests = _manifests(run_dir)
    steps, curves = funnel(manifests), training_curves(manifests)
    cols, rows = headline_table(results)
    data = {
        "title": title or f"Hypnos report: {Path(run_dir).name}",
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "notes": list(notes or []) + auto_notes(results, manifests),
        "models": results["models"], "tasks": results["tasks"], "scores": results["scores"],
        "judge": results.get("judge") or {}, "contamination": results.get("contamination") or {},
        "settings": results.get("settings", {}), "columns": cols, "rows": rows, "funnel": steps,
        "paired": results.get("paired") or {}, "methods": results.get("methods") or {},
        "curves": {k: v[-1] for k, v in curves.items()}, "tokenizer": tokenizer_analysis(manifests),
        "judge_cards": judge_cards(manifests),
        "heldout": results.get("heldout") or {},
        "preference": preference_results(manifests),
        "stages": [{"stage": m["stage"], "kind": m["kind"], "status": m.get("status"),
                    "seconds": m.get("timings", {}).get("seconds")} for m in manifests],
    }
    data["heldout_columns"], data["heldout_rows"], data["heldout_pairs"] = heldout_rows(results)
    data["plots"] = make_plots(results, steps, curves)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "jinja"]))
    env.filters["fmt"] = _fmt
    html = env.get_template("report.html.jinja").render(**data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    slim = {k: v for k, v in data.items() if k != "plots"} | {"plots": [p["title"] for p in data["plots"]]}
    out.with_suffix(".json").write_text(json.dumps(slim, ensure_ascii=False, indent=1, default=str),
                                        encoding="utf-8")
    return data
