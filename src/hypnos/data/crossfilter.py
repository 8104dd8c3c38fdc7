"""Cross-filtering (Hypnos §3): every generated item is scored by LLMs other than the one that wrote it.

Run: ``hypnos crossfilter --config cf.yaml`` or as a recipe stage::

    - name: crossfilter
      input: "@generate"
      judges: [gpt, claude]        # an item made by gpt is judged by claude, and the other way round
      aggregate: mean
      threshold: 7

A model rates its own text too kindly, so a judge whose endpoint generated the item is skipped. With
only one model at hand, ``allow_self_judging: true`` lets it judge its own items through a different,
adversarial prompt (prompts/crossfilter_self_<version>.jinja); the manifest then says so loudly.

Each judge scores coherence, professionalism, usefulness, harmlessness (harmfulness inverted: 10 =
harmless) and friendliness 0-10 in a fixed format ("专业性：8"), plus a reason. ``scoring: text`` parses
the numbers; ``scoring: logprobs`` asks for ``top_logprobs`` and takes, per aspect, the expected value
over the tokens "0".."10" right after "专业性：" (G-Eval style; smoother than the sampled digit), falling
back to the parsed number where the endpoint gives no logprobs. A judge's overall score is the mean of
its aspects. Several judges are combined by ``mean`` or ``min`` of their overall scores, or by ``vote``
(majority of the judges' own keep/drop decisions; a tie drops). An item is kept when the aggregate is
at least ``threshold`` and, with ``aspect_floor``, every aspect (mean over judges) is at least the floor.
A judge answer with no parseable score is None, counted per judge, and handled by ``on_parse_failure``.

Outputs: ``kept`` and ``dropped`` (each row with ``meta.crossfilter``: every judge's raw answer, scores
and reason, the aggregate and why it was dropped). Metrics: score distributions per judge and aspect,
inter-judge agreement (Spearman, Krippendorff's alpha) on the overall score, keep rate per generator,
parse failures per judge.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from typing import Literal

from pydantic import Field

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.progress import bar
from hypnos.common.stage import StageConfig, StageContext, StageResult
from hypnos.data.parsing import ASPECTS, logprob_scores, parse_rationale, parse_scores, render_prompt
from hypnos.data.text import record_text

log = logging.getLogger("hypnos")


class Config(StageConfig):
    """Cross-filter stage config."""

    input: str
    """Generated QA rows (path or "@stage[.output]"); ``meta.generator`` names the endpoint that wrote each."""
    judges: list[str] = Field(min_length=1)
    """Recipe endpoint names of the judges."""
    allow_self_judging: bool = False
    """Let a judge score items it generated itself (through the self-judging prompt)."""
    scoring: Literal["text", "logprobs"] = "text"
    """Scores parsed from the answer, or probability-weighted from top_logprobs where available."""
    aggregate: Literal["mean", "min", "vote"] = "mean"
    """How several judges' scores combine."""
    threshold: float = Field(7.0, ge=0, le=10)
    """Keep items whose aggregate overall score is at least this."""
    aspect_floor: float | None = Field(None, ge=0, le=10)
    """Also require every aspect (mean over judges) to be at least this."""
    on_parse_failure: Literal["ignore", "drop"] = "ignore"
    """A judge answer without scores: ignore that judge for the item, or drop the item."""
    prompt_version: str = "v1"
    """Uses prompts/crossfilter_<version>.jinja and crossfilter_self_<version>.jinja."""
    max_tokens: int = Field(160, ge=8)
    """Answer length limit of a judge."""

    def check(self, ctx: StageContext) -> list[str]:
        probs = ctx.check_ref(self.input, "input")
        probs += [f"stage {ctx.name!r}: judge {j!r} is not an endpoint of the recipe"
                  for j in self.judges if j not in ctx.recipe.endpoints]
        for name in (f"crossfilter_{self.prompt_version}", f"crossfilter_self_{self.prompt_version}"):
            try:
                render_prompt(name, question="q", input="", answer="a", aspects=ASPECTS)
            except ValueError as e:
                probs.append(f"stage {ctx.name!r}: {e}")
        return probs


