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
OpenAI-compatible ``endpoint``), scores them with the reward model, drops answers cut at ``max_new_tokens`` (unless
``keep_truncated``), keeps the best answer when its reward is at least ``min_reward`` and beats the runner-up by ``margin``, and
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
    """Prompts per in-process ``generate`` call (each with ``k`` sequences, left-padded). Prompts are cut into
    chunks of this many by their global index and whole chunks are sharded across processes, each seeded by
    its index: the draws depend on this number but not on how many processes sample. On a CPU one call of
    8 prompts x 4 answers costs far less than 8 calls of 4 answers."""
    keep_truncated: bool = False
    """Let answers cut at ``max_new_tokens`` compete (and be trained on as if they ended there). Off: a
    cut answer teaches the policy to stop mid-sentence. On only for toy budgets, where a small policy rarely
    ends an answer within the few tokens a CPU can afford (``kept_truncated`` counts them)."""
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

    Prompts go ``generate_batch_size`` at a time, each call seeded by its first prompt's global index
    (``offset`` + position; ``offset`` is a multiple of the batch size, see ``sample``). An answer is
    truncated when no EOS came within ``max_new_tokens``.
    """
    from hypnos.common.models import default_device, load_causal_lm

    tok = load_tokenizer_for_training(model_dir, chat_template)
    tok.padding_side = "left"  # generation continues from the right end of every row
    model = load_causal_lm(model_dir)
    eos = {tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else (model.generation_config.eos_token_id or []))}
    out: list[list[tuple[str, bool]]] = []
    size = cfg.generate_batch_size
    for at in track(range(0, len(prompts), size), desc=f"sample k={cfg.k}, {size} prompts a call", unit="call"):
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[at: at + size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(default_device())
        torch.manual_seed(seed * 100_003 + offset + at)
        gen = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.k,
                             pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
        answers = tok.batch_decode(gen, skip_special_tokens=True)
        cut = [not any(int(t) in eos for t in row) for row in gen]
        # generate repeats each prompt k times in place: rows [i*k, (i+1)*k) answer prompt i
        for i in range(len(texts)):
            out.append([(a.strip(), c) for a, c in zip(answers[i * cfg.k: (i + 1) * cfg.k], cut[i * cfg.k: (i + 1) * cfg.k])])
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
    size = cfg.generate_batch_size
    chunks, first = dist.shard([prompts[at: at + size] for at in range(0, len(prompts), size)])  # whole calls
    mine = [p for chunk in chunks for p in chunk]
    parts = dist.all_gather(sample_local(policy, mine, cfg, seed, cfg.chat_template, offset=first * size))
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


def select(prompts, answers, rewards, truncated, margin: float, floor: float | None,
           truncated_ok: bool = False) -> tuple[list[list[dict]], dict]:
    """Chats (prompt + best complete answer) whose reward clears ``floor`` and beats the runner-up by ``margin``.

    Truncated answers never compete (a cut answer teaches the policy to stop mid-sentence) unless
    ``truncated_ok`` (toy budgets where a small policy rarely ends an answer within ``max_new_tokens``).

    Returns:
        (kept chats, dropped prompts by reason).
    """
    picks, dropped = pick_best(answers, rewards, truncated, margin, floor, truncated_ok)
    return [[*prompts[i], {"role": "assistant", "content": answers[i][j]}] for i, j in picks], dropped


def pick_best(answers, rewards, truncated, margin: float, floor: float | None,
              truncated_ok: bool = False) -> tuple[list[tuple[int, int]], dict]:
    """(prompt index, answer index) of every kept answer (see ``select``), and dropped prompts by reason."""
    picks, dropped = [], {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for n, (ans, r, cut) in enumerate(zip(answers, rewards, truncated)):
        ok = [i for i in range(len(r)) if (truncated_ok or not cut[i]) and ans[i]]
        if not ok:
            drop("all_empty" if truncated_ok else "all_truncated_or_empty")
            continue
        order = sorted(ok, key=lambda i: -r[i])
        if floor is not None and r[order[0]] < floor:
            drop("best_below_min_reward")
        elif len(order) > 1 and r[order[0]] - r[order[1]] < margin:
            drop("best_not_above_margin")
        else:
            picks.append((n, order[0]))
    return picks, dropped


def _mean(rows: list[list[float]]) -> float | None:
    flat = [x for r in rows for x in r]
    return round(statistics.fmean(flat), 4) if flat else None


def paired_change(before: list[list[float]], after: list[list[float]], seed: int = 0) -> dict:
    """After − before mean reward on the same held-out prompts (same seeds), with a bootstrap CI over prompts.

    Each prompt's k rewards are averaged first: the prompt is the unit that was sampled, its k answers are not
    independent of each other. Returns ``{"difference", "ci": [low, high], "n"}`` (rounded to 4 places).
    """
    from hypnos.eval.stats import mean_ci

    if len(before) != len(after):
        raise ValueError(f"before/after rewards of {len(before)} vs {len(after)} prompts: not paired")
    d = [statistics.fmean(a) - statistics.fmean(b) for b, a in zip(before, after)]
    m = mean_ci(d, seed)
    return {"difference": round(m["mean"], 4), "ci": [round(x, 4) for x in m["ci"]], "n": m["n"]}


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
    picks, dropped = pick_best(answers, rewards, truncated, cfg.margin, cfg.min_reward, cfg.keep_truncated)
    kept = [[*prompts[i], {"role": "assistant", "content": answers[i][j]}] for i, j in picks]
    dist.run_on_main(_write_samples, it_dir, prompts, answers, rewards, truncated, kept)
    complete = [[x for x, c in zip(r, t) if not c] for r, t in zip(rewards, truncated)]
    metrics: dict[str, Any] = {"mean_reward_sampled": _mean(rewards), "mean_reward_complete": _mean(complete),
                               "kept": len(kept), "prompts": len(prompts), "dropped": dropped,
                               "truncated_answers": sum(map(sum, truncated)),
                               "kept_truncated": sum(truncated[i][j] for i, j in picks),
                               "mean_reward_kept": _mean([[rewards[i][j] for i, j in picks]])}
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
        held_rewards = {}
        for name, model_dir in (("before", start), ("after", policy)):
            drawn = sample(ctx, model_dir, held, cfg, seed=ctx.seed + 10_007, use_endpoint=False)
            held_rewards[name] = reward_of(reward_dir, held, [[a for a, _ in r] for r in drawn], cfg.chat_template)
            metrics[f"mean_reward_{name}"] = _mean(held_rewards[name])
        metrics["mean_reward_change"] = paired_change(held_rewards["before"], held_rewards["after"], ctx.seed)
        log.info("rejection sampling: held-out mean reward %s -> %s (%d prompts; change %+.3f, 95%% CI "
                 "[%+.3f, %+.3f])", metrics["mean_reward_before"], metrics["mean_reward_after"], len(held),
                 metrics["mean_reward_change"]["difference"], *metrics["mean_reward_change"]["ci"])
    last = per_iter[-1]
    counts = {"in": len(train), "kept": last["kept"], "dropped": len(train) - last["kept"],
              "heldout": len(held)}
    return StageResult(outputs={"model": f"iter{cfg.iterations - 1}/model"}, counts=counts,
                       dropped=dict(last["dropped"]), metrics=metrics)
