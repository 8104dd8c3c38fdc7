"""Warm up the new vocabulary rows of an extended model before any fine-tuning.

Run: ``hypnos tokenizer warmup runs/tok/model corpus.jsonl --out runs/tok/warm [--steps 16 --lora-steps 64]`` or
the ``warmup:`` option of the ``tokenizer`` stage.

Right after extension the new rows only hold an initial guess (the mean of their sub-pieces), and the model
reads medical text worse than before (bits/char up; see docs/tokenizer.md). Phase 1 trains *only* those rows
on the corpus with the causal-LM loss: every other weight, including every existing embedding row, stays
bit-for-bit the base model's. Rows alone recover the corpus's register but not others (+0.7 bits/char on
online QA after 80 steps), because the body never learned to read the new tokens; phase 2 (``lora_steps``,
Chinese-LLaMA's second stage) trains the rows together with a LoRA adapter on every linear layer and merges it,
so the body changes too (old embedding rows still do not).

Mechanics: all parameters are frozen except the input embedding (and an untied output head); a gradient hook
zeroes the gradient of every row that is not a new token, and the optimizer has no weight decay, so old rows
get an exact zero update (checked after training: a changed old row raises). Plain HF ``Trainer``; with
``save_steps`` it checkpoints and a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class WarmupConfig(BaseModel):
    """Settings of the new-row warm-up (the ``warmup:`` block of the tokenizer stage)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(16, ge=0)
    """Optimizer steps of the rows-only phase; 0 turns the warm-up off (both phases). With ``lora_steps`` 64,
    16 + 64 steps of 4 x 128 tokens was the best 80-step budget measured in docs/tokenizer.md."""
    learning_rate: float = Field(3e-3, gt=0)
    """Adam learning rate for the new rows (only ~1-2 % of the weights move, so it can be high)."""
    batch_size: int = Field(4, ge=1)
    """Blocks per step."""
    seq_len: int = Field(128, ge=16)
    """Tokens per block (corpus texts joined with EOS and cut into blocks)."""
    corpus: list[str] | None = Field(None, min_length=1)
    """Files the warm-up trains on (null: the stage's ``corpus``, which the new pieces were learned from). Text
    for the vocabulary need not be text to train on: a recipe with a general SFT stage keeps that stage's data
    out of the warm-up, so that general -> specific and specific-only differ by the general data."""
    max_texts: int | None = Field(None, ge=1)
    """Read at most this many corpus texts (null: all)."""
    distill: float = Field(0.0, ge=0)
    """Weight of the distillation term (0: plain causal-LM loss only, the measured best). The base model, reading the same text
    in its own tokenization, is the teacher: at every character boundary both tokenizations share, the
    student's next-token distribution, summed over tokens that start with the same base token, is pulled
    towards the teacher's (KL). This teaches new rows how much probability the base model gives to what
    follows, which the LM loss on a small corpus only samples."""
    chunk_chars: int = Field(96, ge=8)
    """Distillation: corpus texts are cut into pieces of this many characters (one training row each)."""
    save_steps: int = Field(0, ge=0)
    """Checkpoint every this many steps so a killed run resumes (0: no checkpoints, a rerun starts over)."""
    seed: int = 0
    """Seed of the data order."""
    lora_steps: int = Field(64, ge=0)
    """Second phase (0: rows only): this many more steps training the new rows *and* a LoRA adapter on every linear
    layer of the body, merged into the weights afterwards -- Chinese-LLaMA's two-stage recipe (embeddings
    first, then embeddings + LoRA). The rows-only phase cannot change how the body reads the new tokens; this
    one can, at the price of no longer leaving the base model's own weights untouched (old embedding rows
    still are). docs/tokenizer.md compares it with the same steps on the unextended model."""
    lora_r: int = Field(16, ge=1)
    """LoRA rank of the second phase (alpha = 2 r)."""
    lora_learning_rate: float = Field(1e-3, gt=0)
    """Learning rate of the second phase (the rows and the adapter); 1e-3 beat 5e-4 on every held-out set."""


def new_row_ids(tok_dir: str | Path) -> list[int]:
    """Ids of the tokens the extension added (from ``new_tokens.json``)."""
    from hypnos.tokenizer.extend import read_new_tokens

    return sorted(read_new_tokens(tok_dir))


