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

Self-Instruct as published (Wang et al. 2023), per generator: each request shows ``seeds_per_prompt``
examples -- ``machine_per_prompt`` of them drawn from the generator's accepted machine items once there
are any, the rest from the human seed tasks -- and asks for ``items_per_request`` new items of one kind
(knowledge QA, case analysis, multiple choice, patient-facing explanation; the kinds take turns) with
the versioned prompt ``prompts/generate_<version>.jinja``. Each new item is checked against the growing
pool (seeds + items accepted so far) with MinHash LSH and verified on exact character-3-gram Jaccard
(``pool_threshold``); only an item that is not a near-duplicate counts, and it joins the pool. The
target counts unique kept items. Multiple-choice items are written as MCQ records (question, options
A-E, answer, explanation).

Where the endpoint supports structured outputs, each request carries the JSON schema of the answer
(``response_format``), so even a small model writes parseable items; otherwise the items are parsed
from the text with salvage (json-repair, one object per line), so one broken item does not cost its
neighbours. An answer cut off by the length limit (after the client asked again with more room) is
counted as truncated; its complete items are kept, its last (possibly cut) item is not.

Requests go in rounds: a round asks each generator for what it still lacks, until it has its target or
``max_rounds`` pass. Every request's example sample and sampling ``seed`` derive from (recipe seed,
generator, round, request) and the pool, which depends only on earlier answers, and every answer is
cached on disk by the client, so a killed run resumes without re-sending anything answered and ends
with exactly the output an uninterrupted run would have written.

Outputs: ``generated`` (QA and MCQ records; ``meta`` holds generator endpoint, its model identity
``generator_id``, model, prompt version, example ids, request seed and usage), ``failed`` (raw answers
that could not be parsed, or requests that failed, with the reason) and ``rejected`` (items that were
near-duplicates of the pool, with the item they duplicate).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random

from pydantic import Field, field_validator, model_validator

from hypnos.common.io import write_jsonl
from hypnos.common.progress import bar
from hypnos.common.records import MCQ, QA, read_records
from hypnos.common.stage import StageConfig, StageContext, StageResult
from hypnos.data.dedup import NearDupIndex
from hypnos.data.parsing import (
    KINDS,
    ParseError,
    field_bounds,
    generation_schema,
    parse_generated,
    render_prompt,
    response_format,
)
from hypnos.data.text import record_text

log = logging.getLogger("hypnos")


class Config(StageConfig):
    """Generation stage config."""

    seeds: str
    """Seed QA records (path or "@stage[.output]")."""
    generators: list[str] = Field(min_length=1)
    """Recipe endpoint names; each one generates ``target_per_generator`` items."""
    target_per_generator: int = Field(50, ge=1)
    """Unique items to keep per generator (near-duplicates of the pool do not count)."""
    items_per_request: int = Field(5, ge=1, le=20)
    """New items asked for in one request."""
    seeds_per_prompt: int = Field(3, ge=1)
    """Examples shown in one request."""
    machine_per_prompt: int = Field(1, ge=0)
    """How many of the examples come from accepted machine items (Self-Instruct: 2 of 8); the rest are seeds."""
    pool_threshold: float = Field(0.7, gt=0, le=1)
    """An item whose question has character-3-gram Jaccard >= this with a pool item is rejected."""
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    """Kinds of items to ask for, in turn: knowledge, case, mcq, patient."""
    structured: bool = True
    """Send the answer's JSON schema as ``response_format`` (where the endpoint's ``structured_outputs`` allows)."""
    prompt_version: str = "v2"
    """Uses prompts/generate_<version>.jinja."""
    temperature: float = Field(0.9, ge=0, le=2)
    """Sampling temperature: high, for diversity."""
    max_tokens: int = Field(1536, ge=16)
    """Answer length limit per request (the client asks again with twice as much when an answer is cut off)."""
    tokens_per_char: float | None = Field(None, gt=0, le=8)
    """Size the schema's string bounds so that ``items_per_request`` items fit in ``max_tokens`` at this many
    tokens per Chinese character (the demo's SmolLM2: 2.0). For a small model under a grammar, which writes a
    string until its bound; null keeps the fixed bounds (200/400/800 characters), for teachers that stop by
    themselves. Sized answers that reach a bound are counted (``items_at_length_cap``)."""
    max_rounds: int = Field(8, ge=1)
    """Stop asking a generator after this many rounds even if it is short of its target."""

    @model_validator(mode="after")
    def _items_fit_the_budget(self) -> Config:
        for kind in self.kinds if self.structured and self.tokens_per_char else ():  # fail before any request
            field_bounds(kind, self.items_per_request, self.max_tokens, self.tokens_per_char)
        return self

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
        if self.machine_per_prompt > self.seeds_per_prompt:
            probs.append(f"stage {ctx.name!r}: machine_per_prompt ({self.machine_per_prompt}) exceeds "
                         f"seeds_per_prompt ({self.seeds_per_prompt})")
        try:
            render_prompt(f"generate_{self.prompt_version}", seeds=[], n=1, kind="knowledge", kind_name="知识问答")
        except ValueError as e:
            probs.append(f"stage {ctx.name!r}: {e}")
        return probs


