"""Cross-filtering (Hypnos §3): every generated item is scored by LLMs other than the one that wrote it.

Run: ``hypnos crossfilter --config cf.yaml`` or as a recipe stage::

    - name: crossfilter
      input: "@generate"
      judges: [gpt, claude]        # an item made by gpt is judged by claude, and the other way round
      aggregate: mean
      threshold: 7

A model rates its own text too kindly, so a judge that *is* the item's generator is skipped. "Is"
means the same model identity, base URL + model name (``clients.endpoint_identity``), not the same
recipe endpoint name: one model listed under two names is still self-judging. With only one model at
hand, ``allow_self_judging: true`` lets it judge its own items through a different, adversarial
prompt (prompts/crossfilter_self_<version>.jinja); the manifest then says so loudly. ``hypnos
validate`` reports a crossfilter whose only judges generated its items, and input rows naming no
generator.

Each judge writes a one-sentence reasoning first and then scores coherence, professionalism,
usefulness, harmlessness (10 = harmless) and friendliness 0-10 against anchors for 0, 5 and 10, as one
JSON object. Where the endpoint supports structured outputs the request carries the JSON schema
(``response_format``), so even a small model answers in shape; otherwise the object (or "专业性：8"
lines) is parsed from the text. A verdict missing any aspect is unparsed: a score left out is never
treated as fine. ``scoring: logprobs`` asks for ``top_logprobs`` and takes, per aspect, the expected
value over 0..10 at the score's position (G-Eval style; token text rebuilt from ``bytes``, a "10"
written as "1","0" weighs P("1")·P("0"|"1")); an aspect without usable logprobs keeps its parsed
number, and ``source`` says which it was. A judge's overall score is the mean of its aspects.

Gating: several judges are combined by ``mean`` or ``min`` of their overall scores, or by ``vote``
(majority of the judges' own keep/drop decisions; a tie drops); the aggregate must reach
``threshold``. ``veto`` floors (default: harmlessness 8) drop an item when any judge scores that aspect
below the floor, whatever the mean -- one harmful answer must not be averaged away by four good
aspects, nor ignored because the same verdict left another aspect out. ``aspect_floor`` additionally requires every aspect's mean over judges to reach it.

Judge quality card: with ``calibration`` (labelled answers: good / weak / unsafe to the same question,
e.g. examples/preference/), every judge first scores those answers with the same prompt and gate; the
manifest (and the report) give how often good outscores weak and how often unsafe is dropped, before
any money is spent on the real items.

Outputs: ``kept`` and ``dropped`` (each row with ``meta.crossfilter``: every judge's raw answer, scores
and reason, the aggregate and why it was dropped). Metrics: score distributions per judge and aspect,
inter-judge agreement (Spearman, Krippendorff's alpha) on the overall score, keep rate per generator,
parse failures per judge.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.progress import bar
from hypnos.common.stage import StageConfig, StageContext, StageResult, is_ref
from hypnos.data.parsing import (
    ASPECTS,
    logprob_scores,
    parse_rationale,
    parse_scores,
    render_prompt,
    response_format,
    verdict_schema,
)
from hypnos.data.text import record_text

log = logging.getLogger("hypnos")


class Config(StageConfig):
    """Cross-filter stage config."""

    input: str
    """Generated rows (path or "@stage[.output]"); ``meta.generator`` names the endpoint that wrote each."""
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
    veto: dict[str, float] = Field(default_factory=lambda: {"harmlessness": 8.0})
    """Aspect -> floor: any judge scoring the aspect below it drops the item, whatever the mean."""
    aspect_floor: float | None = Field(None, ge=0, le=10)
    """Also require every aspect (mean over judges) to be at least this."""
    on_parse_failure: Literal["ignore", "drop"] = "ignore"
    """A judge answer without all five scores: ignore that judge for the item, or drop the item."""
    structured: bool = True
    """Send the verdict's JSON schema as ``response_format`` (where the endpoint's ``structured_outputs`` allows)."""
    prompt_version: str = "v2"
    """Uses prompts/crossfilter_<version>.jinja and crossfilter_self_<version>.jinja."""
    max_tokens: int = Field(384, ge=8)
    """Answer length limit of a judge (a verdict cut off by it is retried with more room by the client)."""
    calibration: str | None = None
    """Labelled answers (records with ``question``, ``responses``, ``labels`` good/weak/unsafe) for the judge card."""
    calibration_max: int = Field(50, ge=1)
    """At most this many calibration questions."""

    @field_validator("veto")
    @classmethod
    def _known_aspects(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in ASPECTS]
        if bad:
            raise ValueError(f"unknown aspects {bad} (known: {', '.join(ASPECTS)})")
        if any(not 0 <= f <= 10 for f in v.values()):
            raise ValueError("veto floors are scores between 0 and 10")
        return v

    def check(self, ctx: StageContext) -> list[str]:
        probs = ctx.check_ref(self.input, "input")
        probs += [f"stage {ctx.name!r}: judge {j!r} is not an endpoint of the recipe"
                  for j in self.judges if j not in ctx.recipe.endpoints]
        if self.calibration is not None:
            probs += ctx.check_ref(self.calibration, "calibration")
        for name in (f"crossfilter_{self.prompt_version}", f"crossfilter_self_{self.prompt_version}"):
            try:
                render_prompt(name, question="q", input="", answer="a", aspects=ASPECTS)
            except ValueError as e:
                probs.append(f"stage {ctx.name!r}: {e}")
        if not probs:
            probs += self._self_judging_problems(ctx)
        return probs

    def _self_judging_problems(self, ctx: StageContext) -> list[str]:
        """Generators (of the generate stage upstream, or of the rows of an input file) judged by themselves."""
        judges = {j: recipe_identity(ctx.recipe, j) for j in self.judges if j in ctx.recipe.endpoints}
        gens = _upstream_generators(ctx, self.input)
        probs = []
        if gens is None:  # a file: look at its rows
            gens, missing = _generators_in_file(ctx.resolve(self.input) if not is_ref(self.input) else None)
            if missing:  # a warning, not a problem: hand-made or imported rows may legitimately have no author
                log.warning("stage %r: %d input rows carry no meta.generator: no judge can be excluded as their "
                            "author, so self-judging cannot be ruled out for them", ctx.name, missing)
        for g, gid in gens.items():
            gid = gid or (recipe_identity(ctx.recipe, g) if g in ctx.recipe.endpoints else None)
            same = [j for j, jid in judges.items() if gid is not None and jid == gid]
            if same and not self.allow_self_judging:
                others = [j for j in judges if j not in same]
                named = ", ".join(f"{j!r}" for j in same)
                if not others:
                    probs.append(f"stage {ctx.name!r}: items of generator {g!r} can only be judged by {named}, the "
                                 f"same model ({gid}): nothing would be kept; add another judge or set "
                                 "allow_self_judging: true")
                elif any(j != g for j in same):
                    log.info("stage %s: judge(s) %s are generator %s under another name; they skip its items",
                             ctx.name, named, g)
        return probs


def recipe_identity(recipe, name: str) -> str:
    """Model identity of a recipe endpoint before anything runs (a served model is a loopback server)."""
    from hypnos.data.clients import endpoint_identity

    spec = recipe.endpoints[name]
    return endpoint_identity(spec.base_url or "http://127.0.0.1/v1", spec.model)


def _upstream_generators(ctx: StageContext, ref: str) -> dict[str, str | None] | None:
    """Generator endpoint names of the generate stage feeding ``ref`` (following ``input`` refs), or None."""
    seen = set()
    while is_ref(ref) and ref not in seen:
        seen.add(ref)
        stage = ref[1:].split(".")[0]
        spec = next((s for s in ctx.recipe.stages if s.name == stage), None)
        if spec is None:
            return None
        gens = getattr(spec.config, "generators", None)
        if gens is not None:
            return dict.fromkeys(gens)
        ref = getattr(spec.config, "input", None)
    return None


def _generators_in_file(path: Path | None) -> tuple[dict[str, str | None], int]:
    """(generator name -> identity, rows without a generator) of a record file."""
    gens: dict[str, str | None] = {}
    missing = 0
    if path is None or not path.exists():
        return gens, 0
    for item in iter_rows(path):
        if isinstance(item, DataError):
            continue  # reported by the stage itself
        meta = item.data.get("meta") or {}
        if not meta.get("generator"):
            missing += 1
        else:
            gens.setdefault(meta["generator"], meta.get("generator_id"))
    return gens, missing


def judge_request(cfg: Config, row: dict, self_judge: bool, seed: int) -> dict:
    """The chat request asking one judge to score one item (deterministic: temperature 0, fixed seed)."""
    name = f"crossfilter_self_{cfg.prompt_version}" if self_judge else f"crossfilter_{cfg.prompt_version}"
    question, answer = _question_answer(row)
    prompt = render_prompt(name, question=question, input=row.get("input", ""), answer=answer, aspects=ASPECTS)
    req = {"messages": [{"role": "user", "content": prompt}], "temperature": 0.0, "max_tokens": cfg.max_tokens,
           "seed": seed}
    if cfg.structured:
        req["response_format"] = response_format("verdict", verdict_schema(ASPECTS))
    if cfg.scoring == "logprobs":
        req.update(logprobs=True, top_logprobs=20)
    return req


def _question_answer(row: dict) -> tuple[str, str]:
    """What the judge sees: a QA item's question and answer, or an MCQ's stem + options and key + explanation."""
    if "question" in row and isinstance(row.get("options"), dict):
        q = row["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in row["options"].items())
        return q, f"{row.get('answer', '')}。{row.get('explanation', '')}".strip("。")
    return (row.get("instruction") or record_text(row)), row.get("output", "")


def score_answer(cfg: Config, text: str | None, logprobs: list[dict] | None, structured: bool = False) -> dict:
    """One judge's verdict on one item: aspect scores, overall (None unless every aspect scored), reason, source.

    ``source`` is "logprobs" when every aspect's score came from token probabilities, "mixed" when some
    did, "text" when none did.
    """
    scores = parse_scores(text or "")
    sources = dict.fromkeys(ASPECTS, "text")
    if cfg.scoring == "logprobs" and logprobs:
        weighted = logprob_scores(logprobs, structured=structured)
        for k, w in weighted.items():
            if w is not None:
                scores[k], sources[k] = w, "logprobs"
    missing = [k for k, v in scores.items() if v is None]
    overall = None if missing else sum(scores.values()) / len(scores)
    n_lp = sum(v == "logprobs" for v in sources.values())
    source = "logprobs" if n_lp == len(sources) else "mixed" if n_lp else "text"
    return {"scores": scores, "overall": overall, "missing": missing, "reason": parse_rationale(text or ""),
            "source": source}


def _vetoed(cfg: Config, scores: dict[str, float | None]) -> str | None:
    """The first veto aspect scored below its floor, else None."""
    for a, floor in cfg.veto.items():
        v = scores.get(a)
        if v is not None and v < floor:
            return a
    return None


def _passes(cfg: Config, overall: float, aspects: dict[str, float | None]) -> bool:
    if overall < cfg.threshold or _vetoed(cfg, aspects):
        return False
    return cfg.aspect_floor is None or all(v is not None and v >= cfg.aspect_floor for v in aspects.values())


def decide(cfg: Config, verdicts: dict[str, dict]) -> tuple[bool, float | None, str]:
    """Combine the judges' verdicts on one item: (keep, aggregate score, reason if dropped)."""
    if not verdicts:
        return False, None, "no_eligible_judge"
    failed = [j for j, v in verdicts.items() if v["overall"] is None]
    if failed and cfg.on_parse_failure == "drop":
        return False, None, "judge_parse_failure"
    valid = {j: v for j, v in verdicts.items() if v["overall"] is not None}
    overalls = [v["overall"] for v in valid.values()]
    agg = (min(overalls) if cfg.aggregate == "min" else statistics.fmean(overalls)) if overalls else None
    # a veto from any judge drops the item, whatever the others say -- also from a verdict that left out
    # another aspect: the harmful score it did give is still evidence
    for v in verdicts.values():
        vetoed = _vetoed(cfg, v["scores"])
        if vetoed:
            return False, agg, f"veto_{vetoed}"
    if not valid:
        return False, None, "no_valid_judgement"
    if cfg.aggregate == "vote":
        yes = sum(_passes(cfg, v["overall"], v["scores"]) for v in valid.values())
        return (yes * 2 > len(valid)), agg, ("" if yes * 2 > len(valid) else "jury_majority_drop")
    if agg < cfg.threshold:
        return False, agg, "below_threshold"
    mean_aspects = {a: statistics.fmean(v["scores"][a] for v in valid.values()) for a in ASPECTS}
    if not _passes(cfg, agg, mean_aspects):
        return False, agg, "aspect_below_floor"
    return True, agg, ""


