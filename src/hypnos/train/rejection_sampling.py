"""Rejection sampling (ChiMed-GPT's RLHF stage): sample K answers, keep the reward model's best, fine-tune on it.

Run: ``hypnos rejection_sampling --config configs/rejection_sampling/smollm2.yaml`` or as a recipe stage::

    - name: rs
      kind: rejection_sampling
      model: "@sft_specific"
      reward_model: "@reward"
      prompts: [examples/seeds/anesthesia_seed.jsonl]   # QA, dialogue or ranked records: their questions
      k: 4
      margin: 0.5
      iterations: 2
      lora: {r: 16, alpha: 32}

A held-out share of the prompts (``heldout_fraction``) is set aside. Each iteration samples ``k`` answers per
training prompt from the current policy (in-process ``generate`` with prompts sharded across processes, or an
OpenAI-compatible ``endpoint``), scores them with the reward model, drops answers cut at ``max_new_tokens``,
keeps the best answer when its reward is at least ``min_reward`` and beats the runner-up by ``margin``, and
runs the sft code on the kept (prompt, answer) pairs; the next iteration samples from the result. Each
iteration lives in ``iterN/`` and is skipped on resume once finished; its files are written by the main
process. The report compares the mean reward of the starting and final policies on the held-out prompts
(same seeds).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from hypnos.common import dist
from hypnos.common.io import DataError, ReadReport, write_jsonl
from hypnos.common.progress import track
from hypnos.common.records import QA, Dialogue, Ranked, read_records
from hypnos.common.stage import StageContext, StageResult, log
from hypnos.train.common import TrainStageConfig, load_tokenizer_for_training
from hypnos.train.reward import score
from hypnos.train.sft import finetune, tokenize_chats


class Config(TrainStageConfig):
    """Best-of-K rejection sampling with a reward model, then SFT on the kept answers."""

    reward_model: str
    """The reward model (``"@reward"``, a local dir)."""
    prompts: list[str] = Field(min_length=1)
    """Files whose questions are the prompts: QA (instruction/input), dialogue (up to the last user turn), ranked."""
    k: int = Field(4, ge=2)
    """Answers sampled per prompt."""
    margin: float = Field(0.0, ge=0)
    """Keep the best answer only if its reward beats the second best by at least this much."""
    min_reward: float | None = None
    """Keep the best answer only if its reward is at least this (an absolute floor; null = no floor)."""
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of prompts never trained on (at least one when > 0): "before"/"after" mean rewards are measured there."""
    endpoint: str | None = None
    """Sample through this recipe endpoint (vLLM, ``hypnos serve``) serving the starting policy, from the main
    process; null = in-process ``generate`` sharded across processes. Only with ``iterations: 1`` (later
    policies exist only locally)."""
    iterations: int = Field(1, ge=1)
    """Sample → select → fine-tune rounds; each starts from the previous round's model."""
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    generate_batch_size: int = Field(8, ge=1)
    """Ignored (kept so older configs load): in-process sampling now runs one prompt (k sequences) per
    ``generate`` call, seeded per prompt so draws do not depend on how prompts are sharded across processes."""
    max_length: int = Field(1024, ge=16)
    """SFT: longer chats are cut."""
    packing: bool = True
    """SFT: padding-free packing."""

    def check(self, ctx: StageContext) -> list[str]:
        """Policy, reward model, training arguments and prompt files."""
        from hypnos.common.runner import check_model_ref

        problems = super().check(ctx)
        problems += check_model_ref(ctx.recipe, self.reward_model, f"stage {ctx.name!r}: reward_model")
        problems += ctx.check_ref(self.reward_model, "reward_model") if self.reward_model.startswith("@") else []
        problems += self.check_reward_template(ctx)
        for p in self.prompts:
            problems += ctx.check_ref(p, "prompts")
        if self.endpoint is not None:
            if self.endpoint not in ctx.recipe.endpoints:
                problems.append(f"stage {ctx.name!r}: endpoint {self.endpoint!r} is not in the recipe's endpoints")
            if self.iterations != 1:
                problems.append(f"stage {ctx.name!r}: endpoint sampling needs iterations: 1 (the endpoint serves "
                                "only the starting policy)")
        return problems

    def check_reward_template(self, ctx: StageContext) -> list[str]:
        """The reward model renders chats with its own template, else with this stage's ``chat_template``
        (``reward_of``): with neither, scoring would fail only after every prompt was sampled."""
        from hypnos.train.chat_templates import FIELD_HINT, model_has_chat_template

        if self.chat_template is None and model_has_chat_template(ctx.recipe, self.reward_model) is False:
            return [f"stage {ctx.name!r}: reward_model {self.reward_model!r} has no chat template; {FIELD_HINT}"]
        return []