def judge_request(cfg: Config, row: dict, self_judge: bool, seed: int) -> dict:
    """The chat request asking one judge to score one item (deterministic: temperature 0, fixed seed)."""
    name = f"crossfilter_self_{cfg.prompt_version}" if self_judge else f"crossfilter_{cfg.prompt_version}"
    question = row.get("instruction") or record_text(row)
    prompt = render_prompt(name, question=question, input=row.get("input", ""), answer=row.get("output", ""),
                           aspects=ASPECTS)
    req = {"messages": [{"role": "user", "content": prompt}], "temperature": 0.0, "max_tokens": cfg.max_tokens,
           "seed": seed}
    if cfg.scoring == "logprobs":
        req.update(logprobs=True, top_logprobs=20)
    return req


def score_answer(cfg: Config, text: str | None, logprobs: list[dict] | None) -> dict:
    """One judge's verdict on one item: aspect scores, overall (None if nothing parsed), reason, source."""
    scores = parse_scores(text or "")
    source = "text"
    if cfg.scoring == "logprobs" and logprobs:
        weighted = logprob_scores(logprobs)
        if any(v is not None for v in weighted.values()):
            scores = {k: weighted[k] if weighted[k] is not None else scores[k] for k in scores}
            source = "logprobs"
    present = [v for v in scores.values() if v is not None]
    overall = sum(present) / len(present) if present else None
    return {"scores": scores, "overall": overall, "reason": parse_rationale(text or ""), "source": source}


def _passes(cfg: Config, overall: float, aspects: dict[str, float | None]) -> bool:
    if overall < cfg.threshold:
        return False
    return cfg.aspect_floor is None or all(v is None or v >= cfg.aspect_floor for v in aspects.values())


def decide(cfg: Config, verdicts: dict[str, dict]) -> tuple[bool, float | None, str]:
    """Combine the judges' verdicts on one item: (keep, aggregate score, reason if dropped)."""
    if not verdicts:
        return False, None, "no_eligible_judge"
    failed = [j for j, v in verdicts.items() if v["overall"] is None]
    if failed and cfg.on_parse_failure == "drop":
        return False, None, "judge_parse_failure"
    valid = {j: v for j, v in verdicts.items() if v["overall"] is not None}
    if not valid:
        return False, None, "no_valid_judgement"
    overalls = [v["overall"] for v in valid.values()]
    mean_aspects = {}
    for a in ASPECTS:
        vals = [v["scores"][a] for v in valid.values() if v["scores"][a] is not None]
        mean_aspects[a] = sum(vals) / len(vals) if vals else None
    if cfg.aggregate == "vote":
        yes = sum(_passes(cfg, v["overall"], v["scores"]) for v in valid.values())
        agg = statistics.fmean(overalls)
        return (yes * 2 > len(valid)), agg, ("" if yes * 2 > len(valid) else "jury_majority_drop")
    agg = min(overalls) if cfg.aggregate == "min" else statistics.fmean(overalls)
    if agg < cfg.threshold:
        return False, agg, "below_threshold"
    if not _passes(cfg, agg, mean_aspects):
        return False, agg, "aspect_below_floor"
    return True, agg, ""


async def _judge_all(cfg: Config, ctx: StageContext, rows: list[dict]) -> list[dict[str, dict]]:
    """Every eligible judge's verdict on every row, in row order."""
    plan = []  # (row index, judge, self-judging)
    for i, row in enumerate(rows):
        gen = (row.get("meta") or {}).get("generator")
        for j in cfg.judges:
            if j != gen:
                plan.append((i, j, False))
            elif cfg.allow_self_judging:
                plan.append((i, j, True))
    pb = bar(total=len(plan), desc="crossfilter", unit="judgement")
    counts = {"parsed": 0, "unparsed": 0}

    async def one(i: int, judge: str, self_judge: bool) -> dict:
        req = judge_request(cfg, rows[i], self_judge, ctx.seed)
        res = await ctx.client(judge).chat(req.pop("messages"), **req)
        v = score_answer(cfg, res.text, res.logprobs) if res.error is None else \
            {"scores": dict.fromkeys(ASPECTS), "overall": None, "reason": "", "source": "error"}
        v.update(raw=res.text, error=res.error, self_judged=self_judge, model=res.model or ctx.client(judge).endpoint.model)
        counts["parsed" if v["overall"] is not None else "unparsed"] += 1
        pb.update(1)
        pb.set_postfix(counts, refresh=False)
        return v

    try:
        verdicts = await asyncio.gather(*(one(*p) for p in plan))
    finally:
        pb.close()
        for j in cfg.judges:
            await ctx.client(j).aclose()
    out: list[dict[str, dict]] = [{} for _ in rows]
    for (i, judge, _), v in zip(plan, verdicts):
        out[i][judge] = v
    return out


