"""Drop training rows that copy a benchmark item (its question, or its question with its answer).

Run: ``hypnos decontaminate --config decontam.yaml`` or as a recipe stage::

    - name: decontaminate
      kind: decontaminate
      input: "@dedup"
      benchmarks: [bench/anesthesia_mcq.jsonl, bench/anesthesia_openqa.jsonl]
      ngram: 13
      min_coverage: 0.5

Both sides are normalised first (NFKC, lowercase, no whitespace or punctuation: ``text.normalize``),
so a benchmark question copied with different punctuation or full-width digits is still caught.

A benchmark item is indexed as its parts: the stem (question, or instruction + input), the options'
texts (without their letters, so a copy of the option text matches) and the answer text (the correct
option's text, an explanation, or a QA item's reference answer). A training row copies an item when:

- the row holds at least ``min_coverage`` of the stem's 13-character n-grams (one shared medical
  phrase among many grams is not enough: the old any-one-n-gram rule flagged unrelated cases);
- for a stem shorter than one n-gram (14 of 77 CMExam anesthesia stems), the row holds the whole stem
  *and* the correct answer's text, or at least half of the options' texts -- the coverage rule for
  short items, since a few characters alone are no evidence;
- or the row holds ``min_coverage`` of the n-grams of a long answer text (a reference answer pasted in).

Training text includes the answer by default because a benchmark question pasted into an answer
leaks just as much. The stage and ``overlap_report(train_files, bench_files)`` report per benchmark:
items, short items, rows flagged, items hit and examples with their coverage.
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
MIN_CHARS = 4  # a stem shorter than this after normalisation is never matched on its own
MIN_ANSWER_CHARS = 2  # the answer text that must accompany a short stem (e.g. "丹曲林")


def item_parts(row: dict) -> tuple[str, list[str], str]:
    """(stem, option texts, answer text) of a benchmark record of any kind, not normalised."""
    if isinstance(row.get("options"), dict) or "question" in row and "options" in row:
        opts = row.get("options") or {}
        texts = [str(v) for v in opts.values()] if isinstance(opts, dict) else [str(o) for o in opts]
        ans = row.get("answer")
        answer = str(opts.get(ans, "")) if isinstance(opts, dict) and isinstance(ans, str) else ""
        return str(row.get("question", "")), texts, answer or str(row.get("explanation", ""))
    if "instruction" in row:
        stem = "\n".join(p for p in (row.get("input", ""), row["instruction"]) if p)
        return stem, [], str(row.get("output", ""))
    return record_text(row), [], ""


class BenchIndex:
    """The n-grams of every benchmark item's stem and answer, to find training rows that copy an item.

    Args:
        bench_files: benchmark name -> file.
        ngram: characters per n-gram.
        min_coverage: fraction of a stem's (or long answer's) n-grams a row must hold to copy it.
    """

    def __init__(self, bench_files: dict[str, Path], ngram: int = 13, min_coverage: float = 0.5):
        self.ngram, self.min_coverage = ngram, min_coverage
        self.items: list[dict] = []  # {bench, id, stem, answer, stem_grams, answer_grams}
        self.stem_grams: dict[str, list[int]] = {}
        self.answer_grams: dict[str, list[int]] = {}
        self.short_stems: dict[int, dict[str, list[int]]] = {}  # length -> stem -> items
        self.sizes: dict[str, int] = {}
        self.short: dict[str, int] = {}
        for name, path in bench_files.items():
            n = short = 0
            for row_id, row in _rows(path):
                n += 1
                stem, opts, answer = (normalize(x) if isinstance(x, str) else [normalize(o) for o in x]
                                      for x in item_parts(row))
                k = len(self.items)
                item = {"bench": name, "id": row_id, "stem": stem, "answer": answer, "stem_n": 0, "answer_n": 0,
                        "options": [o for o in opts if len(o) >= MIN_ANSWER_CHARS]}
                if len(stem) >= ngram:
                    grams = set(char_ngrams(stem, ngram))
                    item["stem_n"] = len(grams)
                    for g in grams:
                        self.stem_grams.setdefault(g, []).append(k)
                elif len(stem) >= MIN_CHARS:
                    short += 1
                    self.short_stems.setdefault(len(stem), {}).setdefault(stem, []).append(k)
                if len(answer) >= ngram:
                    grams = set(char_ngrams(answer, ngram))
                    item["answer_n"] = len(grams)
                    for g in grams:
                        self.answer_grams.setdefault(g, []).append(k)
                self.items.append(item)
            self.sizes[name], self.short[name] = n, short

    def match(self, text: str) -> tuple[str, str, str, float, str] | None:
        """(benchmark, item id, how, coverage, a shared n-gram) of the item ``text`` copies most, else None.

        ``how`` is "stem", "answer", "short_stem+answer" or "short_stem+options" (half of the options'
        texts or more); coverage is the fraction of that part found in ``text``.
        """
        t = normalize(text)
        grams = set(char_ngrams(t, self.ngram)) if len(t) >= self.ngram else set()
        best: tuple[str, str, str, float, str] | None = None
        for index, part, total in ((self.stem_grams, "stem", "stem_n"), (self.answer_grams, "answer", "answer_n")):
            hits: dict[int, int] = {}
            shared: dict[int, str] = {}
            for g in grams:
                for k in index.get(g, ()):
                    hits[k] = hits.get(k, 0) + 1
                    shared.setdefault(k, g)
            for k, h in hits.items():
                cov = h / self.items[k][total]
                if cov >= self.min_coverage and (best is None or cov > best[3]):
                    best = (self.items[k]["bench"], self.items[k]["id"], part, cov, shared[k])
        if best is not None:
            return best
        for length, stems in self.short_stems.items():
            for i in range(len(t) - length + 1):
                for k in stems.get(t[i : i + length], ()):
                    it = self.items[k]
                    if len(it["answer"]) >= MIN_ANSWER_CHARS and it["answer"] in t:
                        return it["bench"], it["id"], "short_stem+answer", 1.0, it["stem"]
                    opts = it["options"]
                    if len(opts) >= 2 and sum(o in t for o in opts) * 2 >= len(opts):
                        cov = sum(o in t for o in opts) / len(opts)
                        return it["bench"], it["id"], "short_stem+options", cov, it["stem"]
        return None


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(id, row) of every row of a record file; a bad row raises DataError(file, line)."""
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        try:
            record_text(item.data)
        except ValueError as e:
            raise DataError(item.path, item.line, str(e)) from None
        yield str(item.data.get("id", f"{Path(path).name}:{item.line}")), item.data


