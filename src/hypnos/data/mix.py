"""Mix record files into one shuffled training set (and a validation split).

Run: ``hypnos mix --config mix.yaml`` or as a recipe stage::

    - name: mix_specific
      kind: mix
      sources:
        - {path: seeds/anesthesia_seed.jsonl}
        - {path: "@dedup", cap: 500}           # at most 500 rows from it
        - {path: general/general_medical_qa.jsonl, weight: 0.3}   # 30% of its rows, sampled
      val_fraction: 0.1

Each source contributes ``weight`` x its rows (weight > 1 repeats rows: whole copies plus a sample),
then at most ``cap`` rows. Sampling, shuffling and the split use the recipe seed, so a rerun gives the
same files. Every row gets ``meta.mix_source`` naming its source.
"""

from __future__ import annotations

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


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write ``train`` (and ``val`` when ``val_fraction`` > 0)."""
    rng = random.Random(ctx.seed)
    mixed: list[dict] = []
    per_source: dict[str, int] = {}
    for src in cfg.sources:
        name = src.name or src.path
        rows = []
        for item in iter_rows(ctx.resolve(src.path)):
            if isinstance(item, DataError):
                raise item
            rows.append(item.data)
        picked = take(rows, src.weight, src.cap, rng)
        per_source[name] = len(picked)
        mixed += [{**r, "meta": {**r.get("meta", {}), "mix_source": name}} for r in picked]
    rng.shuffle(mixed)
    n_val = round(len(mixed) * cfg.val_fraction)
    if cfg.val_max is not None:
        n_val = min(n_val, cfg.val_max)
    val, train = mixed[:n_val], mixed[n_val:]
    outputs = {"train": "train.jsonl"}
    write_jsonl(ctx.out_dir / "train.jsonl", train)
    if cfg.val_fraction > 0:
        write_jsonl(ctx.out_dir / "val.jsonl", val)
        outputs["val"] = "val.jsonl"
    return StageResult(outputs=outputs, counts={"train": len(train), "val": len(val), **per_source})