def agreement(per_item: list[dict[str, dict]], judges: list[str]) -> dict:
    """Inter-judge agreement on the overall score: pairwise Spearman and Krippendorff's alpha (interval)."""
    import numpy as np

    if len(judges) < 2:
        return {}
    mat = np.array([[(v.get(j) or {}).get("overall") for v in per_item] for j in judges], dtype=float)
    out: dict = {"spearman": {}}
    from scipy.stats import spearmanr

    for a in range(len(judges)):
        for b in range(a + 1, len(judges)):
            both = ~np.isnan(mat[a]) & ~np.isnan(mat[b])
            rho = spearmanr(mat[a][both], mat[b][both]).statistic if both.sum() >= 3 else None
            out["spearman"][f"{judges[a]}~{judges[b]}"] = {
                "rho": None if rho is None or np.isnan(rho) else round(float(rho), 4), "items": int(both.sum())}
    if (~np.isnan(mat)).sum(axis=0).max(initial=0) >= 2 and len(np.unique(mat[~np.isnan(mat)])) > 1:
        import krippendorff

        out["krippendorff_alpha"] = round(float(krippendorff.alpha(mat, level_of_measurement="interval")), 4)
    else:
        out["krippendorff_alpha"] = None  # no item scored by two judges, or no variation at all
    return out


def _distributions(per_item: list[dict[str, dict]], judges: list[str]) -> dict:
    out = {}
    for j in judges:
        out[j] = {}
        for a in ASPECTS:
            vals = [v[j]["scores"][a] for v in per_item if j in v and v[j]["scores"][a] is not None]
            hist = {str(s): 0 for s in range(11)}
            for x in vals:
                hist[str(round(x))] += 1
            out[j][a] = {"n": len(vals), "mean": round(statistics.fmean(vals), 3) if vals else None,
                         "std": round(statistics.pstdev(vals), 3) if vals else None, "hist": hist}
    return out


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Judge every row with every eligible judge; write ``kept`` and ``dropped``."""
    rows = []
    for item in iter_rows(ctx.resolve(cfg.input)):
        if isinstance(item, DataError):
            raise item
        rows.append(item.data)
    per_item = asyncio.run(_judge_all(cfg, ctx, rows))
    kept, dropped, reasons = [], [], {}
    per_gen: dict[str, dict[str, int]] = {}
    for row, verdicts in zip(rows, per_item):
        keep, agg, why = decide(cfg, verdicts)
        gen = (row.get("meta") or {}).get("generator", "unknown")
        g = per_gen.setdefault(gen, {"in": 0, "kept": 0})
        g["in"] += 1
        g["kept"] += keep
        info = {"aggregate": None if agg is None else round(agg, 3), "method": cfg.aggregate, "judges": verdicts}
        if keep:
            kept.append({**row, "meta": {**row.get("meta", {}), "crossfilter": info}})
        else:
            reasons[why] = reasons.get(why, 0) + 1
            dropped.append({**row, "meta": {**row.get("meta", {}), "crossfilter": {**info, "dropped": why}}})
    write_jsonl(ctx.out_dir / "kept.jsonl", kept)
    write_jsonl(ctx.out_dir / "dropped.jsonl", dropped)
    self_judged = sum(v["self_judged"] for item in per_item for v in item.values())
    if self_judged:
        log.warning("crossfilter: %d judgements are SELF-JUDGEMENTS (allow_self_judging: true); a model rates its "
                    "own text kindly, so these scores are weaker evidence than cross-judgements", self_judged)
    parse_failures = {j: sum(1 for v in per_item if j in v and v[j]["overall"] is None) for j in cfg.judges}
    metrics = {
        "self_judging": {"allowed": cfg.allow_self_judging, "self_judgements": self_judged,
                         "WARNING": "items were judged by their own generator" if self_judged else None},
        "judgements": sum(len(v) for v in per_item),
        "parse_failures": parse_failures,
        "keep_rate_per_generator": {k: {**v, "rate": round(v["kept"] / v["in"], 4)} for k, v in per_gen.items()},
        "scores": _distributions(per_item, cfg.judges),
        "agreement": agreement(per_item, cfg.judges),
    }
    return StageResult(outputs={"kept": "kept.jsonl", "dropped": "dropped.jsonl"},
                       counts={"in": len(rows), "kept": len(kept), "dropped": len(dropped)},
                       dropped=reasons, metrics=metrics, usage=ctx.usage())