def trainable_matrices(model: PreTrainedModel) -> list:
    """The input embedding and, when untied, the output head: the matrices holding per-token rows."""
    from hypnos.tokenizer.init_embeddings import is_tied

    mats = [model.get_input_embeddings().weight]
    if not is_tied(model) and model.get_output_embeddings() is not None:
        mats.append(model.get_output_embeddings().weight)
    return mats


def freeze_all_but_rows(model: PreTrainedModel, rows: list[int]) -> list:
    """Freeze the model except ``rows`` of the embedding (and untied head); returns the hook handles."""
    import torch

    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    for w in trainable_matrices(model):
        mask = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
        mask[rows] = 1
        w.requires_grad_(True)
        # why a hook and not a separate parameter: the model keeps its usual layout (and tying) on save
        handles.append(w.register_hook(lambda g, m=mask: g * m))
    return handles


def first_base_ids(sub_pieces: dict[int, list[int]], vocab_size: int) -> list[int]:
    """For every id of the extended vocabulary, the base token it starts with (itself for base tokens)."""
    first = list(range(vocab_size))
    for new_id, sub in sub_pieces.items():
        first[new_id] = sub[0]
    return first


def _boundaries(offsets: list[tuple[int, int]]) -> dict[int, int]:
    """char offset c -> position p (in the BOS-prefixed sequence) whose next token starts exactly at c."""
    out = {0: 0}
    for i in range(len(offsets) - 1):
        if offsets[i][1] == offsets[i + 1][0]:
            out[offsets[i][1]] = i + 1
    return out


def distill_rows(tok, teacher_tok, texts: list[str], chunk_chars: int) -> list[dict]:
    """Training rows for distillation: both tokenizations of a text piece and their shared boundaries.

    Each row holds ``input_ids``/``labels`` (student, BOS first), ``teacher_ids`` (teacher, BOS first) and
    ``pairs``: (student position, teacher position) where both predict a token starting at the same character.
    """
    from hypnos.tokenizer.train_spm import chunk

    def start(t):
        return t.bos_token_id if t.bos_token_id is not None else t.eos_token_id

    rows = []
    for text in texts:
        for piece in chunk(text, chunk_chars):
            s = tok(piece, add_special_tokens=False, return_offsets_mapping=True)
            t = teacher_tok(piece, add_special_tokens=False, return_offsets_mapping=True)
            if not s["input_ids"]:
                continue
            sb, tb = _boundaries(s["offset_mapping"]), _boundaries(t["offset_mapping"])
            pairs = [(p, tb[c]) for c, p in sb.items() if c in tb and c < len(piece)]
            ids = [start(tok), *s["input_ids"]]
            rows.append({"input_ids": ids, "labels": ids, "teacher_ids": [start(teacher_tok), *t["input_ids"]],
                         "pairs": pairs})
    return rows


def _pad_collate(rows: list[dict], pad: int, teacher_pad: int) -> dict:
    import torch

    ls = max(len(r["input_ids"]) for r in rows)
    lt = max(len(r["teacher_ids"]) for r in rows)
    lp = max(len(r["pairs"]) for r in rows) or 1
    b = {"input_ids": torch.tensor([r["input_ids"] + [pad] * (ls - len(r["input_ids"])) for r in rows]),
         "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (ls - len(r["input_ids"])) for r in rows]),
         "labels": torch.tensor([r["labels"] + [-100] * (ls - len(r["labels"])) for r in rows]),
         "teacher_ids": torch.tensor([r["teacher_ids"] + [teacher_pad] * (lt - len(r["teacher_ids"])) for r in rows]),
         "teacher_mask": torch.tensor([[1] * len(r["teacher_ids"]) + [0] * (lt - len(r["teacher_ids"]))
                                       for r in rows]),
         "pairs": torch.tensor([r["pairs"] + [(0, 0)] * (lp - len(r["pairs"])) for r in rows]),
         "pair_mask": torch.tensor([[1] * len(r["pairs"]) + [0] * (lp - len(r["pairs"])) for r in rows])}
    return b


