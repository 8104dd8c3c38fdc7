"""Mix record files into one shuffled training set (and a validation split).

Run: ``hypnos mix --config mix.yaml`` or as a recipe stage::

    - name: mix_specific
      kind: mix
      sources:
        - {path: seeds/anesthesia_seed.jsonl}
        - {path: "@dedup", cap: 500}           # at most 500 rows from it
        - {path: general/general_medical_qa.jsonl, weight: 0.3}   # 30% of its rows, sampled
      val_fraction: 0.1

The split comes first, by row id, and weighting after it, so no row (and no copy of it) is on both
sides: each source's rows are sampled (weight < 1, or ``cap``), the validation ids are picked from
all sampled ids (the ones with the smallest seeded hash: one id is on the same side whatever source
it comes from), and only then are the training rows repeated (weight > 1: whole copies plus a
sample) and capped. Validation keeps one copy of each row. Rows without an ``id`` are identified by
a hash of their content. An exact copy of a row within a source is read once (counted in
``duplicate_rows``); different rows sharing an id are all kept, on one side. Sampling, shuffling and the split use the recipe seed, so a rerun gives the
same files. Every row gets ``meta.mix_source`` naming its source.
"""

from __future__ import annotations

import hashlib
import json
import random

from pydantic import BaseModel, ConfigDict, Field

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.stage import StageConfig, StageContext, StageResult


class Source(BaseModel):
    """One input of the mix."""

    model_config = ConfigDict(extra="forbid")
    path: str
    """A record file or "@stage[.output]"."""
    weight: float = Field(1.0, gt=0)
    """Rows taken = weight x rows in the file (sampled without replacement below 1, repeated above)."""
    cap: int | None = Field(None, ge=0)
    """At most this many rows from this source (after weighting)."""
    name: str | None = None
    """Name in the manifest and ``meta.mix_source`` (default: the path)."""


class Config(StageConfig):
    """Mix stage config."""

    sources: list[Source] = Field(min_length=1)
    """The files to mix."""
    val_fraction: float = Field(0.0, ge=0, lt=1)
    """Fraction of the mixed rows split off into ``val`` (0 = no validation file)."""
    val_max: int | None = Field(None, ge=1)
    """At most this many validation rows."""

    def check(self, ctx: StageContext) -> list[str]:
        return [p for s in self.sources for p in ctx.check_ref(s.path, "sources.path")]


def take(rows: list[dict], weight: float, cap: int | None, rng: random.Random) -> list[dict]:
    """``weight`` x rows: whole copies for the integer part, a sample for the rest; then at most ``cap``."""
    whole, frac = divmod(weight, 1.0)
    out = rows * int(whole) + rng.sample(rows, round(frac * len(rows)))
    if cap is not None and len(out) > cap:
        out = rng.sample(out, cap)
    return out


def row_key(row: dict) -> str:
    """What identifies a row for the split: its ``id``, else a hash of its content."""
    if row.get("id") not in (None, ""):
        return str(row["id"])
    return "sha256:" + hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _content(row: dict) -> str:
    """A row's exact content (what makes two rows with one id the same row or two rows)."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _sampled(rows: list[dict], weight: float, cap: int | None, rng: random.Random) -> list[dict]:
    """The distinct rows a source puts into the mix (before any repetition)."""
    k = len(rows) if weight >= 1 else round(weight * len(rows))
    if cap is not None:
        k = min(k, cap)
    return rows if k >= len(rows) else rng.sample(rows, k)


def _val_keys(keys: list[str], fraction: float, most: int | None, seed: int) -> set[str]:
    n = round(len(keys) * fraction)
    if most is not None:
        n = min(n, most)
    order = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}|{k}".encode()).digest())
    return set(order[:n])


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write ``train`` (and ``val`` when ``val_fraction`` > 0); no row id is in both."""
    rng = random.Random(ctx.seed)
    picked: list[tuple[Source, str, list[dict]]] = []
    duplicates = 0
    for src in cfg.sources:
        name = src.name or src.path
        rows, seen = [], set()
        for item in iter_rows(ctx.resolve(src.path)):
            if isinstance(item, DataError):
                raise item
            # an exact copy of a row is one row; two different rows under one id (imported sets number
            # their rows 1..n) are two rows, kept on the same side of the split by their shared id
            content = _content(item.data)
            if content in seen:
                duplicates += 1
                continue
            seen.add(content)
            rows.append(item.data)
        picked.append((src, name, _sampled(rows, src.weight, src.cap, rng)))
    keys = list(dict.fromkeys(row_key(r) for _, _, rows in picked for r in rows))
    val_keys = _val_keys(keys, cfg.val_fraction, cfg.val_max, ctx.seed)
    train: list[dict] = []
    val: list[dict] = []
    val_seen: set[str] = set()
    per_source: dict[str, int] = {}
    for src, name, rows in picked:
        tr = [r for r in rows if row_key(r) not in val_keys]
        va = [r for r in rows if row_key(r) in val_keys and _content(r) not in val_seen]
        val_seen.update(_content(r) for r in va)  # one copy of a row two sources share
        tr = take(tr, max(src.weight, 1.0), src.cap, rng)  # repetition only now, after the split
        per_source[name] = len(tr) + len(va)
        train += [{**r, "meta": {**r.get("meta", {}), "mix_source": name}} for r in tr]
        val += [{**r, "meta": {**r.get("meta", {}), "mix_source": name}} for r in va]
    rng.shuffle(train)
    rng.shuffle(val)
    outputs = {"train": "train.jsonl"}
    write_jsonl(ctx.out_dir / "train.jsonl", train)
    if cfg.val_fraction > 0:
        write_jsonl(ctx.out_dir / "val.jsonl", val)
        outputs["val"] = "val.jsonl"
    return StageResult(outputs=outputs, counts={"train": len(train), "val": len(val), **per_source},
                       metrics={"distinct_rows": len(keys), "train_val_overlap": 0, "duplicate_rows": duplicates})
