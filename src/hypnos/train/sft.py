"""SFT: instruction tuning on QA and dialogue records, LoRA or full, loss on assistant tokens only.

Run: ``hypnos sft --config configs/sft/smollm2_lora.yaml`` or as a recipe stage::

    - name: sft_general
      kind: sft
      model: smollm2-135m-instruct
      data: [examples/general/general_medical_qa.jsonl, examples/general/general_dialogue.jsonl]
      lora: {r: 16, alpha: 32}
      training: {num_train_epochs: 2, per_device_train_batch_size: 8}

Chats are rendered with the model's own chat template. With ``packing`` (default) a batch is one row of
concatenated examples whose attention stays within each example (see ``packing.py``); the plain HF
``Trainer`` runs it (TRL's SFTTrainer is ≈1.75x slower on CPU, see STACK.md). General-to-specific
(Hypnos) is a recipe: an sft stage with LoRA on general data, then a full sft stage whose ``model`` is
``"@that_stage"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from hypnos.common.io import DataError, ReadReport
from hypnos.common.records import QA, Dialogue, read_records
from hypnos.common.stage import StageContext, StageResult, log
from hypnos.train.common import (
    LoraSpec,
    TrainStageConfig,
    apply_lora,
    load_model_for_training,
    load_tokenizer_for_training,
    save_model,
    train_and_resume,
    training_arguments,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100


class Config(TrainStageConfig):
    """Supervised fine-tuning on QA/dialogue records (several files are mixed into one shuffled set)."""

    data: list[str] = Field(min_length=1)
    """QA or dialogue record files (paths or ``"@stage"`` refs); the kind is detected per row."""
    system: str | None = None
    """System prompt put before every chat that has none (else the chat template's default applies)."""
    max_length: int = Field(1024, ge=16)
    """Longer chats are cut to this many tokens (and counted as ``truncated``)."""
    packing: bool = True
    """Padding-free packing (faster on short QA); false pads each batch to its longest example."""
    on_error: Literal["raise", "quarantine"] = "raise"
    """Bad input rows: stop at the first (default) or write them to a quarantine file and go on."""

    def check(self, ctx: StageContext) -> list[str]:
        """Model, training arguments and data files."""
        problems = super().check(ctx)
        for d in self.data:
            problems += ctx.check_ref(d, "data")
        return problems


# ---- data -----------------------------------------------------------------------------------------

def record_messages(rec: QA | Dialogue, system: str | None = None) -> list[dict[str, str]]:
    """OpenAI-style messages of a QA or dialogue record."""
    if isinstance(rec, QA):
        msgs = [{"role": "user", "content": rec.prompt()}, {"role": "assistant", "content": rec.output}]
    else:
        msgs = rec.to_messages()
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


def load_chats(paths: list[Path], on_error: str, out_dir: Path,
               system: str | None = None) -> tuple[list[list[dict]], dict[str, int]]:
    """Read QA/dialogue files into message lists; returns the chats and rejected-row reasons.

    Raises:
        DataError: a bad row (with ``on_error="raise"``) or a record kind SFT cannot use, as file:line.
    """
    chats, report = [], ReadReport()
    for path in paths:
        for rec in read_records(path, on_error=on_error, quarantine_dir=out_dir, report=report):
            if not isinstance(rec, (QA, Dialogue)):
                raise DataError(path, None, f"record {rec.id!r} is a {type(rec).__name__}; sft needs QA or "
                                            "dialogue records")
            if isinstance(rec, QA) and not rec.output.strip():
                raise DataError(path, None, f"QA record {rec.id!r} has an empty output: nothing to learn")
            chats.append(record_messages(rec, system))
    return chats, {f"bad_row: {k}": v for k, v in report.reasons.items()}


def tokenize_chat(tok: PreTrainedTokenizerBase, messages: list[dict], max_length: int) -> dict[str, Any]:
    """Render a chat with the tokenizer's template; labels are the assistant tokens, -100 elsewhere.

    Each assistant turn is located by rendering the chat up to it (with the generation prompt) and
    through it; the template must render prefixes consistently, which every common template does.

    Returns:
        ``{"input_ids", "labels", "truncated"}``.
    """
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tok.apply_chat_template(messages[: i + 1], tokenize=False))
        if not full.startswith(tok.apply_chat_template(messages[: i + 1], tokenize=False)):
            raise ValueError("the chat template does not render prefixes of a chat consistently; "
                             "assistant tokens cannot be located")
        spans.append((start, end))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [tid if any(s <= a < e for s, e in spans) else IGNORE for tid, (a, _) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


def tokenize_chats(tok, chats: list[list[dict]], max_length: int) -> tuple[list[dict], dict[str, int]]:
    """Tokenize every chat; drops (and counts) chats with no assistant token left after truncation."""
    from hypnos.common.progress import track

    examples, dropped, truncated = [], {}, 0
    for msgs in track(chats, desc="tokenize", unit="chat"):
        ex = tokenize_chat(tok, msgs, max_length)
        truncated += ex.pop("truncated")
        if all(x == IGNORE for x in ex["labels"][1:]):
            dropped["no_answer_within_max_length"] = dropped.get("no_answer_within_max_length", 0) + 1
            continue
        examples.append(ex)
    return examples, {"truncated": truncated, **dropped}


# ---- training (shared with pretrain and rejection_sampling) ---------------------------------------

def finetune(ctx: StageContext, model_ref: str, tok, examples: list[dict], *, lora: LoraSpec | None,
             training: dict[str, Any], stage_defaults: dict[str, Any], packing: bool = True,
             out_dir: Path | None = None, extra_modules: list[str] = ()) -> tuple[dict[str, str], dict[str, Any]]:
    """Train a causal LM on tokenized ``{input_ids, labels}`` examples and save it (merged) to ``out_dir/model``.

    Args:
        ctx: the stage context (seed, folder).
        model_ref: resolved model reference.
        tok: its tokenizer.
        examples: tokenized examples.
        lora: LoRA settings or None for full fine-tuning.
        training: the recipe's TrainingArguments overrides.
        stage_defaults: the stage's defaults under them.
        packing: padding-free packing, else padded batches.
        out_dir: where checkpoints and the model go (default ``ctx.out_dir``).
        extra_modules: modules trained fully under LoRA (embeddings after a vocabulary extension).

    Returns:
        (outputs relative to ``out_dir``, metrics).
    """
    from transformers import Trainer

    from hypnos.train.packing import PackedCollator, PaddedCollator, causal_lm_loss

    out_dir = out_dir or ctx.out_dir
    args = training_arguments(ctx, training, {**stage_defaults, "output_dir": str(out_dir / "checkpoints")})
    model = load_model_for_training(model_ref, args.seed)
    if args.gradient_checkpointing:
        model.config.use_cache = False
    model = apply_lora(model, lora, extra_modules=extra_modules)
    collator = PackedCollator() if packing else PaddedCollator(tok.pad_token_id)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                      processing_class=tok, compute_loss_func=causal_lm_loss)
    metrics = train_and_resume(trainer, tokens=collator)
    metrics["target_tokens"] = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples)
    outputs = save_model(trainer, tok, out_dir)
    return outputs, metrics


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Tokenize the chats, train, write the merged model (and the LoRA adapter)."""
    model_ref = ctx.resolve_model(cfg.model)
    tok = load_tokenizer_for_training(model_ref)
    chats, bad = load_chats([ctx.resolve(d) for d in cfg.data], cfg.on_error, ctx.out_dir, cfg.system)
    examples, stats = tokenize_chats(tok, chats, cfg.max_length)
    if not examples:
        raise DataError(cfg.data[0], None, "no usable training examples in the sft data")
    log.info("sft: %d examples (%d truncated) from %d files", len(examples), stats["truncated"], len(cfg.data))
    outputs, metrics = finetune(ctx, model_ref, tok, examples, lora=cfg.lora, training=cfg.training,
                                stage_defaults=cfg.default_training(), packing=cfg.packing)
    dropped = {**bad, **{k: v for k, v in stats.items() if k != "truncated"}}
    counts = {"in": len(chats) + sum(bad.values()), "kept": len(examples), "dropped": sum(dropped.values()),
              "truncated": stats["truncated"]}
    return StageResult(outputs=outputs, counts=counts, dropped=dropped, metrics=metrics)
