"""Self-Instruct generation: each generator LLM writes new anesthesiology QA items from sampled seeds.

Run: ``hypnos generate --config gen.yaml`` or as a recipe stage::

    endpoints:
      gpt: {model: gpt-3.5-turbo, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
      claude: {model: claude-3-haiku, base_url: ..., api_key_env: ...}
    stages:
      - name: generate
        seeds: seeds/anesthesia_seed.jsonl
        generators: [gpt, claude]
        target_per_generator: 500

Each request shows ``seeds_per_prompt`` seed items (sampled) and asks for ``items_per_request`` new
items of one kind (knowledge QA, case analysis, multiple choice with explanation, patient-facing
explanation; the kinds take turns) with the versioned prompt ``prompts/generate_<version>.jinja``.
Requests go in rounds: a round asks each generator for what it still lacks, until it has its target
or ``max_rounds`` pass. Every request's seed sample and sampling ``seed`` derive from (recipe seed,
generator, round, request), and every answer is cached on disk by the client, so a killed run
resumes without re-sending anything answered and ends with exactly the output an uninterrupted run
would have written.

Outputs: ``generated`` (QA records; ``meta`` holds generator endpoint and model, prompt version, seed
ids, request seed and usage) and ``failed`` (raw answers that could not be parsed, or requests that
failed, with the reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random

from pydantic import Field, field_validator

from hypnos.common.io import write_jsonl
from hypnos.common.progress import bar
from hypnos.common.records import QA, read_records
from hypnos.common.stage import StageConfig, StageContext, StageResult
from hypnos.data.parsing import KINDS, ParseError, parse_generated, render_prompt

log = logging.getLogger("hypnos")


class Config(StageConfig):
    """Generation stage config."""

    seeds: str
    """Seed QA records (path or "@stage[.output]")."""
    generators: list[str] = Field(min_length=1)
    """Recipe endpoint names; each one generates ``target_per_generator`` items."""
    target_per_generator: int = Field(50, ge=1)
    """Items to keep per generator."""
    items_per_request: int = Field(5, ge=1, le=20)
    """New items asked for in one request."""
    seeds_per_prompt: int = Field(3, ge=1)
    """Seed examples shown in one request."""
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    """Kinds of items to ask for, in turn: knowledge, case, mcq, patient."""
    prompt_version: str = "v1"
    """Uses prompts/generate_<version>.jinja."""
    temperature: float = Field(0.9, ge=0, le=2)
    """Sampling temperature: high, for diversity."""
    max_tokens: int = Field(1536, ge=16)
    """Answer length limit per request."""
    max_rounds: int = Field(4, ge=1)
    """Stop asking a generator after this many rounds even if it is short of its target."""

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in KINDS]
        if unknown or not v:
            raise ValueError(f"unknown kinds {unknown} (known: {', '.join(KINDS)})")
        return v

    def check(self, ctx: StageContext) -> list[str]:
        probs = ctx.check_ref(self.seeds, "seeds")
        probs += [f"stage {ctx.name!r}: generator {g!r} is not an endpoint of the recipe"
                  for g in self.generators if g not in ctx.recipe.endpoints]
        if len(set(self.generators)) != len(self.generators):
            probs.append(f"stage {ctx.name!r}: a generator is listed twice")
        try:
            render_prompt(f"generate_{self.prompt_version}", seeds=[], n=1, kind="knowledge", kind_name="知识问答")
        except ValueError as e:
            probs.append(f"stage {ctx.name!r}: {e}")
        return probs


def request_seed(*parts: object) -> int:
    """A stable 31-bit seed from (recipe seed, generator, round, index): the same on every run."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def build_request(cfg: Config, seeds: list[QA], gen: str, rnd: int, i: int, base_seed: int) -> dict:
    """The chat request for request ``i`` of round ``rnd`` of generator ``gen`` (deterministic)."""
    s = request_seed(base_seed, gen, rnd, i)
    rng = random.Random(s)
    sample = rng.sample(seeds, min(cfg.seeds_per_prompt, len(seeds)))
    kind = cfg.kinds[(rnd * 7919 + i) % len(cfg.kinds)]  # rotate kinds, differently each round
    prompt = render_prompt(f"generate_{cfg.prompt_version}", n=cfg.items_per_request, kind=kind,
                           kind_name=KINDS[kind],
                           seeds=[{"instruction": q.instruction, "input": q.input, "output": q.output} for q in sample])
    return {"messages": [{"role": "user", "content": prompt}], "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens, "seed": s,
            "_meta": {"seed_ids": [q.id for q in sample], "kind": kind, "request_seed": s,
                      "category": sample[0].category}}


