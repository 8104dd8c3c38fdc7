"""Reward model: a scalar head on the policy's base, trained on ranked answers with a Bradley–Terry loss.

Run: ``hypnos reward --config configs/reward/smollm2.yaml`` or as a recipe stage::

    - name: reward
      kind: reward
      model: "@sft_specific"
      data: [examples/preference/anesthesia_preference.jsonl]   # Ranked records, best answer first
      augment: {stronger: teacher, weaker: small}               # optional, ChiMed-GPT's ranking augmentation
      lora: {r: 16, alpha: 32}

Every ordered pair (better, worse) of a record's ranking adds ``-log sigmoid(r_better - r_worse)``.
A batch holds whole records: each response is scored once and all of its pairs reuse the score, which
is why this uses the plain ``Trainer`` with our loss instead of TRL's RewardTrainer (one chosen/rejected
pair per row, so a 4-answer ranking would be encoded 12 times instead of 4).

Augmentation (ChiMed-GPT): for each question a stronger and a weaker LLM answer too; the stronger answer
goes right after the human-preferred one, the weaker right before the rejected (last) one. Answers come
through ``ctx.client`` and are cached in the stage folder, so a killed stage does not ask again.
Held-out pairwise accuracy is reported before and after training.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from hypnos.common import dist
from hypnos.common.io import DataError, ReadReport, write_jsonl
from hypnos.common.records import Ranked, read_records
from hypnos.common.stage import StageContext, StageResult, log
from hypnos.train.common import (
    TrainStageConfig,
    apply_lora,
    attention_kernel,
    load_model_for_training,
    load_tokenizer_for_training,
    save_model,
    train_and_resume,
    training_arguments,
)


class AugmentSpec(BaseModel):
    """Which recipe endpoints add answers to each ranking (either may be left out)."""

    model_config = ConfigDict(extra="forbid")
    stronger: str | None = None
    """Endpoint of a stronger LLM: its answer is ranked right after the preferred one."""
    weaker: str | None = None
    """Endpoint of a weaker LLM: its answer is ranked right before the rejected (last) one."""
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0)
    seed: int = 0


class Config(TrainStageConfig):
    """Reward model training on Ranked records (``responses`` best first)."""

    data: list[str] = Field(min_length=1)
    """Ranked record files (paths or ``"@stage"`` refs)."""
    pairs: Literal["all", "best_vs_rest"] = "all"
    """Which ordered pairs enter the loss: every (i < j), or only (best, each other)."""
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of records held out (at least one when > 0) for pairwise accuracy before/after training."""
    max_length: int = Field(1024, ge=16)
    """Question + answer tokens kept (the rest of a long answer is cut)."""
    augment: AugmentSpec | None = None
    """Ask stronger/weaker LLM endpoints for extra answers (ChiMed-GPT); null = use the data as is."""

    def check(self, ctx: StageContext) -> list[str]:
        """Model, training arguments, data files and augment endpoints."""
        problems = super().check(ctx)
        for d in self.data:
            problems += ctx.check_ref(d, "data")
        for ep in (self.augment.stronger, self.augment.weaker) if self.augment else ():
            if ep is not None and ep not in ctx.recipe.endpoints:
                problems.append(f"stage {ctx.name!r}: augment endpoint {ep!r} is not in the recipe's endpoints")
        return problems

    def default_training(self) -> dict[str, Any]:
        """Reward defaults: records per batch (each holds several answers)."""
        return {"learning_rate": 1e-4 if self.lora else 1e-5, "per_device_train_batch_size": 4}


# ---- data -----------------------------------------------------------------------------------------

def read_ranked(paths: list[Path]) -> list[Ranked]:
    """Read Ranked records from every file; any other record kind is an error naming the file."""
    out = []
    for path in paths:
        out += read_records(path, kind="ranked", report=ReadReport())
    return out


