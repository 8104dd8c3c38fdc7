"""A small real stage used to test the runner: it copies rows from a file, one line at a time,
appending as it goes (so it can be killed midway and resumed), and drops rows marked "drop".

A row whose text contains ``REJECT`` makes the stage itself raise a DataError for that row (the way a
stage rejects a row only it can judge), so tests can check ``on_error: quarantine`` for such rows too.

Registered into hypnos.stages.STAGES by the tests as kind "copy".
"""

import os
import time

from hypnos.common.io import DataError, append_jsonl, iter_rows, read_jsonl_tolerant
from hypnos.common.records import parse_row
from hypnos.common.stage import StageConfig, StageContext, StageResult

OUTPUTS = ("rows",)


class Config(StageConfig):
    source: str
    """Rows to copy: a path or an @stage reference."""
    delay_s: float = 0.0
    """Sleep per row, so a test can kill the stage midway."""
    marker: str = ""


def _records(path):
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        rec = parse_row(item)
        if "REJECT" in getattr(rec, "text", ""):
            raise DataError(item.path, item.line, "rejected by the copy stage")
        yield rec


def run(cfg: Config, ctx: StageContext) -> StageResult:
    src = ctx.resolve(cfg.source)
    out = ctx.out_dir / "rows.jsonl"
    done = {r["id"] for r in read_jsonl_tolerant(out)}
    log = ctx.out_dir / "processed.log"  # which rows were really processed (not resumed)
    rows = list(_records(src))
    dropped = 0
    for r in rows:
        if "drop" in r.meta:
            dropped += 1
            continue
        if r.id in done:
            continue
        time.sleep(cfg.delay_s)
        with log.open("a") as f:
            f.write(r.id + "\n")
        append_jsonl(out, {**r.to_dict(), "meta": {"marker": cfg.marker, "pid": os.getpid()}})
    out.touch()
    return StageResult(outputs={"rows": "rows.jsonl"}, counts={"in": len(rows), "kept": len(rows) - dropped,
                       "dropped": dropped}, dropped={"marked drop": dropped} if dropped else {})


def check(cfg: Config, ctx: StageContext) -> list[str]:
    return ctx.check_ref(cfg.source, "source")


Config.check = lambda self, ctx: check(self, ctx)
