"""The ``hypnos`` command line.

    hypnos run recipes/demo.yaml [--from STAGE] [--only STAGE] [KEY=VALUE ...]
    hypnos validate recipes/demo.yaml
    hypnos <stage kind> --config stage.yaml [KEY=VALUE ...]      # one stage on its own
    hypnos models list | prepare NAME        hypnos serve MODEL
    hypnos data check|stats|import ...       hypnos tokenizer train|extend|analyze
    hypnos eval ...

Heavy libraries (torch, transformers) are imported inside commands so the CLI starts fast.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hypnos.common.models_cli import app as models_app
from hypnos.common.stage import ConfigError
from hypnos.data.cli import app as data_app
from hypnos.eval.cli import app as eval_app
from hypnos.serve.chat import chat
from hypnos.serve.cli import serve
from hypnos.stages import STAGES
from hypnos.tokenizer.cli import app as tokenizer_app

app = typer.Typer(help="Hypnos: turn a general LLM into a Chinese medical specialist.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(models_app, name="models", help="Show and prepare base models.")
app.add_typer(data_app, name="data", help="Check, import and engineer data.")
app.add_typer(tokenizer_app, name="tokenizer", help="Train, extend and analyze tokenizers.")
app.add_typer(eval_app, name="eval", help="Evaluate models on benchmark tasks.")
app.command("serve", help="Serve models behind an OpenAI-compatible API and a web chat page.")(serve)
app.command("chat", help="Chat with a model in the terminal (streaming).")(chat)
console = Console(stderr=True, soft_wrap=True)


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def validate(recipe: Path, overrides: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Check a recipe before anything loads: keys, files, references, endpoints, models, output dir."""
    from hypnos.common.runner import load_recipe, validate_recipe

    try:
        r = load_recipe(recipe, overrides)
        problems = validate_recipe(r)
    except ConfigError as e:
        _fail(str(e))
    if problems:
        _fail(f"{recipe}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    console.print(f"[green]ok[/green] {recipe}: {len(r.stages)} stages "
                  f"({', '.join(s.name for s in r.stages)}), {len(r.endpoints)} endpoints")


@app.command()
def run(
    recipe: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="stage.key=value overrides")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="start at this stage")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="run only this stage (repeatable)")] = None,
    force: Annotated[bool, typer.Option(help="re-run stages even if unchanged")] = False,
    output_dir: Annotated[Path | None, typer.Option(help="where runs go (default: runs/)")] = None,
    verbose: bool = False,
) -> None:
    """Run a recipe stage by stage into runs/<name>/<stage>/, skipping stages that are up to date."""
    from hypnos.common.runner import load_recipe, run_recipe

    _setup_logging(verbose)
    r = None
    try:
        r = load_recipe(recipe, overrides, output_dir=output_dir)
        manifests = run_recipe(r, from_stage=from_stage, only=only, force=force)
    except ConfigError as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - a message, not a traceback (which is in run.log)
        _stage_failed(e, r, verbose)
    _summary(r, manifests)


def _stage_failed(e: Exception, recipe, verbose: bool) -> None:
    """A DataError as ``file:line: reason``; anything else as one line naming run.log, which has the traceback."""
    from hypnos.common.io import DataError

    if isinstance(e, DataError):
        _fail(str(e), 1)
    if verbose:
        raise e
    where = f" (traceback in {recipe.output_dir / recipe.name / 'run.log'}; --verbose prints it)" if recipe else ""
    _fail(f"{type(e).__name__}: {e}{where}", 1)


def _summary(recipe, manifests: list[dict]) -> None:
    table = Table(title=f"recipe {recipe.name}: {recipe.output_dir / recipe.name}")
    for col in ("stage", "kind", "status", "in", "kept", "dropped", "seconds", "main output"):
        table.add_column(col)
    for m in manifests:
        c = m.get("counts", {})
        out = next(iter(m.get("outputs", {}).values()), "")
        table.add_row(m["stage"], m["kind"], "skipped (unchanged)" if m.get("skipped") else m["status"],
                      str(c.get("in", "")), str(c.get("kept", "")), str(c.get("dropped", "")),
                      str(m["timings"].get("seconds", "")), str(out))
    out = Console(width=None if sys.stdout.isatty() else 140)  # logs and CI: don't squeeze into 80 columns
    out.print(table)
    for m in manifests:
        for path, q in (m.get("quarantined") or {}).items():
            console.print(f"[yellow]{m['stage']}: {q['rows']} bad row(s) of {path} quarantined in "
                          f"{recipe.stage_dir(m['stage']) / q['file']}[/yellow]", highlight=False)
        for w in m.get("warnings") or []:
            console.print(f"[yellow]warning: {m['stage']}: {w}[/yellow]", highlight=False)
    for m in manifests:
        if m["kind"] == "report":
            path = recipe.stage_dir(m["stage"]) / next(iter(m["outputs"].values()))
            _results_table(out, path.with_suffix(".json"))
            out.print(f"[bold green]Report:[/bold green] {path.resolve()}")


