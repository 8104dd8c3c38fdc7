"""What the training stages share: config fields, CPU-sane TrainingArguments, LoRA, the loss guard, saving.

Every training stage (pretrain, sft, reward, rejection_sampling, dpo) builds a plain HF ``Trainer`` (or a
TRL trainer) from ``training_arguments``, trains it with ``train_and_resume`` (which picks up the last
checkpoint in the stage folder after a kill), and writes a normal HF checkpoint with ``save_model``
(LoRA merged into the weights; the adapter kept next to it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype while training and in the saved checkpoint; ``auto`` = bfloat16 on GPUs that have it, float32
    elsewhere (CPUs without bf16 run it ≈14x slower). ``float32`` keeps fp32 master weights under bf16 autocast."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "auto"
    """Attention kernel; ``auto`` = ``flash_attention_2`` when flash-attn is installed and a GPU is used, else sdpa."""
    chat_template: str | None = None
    """How chats are rendered: ``chatml``, ``llama-2``, ``ziya`` or a Jinja string; null = the tokenizer's own
    (base models such as Llama-2-7B and Ziya have none: ``validate`` then asks for this field)."""

    needs_chat_template: ClassVar[bool] = True  # pretrain overrides: it trains on plain text
    distributed: ClassVar[bool] = True  # every process of a torchrun/accelerate job runs the stage (runner)
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
        return problems + self.check_chat_template(ctx)

    def check_chat_template(self, ctx: StageContext) -> list[str]:
        """A named/Jinja ``chat_template`` must resolve; without one, the model must bring its own."""
        from hypnos.train.chat_templates import FIELD_HINT, model_has_chat_template, resolve_chat_template

        if self.chat_template is not None:
            try:
                resolve_chat_template(self.chat_template)
            except ValueError as e:
                return [f"stage {ctx.name!r}: {e}"]
            return []
        if self.needs_chat_template and model_has_chat_template(ctx.recipe, self.model) is False:
            return [f"stage {ctx.name!r}: model {self.model!r} has no chat template; {FIELD_HINT}"]
        return []

    def default_training(self) -> dict[str, Any]:
        """Stage-specific defaults under the user's ``training`` (learning rate depends on LoRA)."""
        return {"learning_rate": 2e-4 if self.lora else 2e-5}


# ---- TrainingArguments ----------------------------------------------------------------------------

def has_cuda() -> bool:
    """True when training will run on a GPU."""
    import torch

    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo).

    On such CPUs bf16 autocast makes training ≈2.5x faster (measured: a 4x400-token full fine-tuning step of
    SmolLM2-135M, 12 s vs 30 s on 2 cores; a bf16 matmul 4.7x faster); on CPUs without it bf16 is emulated and
    ≈14x slower (STACK.md), hence a flag check, not a guess. ``HYPNOS_CPU_BF16=0/1`` overrides it.
    """
    forced = os.environ.get("HYPNOS_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (read once per process; empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: stay in fp32
        pass
    return frozenset()


def mixed_precision_bf16() -> bool:
    """bf16 autocast over fp32 master weights: on GPUs that have bf16, and on CPUs that multiply it natively."""
    import torch

    if has_cuda():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


Precision = Literal["auto", "fp32", "bf16"]
"""How a model is run for evaluation: ``auto`` = bf16 autocast where ``mixed_precision_bf16`` says so, else fp32."""


def autocast_bf16(precision: Precision) -> bool:
    """Whether ``precision`` means bf16 autocast on this machine."""
    return mixed_precision_bf16() if precision == "auto" else precision == "bf16"


def cpu_sane_defaults(ctx: StageContext) -> dict[str, Any]:
    """Our defaults for TrainingArguments: right for a CPU laptop, still sensible on a GPU.

    Gradient checkpointing is off on CPU; bf16 autocast is on only where the hardware multiplies bf16 (a GPU
    that has it, a CPU with avx512_bf16/AMX: ``mixed_precision_bf16``; elsewhere ≈14x slower, see STACK.md);
    losses are logged every step unfiltered so ``NonFiniteLossGuard`` sees a NaN at once.
    """
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
        "bf16": mixed_precision_bf16(),
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

def load_tokenizer_for_training(ref: str, chat_template: str | None = None,
                                require_template: bool = True) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token when it has none), right padding, a chat template.

    Args:
        ref: a resolved model reference.
        chat_template: the stage's ``chat_template`` (a name or Jinja); replaces the tokenizer's own.
        require_template: fail (naming the field to set) when the tokenizer ends up without a template.
    """
    from hypnos.common.models import load_tokenizer
    from hypnos.common.stage import ConfigError
    from hypnos.train.chat_templates import FIELD_HINT, resolve_chat_template

    tok = load_tokenizer(ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if chat_template is not None:
        tok.chat_template = resolve_chat_template(chat_template)
    if require_template and not tok.chat_template:
        raise ConfigError(f"model {ref!r} has no chat template; {FIELD_HINT}")
    return tok


def training_dtype(requested: str = "auto"):
    """The torch dtype weights are trained (and saved) in: see ``TrainStageConfig.dtype``."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    return torch.bfloat16 if has_cuda() and torch.cuda.is_bf16_supported() else torch.float32


def has_flash_attn() -> bool:
    """flash-attn importable and a GPU present (its varlen kernel serves padding-free packing)."""
    import importlib.util

    return has_cuda() and importlib.util.find_spec("flash_attn") is not None


def attention_kernel(requested: str = "auto") -> str:
    """The ``attn_implementation`` passed to ``from_pretrained``."""
    if requested != "auto":
        return requested
    return "flash_attention_2" if has_flash_attn() else "sdpa"


def load_model_for_training(ref: str, seed: int, kind: str = "causal_lm", dtype: str = "auto",
                            attn_implementation: str = "auto", **kwargs) -> PreTrainedModel:
    """Load weights for training in the training dtype (``training_dtype``) with the chosen attention kernel.

    Args:
        ref: a resolved model reference (``ctx.resolve_model``).
        seed: seeds torch first, so new weights (a reward head, LoRA matrices added next) are reproducible.
        kind: ``causal_lm`` or ``reward`` (sequence classification with one output).
        dtype: ``TrainStageConfig.dtype``.
        attn_implementation: ``TrainStageConfig.attn_implementation``.
        **kwargs: passed to ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    from hypnos.common.models import resolve_model

    set_seed(seed)
    path = resolve_model(ref)
    kw = {"dtype": training_dtype(dtype), "attn_implementation": attention_kernel(attn_implementation), **kwargs}
    if kind == "reward":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kw)
    return AutoModelForCausalLM.from_pretrained(path, **kw)


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


