"""``hypnos eval ...`` commands.

    hypnos eval list-tasks [--include-path DIR]
    hypnos eval run -m base=smollm2-135m-instruct -m sft=runs/demo/sft/model -t anesthesia_mcq --limit 20
    hypnos eval run --config eval.yaml            # eval stage fields + endpoints:, as in a recipe
    hypnos eval human-export runs/eval/eval --task anesthesia_cases --out sheets/
    hypnos eval human-import sheets/key.json sheets/filled_*.csv
    hypnos eval report runs/demo                  # the report stage on an existing run
    hypnos eval score cmexam_anesthesia answers.jsonl   # predictions made elsewhere ({"id", "prediction"})
    hypnos eval export-lm-eval cmexam_anesthesia lm_tasks/   # for `lm_eval --include_path lm_tasks`
    hypnos eval heldout held.jsonl -m base=smollm2-135m-instruct -m ext=runs/x/model --pair ext,base  # bits/char
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True)


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(2)


@app.command("list-tasks")
def list_tasks(include_path: Annotated[list[Path] | None, typer.Option(help="more task folders")] = None) -> None:
    """List every task found (built-in folder + include paths) and whether its data is present."""
    from hypnos.eval.tasks import TaskError, discover

    try:
        tasks = discover(include_path)
    except TaskError as e:
        _fail(str(e))
    table = Table(title="evaluation tasks")
    for col in ("task", "type", "data", "private", "description"):
        table.add_column(col)
    for name, t in sorted(tasks.items()):
        files = t.data_files()
        ok = bool(files) and all(f.exists() for f in files)
        table.add_row(name, t.output_type, f"{len(files)} file(s)" if ok else f"[red]missing[/red] {t.dataset_path}",
                      "yes" if t.private else "", t.description)
    Console().print(table)


def _pairs(values: list[str] | None) -> list[list[str]]:
    out = []
    for v in values or []:
        a, sep, b = v.partition(",")
        if not sep:
            _fail(f"--pair {v!r}: write it as A,B (two model labels)")
        out.append([a.strip(), b.strip()])
    return out


@app.command("run")
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML: eval stage fields + endpoints")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="LABEL=REF (repeatable)")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="task name (repeatable)")] = None,
    limit: Annotated[int | None, typer.Option(help="first N items per task")] = None,
    judge: Annotated[str | None, typer.Option(help="judge endpoint name (from --config endpoints)")] = None,
    pair: Annotated[list[str] | None, typer.Option(help="A,B labels the judge compares (repeatable)")] = None,
    include_path: Annotated[list[str] | None, typer.Option(help="more task folders")] = None,
    batch_size: Annotated[int | None, typer.Option(help="prompts per forward")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="generation length of open answers")] = None,
    num_fewshot: Annotated[int | None, typer.Option(help="solved examples before each MCQ (task default: 0)")] = None,
    circular: Annotated[bool | None, typer.Option("--circular/--no-circular",
                                                  help="MCQ: also every rotation of the options")] = None,
    name: Annotated[str, typer.Option(help="run name (folder under --output-dir)")] = "eval",
    output_dir: Annotated[Path, typer.Option(help="where runs go")] = Path("runs"),
    report: Annotated[bool, typer.Option(help="also write the HTML report")] = True,
    force: bool = False,
) -> None:
    """Evaluate models side by side (a one- or two-stage recipe: eval, then report)."""
    import yaml

    from hypnos.cli import _setup_logging, _summary
    from hypnos.common.runner import load_recipe, run_recipe
    from hypnos.common.stage import ConfigError

    _setup_logging(False)
    fields: dict = {}
    base = Path.cwd()
    if config is not None:
        if not config.exists():
            _fail(f"{config}: config file not found")
        fields = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        base = config.parent
    endpoints = fields.pop("endpoints", {})
    notes = fields.pop("notes", [])
    given = {"models": dict(m.split("=", 1) for m in model or [] if "=" in m) or None, "tasks": task or None,
             "limit": limit, "judge": judge, "pairs": _pairs(pair) or None, "include_paths": include_path or None,
             "batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_fewshot": num_fewshot,
             "circular": circular}
    if any("=" not in m for m in model or []):
        _fail("--model takes LABEL=REF, e.g. -m base=smollm2-135m-instruct")
    fields.update({k: v for k, v in given.items() if v is not None})
    stages = [{"name": "eval", "kind": "eval", **fields}]
    if report:
        stages.append({"name": "report", "kind": "report", "eval": "@eval", "notes": notes})
    recipe = {"name": name, "endpoints": endpoints, "stages": stages}
    # The recipe goes in a temporary folder, never next to the user's config (a killed run left tmp*.yaml
    # there); relative paths keep their meaning because the config's folder becomes the recipe's base_dir.
    tmpdir = tempfile.mkdtemp(prefix="hypnos-eval-")
    tmp = str(Path(tmpdir) / "recipe.yaml")
    Path(tmp).write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    try:
        r = load_recipe(tmp, output_dir=output_dir)
        r.base_dir = base.resolve()
        manifests = run_recipe(r, force=force)
    except ConfigError as e:
        _fail(str(e).replace(tmp, str(config or "command line")))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    _summary(r, manifests)
    _print_results(r.stage_dir("eval") / "results.json")


def _print_results(path: Path) -> None:
    from hypnos.eval.report import headline_table

    res = json.loads(path.read_text(encoding="utf-8"))
    cols, rows = headline_table(res)
    table = Table(title=f"results ({path})")
    for c in ["model", *cols]:
        table.add_column(c)
    for label, cells in rows.items():
        table.add_row(label, *cells)
    Console().print(table)


@app.command("human-export")
def human_export(
    eval_dir: Annotated[Path, typer.Argument(help="an eval stage folder (holds predictions/)")],
    task: Annotated[str, typer.Option(help="task whose answers are rated")],
    out: Annotated[Path, typer.Option(help="folder for the sheets and the key")],
    models: Annotated[list[str] | None, typer.Option("--model", help="labels to include (default: all)")] = None,
    pair: Annotated[str | None, typer.Option(help="A,B: a pairwise sheet (blinded A vs B per criterion)")] = None,
    seed: int = 0,
) -> None:
    """Write blinded, shuffled rating sheets (CSV + HTML form, or a pairwise CSV) and the unblinding key."""
    from hypnos.common.io import DataError
    from hypnos.eval.human import export_pairwise, export_sheets

    try:
        files = (export_pairwise(eval_dir, task, out, tuple(_pairs([pair])[0]), seed) if pair
                 else export_sheets(eval_dir, task, out, models, seed))
    except DataError as e:
        _fail(str(e))
    for k, v in files.items():
        console.print(f"{k}: {v}")


@app.command("human-import")
def human_import(
    key: Annotated[Path, typer.Argument(help="key.json written by human-export")],
    sheets: Annotated[list[Path], typer.Argument(help="filled CSV sheets, one per rater")],
    out: Annotated[Path | None, typer.Option(help="write the aggregate as JSON here")] = None,
) -> None:
    """Unblind filled sheets, aggregate ratings per model, and measure inter-rater agreement."""
    from hypnos.common.io import DataError
    from hypnos.eval.human import import_sheets

    try:
        res = import_sheets(key, sheets)
    except DataError as e:
        _fail(str(e))
    text = json.dumps(res, ensure_ascii=False, indent=1)
    if out:
        out.write_text(text, encoding="utf-8")
    print(text)


@app.command("report")
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/demo")],
           eval_stage: Annotated[str, typer.Option(help="the eval stage's folder name")] = "eval",
           out: Annotated[Path | None, typer.Option(help="HTML file (default: RUN_DIR/report.html)")] = None,
           note: Annotated[list[str] | None, typer.Option(help="a note to print (repeatable)")] = None) -> None:
    """Write the HTML report of an existing run (same page as the report stage)."""
    from hypnos.eval.report import build_report

    out = out or run_dir / "report.html"
    build_report(run_dir, run_dir / eval_stage / "results.json", out, notes=note or [])
    console.print(f"report: {out.resolve()}")


@app.command("score")
def score(
    task: Annotated[str, typer.Argument(help="task name (hypnos eval list-tasks)")],
    predictions: Annotated[Path | None, typer.Argument(help='JSONL: {"id": ..., "prediction": ...} per item')] = None,
    include_path: Annotated[list[str] | None, typer.Option(help="more task folders")] = None,
    out: Annotated[Path | None, typer.Option(help="write scores (and per-item rows) as JSON here")] = None,
    list_ids: Annotated[bool, typer.Option("--list-ids", help="print the task's item ids and exit")] = False,
    seed: int = 0,
) -> None:
    """Score predictions produced elsewhere (API runs, vLLM, other toolkits) with the task's metric."""
    from hypnos.common.io import DataError
    from hypnos.eval.external import load_docs, score_file
    from hypnos.eval.tasks import TaskError, get_tasks

    try:
        t = get_tasks([task], include_path)[0]
        if list_ids:
            print("\n".join(d["id"] for d in load_docs(t)[0]))
            return
        if predictions is None:
            _fail("give a predictions file (or --list-ids)")
        scores, rows = score_file(t, predictions, seed)
    except (TaskError, DataError) as e:
        _fail(str(e))
    slim = {k: v for k, v in scores.items() if not k.endswith("_items")}
    if out:
        out.write_text(json.dumps({"task": task, "predictions": str(predictions), "scores": scores, "items": rows},
                                  ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps(slim, ensure_ascii=False, indent=1))


@app.command("export-lm-eval")
def export_lm_eval(
    task: Annotated[str, typer.Argument(help="task name")],
    out_dir: Annotated[Path, typer.Argument(help="folder to pass to lm_eval --include_path")],
    include_path: Annotated[list[str] | None, typer.Option(help="more task folders")] = None,
    limit: Annotated[int | None, typer.Option(help="first N items")] = None,
) -> None:
    """Write the task as an lm-evaluation-harness task (YAML + rendered JSONL) into OUT_DIR/TASK/."""
    from hypnos.common.io import DataError
    from hypnos.eval.lmeval import export
    from hypnos.eval.tasks import TaskError, get_tasks

    try:
        path = export(get_tasks([task], include_path)[0], out_dir, limit)
    except (TaskError, DataError) as e:
        _fail(str(e))
    console.print(f"wrote {path}; run: lm_eval --include_path {out_dir} --tasks {task} --model hf "
                  "--model_args pretrained=MODEL")


@app.command("heldout")
def heldout(
    files: Annotated[list[Path], typer.Argument(help="held-out record files (QA/text/conversations) or .txt")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="NAME=MODEL (repeatable)")],
    pair: Annotated[list[str] | None, typer.Option(help="A,B: paired CI of A minus B (repeatable)")] = None,
    mode: Annotated[str, typer.Option(help="text: score question+answer; answer: the answer given the question")] = "text",
    max_texts: Annotated[int, typer.Option(help="texts read (in file order)")] = 200,
    max_chars: Annotated[int, typer.Option(help="characters scored per text")] = 300,
    out: Annotated[Path | None, typer.Option(help="write the result (per-text bits included) as JSON")] = None,
) -> None:
    """Bits per character of models on held-out text, with paired bootstrap CIs (hypnos/eval/heldout.py)."""
    from hypnos.common.io import DataError
    from hypnos.common.models import ModelNotFoundError
    from hypnos.eval.heldout import evaluate, format_result, write_result

    models = dict(m.partition("=")[::2] for m in model)
    if any(not v for v in models.values()) or mode not in ("text", "answer"):
        _fail("write models as NAME=MODEL and --mode as text or answer")
    try:
        result = evaluate(models, files, mode, max_texts, max_chars, [tuple(p) for p in _pairs(pair)])
    except (DataError, ModelNotFoundError, ValueError) as e:
        _fail(str(e))
    if out:
        write_result(result, out)
    Console().print(format_result(result), highlight=False)