def _results_table(out: Console, report_json: Path) -> None:
    """Models x (held-out bits/char, task headlines) with 95% CIs, then the held-out pairs: what the run found."""
    from hypnos.eval.report import heldout_rows, summary_table

    if not report_json.is_file():
        return
    data = json.loads(report_json.read_text(encoding="utf-8"))
    cols, rows = summary_table(data)
    table = Table(title="results (95% CIs; bits/char: lower is better)")
    for c in ["model", *cols]:
        table.add_column(c)
    for label, cells in rows.items():
        table.add_row(label, *cells)
    out.print(table)
    for p in heldout_rows(data)[2]:
        out.print(f"held-out {p['set']}: {p['a']} − {p['b']} = {p['difference']:+.3f} bits/char, paired 95% CI "
                  f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]: {p['verdict']}", highlight=False)
    for r in data.get("preference") or []:
        ci = (f"; after − before {r['difference']:+.3f}, paired 95% CI [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
              if r.get("difference") is not None else "")
        out.print(f"{r['stage']}: {r['what']} ({r['n']}): {r['before']} -> {r['after']}{ci}", highlight=False)


def _stage_command(kind: str):
    def command(
        config: Annotated[Path, typer.Option("--config", "-c", help="YAML with this stage's fields (+ endpoints:)")],
        overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
        name: Annotated[str | None, typer.Option(help="stage/run name (default: the kind)")] = None,
        output_dir: Annotated[Path, typer.Option(help="where runs go")] = Path("runs"),
        force: bool = False,
    ) -> None:
        import tempfile

        import yaml

        from hypnos.common.runner import load_recipe, run_recipe

        _setup_logging(False)
        fields = _read_stage_config(config)
        endpoints = fields.pop("endpoints", {})
        stage_name = name or kind
        fields.update({k: v for k, v in (_kv(o) for o in overrides or [])})
        recipe = {"name": stage_name, "endpoints": endpoints, "stages": [{"name": stage_name, "kind": kind, **fields}]}
        # A one-stage recipe in a temporary folder (never left next to the user's config); relative paths
        # keep meaning what they mean in the config because its folder becomes the recipe's base_dir.
        tmpdir = tempfile.mkdtemp(prefix="hypnos-stage-")
        tmp = str(Path(tmpdir) / "recipe.yaml")
        Path(tmp).write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        r = None
        try:
            r = load_recipe(tmp, output_dir=output_dir)
            r.base_dir, r.path = config.parent.resolve(), config
            manifests = run_recipe(r, force=force)
        except ConfigError as e:
            _fail(_map_lines(str(e), tmp, config))
        except Exception as e:  # noqa: BLE001 - a message, not a traceback (which is in run.log)
            _stage_failed(e, r, False)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        _summary(r, manifests)
        print(json.dumps(manifests[-1].get("metrics", {}), ensure_ascii=False, indent=1, default=str))

    command.__doc__ = f"Run the `{kind}` stage on its own (same config fields as in a recipe)."
    return command


def _read_stage_config(config: Path) -> dict:
    """A single-stage command's YAML: a mapping of the stage's fields; every problem is a one-line message."""
    import yaml

    if not config.exists():
        _fail(f"{config}: config file not found")
    if config.is_dir():
        _fail(f"{config}: is a directory; give the stage's YAML file")
    try:
        fields = yaml.safe_load(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        _fail(f"{config}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at byte {e.start + 1})")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{config}:{mark.line + 1}" if mark is not None else str(config)
        _fail(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}")
    if fields is None:
        return {}
    if not isinstance(fields, dict):
        _fail(f"{config}: a stage config is a mapping of field: value (got a {type(fields).__name__})")
    return fields


def _map_lines(msg: str, tmp: str, config: Path) -> str:
    """Point errors about the generated one-stage recipe at the user's config file and line."""
    import re

    import yaml

    from hypnos.common.runner import _key_lines

    lines = _key_lines(yaml.compose(config.read_text(encoding="utf-8")) or yaml.MappingNode("", []))

    def sub(m: re.Match) -> str:
        key = (m.group(2).split(".")[0],)
        return f"{config}:{lines[key]}: {m.group(2)}" if key in lines else f"{config}: {m.group(2)}"

    msg = re.sub(rf"{re.escape(tmp)}:(\d+): stage '[^']*': ([\w.]+)", sub, msg)
    return msg.replace(f"{tmp}:", f"{config}:").replace(tmp, str(config))


def _kv(o: str):
    import yaml

    if "=" not in o:
        _fail(f"override {o!r} is not KEY=VALUE")
    k, v = o.split("=", 1)
    try:
        return k, yaml.safe_load(v)
    except yaml.YAMLError as e:
        _fail(f"override {o!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})")


for _kind in STAGES:
    if _kind not in ("tokenizer", "eval"):  # those have command groups of their own
        app.command(_kind)(_stage_command(_kind))
app.command("stage-tokenizer")(_stage_command("tokenizer"))
app.command("stage-eval")(_stage_command("eval"))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
