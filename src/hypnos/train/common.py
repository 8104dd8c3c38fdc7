"""What the training stages share: config fields, CPU-sane TrainingArguments, LoRA, the loss guard, saving.

Every training stage (pretrain, sft, reward, rejection_sampling, dpo) builds a plain HF ``Trainer`` (or a
TRL trainer) from ``training_arguments``, trains it with ``train_and_resume`` (which picks up the last
checkpoint in the stage folder after a kill), and writes a normal HF checkpoint with ``save_model``
(LoRA merged into the weights; the adapter kept next to it).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from hypnos.common.stage import StageConfig, StageContext, is_ref, log

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"


class LoraSpec(BaseModel):
    """LoRA settings (peft ``LoraConfig``); ``lora: null`` in a stage means full fine-tuning."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1)
    """Rank of the update matrices."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] | str = "all-linear"
    """Modules that get adapters: a list of names (``[q_proj, v_proj]``) or ``all-linear``."""
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained fully next to the adapters (the embeddings after a vocabulary extension)."""

    def to_peft(self, model: PreTrainedModel, task_type: str = "CAUSAL_LM", extra_modules: list[str] = ()):
        """The peft ``LoraConfig`` for ``model``; ``extra_modules`` are added to ``modules_to_save``."""
        from peft import LoraConfig

        to_save = list(dict.fromkeys([*self.modules_to_save, *extra_modules])) or None
        # With tied input/output embeddings, two separate trainable copies would silently untie them:
        # ask peft to keep the copies tied.
        tied = bool(getattr(model.config, "tie_word_embeddings", False)) and bool(to_save)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, modules_to_save=to_save, task_type=task_type,
                          ensure_weight_tying=tied)


class TrainStageConfig(StageConfig):
    """Fields every training stage has: the model, LoRA or not, and the HF TrainingArguments overrides."""

    model: str
    """Model to train: ``"@stage"`` (an earlier stage's output), a local checkpoint dir or a built-in name."""
    lora: LoraSpec | None = None
    """LoRA settings; null (the default) trains all weights."""
    training: dict[str, Any] = Field(default_factory=dict)
    """Passed to transformers ``TrainingArguments`` (TRL's config for dpo) after our CPU-sane defaults, e.g.
    ``{learning_rate: 1e-4, num_train_epochs: 2, per_device_train_batch_size: 8, save_steps: 100}``."""

    def check(self, ctx: StageContext) -> list[str]:
        """Check the model reference and that ``training`` builds valid TrainingArguments."""
        from hypnos.common.runner import check_model_ref

        problems = check_model_ref(ctx.recipe, self.model, f"stage {ctx.name!r}: model")
        if is_ref(self.model):
            problems += ctx.check_ref(self.model, "model")
        try:
            training_arguments(ctx, self.training, self.default_training())
        except (TypeError, ValueError) as e:
            problems.append(f"stage {ctx.name!r}: training: {e}")
        return problems

    def default_training(self) -> dict[str, Any]:
        """Stage-specific defaults under the user's ``training`` (learning rate depends on LoRA)."""
        return {"learning_rate": 2e-4 if self.lora else 2e-5}


# ---- TrainingArguments ----------------------------------------------------------------------------

def has_cuda() -> bool:
    """True when training will run on a GPU."""
    import torch

    return torch.cuda.is_available()


def cpu_sane_defaults(ctx: StageContext) -> dict[str, Any]:
    """Our defaults for TrainingArguments: right for a CPU laptop, still sensible on a GPU.

    bf16 and gradient checkpointing are off on CPU (≈14x slower on CPUs without bf16, see STACK.md);
    losses are logged every step unfiltered so ``NonFiniteLossGuard`` sees a NaN at once.
    """
    import torch

    cuda = has_cuda()
    return {
        "output_dir": str(ctx.out_dir / CHECKPOINTS),
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "weight_decay": 0.0,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # the default hides NaN losses from the log (and from our guard)
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
        "report_to": ["tensorboard"],
        "seed": ctx.seed,
        "data_seed": ctx.seed,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": cuda,  # called gradient_checkpointing before transformers 5.2x
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
        "remove_unused_columns": False,  # our collators read their own columns
        # Under torchrun/accelerate on CPU, data parallelism needs gloo (NCCL is GPU-only) AND use_cpu: without it
        # accelerate sees DistributedType.NO, never wraps the model in DDP, and each rank trains on its own shard.
        "use_cpu": not cuda,
        "ddp_backend": "gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        "ddp_find_unused_parameters": False,
        "disable_tqdm": os.environ.get("HYPNOS_NO_PROGRESS") == "1",
    }