def augment_rankings(records: list[Ranked], spec: AugmentSpec, ctx: StageContext) -> tuple[list[Ranked], int]:
    """Insert stronger/weaker LLM answers into each ranking.

    Returns:
        The augmented records and how many answers could not be had (those records keep fewer answers).
    """
    answers: dict[str, list] = {}
    for role in ("stronger", "weaker"):
        endpoint = getattr(spec, role)
        if endpoint is None:
            continue
        reqs = [{"messages": [{"role": "user", "content": r.question}], "max_tokens": spec.max_tokens,
                 "temperature": spec.temperature, "seed": spec.seed} for r in records]
        answers[role] = ctx.client(endpoint).chat_many_sync(reqs, progress=True)
    out, failed = [], 0
    for i, rec in enumerate(records):
        responses, labels = list(rec.responses), list(rec.labels) or [""] * len(rec.responses)
        strong, weak = (answers[k][i] if k in answers else None for k in ("stronger", "weaker"))
        if weak is not None:
            if weak.error is None and weak.text:
                responses.insert(len(responses) - 1, weak.text)
                labels.insert(len(labels) - 1, "weaker_llm")
            else:
                failed += 1
        if strong is not None:
            if strong.error is None and strong.text:
                responses.insert(1, strong.text)
                labels.insert(1, "stronger_llm")
            else:
                failed += 1
        out.append(rec.model_copy(update={"responses": responses, "labels": labels if any(labels) else []}))
    return out, failed


def augment_and_write(records: list[Ranked], spec: AugmentSpec, ctx: StageContext) -> tuple[list[Ranked], int]:
    """``augment_rankings`` and write ``ranked_augmented.jsonl`` (the stage output ``data``)."""
    records, failed = augment_rankings(records, spec, ctx)
    write_jsonl(ctx.out_dir / "ranked_augmented.jsonl", (r.to_dict() for r in records))
    return records, failed


def encode_record(tok, rec: Ranked, max_length: int) -> list[list[int]]:
    """Token ids of each (question, answer) chat rendered with the chat template."""
    out = []
    for resp in rec.responses:
        text = tok.apply_chat_template([{"role": "user", "content": rec.question},
                                        {"role": "assistant", "content": resp}], tokenize=False)
        out.append(tok(text, add_special_tokens=False)["input_ids"][:max_length])
    return out


def record_pairs(n: int, mode: str) -> list[tuple[int, int]]:
    """Ordered (better, worse) index pairs of a ranking of ``n`` answers."""
    if mode == "best_vs_rest":
        return [(0, j) for j in range(1, n)]
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


class RankCollator:
    """Batch whole rankings: all answers padded into one tensor, ``labels`` = (better, worse) row pairs."""

    def __init__(self, pad_token_id: int, pairs: str = "all") -> None:
        self.pad_token_id, self.pairs = pad_token_id, pairs

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        seqs, pairs = [], []
        for f in features:
            base = len(seqs)
            seqs += f["responses"]
            pairs += [(base + i, base + j) for i, j in record_pairs(len(f["responses"]), self.pairs)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(pairs)}


def bradley_terry_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_better - r_worse)`` over the pairs of the whole accumulated batch.

    The Trainer counts ``num_items_in_batch`` as the non-(-100) entries of ``labels``: two per pair.
    """
    rewards = outputs.logits.squeeze(-1).float()
    loss = -torch.nn.functional.logsigmoid(rewards[labels[:, 0]] - rewards[labels[:, 1]]).sum()
    pairs = num_items_in_batch / 2 if num_items_in_batch is not None else labels.shape[0]
    return loss / pairs


@torch.no_grad()
def score(model, tok, seqs: list[list[int]], batch_size: int = 16) -> list[float]:
    """Reward of each token sequence."""
    model.eval()
    device = next(model.parameters()).device
    collate = RankCollator(tok.pad_token_id)
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        batch = collate([{"responses": seqs[i: i + batch_size]}])
        batch.pop("labels")
        out += model(**{k: v.to(device) for k, v in batch.items()}).logits.squeeze(-1).float().tolist()
    return out


def ranking_hits(model, tok, examples: list[dict]) -> list[tuple[int, int]]:
    """(pairs scored in order, pairs) of every held-out ranking, over all ordered (better, worse) pairs."""
    out = []
    for ex in examples:
        r = score(model, tok, ex["responses"])
        pairs = record_pairs(len(r), "all")
        out.append((sum(r[i] > r[j] for i, j in pairs), len(pairs)))
    return out


def accuracy_change(before: list[tuple[int, int]], after: list[tuple[int, int]], seed: int = 0) -> dict:
    """Pairwise accuracy before/after on the same held-out rankings, and after − before with a paired
    bootstrap CI over rankings (a ranking's pairs share its question and answers: the ranking is the unit).

    Returns ``{"before", "after", "difference", "ci": [low, high], "n"}``; None figures for no pairs.
    """
    import numpy as np

    from hypnos.eval.stats import paired_bootstrap

    if len(before) != len(after) or any(tb != ta for (_, tb), (_, ta) in zip(before, after)):
        raise ValueError("before/after accuracy of different rankings: not paired")
    hb, ha, tot = (np.array([x[k] for x in src], dtype=float) for src, k in ((before, 0), (after, 0), (before, 1)))
    if not len(tot) or tot.sum() == 0:
        return {"before": None, "after": None, "difference": None, "ci": [None, None], "n": 0}
    value, lo, hi = paired_bootstrap(lambda ix: (ha[ix].sum() - hb[ix].sum()) / max(tot[ix].sum(), 1), len(tot), seed)
    return {"before": round(hb.sum() / tot.sum(), 4), "after": round(ha.sum() / tot.sum(), 4),
            "difference": round(value, 4), "ci": [round(lo, 4), round(hi, 4)], "n": len(tot)}


def split(records: list[Ranked], fraction: float, seed: int) -> tuple[list[Ranked], list[Ranked]]:
    """A seeded train / held-out split of records (held-out has at least one when fraction > 0)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(records))) if fraction > 0 and len(records) > 1 else 0
    held = {order[i] for i in range(n_eval)}
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


