"""Drop training rows that share a character n-gram with any benchmark item.

Run: ``hypnos decontaminate --config decontam.yaml`` or as a recipe stage::

    - name: decontaminate
      kind: decontaminate
      input: "@dedup"
      benchmarks: [bench/anesthesia_mcq.jsonl, bench/anesthesia_openqa.jsonl]
      ngram: 13

Both sides are normalised first (NFKC, lowercase, no whitespace or punctuation: ``text.normalize``),
so a benchmark question copied with different punctuation or full-width digits is still caught.
13 characters is long enough that shared medical phrases ("全身麻醉诱导") don't trigger it and short
enough that a copied question always does. Benchmark text is the question (+ options) of mcq rows,
instruction + input of qa rows, the text of text rows; training text includes the answer by default
because a benchmark question pasted into an answer leaks just as much.

``overlap_report(train_files, bench_files)`` gives the same numbers without writing anything, for the
eval report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.progress import track
from hypnos.common.stage import StageConfig, StageContext, StageResult
from hypnos.data.text import char_ngrams, normalize, record_text

N_EXAMPLES = 5


class BenchIndex:
    """Every n-gram of a set of benchmark files -> (benchmark name, item id) of its first owner.

    Args:
        bench_files: benchmark name -> file.
        ngram: characters per n-gram.
    """

    def __init__(self, bench_files: dict[str, Path], ngram: int = 13):
        self.ngram = ngram
        self.grams: dict[str, tuple[str, str]] = {}
        self.sizes: dict[str, int] = {}
        for name, path in bench_files.items():
            n = 0
            for row_id, text in _texts(path, with_answer=False):
                n += 1
                for g in char_ngrams(normalize(text), ngram):
                    self.grams.setdefault(g, (name, row_id))
            self.sizes[name] = n

    def match(self, text: str) -> tuple[str, str, str] | None:
        """(benchmark, item id, shared n-gram) of the first n-gram of ``text`` found, else None.

        Texts shorter than ``ngram`` after normalisation are never matched: a handful of characters
        is no evidence of leakage.
        """
        t = normalize(text)
        for i in range(len(t) - self.ngram + 1):
            hit = self.grams.get(t[i : i + self.ngram])
            if hit is not None:
                return hit[0], hit[1], t[i : i + self.ngram]
        return None


def _texts(path: Path, with_answer: bool) -> Iterator[tuple[str, str]]:
    """(id, text) of every row of a record file; a bad row raises DataError(file, line)."""
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        try:
            text = record_text(item.data, with_answer)
        except ValueError as e:
            raise DataError(item.path, item.line, str(e)) from None
        yield str(item.data.get("id", f"{Path(path).name}:{item.line}")), text


def _bench_names(files: list[str | Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for f in files:
        p = Path(f)
        name = p.stem if p.stem not in names else str(p)
        names[name] = p
    return names


def overlap_report(train_files: list[str | Path], bench_files: list[str | Path], ngram: int = 13,
                   with_answer: bool = True) -> dict:
    """How much of each benchmark leaks into the training files.

    Args:
        train_files: training record files.
        bench_files: benchmark record files (named by file stem in the report).
        ngram: characters per n-gram.
        with_answer: include training answers in the check.

    Returns:
        ``{"ngram", "train_rows", "flagged_rows", "benchmarks": {name: {"items", "train_rows_flagged",
        "bench_items_hit", "examples": [{"train_id", "bench_id", "ngram"}]}}}``.
    """
    index = BenchIndex(_bench_names(bench_files), ngram)
    per = {name: {"items": size, "train_rows_flagged": 0, "bench_items_hit": set(), "examples": []}
           for name, size in index.sizes.items()}
    rows = flagged = 0
    for f in train_files:
        for row_id, text in _texts(Path(f), with_answer):
            rows += 1
            hit = index.match(text)
            if hit:
                flagged += 1
                _count(per[hit[0]], row_id, hit)
    for v in per.values():
        v["bench_items_hit"] = len(v["bench_items_hit"])
    return {"ngram": ngram, "train_rows": rows, "flagged_rows": flagged, "benchmarks": per}


def _count(entry: dict, row_id: str, hit: tuple[str, str, str]) -> None:
    entry["train_rows_flagged"] += 1
    entry["bench_items_hit"].add(hit[1])
    if len(entry["examples"]) < N_EXAMPLES:
        entry["examples"].append({"train_id": row_id, "bench_id": hit[1], "ngram": hit[2]})


# ---- the stage ------------------------------------------------------------------------------------


class Config(StageConfig):
    """Decontamination stage config."""

    input: str
    """Training rows (path or "@stage[.output]")."""
    benchmarks: list[str] = Field(min_length=1)
    """Benchmark files (paths or refs); each is reported under its file stem."""
    ngram: int = Field(13, ge=4)
    """Characters per n-gram, after normalisation."""
    with_answer: bool = True
    """Check training answers too, not only the questions."""

    def check(self, ctx: StageContext) -> list[str]:
        probs = ctx.check_ref(self.input, "input")
        for b in self.benchmarks:
            probs += ctx.check_ref(b, "benchmarks")
        return probs


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write ``kept`` (clean rows) and ``dropped`` (rows + the benchmark item and n-gram they share)."""
    index = BenchIndex(_bench_names([ctx.resolve(b) for b in cfg.benchmarks]), cfg.ngram)
    per = {name: {"items": size, "train_rows_flagged": 0, "bench_items_hit": set(), "examples": []}
           for name, size in index.sizes.items()}
    path = ctx.resolve(cfg.input)
    kept, dropped = [], []
    for item in track(list(iter_rows(path)), desc="decontaminate", unit="row"):
        if isinstance(item, DataError):
            raise item
        try:
            text = record_text(item.data, cfg.with_answer)
        except ValueError as e:
            raise DataError(item.path, item.line, str(e)) from None
        hit = index.match(text)
        if hit is None:
            kept.append(item.data)
            continue
        _count(per[hit[0]], str(item.data.get("id", item.line)), hit)
        dropped.append({**item.data, "contamination": {"benchmark": hit[0], "bench_id": hit[1], "ngram": hit[2]}})
    for v in per.values():
        v["bench_items_hit"] = len(v["bench_items_hit"])
    write_jsonl(ctx.out_dir / "kept.jsonl", kept)
    write_jsonl(ctx.out_dir / "dropped.jsonl", dropped)
    return StageResult(outputs={"kept": "kept.jsonl", "dropped": "dropped.jsonl"},
                       counts={"in": len(kept) + len(dropped), "kept": len(kept), "dropped": len(dropped)},
                       dropped={f"overlaps_{k}": v["train_rows_flagged"] for k, v in per.items()
                                if v["train_rows_flagged"]},
                       metrics={"ngram": cfg.ngram, "benchmarks": per})
