"""`hypnos data ...`: check record files, show category balance, import public formats.

The data-engine commands (generate, crossfilter, dedup, ...) run as stages: `hypnos generate --config ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
console = Console(soft_wrap=True)  # a file:line message stays on one line, whatever the width


@app.command()
def check(
    files: list[Path],
    kind: Annotated[str | None, typer.Option(help="qa|dialogue|mcq|ranked|ner|text (default: per row)")] = None,
    quarantine: Annotated[bool, typer.Option(help="write bad rows to <file>.quarantine.jsonl, don't stop")] = False,
    encoding: Annotated[str | None, typer.Option(help="the files' text encoding (default: detected per file)")] = None,
) -> None:
    """Validate record files; every bad row is reported as file:line: reason."""
    import tempfile

    from hypnos.common.io import DataError, ReadReport, quarantine_path
    from hypnos.common.records import read_records

    bad = 0
    for f in files:
        report = ReadReport()
        try:
            # every bad row is collected (a check that stops at the first one means one rerun per bad row);
            # without --quarantine their quarantine file goes to a scratch folder that is thrown away
            with tempfile.TemporaryDirectory() as scratch:
                recs = read_records(f, kind, on_error="quarantine", report=report, encoding=encoding,
                                    quarantine_dir=None if quarantine else scratch)
        except DataError as e:
            console.print(f"[red]{e}[/red]", highlight=False)
            bad += 1
            continue
        for e in report.rejected:
            console.print(f"[yellow]{e}[/yellow]", highlight=False)
        bad += len(report.rejected)
        where = f" (quarantined in {quarantine_path(f)})" if report.rejected and quarantine else ""
        console.print(f"{f}: {report.read} rows: {len(recs)} valid, {len(report.rejected)} rejected{where}",
                      highlight=False)
        if report.read == 0:
            console.print(f"[yellow]warning: {f}: no rows (empty file)[/yellow]", highlight=False)
    raise typer.Exit(1 if bad else 0)


@app.command()
def stats(
    files: list[Path],
    encoding: Annotated[str | None, typer.Option(help="the files' text encoding (default: detected per file)")] = None,
) -> None:
    """Rows, kinds, categories, kinds of question and length of each record file."""
    from hypnos.common.io import DataError
    from hypnos.data.stats import file_stats

    for f in files:
        try:
            s = file_stats(f, encoding)
        except DataError as e:
            console.print(f"[red]{e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        table = Table(title=f"{f}  ({s['rows']} rows, {s['kind']}, mean {s['mean_chars']:.0f} chars)")
        table.add_column("field")
        table.add_column("value")
        table.add_column("count", justify="right")
        table.add_column("share", justify="right")
        for field, counts in s["balance"].items():
            for value, n in counts.items():
                table.add_row(field, value, str(n), f"{n / s['rows']:.0%}")
        console.print(table)


@app.command("import")
def import_(
    fmt: Annotated[str, typer.Argument(help="cmexam|cmmlu|huatuo|medicalgpt_sft|medicalgpt_reward|span_ner|toyhom|sharegpt")],
    src: Path,
    out: Path,
    quarantine: Annotated[bool, typer.Option(help="quarantine bad rows instead of stopping")] = False,
    encoding: Annotated[str | None, typer.Option(help="the file's text encoding (default: detected)")] = None,
) -> None:
    """Convert a public dataset file into Hypnos records (JSONL)."""
    from hypnos.common.io import DataError, ReadPolicy, read_policy, write_jsonl
    from hypnos.data.importers import IMPORTERS, import_file

    if fmt not in IMPORTERS:
        console.print(f"[red]unknown format {fmt!r}; known: {', '.join(IMPORTERS)}[/red]")
        raise typer.Exit(2)
    try:  # the policy only carries the declared encoding; the importer handles bad rows itself
        with read_policy(ReadPolicy(encoding=encoding, check_types=False)):
            recs, report = import_file(fmt, src, on_error="quarantine" if quarantine else "raise")
    except DataError as e:
        console.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(1)
    n = write_jsonl(out, (r.to_dict() for r in recs))
    console.print(f"{src} -> {out}: {n} records, {len(report.rejected)} quarantined", highlight=False)


@app.command("deid-eval")
def deid_eval(
    part: Annotated[list[str] | None, typer.Option(help="dev, heldout, heldout2… (default: every part)")] = None,
    set_file: Annotated[Path | None, typer.Option("--set", help="another set file in the same {type:text} markup")] = None,
    ages: Annotated[bool, typer.Option(help="also find ages over 89 (ages_over_89)")] = True,
    show_errors: Annotated[bool, typer.Option("--errors", help="list every miss and false alarm")] = False,
) -> None:
    """Per-type precision and recall of de-identification on the hand-labelled set (tests/deid), exact-span and overlap."""
    from hypnos.common.io import DataError
    from hypnos.data.deid_eval import PARTS, errors, load_parts, load_set, score
    from hypnos.data.deidentify import PLACEHOLDER, Deidentifier

    try:
        parts = {set_file.stem: load_set(set_file)} if set_file else load_parts(part or PARTS)
    except DataError as e:
        console.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(1)
    deid = Deidentifier(ages_over_89=ages)
    for name, examples in parts.items():
        stats = score(deid.find, examples)
        clean = [e for e in examples if not e.spans]
        kept = sum(deid.scrub(e.text)[0] == e.text for e in clean)
        table = Table(title=f"{name}: {len(examples)} sentences, {len(clean)} without PII ({kept} left intact)")
        for col in ("type", "gold", "predicted", "P exact", "R exact", "P overlap", "R overlap"):
            table.add_column(col, justify="left" if col == "type" else "right")
        for kind, s in sorted(stats.items(), key=lambda kv: kv[0] == "all"):
            table.add_row(PLACEHOLDER.get(kind, kind), str(s["gold"]), str(s["pred"]),
                          *(f"{s[k]:.3f}" for k in ("precision_exact", "recall_exact", "precision_overlap",
                                                    "recall_overlap")))
        console.print(table)
        if show_errors:
            for where, what, kind, text in errors(deid.find, examples):
                console.print(f"{where}: {what} {kind} {text}", highlight=False)