def _row_identity(row: dict, ctx: StageContext) -> str | None:
    """The model identity of the row's generator: ``meta.generator_id``, else its recipe endpoint's."""
    meta = row.get("meta") or {}
    if meta.get("generator_id"):
        return meta["generator_id"]
    gen = meta.get("generator")
    if gen and gen in ctx.recipe.endpoints:
        return recipe_identity(ctx.recipe, gen)
    return None


def _judge_identity(ctx: StageContext, judge: str) -> str:
    from hypnos.data.clients import endpoint_identity

    ep = ctx.client(judge).endpoint
    return endpoint_identity(ep.base_url, ep.model)


async def _verdict(cfg: Config, ctx: StageContext, judge: str, row: dict, self_judge: bool) -> dict:
    req = judge_request(cfg, row, self_judge, ctx.seed)
    res = await ctx.client(judge).chat(req.pop("messages"), on_length="retry", **req)
    if res.error is not None:
        v = {"scores": dict.fromkeys(ASPECTS), "overall": None, "missing": list(ASPECTS), "reason": "",
             "source": "error"}
    else:
        v = score_answer(cfg, res.text, res.logprobs, structured=res.structured)
    v.update(raw=res.text, error=res.error, self_judged=self_judge, truncated=res.finish_reason == "length",
             structured=res.structured, model=res.model or ctx.client(judge).endpoint.model)
    return v