def read_prompts(paths: list[Path]) -> list[list[dict]]:
    """Chat prompts (message lists ending with a user turn) from QA, dialogue or ranked files."""
    prompts = []
    for path in paths:
        for rec in read_records(path, report=ReadReport()):
            if isinstance(rec, QA):
                prompts.append([{"role": "user", "content": rec.prompt()}])
            elif isinstance(rec, Ranked):
                prompts.append([{"role": "user", "content": rec.question}])
            elif isinstance(rec, Dialogue):
                msgs = rec.to_messages()
                last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
                prompts.append(msgs[: last_user + 1])
            else:
                raise DataError(path, None, f"record {rec.id!r} ({type(rec).__name__}) has no question to prompt with")
    return prompts


@torch.no_grad()
def sample_local(model_dir: str, prompts: list[list[dict]], cfg: Config, seed: int,
                 chat_template: str | None = None, offset: int = 0) -> list[list[tuple[str, bool]]]:
    """``k`` sampled (answer, truncated) pairs per prompt from the model in ``model_dir``, in process.

    Seeded per prompt (``offset`` = the prompt's global index), so the draws do not depend on how prompts
    are sharded or batched. An answer is truncated when no EOS came within ``max_new_tokens``.
    """
    from hypnos.common.models import default_device, load_causal_lm

    tok = load_tokenizer_for_training(model_dir, chat_template)
    tok.padding_side = "left"  # generation continues from the right end of every row
    model = load_causal_lm(model_dir)
    eos = {tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else (model.generation_config.eos_token_id or []))}
    out: list[list[tuple[str, bool]]] = []
    for i in track(range(len(prompts)), desc=f"sample k={cfg.k}", unit="prompt"):
        text = tok.apply_chat_template(prompts[i], tokenize=False, add_generation_prompt=True)
        enc = tok([text], return_tensors="pt", add_special_tokens=False).to(default_device())
        torch.manual_seed(seed * 100_003 + offset + i)
        gen = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.k,
                             pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
        answers = tok.batch_decode(gen, skip_special_tokens=True)
        cut = [not any(int(t) in eos for t in row) for row in gen]
        out.append([(a.strip(), c) for a, c in zip(answers, cut)])
    return out


def sample_endpoint(ctx: StageContext, prompts: list[list[dict]], cfg: Config, seed: int) -> list[list[tuple[str, bool]]]:
    """``k`` answers per prompt from the stage's endpoint (main process only: API calls, cache).

    One request per answer (``n=1``, seed ``seed*k + j``): each answer carries its own ``finish_reason``, so
    answers cut at ``max_new_tokens`` (``length``) are known exactly; answers are cached like any API call.
    """
    reqs = [{"messages": p, "max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
             "seed": seed * cfg.k + j} for p in prompts for j in range(cfg.k)]
    res = ctx.client(cfg.endpoint).chat_many_sync(reqs, progress=True)
    out = []
    for i in range(len(prompts)):
        row = res[i * cfg.k: (i + 1) * cfg.k]
        out.append([((r.text or "").strip(), r.error is not None or r.finish_reason == "length") for r in row])
    return out