def _sharded(trainer: Trainer) -> bool:
    """Weights split across processes (FSDP, DeepSpeed ZeRO-3): saving must gather them on every rank."""
    acc = trainer.accelerator
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3)


def full_state_dict(trainer: Trainer) -> dict:
    """The full (unsharded) state dict, gathered through accelerate; call on EVERY process.

    ``accelerator.get_state_dict`` gathers ZeRO-3 (16-bit consolidation) and FSDP weights. FSDP2 on a device
    where its CPU offload is a no-op (CPU/gloo) hands back DTensor shards; those are gathered here too.
    """
    from torch.distributed.tensor import DTensor

    model = trainer.model_wrapped if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    state = trainer.accelerator.get_state_dict(model)
    # every rank walks the same keys in the same order, so the collectives pair up
    return {k: (v.full_tensor().cpu() if isinstance(v, DTensor) else v) for k, v in state.items()}


def _untie(model: PreTrainedModel, state: dict) -> dict:
    """Drop the copies of tied weights (the LM head of a tied model) from a gathered state dict.

    Gathering returns tied parameters as separate tensors; saved as such, a reload would see two weights.
    They must be equal: a difference means the tie broke during training, which is an error, not a detail.
    """
    import torch

    tied = getattr(model, "all_tied_weights_keys", None) or {}
    out = dict(state)
    for target, source in tied.items():
        if target in out and source in out:
            if not torch.equal(out[target], out[source]):
                raise RuntimeError(f"tied weights {target} and {source} differ after training; not saving")
            del out[target]
    return out


def save_model(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
               load_base: Callable[[], PreTrainedModel] | None = None) -> dict[str, str]:
    """Write the trained model as a plain HF checkpoint ``out_dir/model`` (LoRA merged in), from every process.

    Every process joins the gather of sharded weights (FSDP/ZeRO-3); the main process writes. With LoRA the
    adapter goes to ``out_dir/adapter``; when the weights were sharded, the main process merges it into a fresh
    copy of the base (``load_base()``, in the training dtype) since the trained modules hold only shards.

    Returns:
        Stage outputs: ``{"model": "model"}`` plus ``"adapter"`` with LoRA.
    """
    from peft import PeftModel

    acc = trainer.accelerator
    acc.wait_for_everyone()
    sharded = _sharded(trainer)
    state = full_state_dict(trainer) if sharded else None
    model = acc.unwrap_model(trainer.model)
    is_lora = isinstance(model, PeftModel)
    outputs = {"model": MODEL_DIR, **({"adapter": ADAPTER_DIR} if is_lora else {})}
    if trainer.is_world_process_zero():
        if is_lora:
            model.save_pretrained(out_dir / ADAPTER_DIR, state_dict=state)
            if sharded:
                if load_base is None:
                    raise RuntimeError("save_model: LoRA under FSDP/ZeRO-3 needs load_base to merge the adapter")
                model = PeftModel.from_pretrained(load_base(), out_dir / ADAPTER_DIR)
                state = None
            model = model.merge_and_unload()
        model.save_pretrained(out_dir / MODEL_DIR, state_dict=_untie(model, state) if state is not None else None)
        tokenizer.save_pretrained(out_dir / MODEL_DIR)
        log.info("saved %s (%s, %s)", out_dir / MODEL_DIR, next(model.parameters()).dtype,
                 "gathered from shards" if sharded else "unsharded")
    acc.wait_for_everyone()
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
        ``train_loss``, ``final_loss``, ``loss_curve`` (step, loss), ``steps``, ``seconds``, ``resumed_from``,
        ``mixed_precision`` and ``tokens_per_s`` when ``tokens`` is given.
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
        # fp32 master weights either way; bf16 autocast changes the numbers a little, so the manifest says which
        "mixed_precision": "bf16" if trainer.args.bf16 else ("fp16" if trainer.args.fp16 else "no"),
    }
    if tokens is not None and metrics["seconds"] > 0:
        metrics["tokens_per_s"] = round(tokens.tokens * trainer.args.world_size / metrics["seconds"], 1)
    return metrics