def _texts(path: Path, with_answer: bool) -> Iterator[tuple[str, str]]:
    """(id, text) of every row of a record file; a bad row raises DataError(file, line)."""
    for row_id, row in _rows(path):
        yield row_id, record_text(row, with_answer)


def _bench_names(files: list[str | Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for f in files:
        p = Path(f)
        name = p.stem if p.stem not in names else str(p)
        names[name] = p
    return names


def overlap_report(train_files: list[str | Path], bench_files: list[str | Path], ngram: int = 13,
                   with_answer: bool = True, min_coverage: float = 0.5) -> dict:
    """How much of each benchmark leaks into the training files.

    Args:
        train_files: training record files.
        bench_files: benchmark record files (named by file stem in the report).
        ngram: characters per n-gram.
        with_answer: include training answers in the check.
        min_coverage: see ``BenchIndex``.

    Returns:
        ``{"ngram", "min_coverage", "train_rows", "flagged_rows", "benchmarks": {name: {"items",
        "short_items", "train_rows_flagged", "bench_items_hit", "examples": [{"train_id", "bench_id",
        "matched", "coverage"}]}}}``.
    """
    index = BenchIndex(_bench_names(bench_files), ngram, min_coverage)
    per = _per_bench(index)
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
    return {"ngram": ngram, "min_coverage": min_coverage, "train_rows": rows, "flagged_rows": flagged,
            "benchmarks": per}


def _per_bench(index: BenchIndex) -> dict:
    return {name: {"items": size, "short_items": index.short[name], "train_rows_flagged": 0,
                   "bench_items_hit": set(), "examples": []} for name, size in index.sizes.items()}


def _count(entry: dict, row_id: str, hit: tuple[str, str, str, float, str]) -> None:
    entry["train_rows_flagged"] += 1
    entry["bench_items_hit"].add(hit[1])
    if len(entry["examples"]) < N_EXAMPLES:
        entry["examples"].append({"train_id": row_id, "bench_id": hit[1], "matched": hit[2],
                                  "coverage": round(hit[3], 3), "ngram": hit[4]})


# ---- the stage ------------------------------------------------------------------------------------


class Config(StageConfig):
    """Decontamination stage config."""

    input: str
    """Training rows (path or "@stage[.output]")."""
    benchmarks: list[str] = Field(min_length=1)
    """Benchmark files (paths or refs); each is reported under its file stem."""
    ngram: int = Field(13, ge=4)
    """Characters per n-gram, after normalisation."""
    min_coverage: float = Field(0.5, gt=0, le=1)
    """Fraction of a benchmark stem's (or long answer's) n-grams a training row must hold to be dropped."""
    with_answer: bool = True
    """Check training answers too, not only the questions."""

    def check(self, ctx: StageContext) -> list[str]:
        probs = ctx.check_ref(self.input, "input")
        for b in self.benchmarks:
            probs += ctx.check_ref(b, "benchmarks")
        return probs


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write ``kept`` (clean rows) and ``dropped`` (rows + the benchmark item and n-gram they share)."""
    index = BenchIndex(_bench_names([ctx.resolve(b) for b in cfg.benchmarks]), cfg.ngram, cfg.min_coverage)
    per = _per_bench(index)
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
        dropped.append({**item.data, "contamination": {"benchmark": hit[0], "bench_id": hit[1], "matched": hit[2],
                                                       "coverage": round(hit[3], 3), "ngram": hit[4]}})
    for v in per.values():
        v["bench_items_hit"] = len(v["bench_items_hit"])
    write_jsonl(ctx.out_dir / "kept.jsonl", kept)
    write_jsonl(ctx.out_dir / "dropped.jsonl", dropped)
    return StageResult(outputs={"kept": "kept.jsonl", "dropped": "dropped.jsonl"},
                       counts={"in": len(kept) + len(dropped), "kept": len(kept), "dropped": len(dropped)},
                       dropped={f"overlaps_{k}": v["train_rows_flagged"] for k, v in per.items()
                                if v["train_rows_flagged"]},
                       metrics={"ngram": cfg.ngram, "min_coverage": cfg.min_coverage, "benchmarks": per})