async def _generate_one(cfg: Config, ctx: StageContext, gen: str, seeds: list[QA], pb, totals: dict) -> dict:
    """All rounds of one generator; returns its kept items, failures and counts."""
    client = ctx.client(gen)
    model = client.endpoint.model
    items: list[dict] = []
    failed: list[dict] = []
    requests = 0
    for rnd in range(cfg.max_rounds):
        missing = cfg.target_per_generator - len(items)
        if missing <= 0:
            break
        reqs = [build_request(cfg, seeds, gen, rnd, i, ctx.seed)
                for i in range(math.ceil(missing / cfg.items_per_request))]

        async def one(req: dict):
            params = {k: v for k, v in req.items() if k not in ("messages", "_meta")}
            res = await client.chat(req["messages"], **params)
            totals["tokens"] += sum(res.usage.values()) if not res.cached else 0
            pb.set_postfix(kept=totals["kept"], failed=totals["failed"], tokens=totals["tokens"], refresh=False)
            return res

        results = await asyncio.gather(*(one(r) for r in reqs))
        for i, (req, res) in enumerate(zip(reqs, results)):  # in request order: the output is deterministic
            requests += 1
            meta = {"generator": gen, "model": res.model or model, "prompt_version": cfg.prompt_version,
                    "round": rnd, "request": i, **req["_meta"], "usage": res.usage}
            if res.error is not None:
                failed.append({**meta, "reason": f"request failed: {res.error}", "raw": None})
                totals["failed"] += 1
                continue
            try:
                parsed = parse_generated(res.text or "")
            except ParseError as e:
                failed.append({**meta, "reason": e.reason, "raw": res.text})
                totals["failed"] += 1
                continue
            for j, it in enumerate(parsed):
                if len(items) >= cfg.target_per_generator:
                    break
                rec = QA(id=f"gen-{gen}-r{rnd}-{i}-{j}", source=f"generate:{gen}", instruction=it["instruction"],
                         input=it["input"], output=it["output"], kind=it["kind"], category=req["_meta"]["category"],
                         meta={k: v for k, v in meta.items() if k != "category"})
                items.append(rec.to_dict())
                totals["kept"] += 1
                pb.update(1)
    return {"generator": gen, "model": model, "items": items, "failed": failed, "requests": requests}


async def _generate_all(cfg: Config, ctx: StageContext, seeds: list[QA]) -> list[dict]:
    totals = {"kept": 0, "failed": 0, "tokens": 0}
    pb = bar(total=cfg.target_per_generator * len(cfg.generators), desc="generate", unit="item")
    try:
        return await asyncio.gather(*(_generate_one(cfg, ctx, g, seeds, pb, totals) for g in cfg.generators))
    finally:
        pb.close()
        for g in cfg.generators:
            await ctx.client(g).aclose()


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Generate items with every generator; write ``generated`` and ``failed``."""
    seeds = [r for r in read_records(ctx.resolve(cfg.seeds), kind="qa") if isinstance(r, QA)]
    if not seeds:
        raise ValueError(f"{ctx.resolve(cfg.seeds)}: no seed records")
    per_gen = asyncio.run(_generate_all(cfg, ctx, seeds))
    generated = [it for g in per_gen for it in g["items"]]
    failed = [f for g in per_gen for f in g["failed"]]
    write_jsonl(ctx.out_dir / "generated.jsonl", generated)
    write_jsonl(ctx.out_dir / "failed.jsonl", failed)
    metrics = {"prompt_version": cfg.prompt_version, "per_generator": {
        g["generator"]: {"model": g["model"], "requests": g["requests"], "items": len(g["items"]),
                         "failed_requests": len(g["failed"]),
                         "short_of_target": max(0, cfg.target_per_generator - len(g["items"]))}
        for g in per_gen}}
    for g in per_gen:
        if len(g["items"]) < cfg.target_per_generator:
            log.warning("generator %s: %d of %d items after %d rounds (%d failed requests; see failed.jsonl)",
                        g["generator"], len(g["items"]), cfg.target_per_generator, cfg.max_rounds, len(g["failed"]))
    reasons: dict[str, int] = {}
    for f in failed:
        key = "request_failed" if f["raw"] is None else "unparseable"
        reasons[key] = reasons.get(key, 0) + 1
    return StageResult(outputs={"generated": "generated.jsonl", "failed": "failed.jsonl"},
                       counts={"seeds": len(seeds), "generated": len(generated), "dropped": len(failed)},
                       dropped=reasons, metrics=metrics, usage=ctx.usage())