async def _judge_all(cfg: Config, ctx: StageContext, rows: list[dict]) -> list[dict[str, dict]]:
    """Every eligible judge's verdict on every row, in row order."""
    ids = {j: _judge_identity(ctx, j) for j in cfg.judges}
    plan = []  # (row index, judge, self-judging)
    for i, row in enumerate(rows):
        gen_id = _row_identity(row, ctx)
        for j in cfg.judges:
            if gen_id is None or ids[j] != gen_id:
                plan.append((i, j, False))
            elif cfg.allow_self_judging:
                plan.append((i, j, True))
    pb = bar(total=len(plan), desc="crossfilter", unit="judgement")
    counts = {"parsed": 0, "unparsed": 0}

    async def one(i: int, judge: str, self_judge: bool) -> dict:
        v = await _verdict(cfg, ctx, judge, rows[i], self_judge)
        counts["parsed" if v["overall"] is not None else "unparsed"] += 1
        pb.update(1)
        pb.set_postfix(counts, refresh=False)
        return v

    try:
        verdicts = await asyncio.gather(*(one(*p) for p in plan))
    finally:
        pb.close()
    out: list[dict[str, dict]] = [{} for _ in rows]
    for (i, judge, _), v in zip(plan, verdicts):
        out[i][judge] = v
    return out


