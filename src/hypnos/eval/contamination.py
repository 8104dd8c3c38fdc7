"""Contamination check: every training set of the run against every benchmark of the evaluation.

Training sets are the outputs of the run's finished stages that hold qa, dialogue or text records
(found through their manifests), plus any configured files. Benchmarks are the evaluated tasks' items,
written to a temporary folder (deleted afterwards: private items never stay in the run's outputs).
Overlap is measured by ``hypnos.data.decontaminate.overlap_report`` (shared normalised 13-character
n-grams), the same rule the ``decontaminate`` stage drops rows by.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.records import detect_kind
from hypnos.common.stage import StageContext
from hypnos.eval.tasks import Task

log = logging.getLogger("hypnos")
TRAIN_KINDS = {"qa", "dialogue", "text"}


def record_kind(path: Path) -> str | None:
    """The record kind of a JSONL file's first row (None if it is not a record file)."""
    if path.suffix not in (".jsonl", ".json") or not path.is_file():
        return None
    try:
        for item in iter_rows(path):
            if isinstance(item, DataError):
                return None
            return detect_kind(item.data)
    except (DataError, ValueError):
        return None
    return None


def training_sets(run_dir: Path, skip: set[str] = frozenset()) -> dict[str, Path]:
    """``stage.output`` -> file for every finished stage output of qa/dialogue/text records in a run."""
    out: dict[str, Path] = {}
    for manifest in sorted(run_dir.glob("*/manifest.json")):
        m = json.loads(manifest.read_text(encoding="utf-8"))
        if m.get("status") != "done" or m.get("stage") in skip:
            continue
        for name, rel in (m.get("outputs") or {}).items():
            p = manifest.parent / rel
            if name != "dropped" and record_kind(p) in TRAIN_KINDS:
                out[f"{m['stage']}.{name}"] = p
    return out


def check(ctx: StageContext, train_files: list[str], tasks: list[Task], docs: dict[str, list[dict]]) -> dict:
    """Overlap of every training set with every benchmark (one report per training set)."""
    from hypnos.data.decontaminate import overlap_report

    sets = training_sets(ctx.run_dir, skip={ctx.name})
    sets.update({f: ctx.resolve(f) for f in train_files})
    bench_tasks = [t for t in tasks if t.output_type != "likert" and docs.get(t.task)]
    if not sets or not bench_tasks:
        return {"training_sets": {}, "note": "no training sets found in the run" if not sets else "no benchmarks"}
    out: dict = {"ngram": 13, "training_sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bench = []
        for t in bench_tasks:
            p = Path(tmp) / f"{t.task}.jsonl"
            write_jsonl(p, docs[t.task])
            bench.append(p)
        for name, path in sets.items():
            rep = overlap_report([path], bench)
            for t in bench_tasks:  # private benchmarks: counts only, no example n-grams
                if t.private:
                    rep["benchmarks"][t.task]["examples"] = []
            out["training_sets"][name] = rep
    return out
