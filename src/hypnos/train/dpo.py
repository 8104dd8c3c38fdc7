"""DPO: direct preference optimisation on ranked answers (TRL ``DPOTrainer``), LoRA or full.

Run: ``hypnos dpo --config configs/dpo/smollm2.yaml`` or as a recipe stage::

    - name: dpo
      kind: dpo
      model: "@sft_specific"
      data: [examples/preference/anesthesia_preference.jsonl]   # Ranked records, best first
      pairs: best_vs_rest
      lora: {r: 16, alpha: 32}
      training: {beta: 0.1, num_train_epochs: 1}                # any DPOConfig field

A ranking of n answers gives (best, each worse) pairs or every ordered pair. The reference model is the
starting model: with LoRA, TRL disables the adapter for the reference pass (no second copy in memory).
``training`` is passed to TRL's ``DPOConfig`` after our CPU-sane defaults (TRL defaults to bf16 and
gradient checkpointing, ≈14x slower on CPUs without bf16).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hypnos.common.io import DataError
from hypnos.common.stage import StageContext, StageResult
from hypnos.train.common import (
    TrainStageConfig,
    attention_kernel,
    load_model_for_training,
    load_tokenizer_for_training,
    save_model,
    train_and_resume,
    training_arguments,
)
from hypnos.train.reward import read_ranked, record_pairs


def dpo_config_cls():
    """TRL's DPOConfig (imported lazily: trl takes seconds to import)."""
    from trl import DPOConfig

    return DPOConfig


class Config(TrainStageConfig):
    """DPO on Ranked records."""

    data: list[str] = Field(min_length=1)
    """Ranked record files (paths or ``"@stage"`` refs), answers best first."""
    pairs: Literal["all", "best_vs_rest"] = "best_vs_rest"
    """(best, each worse) pairs, or every ordered pair of the ranking."""

    def check(self, ctx: StageContext) -> list[str]:
        """Model, DPOConfig fields and data files."""
        from hypnos.common.runner import check_model_ref

        problems = check_model_ref(ctx.recipe, self.model, f"stage {ctx.name!r}: model")
        for d in self.data:
            problems += ctx.check_ref(d, "data")
        try:
            training_arguments(ctx, self.training, self.default_training(), cls=dpo_config_cls())
        except (TypeError, ValueError) as e:
            problems.append(f"stage {ctx.name!r}: training: {e}")
        return problems + self.check_chat_template(ctx)

    def default_training(self) -> dict[str, Any]:
        """DPO defaults: small learning rates (DPO drifts fast), TRL's own log/ckpt extras off on CPU."""
        return {"learning_rate": 5e-5 if self.lora else 5e-7, "per_device_train_batch_size": 4,
                "max_length": 1024}


def preference_rows(records, mode: str) -> list[dict]:
    """Conversational prompt/chosen/rejected rows, one per (better, worse) pair."""
    rows = []
    for rec in records:
        r = rec.responses
        for i, j in record_pairs(len(r), mode):
            rows.append({"prompt": [{"role": "user", "content": rec.question}],
                         "chosen": [{"role": "assistant", "content": r[i]}],
                         "rejected": [{"role": "assistant", "content": r[j]}]})
    return rows


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Expand rankings into pairs, train with DPOTrainer, write the merged model."""
    from datasets import Dataset
    from trl import DPOTrainer

    records = read_ranked([ctx.resolve(d) for d in cfg.data])
    rows = preference_rows(records, cfg.pairs)
    if not rows:
        raise DataError(cfg.data[0], None, "no preference pairs in the dpo data")
    model_ref = ctx.resolve_model(cfg.model)
    tok = load_tokenizer_for_training(model_ref, cfg.chat_template)
    args = training_arguments(ctx, cfg.training, cfg.default_training(), cls=dpo_config_cls())

    def load():
        return load_model_for_training(model_ref, args.seed, dtype=cfg.dtype,
                                       attn_implementation=attention_kernel(cfg.attn_implementation))

    model = load()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=cfg.lora.to_peft(model) if cfg.lora else None)
    metrics = train_and_resume(trainer)
    for key in ("rewards/accuracies", "rewards/margins"):
        vals = [h[key] for h in trainer.state.log_history if key in h]
        if vals:
            metrics[key.replace("/", "_") + "_last"] = round(vals[-1], 4)
    outputs = save_model(trainer, tok, ctx.out_dir, load_base=load)
    counts = {"in": len(records), "kept": len(records), "dropped": 0, "pairs": len(rows)}
    return StageResult(outputs=outputs, counts=counts, metrics=metrics)