# ---- judge quality card ---------------------------------------------------------------------------

def _calibration_rows(path: Path, limit: int) -> list[dict]:
    """Labelled questions: ``{"id", "question", "answers": {label: text}}`` with at least good and one other."""
    out = []
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        d = item.data
        labels, responses = d.get("labels"), d.get("responses")
        if not isinstance(labels, list) or not isinstance(responses, list) or len(labels) != len(responses):
            raise DataError(item.path, item.line, "a calibration row needs `responses` and `labels` of equal length")
        answers = dict(zip(labels, responses))
        if "good" in answers and len(answers) > 1:
            out.append({"id": d.get("id", f"line{item.line}"), "question": d.get("question", ""), "answers": answers})
        if len(out) >= limit:
            break
    return out


async def _judge_card(cfg: Config, ctx: StageContext, path: Path) -> dict:
    """Per judge: how often good > weak, how often unsafe is dropped (of the unsafe answers it gave a verdict
    that decides: parsed, or a veto), how often good is kept, parse rate."""
    qs = _calibration_rows(path, cfg.calibration_max)
    card: dict = {"file": cfg.calibration, "questions": len(qs), "judges": {}}  # as the recipe names it: no machine path
    for j in cfg.judges:
        jobs = [(q, lab, _verdict(cfg, ctx, j, {"instruction": q["question"], "output": ans}, False))
                for q in qs for lab, ans in q["answers"].items()]
        verdicts = await asyncio.gather(*(job[2] for job in jobs))
        by_q: dict[str, dict[str, dict]] = {}
        for (q, lab, _), v in zip(jobs, verdicts):
            by_q.setdefault(q["id"], {})[lab] = v
        pairs = wins = ties = unsafe = unsafe_judged = unsafe_dropped = good = good_kept = parsed = 0
        for labs in by_q.values():
            for v in labs.values():
                parsed += v["overall"] is not None
            g, w = labs.get("good"), labs.get("weak")
            if g and w and g["overall"] is not None and w["overall"] is not None:
                pairs += 1
                wins += g["overall"] > w["overall"]
                ties += g["overall"] == w["overall"]
            if "unsafe" in labs:
                unsafe += 1
                u = labs["unsafe"]
                # only a verdict that decides counts: an unparsed one "drops" too, but says nothing about safety
                if u["overall"] is not None or _vetoed(cfg, u["scores"]):
                    unsafe_judged += 1
                    unsafe_dropped += not decide(cfg, {j: u})[0]
            if g is not None:
                good += 1
                good_kept += decide(cfg, {j: g})[0]
        n = len(verdicts)
        card["judges"][j] = {
            "verdicts": n, "parse_rate": round(parsed / n, 4) if n else None,
            "good_beats_weak": round(wins / pairs, 4) if pairs else None, "good_weak_ties": ties, "pairs": pairs,
            "unsafe_dropped": round(unsafe_dropped / unsafe_judged, 4) if unsafe_judged else None, "unsafe": unsafe,
            "unsafe_judged": unsafe_judged,
            "good_kept": round(good_kept / good, 4) if good else None}
    return card


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
    """(Judge card first, if configured.) Judge every row with every eligible judge; write ``kept`` and ``dropped``."""
    rows = []
    for item in iter_rows(ctx.resolve(cfg.input)):
        if isinstance(item, DataError):
            raise item
        rows.append(item.data)
    card = None

    async def everything():
        nonlocal card
        try:
            if cfg.calibration is not None:
                card = await _judge_card(cfg, ctx, ctx.resolve(cfg.calibration))
            return await _judge_all(cfg, ctx, rows)
        finally:
            for j in cfg.judges:
                await ctx.client(j).aclose()

    per_item = asyncio.run(everything())
    if rows and not any(per_item):
        raise ValueError(f"stage {ctx.name!r}: no row has an eligible judge (every judge is the model that "
                         "generated the items); add another judge or set allow_self_judging: true")
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
    all_v = [v for item in per_item for v in item.values()]
    parse_failures = {j: sum(1 for v in per_item if j in v and v[j]["overall"] is None) for j in cfg.judges}
    metrics = {
        "self_judging": {"allowed": cfg.allow_self_judging, "self_judgements": self_judged,
                         "WARNING": "items were judged by their own generator" if self_judged else None},
        "judgements": len(all_v),
        "parse_failures": parse_failures,
        "verdicts_with_all_aspects": round(sum(v["overall"] is not None for v in all_v) / len(all_v), 4)
        if all_v else None,
        "score_source": {s: sum(v["source"] == s for v in all_v) for s in ("logprobs", "mixed", "text", "error")},
        "truncated_verdicts": sum(v["truncated"] for v in all_v),
        "structured_verdicts": sum(bool(v["structured"]) for v in all_v),
        "rows_without_generator": sum(1 for r in rows if not (r.get("meta") or {}).get("generator")),
        "veto": cfg.veto,
        "keep_rate_per_generator": {k: {**v, "rate": round(v["kept"] / v["in"], 4)} for k, v in per_gen.items()},
        "scores": _distributions(per_item, cfg.judges),
        "agreement": agreement(per_item, cfg.judges),
    }
    if card is not None:
        metrics["judge_card"] = card
    return StageResult(outputs={"kept": "kept.jsonl", "dropped": "dropped.jsonl"},
                       counts={"in": len(rows), "kept": len(kept), "dropped": len(dropped)},
                       dropped=reasons, metrics=metrics, usage=ctx.usage())
