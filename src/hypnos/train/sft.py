"""SFT: instruction tuning on QA and dialogue records, LoRA or full, loss on assistant tokens only.

Run: ``hypnos sft --config configs/sft/smollm2_lora.yaml`` or as a recipe stage::

    - name: sft_general
      kind: sft
      model: smollm2-135m-instruct
      data: [examples/general/general_medical_qa.jsonl, examples/general/general_dialogue.jsonl]
      lora: {r: 16, alpha: 32}
      training: {num_train_epochs: 2, per_device_train_batch_size: 8}

Chats are rendered with the model's chat template (or the stage's ``chat_template``), tokenized once with
``datasets.map`` into a cache in the stage folder. The batch layout (``packing``) never builds a dense mask
over a micro-batch (see ``packing.py``); the plain HF ``Trainer`` runs it (TRL's SFTTrainer is ≈1.75x slower on CPU, see STACK.md). General-to-specific
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
    TrainStageConfig,
    apply_lora,
    attention_kernel,
    load_model_for_training,
    load_tokenizer_for_training,
    save_model,
    train_and_resume,
    training_arguments,
)
from hypnos.train.packing import Layout, choose_layout

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
    packing: Layout | bool = "auto"
    """Batch layout (``packing.py``): ``auto`` = ``padding_free`` under flash-attention, else ``padded`` grouped
    by length; ``rows`` packs into rows of ``max_length`` tokens; true = auto, false = padded."""
    num_proc: int | None = Field(None, ge=1)
    """Processes for tokenization (``datasets.map``); null = 1 below 20,000 chats, else up to 8."""
    on_error: Literal["raise", "quarantine"] = "raise"
    """Bad input rows: stop at the first (default) or write them to a quarantine file and go on."""
    validation: list[str] = Field(default_factory=list)
    """Validation record files (e.g. ``"@mix.val"``): loss measured during training (by default 4 times, at each
    save) and the checkpoint with the lowest validation loss is the one saved."""

    def check(self, ctx: StageContext) -> list[str]:
        """Model, training arguments, data files and the batch layout."""
        problems = super().check(ctx)
        for d in [*self.data, *self.validation]:
            problems += ctx.check_ref(d, "data")
        try:
            choose_layout(self.packing, attention_kernel(self.attn_implementation))
        except ValueError as e:
            problems.append(f"stage {ctx.name!r}: {e}")
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


def _chats_key(tok, chats: list[list[dict]], max_length: int) -> str:
    """What the tokenized cache depends on: the chats, the tokenizer's vocabulary and template, the length cap."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps([tok.name_or_path.split("/")[-1], len(tok), tok.chat_template, max_length,
                         tok.bos_token, tok.eos_token, type(tok).__name__]).encode())
    for c in chats:
        h.update(json.dumps(c, ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _tokenize_batch(batch: dict[str, list], tok, max_length: int) -> dict[str, list]:
    import json

    out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": [], "n_targets": [], "length": []}
    for raw in batch["messages"]:
        ex = tokenize_chat(tok, json.loads(raw), max_length)
        out["input_ids"].append(ex["input_ids"])
        out["labels"].append(ex["labels"])
        out["truncated"].append(ex["truncated"])
        out["n_targets"].append(sum(1 for x in ex["labels"][1:] if x != IGNORE))
        out["length"].append(len(ex["input_ids"]))
    return out


def tokenize_dataset(tok, chats: list[list[dict]], max_length: int, cache_dir: Path, num_proc: int | None = None):
    """Tokenize chats with ``datasets.map`` into an on-disk Arrow cache that a resumed run reuses.

    The main process tokenizes (``num_proc`` workers); the other processes of a torchrun/accelerate job then
    memory-map the same files. A cache hit is logged ("tokenize: cache hit").

    Returns:
        (a ``datasets.Dataset`` of ``input_ids``/``labels``/``length`` without chats that keep no target,
        stats ``{"truncated": n, "no_answer_within_max_length": n}``).
    """
    import json
    import os

    from datasets import Dataset

    from hypnos.common import dist

    key = _chats_key(tok, chats, max_length)
    cache = cache_dir / f"chats-{key}.arrow"
    procs = num_proc or (1 if len(chats) < 20_000 else min(8, os.cpu_count() or 1))
    procs = min(procs, max(1, len(chats)))

    def build():
        hit = cache.exists() or any(cache_dir.glob(f"chats-{key}_*_of_*.arrow"))
        log.info("tokenize: %s %s (%d chats)", "cache hit" if hit else "cache miss, tokenizing into", cache,
                 len(chats))
        cache_dir.mkdir(parents=True, exist_ok=True)
        raw = Dataset.from_dict({"messages": [json.dumps(c, ensure_ascii=False) for c in chats]})
        return raw.map(_tokenize_batch, batched=True, batch_size=256, num_proc=procs if procs > 1 else None,
                       fn_kwargs={"tok": tok, "max_length": max_length}, remove_columns=["messages"],
                       cache_file_name=str(cache), load_from_cache_file=True, new_fingerprint=key,
                       desc="tokenize")

    # main first; the others get the memory-mapped result (a file-backed Dataset pickles as its file paths)
    ds = dist.run_on_main(build)
    truncated = sum(ds["truncated"])
    keep = [i for i, n in enumerate(ds["n_targets"]) if n > 0]
    dropped = len(ds) - len(keep)
    if dropped:
        ds = ds.select(keep)
    ds = ds.remove_columns(["truncated"])
    return ds, {"truncated": truncated, **({"no_answer_within_max_length": dropped} if dropped else {})}


# ---- training (shared with pretrain and rejection_sampling) ---------------------------------------

def finetune(ctx: StageContext, model_ref: str, tok, examples, *, cfg: TrainStageConfig, stage_defaults: dict[str, Any],
             packing: Layout | bool = "auto", max_length: int = 1024, out_dir: Path | None = None,
             extra_modules: list[str] = (), eval_examples=None) -> tuple[dict[str, str], dict[str, Any]]:
    """Train a causal LM on tokenized ``{input_ids, labels}`` examples and save it (merged) to ``out_dir/model``.

    Args:
        ctx: the stage context (seed, folder).
        model_ref: resolved model reference.
        tok: its tokenizer (with the stage's chat template: saved with the model).
        examples: tokenized examples (a list or a ``datasets.Dataset``).
        cfg: the stage config (``lora``, ``training``, ``dtype``, ``attn_implementation``).
        stage_defaults: the stage's TrainingArguments defaults under ``cfg.training``.
        packing: the batch layout (``packing.py``).
        max_length: token budget of a packed row (``rows`` layout).
        out_dir: where checkpoints and the model go (default ``ctx.out_dir``).
        extra_modules: modules trained fully under LoRA (embeddings after a vocabulary extension).
        eval_examples: validation examples; then the checkpoint with the lowest validation loss is kept.

    Returns:
        (outputs relative to ``out_dir``, metrics).
    """
    from transformers import Trainer

    from hypnos.train.packing import causal_lm_loss, make_collator

    out_dir = out_dir or ctx.out_dir
    kernel = attention_kernel(cfg.attn_implementation)
    layout = choose_layout(packing, kernel)
    defaults = {**stage_defaults, "output_dir": str(out_dir / "checkpoints")}
    if layout == "padded":
        defaults.setdefault("train_sampling_strategy", "group_by_length")  # little padding without packing
    if eval_examples is not None:
        # evaluate at every save (a quarter of the run each) and end on the best checkpoint, not the last
        defaults.update(eval_strategy="steps", eval_steps=0.25, save_steps=0.25, load_best_model_at_end=True,
                        metric_for_best_model="eval_loss", greater_is_better=False)
    args = training_arguments(ctx, cfg.training, defaults)

    def load(with_lora: bool = True):
        model = load_model_for_training(model_ref, args.seed, dtype=cfg.dtype, attn_implementation=kernel)
        return apply_lora(model, cfg.lora, extra_modules=extra_modules) if with_lora else model

    model = load()
    if args.gradient_checkpointing:
        model.config.use_cache = False
    collator = make_collator(layout, tok.pad_token_id, max_length)
    log.info("training %s: %s, attention %s, layout %s", model_ref, next(model.parameters()).dtype, kernel, layout)
    trainer = Trainer(model=model, args=args, train_dataset=examples, eval_dataset=eval_examples,
                      data_collator=collator, processing_class=tok, compute_loss_func=causal_lm_loss)
    metrics = train_and_resume(trainer, tokens=collator)
    if eval_examples is not None:
        curve = [(h["step"], round(h["eval_loss"], 5)) for h in trainer.state.log_history if "eval_loss" in h]
        best = trainer.state.best_model_checkpoint
        metrics.update(eval_loss_curve=curve, best_eval_loss=trainer.state.best_metric,
                       best_step=int(best.rsplit("-", 1)[1]) if best else None)
    metrics.update(layout=layout, attn_implementation=kernel, dtype=str(next(model.parameters()).dtype))
    if hasattr(examples, "column_names") and "n_targets" in examples.column_names:
        metrics["target_tokens"] = int(sum(examples["n_targets"]))
    else:
        metrics["target_tokens"] = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples)
    outputs = save_model(trainer, tok, out_dir, load_base=lambda: load(with_lora=False))
    return outputs, metrics


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Tokenize the chats (cached), train, write the merged model (and the LoRA adapter)."""
    model_ref = ctx.resolve_model(cfg.model)
    tok = load_tokenizer_for_training(model_ref, cfg.chat_template)
    chats, bad = load_chats([ctx.resolve(d) for d in cfg.data], cfg.on_error, ctx.out_dir, cfg.system)
    examples, stats = tokenize_dataset(tok, chats, cfg.max_length, ctx.out_dir / "tokenized", cfg.num_proc)
    if not len(examples):
        raise DataError(cfg.data[0], None, "no usable training examples in the sft data")
    log.info("sft: %d examples (%d truncated) from %d files", len(examples), stats["truncated"], len(cfg.data))
    val = None
    if cfg.validation:
        val_chats, _ = load_chats([ctx.resolve(d) for d in cfg.validation], cfg.on_error, ctx.out_dir, cfg.system)
        val, val_stats = tokenize_dataset(tok, val_chats, cfg.max_length, ctx.out_dir / "tokenized", cfg.num_proc)
        stats["validation_truncated"] = val_stats["truncated"]
    outputs, metrics = finetune(ctx, model_ref, tok, examples, cfg=cfg, stage_defaults=cfg.default_training(),
                                packing=cfg.packing, max_length=cfg.max_length, eval_examples=val)
    dropped = {**bad, **{k: v for k, v in stats.items() if k not in ("truncated", "validation_truncated")}}
    counts = {"in": len(chats) + sum(bad.values()), "kept": len(examples), "dropped": sum(dropped.values()),
              "truncated": stats["truncated"],
              **({"validation": len(val), "validation_truncated": stats["validation_truncated"]} if val else {})}
    return StageResult(outputs=outputs, counts=counts, dropped=dropped, metrics=metrics)