def request_seed(*parts: object) -> int:
    """A stable 31-bit seed from (recipe seed, generator, round, index): the same on every run."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def _example(rec: QA | MCQ | dict) -> dict:
    """A pool item as a prompt example ({instruction, input, output})."""
    if isinstance(rec, dict):
        if "options" in rec:
            opts = "\n".join(f"{k}. {v}" for k, v in rec["options"].items())
            return {"instruction": f"{rec['question']}\n{opts}", "input": "",
                    "output": f"{rec['answer']}。{rec.get('explanation', '')}"}
        return {"instruction": rec["instruction"], "input": rec.get("input", ""), "output": rec.get("output", "")}
    return {"instruction": rec.instruction, "input": rec.input, "output": rec.output}


def build_request(cfg: Config, seeds: list[QA], gen: str, rnd: int, i: int, base_seed: int,
                  machine: list[dict] | None = None) -> dict:
    """The chat request for request ``i`` of round ``rnd`` of generator ``gen`` (deterministic).

    Args:
        machine: accepted machine items so far (records as dicts), in acceptance order.
    """
    s = request_seed(base_seed, gen, rnd, i)
    rng = random.Random(s)
    n_machine = min(cfg.machine_per_prompt, len(machine or []), cfg.seeds_per_prompt)
    human = rng.sample(seeds, min(cfg.seeds_per_prompt - n_machine, len(seeds)))
    mach = rng.sample(machine, n_machine) if n_machine else []
    kind = cfg.kinds[(rnd * 7919 + i) % len(cfg.kinds)]  # rotate kinds, differently each round
    prompt = render_prompt(f"generate_{cfg.prompt_version}", n=cfg.items_per_request, kind=kind,
                           kind_name=KINDS[kind], seeds=[_example(q) for q in human] + [_example(m) for m in mach])
    req = {"messages": [{"role": "user", "content": prompt}], "temperature": cfg.temperature,
           "max_tokens": cfg.max_tokens, "seed": s,
           "_meta": {"seed_ids": [q.id for q in human], "machine_ids": [m["id"] for m in mach], "kind": kind,
                     "request_seed": s, "category": human[0].category if human else ""}}
    if cfg.structured:
        schema = generation_schema(kind, cfg.items_per_request, cfg.max_tokens, cfg.tokens_per_char)
        req["response_format"] = response_format(f"anesthesia_{kind}", schema)
    return req


def _bounds(cfg: Config, kind: str) -> dict:
    return field_bounds(kind, cfg.items_per_request, cfg.max_tokens, cfg.tokens_per_char)


def _record(it: dict, rec_id: str, gen: str, category: str, meta: dict) -> dict:
    """A parsed item as a QA or MCQ record dict."""
    if it.get("kind") == "mcq" and "options" in it:
        return MCQ(id=rec_id, source=f"generate:{gen}", question=it["question"], options=it["options"],
                   answer=it["answer"], explanation=it.get("explanation", ""), category=category, split="train",
                   meta=meta).to_dict()
    return QA(id=rec_id, source=f"generate:{gen}", instruction=it["instruction"], input=it["input"],
              output=it["output"], kind=it["kind"], category=category, meta=meta).to_dict()


async def _generate_one(cfg: Config, ctx: StageContext, gen: str, seeds: list[QA], pb, totals: dict) -> dict:
    """All rounds of one generator; returns its kept items, failures, rejections and counts."""
    from hypnos.data.clients import endpoint_identity

    client = ctx.client(gen)
    model = client.endpoint.model
    gen_id = endpoint_identity(client.endpoint.base_url, model)
    pool = NearDupIndex(cfg.pool_threshold)
    for q in seeds:
        pool.add(q.id, record_text(q.to_dict()))
    items: list[dict] = []
    failed: list[dict] = []
    rejected: list[dict] = []
    counts = {"requests": 0, "structured": 0, "truncated": 0, "parsed_items": 0, "schema_valid": 0, "at_cap": 0}
    for rnd in range(cfg.max_rounds):
        missing = cfg.target_per_generator - len(items)
        if missing <= 0:
            break
        reqs = [build_request(cfg, seeds, gen, rnd, i, ctx.seed, items)
                for i in range(math.ceil(missing / cfg.items_per_request))]

        async def one(req: dict):
            params = {k: v for k, v in req.items() if k not in ("messages", "_meta")}
            res = await client.chat(req["messages"], on_length="retry", **params)
            totals["tokens"] += sum(res.usage.values()) if not res.cached else 0
            pb.set_postfix(kept=totals["kept"], failed=totals["failed"], tokens=totals["tokens"], refresh=False)
            return res

        results = await asyncio.gather(*(one(r) for r in reqs))
        for i, (req, res) in enumerate(zip(reqs, results)):  # in request order: the output is deterministic
            counts["requests"] += 1
            counts["structured"] += res.structured
            meta = {"generator": gen, "generator_id": gen_id, "model": res.model or model,
                    "prompt_version": cfg.prompt_version, "round": rnd, "request": i, **req["_meta"],
                    "usage": res.usage}
            if res.error is not None:
                failed.append({**meta, "reason": f"request failed: {res.error}", "raw": None})
                totals["failed"] += 1
                continue
            try:
                parsed = parse_generated(res.text or "")
            except ParseError as e:
                failed.append({**meta, "reason": ("truncated: " if res.truncated else "") + e.reason, "raw": res.text})
                totals["failed"] += 1
                counts["truncated"] += res.truncated
                continue
            if res.truncated:  # the last item may be cut mid-answer: keep only complete ones
                counts["truncated"] += 1
                if parsed and not _closed(parsed[-1], res.text or ""):
                    parsed = parsed[:-1]
            counts["parsed_items"] += len(parsed)
            if res.structured and cfg.tokens_per_char:  # a sized bound may have cut an answer short: say how often
                caps = _bounds(cfg, req["_meta"]["kind"])
                counts["at_cap"] += sum(any(isinstance(it.get(f), str) and hi and len(it[f]) >= hi
                                            for f, (_, hi) in caps.items()) for it in parsed)
            counts["schema_valid"] += bool(parsed) and all(_matches_kind(it, req["_meta"]["kind"]) for it in parsed)
            for j, it in enumerate(parsed):
                if len(items) >= cfg.target_per_generator:
                    break
                rec = _record(it, f"gen-{gen}-r{rnd}-{i}-{j}", gen, req["_meta"]["category"],
                              {k: v for k, v in meta.items() if k != "category"})
                text = record_text(rec)
                dup = pool.query(text)
                if dup is not None:
                    rejected.append({"id": rec["id"], "duplicate_of": dup[0], "jaccard": round(dup[1], 3),
                                     "text": text, "generator": gen})
                    continue
                pool.add(rec["id"], text)
                items.append(rec)
                totals["kept"] += 1
                pb.update(1)
    return {"generator": gen, "model": model, "items": items, "failed": failed, "rejected": rejected, **counts}


def _closed(it: dict, text: str) -> bool:
    """The item's last field ends before the cut: its JSON-encoded value, closing quote included, is in the text."""
    last = it.get("explanation") if "options" in it else it.get("output")
    return bool(last) and json.dumps(last, ensure_ascii=False) in text