def distill_loss(student_logits, teacher_logits, pairs, pair_mask, first_ids):
    """KL(teacher || student summed by first base token) at the shared boundaries, mean over pairs."""
    import torch

    b = torch.arange(pairs.shape[0])[:, None]
    s = student_logits[b, pairs[..., 0]].float().log_softmax(-1)  # B x P x V_new
    t = teacher_logits[b, pairs[..., 1]].float().log_softmax(-1)  # B x P x V_old
    v_old = t.shape[-1]
    idx = first_ids[None, None, :].expand_as(s)
    # log of summed probabilities, computed stably: logsumexp per group via scatter of exp(s - max)
    m = s.max(-1, keepdim=True).values
    agg = torch.zeros(*s.shape[:2], v_old, dtype=s.dtype, device=s.device).scatter_add_(-1, idx, (s - m).exp())
    log_q = agg.clamp_min(1e-30).log() + m
    kl = (t.exp() * (t - log_q)).sum(-1)
    return (kl * pair_mask).sum() / pair_mask.sum().clamp_min(1)


def warmup_new_rows(model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: list[str], rows: list[int],
                    work_dir: str | Path, cfg: WarmupConfig, teacher: PreTrainedModel | None = None,
                    teacher_tok: PreTrainedTokenizerBase | None = None,
                    sub_pieces: dict[int, list[int]] | None = None) -> dict:
    """Train only ``rows`` of the embedding (and untied head) on ``texts``; the model is changed in place.

    Returns:
        ``{"steps", "train_loss", "first_loss", "last_loss", "seconds", "blocks", "rows"}``.

    Raises:
        RuntimeError: an existing row changed (a bug in the masking: the warm-up would not be safe).
    """
    import torch
    from transformers import default_data_collator

    from hypnos.tokenizer.analyze import lm_blocks

    if not rows:
        raise ValueError("no new rows to warm up (new_tokens.json lists no tokens)")
    distill = cfg.distill > 0
    if distill and (teacher is None or teacher_tok is None or sub_pieces is None):
        raise ValueError("distill > 0 needs the base model (teacher), its tokenizer and the new tokens' sub-pieces")
    blocks = (distill_rows(tok, teacher_tok, texts, cfg.chunk_chars) if distill
              else lm_blocks(tok, texts, cfg.seq_len))
    if not blocks:
        raise ValueError(f"the warm-up corpus holds fewer than {cfg.seq_len} tokens")
    keep = [w.detach().clone() for w in trainable_matrices(model)]
    handles = freeze_all_but_rows(model, rows)
    work_dir = Path(work_dir)
    collate, loss_func = default_data_collator, None
    if distill:
        collate, loss_func = _distill_parts(tok, teacher, teacher_tok, sub_pieces, model, cfg)
    resume = cfg.save_steps > 0 and any(work_dir.glob("checkpoint-*"))
    t0 = time.perf_counter()
    result, losses = _train(model, blocks, cfg.steps, cfg.learning_rate, work_dir, cfg, collate, loss_func, resume)
    lora_losses: list[float] = []
    if cfg.lora_steps:
        merged, lora_losses = lora_phase(model, lm_blocks(tok, texts, cfg.seq_len) if distill else blocks,
                                         work_dir.with_name(work_dir.name + "-lora"), cfg)
        assert merged is model  # peft injects and merges in place: the caller's model is the trained one
    seconds = time.perf_counter() - t0
    for h in handles:
        h.remove()
    model.requires_grad_(False)
    other = torch.ones(keep[0].shape[0], dtype=torch.bool)
    other[rows] = False
    for before, w in zip(keep, trainable_matrices(model)):
        if not torch.equal(before[other], w.detach()[other]):
            raise RuntimeError("warm-up changed rows of existing tokens: the row mask failed")
    model.requires_grad_(True)
    out = {"steps": cfg.steps, "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
           "last_loss": (lora_losses or losses or [None])[-1], "seconds": round(seconds, 1), "blocks": len(blocks),
           "rows": len(rows), "resumed": resume}
    if cfg.lora_steps:
        out.update(lora_steps=cfg.lora_steps, rows_last_loss=losses[-1] if losses else None,
                   lora_first_loss=lora_losses[0] if lora_losses else None)
    return out