def sample(ctx: StageContext, policy: str, prompts: list[list[dict]], cfg: Config, seed: int,
           use_endpoint: bool) -> list[list[tuple[str, bool]]]:
    """Samples for every prompt: from the endpoint (main process), or in process with prompts sharded by rank."""
    if use_endpoint:
        return dist.run_on_main(sample_endpoint, ctx, prompts, cfg, seed)
    mine, start = dist.shard(prompts)
    parts = dist.all_gather(sample_local(policy, mine, cfg, seed, cfg.chat_template, offset=start))
    return [x for part in parts for x in part]


def reward_of(reward_dir: str, prompts: list[list[dict]], answers: list[list[str]],
              chat_template: str | None = None) -> list[list[float]]:
    """Reward of every answer (rendered as a chat, like reward training does); prompts sharded by rank.

    ``chat_template`` (the stage's, meant for its policy) is used only when the reward model has no template
    of its own: a reward model scores chats rendered the way it was trained on them.
    """
    from transformers import AutoModelForSequenceClassification

    from hypnos.common.models import default_device, resolve_model
    from hypnos.train.chat_templates import dir_has_chat_template

    own = dir_has_chat_template(resolve_model(reward_dir))
    tok = load_tokenizer_for_training(reward_dir, None if own else chat_template)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(reward_dir)).to(default_device())
    model.config.pad_token_id = tok.pad_token_id
    idx, _ = dist.shard(list(range(len(prompts))))
    seqs = [tok(tok.apply_chat_template([*prompts[i], {"role": "assistant", "content": a}], tokenize=False),
                add_special_tokens=False)["input_ids"] for i in idx for a in answers[i]]
    flat = [x for part in dist.all_gather(score(model, tok, seqs) if seqs else []) for x in part]
    out, at = [], 0
    for ans in answers:
        out.append(flat[at: at + len(ans)])
        at += len(ans)
    return out