def _matches_kind(it: dict, kind: str) -> bool:
    """An item has the shape its request asked for (an MCQ record for mcq, a QA item otherwise)."""
    return ("options" in it) == (kind == "mcq")


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
    """Generate items with every generator; write ``generated``, ``failed`` and ``rejected``."""
    seeds = [r for r in read_records(ctx.resolve(cfg.seeds), kind="qa") if isinstance(r, QA)]
    if not seeds:
        raise ValueError(f"{ctx.resolve(cfg.seeds)}: no seed records")
    per_gen = asyncio.run(_generate_all(cfg, ctx, seeds))
    generated = [it for g in per_gen for it in g["items"]]
    failed = [f for g in per_gen for f in g["failed"]]
    rejected = [r for g in per_gen for r in g["rejected"]]
    write_jsonl(ctx.out_dir / "generated.jsonl", generated)
    write_jsonl(ctx.out_dir / "failed.jsonl", failed)
    write_jsonl(ctx.out_dir / "rejected.jsonl", rejected)
    # the schema's per-field character bounds, sized to max_tokens: a reader sees how long items could be
    sent = cfg.tokens_per_char and any(g["structured"] for g in per_gen)  # a client may drop the schema on a 400
    field_max_chars = {k: {f: hi for f, (_, hi) in _bounds(cfg, k).items()} for k in cfg.kinds} if sent else None
    metrics = {"prompt_version": cfg.prompt_version, "field_max_chars": field_max_chars, "per_generator": {
        g["generator"]: {"model": g["model"], "requests": g["requests"], "items": len(g["items"]),
                         "failed_requests": len(g["failed"]), "near_duplicates_rejected": len(g["rejected"]),
                         "structured_requests": g["structured"], "truncated_answers": g["truncated"],
                         "parsed_items": g["parsed_items"], "items_at_length_cap": g["at_cap"],
                         "schema_valid_rate": round(g["schema_valid"] / g["requests"], 4) if g["requests"] else None,
                         "short_of_target": max(0, cfg.target_per_generator - len(g["items"]))}
        for g in per_gen}}
    for g in per_gen:
        if len(g["items"]) < cfg.target_per_generator:
            log.warning("generator %s: %d of %d items after %d rounds (%d failed requests, %d near-duplicates; see "
                        "failed.jsonl, rejected.jsonl)", g["generator"], len(g["items"]), cfg.target_per_generator,
                        cfg.max_rounds, len(g["failed"]), len(g["rejected"]))
    reasons: dict[str, int] = {}
    for f in failed:
        key = "request_failed" if f["raw"] is None else "truncated" if f["reason"].startswith("truncated") \
            else "unparseable"
        reasons[key] = reasons.get(key, 0) + 1
    return StageResult(outputs={"generated": "generated.jsonl", "failed": "failed.jsonl", "rejected": "rejected.jsonl"},
                       counts={"seeds": len(seeds), "generated": len(generated), "dropped": len(failed),
                               "near_duplicates": len(rejected)},
                       dropped=reasons, metrics=metrics, usage=ctx.usage())
