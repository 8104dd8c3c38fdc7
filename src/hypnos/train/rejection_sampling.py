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

Each iteration samples ``k`` answers per prompt from the current policy (in-process batched ``generate``,
seeded), scores them with the reward model, keeps the best answer when it beats the runner-up by at least
``margin``, and runs the sft code on the kept (prompt, answer) pairs; the next iteration samples from the
result. Each iteration lives in ``iterN/`` and is skipped on resume once finished. The report compares the
mean reward of samples from the starting policy with samples from the final one (same prompts and seeds).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

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
    iterations: int = Field(1, ge=1)
    """Sample → select → fine-tune rounds; each starts from the previous round's model."""
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    generate_batch_size: int = Field(8, ge=1)
    """Prompts per ``generate`` call (each yields k sequences)."""
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
        for p in self.prompts:
            problems += ctx.check_ref(p, "prompts")
        return problems


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
def sample(model_dir: str, prompts: list[list[dict]], cfg: Config, seed: int) -> list[list[str]]:
    """``k`` sampled answers per prompt from the model in ``model_dir`` (seeded per batch)."""
    from hypnos.common.models import default_device, load_causal_lm

    tok = load_tokenizer_for_training(model_dir)
    tok.padding_side = "left"  # generation continues from the right end of every row
    model = load_causal_lm(model_dir)
    out: list[list[str]] = []
    batches = range(0, len(prompts), cfg.generate_batch_size)
    for b in track(batches, desc=f"sample k={cfg.k}", unit="batch"):
        chunk = prompts[b: b + cfg.generate_batch_size]
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(default_device())
        torch.manual_seed(seed * 100_003 + b)  # same answers whatever else ran before
        gen = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.k,
                             pad_token_id=tok.pad_token_id)
        answers = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [[a.strip() for a in answers[i * cfg.k: (i + 1) * cfg.k]] for i in range(len(chunk))]
    return out


def reward_of(reward_dir: str, prompts: list[list[dict]], answers: list[list[str]]) -> list[list[float]]:
    """Reward of every sampled answer (rendered as a chat, like reward training does)."""
    from transformers import AutoModelForSequenceClassification

    from hypnos.common.models import default_device, resolve_model

    tok = load_tokenizer_for_training(reward_dir)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(reward_dir)).to(default_device())
    model.config.pad_token_id = tok.pad_token_id
    seqs = [tok(tok.apply_chat_template([*p, {"role": "assistant", "content": a}], tokenize=False),
                add_special_tokens=False)["input_ids"] for p, ans in zip(prompts, answers) for a in ans]
    flat = score(model, tok, seqs)
    k = len(answers[0]) if answers else 0
    return [flat[i * k: (i + 1) * k] for i in range(len(answers))]


def select(prompts, answers, rewards, margin: float) -> list[list[dict]]:
    """Chats (prompt + best answer) whose best reward beats the runner-up by ``margin``."""
    kept = []
    for p, ans, r in zip(prompts, answers, rewards):
        order = sorted(range(len(r)), key=lambda i: -r[i])
        if r[order[0]] - r[order[1]] >= margin and ans[order[0]]:
            kept.append([*p, {"role": "assistant", "content": ans[order[0]]}])
    return kept


def _mean(rows: list[list[float]]) -> float | None:
    flat = [x for r in rows for x in r]
    return round(statistics.fmean(flat), 4) if flat else None


def run_iteration(cfg: Config, ctx: StageContext, it: int, policy: str, reward_dir: str,
                  prompts: list[list[dict]]) -> dict[str, Any]:
    """One sample → score → select → fine-tune round into ``iter{it}/``; returns its metrics."""
    it_dir = ctx.out_dir / f"iter{it}"
    done = it_dir / "done.json"
    if done.exists():  # finished before a kill: reuse it
        return json.loads(done.read_text())
    answers = sample(policy, prompts, cfg, seed=ctx.seed + it)
    rewards = reward_of(reward_dir, prompts, answers)
    write_jsonl(it_dir / "samples.jsonl", ({"prompt": p, "answers": a, "rewards": r}
                                           for p, a, r in zip(prompts, answers, rewards)))
    kept = select(prompts, answers, rewards, cfg.margin)
    write_jsonl(it_dir / "kept.jsonl", ({"messages": c} for c in kept))
    kept_rewards = [[max(r)] for r in rewards if max(r) - sorted(r)[-2] >= cfg.margin]
    metrics: dict[str, Any] = {"mean_reward_sampled": _mean(rewards), "mean_reward_kept": _mean(kept_rewards),
                               "kept": len(kept), "prompts": len(prompts)}
    if not kept:
        raise DataError(it_dir / "samples.jsonl", None, f"iteration {it}: no answer beat the others by margin "
                        f"{cfg.margin}; lower `margin` or raise `k`")
    tok = load_tokenizer_for_training(policy)
    examples, _ = tokenize_chats(tok, kept, cfg.max_length)
    _, train_metrics = finetune(ctx, policy, tok, examples, lora=cfg.lora, training=cfg.training,
                                stage_defaults=cfg.default_training(), packing=cfg.packing, out_dir=it_dir)
    metrics["train"] = train_metrics
    done.write_text(json.dumps(metrics, ensure_ascii=False))
    return metrics


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Run the iterations, then measure the final policy's mean reward on the same prompts and seeds."""
    prompts = read_prompts([ctx.resolve(p) for p in cfg.prompts])
    if not prompts:
        raise DataError(cfg.prompts[0], None, "no prompts")
    policy, reward_dir = ctx.resolve_model(cfg.model), ctx.resolve_model(cfg.reward_model)
    per_iter = []
    for it in range(cfg.iterations):
        per_iter.append(run_iteration(cfg, ctx, it, policy, reward_dir, prompts))
        policy = str(ctx.out_dir / f"iter{it}" / "model")
        log.info("rejection sampling iteration %d: mean reward %s, kept %d/%d (mean %s)", it,
                 per_iter[-1]["mean_reward_sampled"], per_iter[-1]["kept"], len(prompts),
                 per_iter[-1]["mean_reward_kept"])
    final = sample(policy, prompts, cfg, seed=ctx.seed)  # iteration 0's seed: same draws, new policy
    after = _mean(reward_of(reward_dir, prompts, final))
    metrics = {"mean_reward_before": per_iter[0]["mean_reward_sampled"], "mean_reward_after": after,
               "iterations": per_iter}
    counts = {"in": len(prompts), "kept": per_iter[-1]["kept"], "dropped": len(prompts) - per_iter[-1]["kept"]}
    dropped = {"best_not_above_margin": counts["dropped"]} if counts["dropped"] else {}
    return StageResult(outputs={"model": f"iter{cfg.iterations - 1}/model"}, counts=counts, dropped=dropped,
                       metrics=metrics)