def select(prompts, answers, rewards, truncated, margin: float, floor: float | None) -> tuple[list[list[dict]], dict]:
    """Chats (prompt + best complete answer) whose reward clears ``floor`` and beats the runner-up by ``margin``.

    Truncated answers never compete (a cut answer teaches the policy to stop mid-sentence).

    Returns:
        (kept chats, dropped prompts by reason).
    """
    kept, dropped = [], {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for p, ans, r, cut in zip(prompts, answers, rewards, truncated):
        ok = [i for i in range(len(r)) if not cut[i] and ans[i]]
        if not ok:
            drop("all_truncated_or_empty")
            continue
        order = sorted(ok, key=lambda i: -r[i])
        if floor is not None and r[order[0]] < floor:
            drop("best_below_min_reward")
        elif len(order) > 1 and r[order[0]] - r[order[1]] < margin:
            drop("best_not_above_margin")
        else:
            kept.append([*p, {"role": "assistant", "content": ans[order[0]]}])
    return kept, dropped


def _mean(rows: list[list[float]]) -> float | None:
    flat = [x for r in rows for x in r]
    return round(statistics.fmean(flat), 4) if flat else None


def split_prompts(prompts: list[list[dict]], fraction: float, seed: int) -> tuple[list, list]:
    """A seeded (train, held-out) split; held-out has at least one prompt when ``fraction`` > 0."""
    import random

    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n = max(1, round(fraction * len(prompts))) if fraction > 0 and len(prompts) > 1 else 0
    held = set(order[:n])
    return [p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held]


def _write_samples(it_dir: Path, prompts, answers, rewards, truncated, kept) -> None:
    write_jsonl(it_dir / "samples.jsonl", ({"prompt": p, "answers": a, "rewards": r, "truncated": t}
                                           for p, a, r, t in zip(prompts, answers, rewards, truncated)))
    write_jsonl(it_dir / "kept.jsonl", ({"messages": c} for c in kept))


def run_iteration(cfg: Config, ctx: StageContext, it: int, policy: str, reward_dir: str,
                  prompts: list[list[dict]]) -> dict[str, Any]:
    """One sample → score → select → fine-tune round into ``iter{it}/``; returns its metrics."""
    it_dir = ctx.out_dir / f"iter{it}"
    done = it_dir / "done.json"
    if done.exists():  # finished before a kill: reuse it
        return json.loads(done.read_text())
    drawn = sample(ctx, policy, prompts, cfg, seed=ctx.seed + it, use_endpoint=cfg.endpoint is not None and it == 0)
    answers = [[a for a, _ in row] for row in drawn]
    truncated = [[c for _, c in row] for row in drawn]
    rewards = reward_of(reward_dir, prompts, answers, cfg.chat_template)
    kept, dropped = select(prompts, answers, rewards, truncated, cfg.margin, cfg.min_reward)
    dist.run_on_main(_write_samples, it_dir, prompts, answers, rewards, truncated, kept)
    complete = [[x for x, c in zip(r, t) if not c] for r, t in zip(rewards, truncated)]
    metrics: dict[str, Any] = {"mean_reward_sampled": _mean(rewards), "mean_reward_complete": _mean(complete),
                               "kept": len(kept), "prompts": len(prompts), "dropped": dropped,
                               "truncated_answers": sum(map(sum, truncated))}
    metrics["mean_reward_kept"] = _mean([[max(r[i] for i in range(len(r)) if not t[i])] for r, t in
                                         zip(rewards, truncated) if not all(t)]) if kept else None
    if not kept:
        raise DataError(it_dir / "samples.jsonl", None, f"iteration {it}: no answer kept ({dropped}); lower "
                        "`margin`/`min_reward`, raise `k` or `max_new_tokens`")
    tok = load_tokenizer_for_training(policy, cfg.chat_template)
    examples, _ = tokenize_chats(tok, kept, cfg.max_length)
    _, train_metrics = finetune(ctx, policy, tok, examples, cfg=cfg, stage_defaults=cfg.default_training(),
                                packing=cfg.packing, max_length=cfg.max_length, out_dir=it_dir)
    metrics["train"] = train_metrics
    dist.run_on_main(done.write_text, json.dumps(metrics, ensure_ascii=False))
    return metrics


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Run the iterations on the training prompts; compare start and final policy on the held-out prompts."""
    prompts = read_prompts([ctx.resolve(p) for p in cfg.prompts])
    if not prompts:
        raise DataError(cfg.prompts[0], None, "no prompts")
    train, held = split_prompts(prompts, cfg.heldout_fraction, ctx.seed)
    if not train:
        raise DataError(cfg.prompts[0], None, "no training prompts left after the held-out split")
    start, reward_dir = ctx.resolve_model(cfg.model), ctx.resolve_model(cfg.reward_model)
    policy, per_iter = start, []
    for it in range(cfg.iterations):
        per_iter.append(run_iteration(cfg, ctx, it, policy, reward_dir, train))
        policy = str(ctx.out_dir / f"iter{it}" / "model")
        log.info("rejection sampling iteration %d: mean reward %s, kept %d/%d (mean %s)", it,
                 per_iter[-1]["mean_reward_sampled"], per_iter[-1]["kept"], len(train),
                 per_iter[-1]["mean_reward_kept"])
    metrics: dict[str, Any] = {"iterations": per_iter, "heldout_prompts": len(held)}
    if held:  # same held-out prompts and seeds, start vs final policy, in process
        for name, model_dir in (("before", start), ("after", policy)):
            drawn = sample(ctx, model_dir, held, cfg, seed=ctx.seed + 10_007, use_endpoint=False)
            metrics[f"mean_reward_{name}"] = _mean(reward_of(reward_dir, held, [[a for a, _ in r] for r in drawn],
                                                             cfg.chat_template))
    last = per_iter[-1]
    counts = {"in": len(train), "kept": last["kept"], "dropped": len(train) - last["kept"],
              "heldout": len(held)}
    return StageResult(outputs={"model": f"iter{cfg.iterations - 1}/model"}, counts=counts,
                       dropped=dict(last["dropped"]), metrics=metrics)