# ---- stage ----------------------------------------------------------------------------------------

def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Optionally augment, then train the reward model and report held-out pairwise accuracy."""
    from transformers import Trainer

    records = read_ranked([ctx.resolve(d) for d in cfg.data])
    if not records:
        raise DataError(cfg.data[0], None, "no ranked records")
    outputs, metrics, failed = {}, {}, 0
    if cfg.augment:
        # API calls, their cache and the augmented file: once, on the main process (common/dist.py)
        records, failed = dist.run_on_main(augment_and_write, records, cfg.augment, ctx)
        outputs["data"] = "ranked_augmented.jsonl"
        metrics["augment_failed"] = failed
    model_ref = ctx.resolve_model(cfg.model)
    tok = load_tokenizer_for_training(model_ref, cfg.chat_template)
    train_recs, held_recs = split(records, cfg.eval_fraction, ctx.seed)
    train_ex = [{"responses": encode_record(tok, r, cfg.max_length)} for r in train_recs]
    held_ex = [{"responses": encode_record(tok, r, cfg.max_length)} for r in held_recs]

    args = training_arguments(ctx, cfg.training, cfg.default_training())

    def load(with_lora: bool = True):
        model = load_model_for_training(model_ref, args.seed, kind="reward", dtype=cfg.dtype,
                                        attn_implementation=attention_kernel(cfg.attn_implementation))
        model.config.pad_token_id = tok.pad_token_id  # the score is read at the last non-pad token
        return apply_lora(model, cfg.lora, task_type="SEQ_CLS") if with_lora else model

    model = load()
    hits_before = ranking_hits(model, tok, held_ex)
    trainer = Trainer(model=model, args=args, train_dataset=train_ex, data_collator=RankCollator(
        tok.pad_token_id, cfg.pairs), processing_class=tok, compute_loss_func=bradley_terry_loss)
    metrics.update(train_and_resume(trainer))
    change = accuracy_change(hits_before, ranking_hits(trainer.model, tok, held_ex), ctx.seed)
    metrics["heldout_accuracy_before"], metrics["heldout_accuracy_after"] = change["before"], change["after"]
    metrics["heldout_accuracy_change"] = {k: change[k] for k in ("difference", "ci", "n")}
    log.info("reward: held-out pairwise accuracy %s -> %s (%d rankings; change %s, 95%% CI %s)",
             change["before"], change["after"], change["n"], change["difference"], change["ci"])
    outputs = {**save_model(trainer, tok, ctx.out_dir, load_base=lambda: load(with_lora=False)), **outputs}
    n_pairs = sum(len(record_pairs(len(e["responses"]), cfg.pairs)) for e in train_ex)
    counts = {"in": len(records), "kept": len(records), "dropped": 0, "train_records": len(train_ex),
              "heldout_records": len(held_ex), "train_pairs": n_pairs}
    return StageResult(outputs=outputs, counts=counts, metrics=metrics)