def _train(model, dataset, steps: int, lr: float, work_dir: Path, cfg: WarmupConfig, collate, loss_func=None,
           resume: bool = False):
    """One plain HF ``Trainer`` run; returns (TrainOutput, logged losses)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hypnos.train.common import mixed_precision_bf16

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work_dir), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=lr, weight_decay=0.0,  # decay would move the frozen rows too
        warmup_steps=max(1, steps // 10), lr_scheduler_type="cosine",
        logging_steps=1, save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=1, report_to=[], seed=cfg.seed, data_seed=cfg.seed, use_cpu=not cuda, bf16=mixed_precision_bf16(),
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=loss_func is None,
    )
    losses: list[float] = []

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[_Losses()])
    if loss_func is not None:
        trainer.compute_loss = loss_func  # the one change distillation needs: the loss, not the loop
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints are only for resuming this call
    return result, losses


def lora_phase(model, blocks, work_dir: Path, cfg: WarmupConfig, rows: bool = True):
    """Phase 2: new rows + a LoRA adapter on every linear layer, then merged. Returns (plain model, losses).

    ``rows=False``: the adapter only (the unextended control in bench/bench_heldout.py)."""
    from peft import LoraConfig, get_peft_model
    from transformers import default_data_collator

    emb = trainable_matrices(model)
    peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                                                  target_modules="all-linear", task_type="CAUSAL_LM"))
    for w in emb if rows else []:  # peft froze them; the row-mask hooks from phase 1 are still attached
        w.requires_grad_(True)
    _, losses = _train(peft_model, blocks, cfg.lora_steps, cfg.lora_learning_rate, work_dir, cfg,
                       default_data_collator)
    return peft_model.merge_and_unload(), losses


def _distill_parts(tok, teacher, teacher_tok, sub_pieces, model, cfg: WarmupConfig):
    """(collate, loss function) of the distillation loss."""
    import torch

    teacher.eval().requires_grad_(False)
    first = torch.tensor(first_base_ids(sub_pieces, model.get_input_embeddings().weight.shape[0]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tpad = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else teacher_tok.eos_token_id

    def collate(batch):
        return _pad_collate(batch, pad, tpad)

    def loss_func(model, inputs, return_outputs=False, num_items_in_batch=None):
        extra = {k: inputs.pop(k) for k in ("teacher_ids", "teacher_mask", "pairs", "pair_mask")}
        out = model(**inputs)
        with torch.no_grad():
            t_logits = teacher(input_ids=extra["teacher_ids"], attention_mask=extra["teacher_mask"]).logits
        kl = distill_loss(out.logits, t_logits, extra["pairs"], extra["pair_mask"], first.to(out.logits.device))
        loss = out.loss + cfg.distill * kl
        return (loss, out) if return_outputs else loss

    return collate, loss_func
def warmup_model_dir(model_dir: str | Path, corpus: list[str | Path], out_dir: str | Path, cfg: WarmupConfig,
                     teacher_dir: str | Path | None = None) -> dict:
    """Warm up the extended checkpoint in ``model_dir`` and write it (atomically) to ``out_dir``.

    ``teacher_dir`` (the base model) is needed when ``cfg.distill`` > 0.

    ``out_dir`` ends up with the model, the tokenizer files and ``warmup.json`` (the stats); a half-written
    run lives in ``<out_dir>.tmp`` and its checkpoints are reused on the next call when ``save_steps`` > 0.
    """
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.tokenizer.analyze import load_texts
    from hypnos.tokenizer.extend import copy_tokenizer_files

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, saved.get("dtype") or saved.get("torch_dtype") or "float32")
    texts = load_texts(corpus, cfg.max_texts, max_chars=10**9)
    from hypnos.tokenizer.extend import read_new_tokens

    teacher = teacher_tok = None
    if cfg.distill > 0:
        if teacher_dir is None:
            raise ValueError("warm-up with distill > 0 needs the base model as teacher")
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    sub = read_new_tokens(model_dir)
    stats = warmup_new_rows(model, tok, texts, sorted(sub), tmp / "trainer", cfg, teacher, teacher_tok, sub)
    stats["config"] = cfg.model_dump()
    stats["corpus"] = {"files": [Path(c).name for c in corpus], "texts": len(texts)}
    model.to(dtype)  # back to the checkpoint's own precision
    model.save_pretrained(tmp)
    copy_tokenizer_files(model_dir, tmp)
    (tmp / "warmup.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")  # last: marks it complete
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return stats