def training_arguments(ctx: StageContext, user: dict[str, Any], stage_defaults: dict[str, Any] | None = None,
                       cls: type | None = None) -> TrainingArguments:
    """Build TrainingArguments (or a TRL subclass ``cls``): our defaults < stage defaults < the recipe's dict.

    Raises:
        TypeError, ValueError: an unknown or invalid field (the message names it).
    """
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    merged = {**cpu_sane_defaults(ctx), **(stage_defaults or {}), **user}
    known = set(cls.__dataclass_fields__)
    if "activation_checkpointing" not in known:
        merged["gradient_checkpointing"] = merged.pop("activation_checkpointing")
    unknown = sorted(k for k in merged if k not in known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**merged)


# ---- models ---------------------------------------------------------------------------------------

def load_tokenizer_for_training(ref: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token when it has none) and right padding."""
    from hypnos.common.models import load_tokenizer

    tok = load_tokenizer(ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model_for_training(ref: str, seed: int, kind: str = "causal_lm", **kwargs) -> PreTrainedModel:
    """Load fp32 weights for training (bf16 autocast, if any, comes from TrainingArguments).

    Args:
        ref: a resolved model reference (``ctx.resolve_model``).
        seed: seeds torch first, so new weights (a reward head, LoRA matrices added next) are reproducible.
        kind: ``causal_lm`` or ``reward`` (sequence classification with one output).
        **kwargs: passed to ``from_pretrained``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    from hypnos.common.models import resolve_model

    set_seed(seed)
    path = resolve_model(ref)
    if kind == "reward":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)


def apply_lora(model: PreTrainedModel, lora: LoraSpec | None, task_type: str = "CAUSAL_LM",
               extra_modules: list[str] = ()) -> PreTrainedModel:
    """Wrap ``model`` with LoRA adapters (no-op for full fine-tuning) and log the trainable share."""
    if lora is None:
        return model
    from peft import get_peft_model

    model = get_peft_model(model, lora.to_peft(model, task_type, extra_modules))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters trainable (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def save_model(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> dict[str, str]:
    """Write the trained model as a plain HF checkpoint ``out_dir/model`` (LoRA merged in).

    With LoRA the adapter is also saved to ``out_dir/adapter``. Only the main process writes; all
    processes return once the files exist.

    Returns:
        Stage outputs: ``{"model": "model"}`` plus ``"adapter"`` with LoRA.
    """
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    outputs = {"model": MODEL_DIR}
    is_lora = isinstance(model, PeftModel)
    if is_lora:
        outputs["adapter"] = ADAPTER_DIR
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        if is_lora:
            model.save_pretrained(out_dir / ADAPTER_DIR)
            model = model.merge_and_unload()
        model.save_pretrained(out_dir / MODEL_DIR)
        tokenizer.save_pretrained(out_dir / MODEL_DIR)
    trainer.accelerator.wait_for_everyone()
    return outputs


# ---- training -------------------------------------------------------------------------------------

class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the stage stops instead of saving garbage."""


def nonfinite_guard():
    """A TrainerCallback that stops training with ``NonFiniteLossError`` on a NaN/inf loss or grad norm."""
    from transformers import TrainerCallback

    class NonFiniteLossGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    raise NonFiniteLossError(
                        f"{key} became {value} at step {state.global_step} (learning rate "
                        f"{logs.get('learning_rate')}): training stopped. Lower the learning rate, check the data "
                        f"for empty or corrupt examples, or resume from the last good checkpoint in {args.output_dir}.")

    return NonFiniteLossGuard()


def last_checkpoint(args: TrainingArguments) -> str | None:
    """The newest complete ``checkpoint-N`` folder in the stage's checkpoint dir, to resume from after a kill.

    The Trainer writes ``trainer_state.json`` last, so a folder without it was cut off mid-save and is skipped.
    """
    root = Path(args.output_dir)
    done = [p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").exists()] if root.is_dir() else []
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def train_and_resume(trainer: Trainer, tokens=None) -> dict[str, Any]:
    """Train (resuming from the last checkpoint if a killed run left one) and return metrics.

    Args:
        trainer: a configured Trainer (any TRL trainer too).
        tokens: an object whose ``tokens`` attribute counts tokens collated in this process (our collators),
            for tokens/s.

    Returns:
        ``train_loss``, ``final_loss``, ``loss_curve`` (step, loss), ``steps``, ``seconds``, ``resumed_from``
        and ``tokens_per_s`` when ``tokens`` is given.
    """
    trainer.add_callback(nonfinite_guard())
    resume = last_checkpoint(trainer.args)
    if resume:
        log.info("resuming from %s", resume)
    out = trainer.train(resume_from_checkpoint=resume)
    curve = [(h["step"], round(h["loss"], 5)) for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": round(out.training_loss, 5),
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": curve,
        "steps": trainer.state.global_step,
        "seconds": round(out.metrics.get("train_runtime", 0.0), 2),
        "resumed_from": Path(resume).name if resume else None,
    }
    if tokens is not None and metrics["seconds"] > 0:
        metrics["tokens_per_s"] = round(tokens.tokens * trainer.args.world_size / metrics["seconds"], 1)
    return metrics
