"""Continued pretraining (ChiMed-GPT's first stage): causal-LM training on plain medical text.

Run: ``hypnos pretrain --config configs/pretrain/smollm2_corpus.yaml`` or as a recipe stage::

    - name: pretrain
      kind: pretrain
      model: "@tokenizer"            # a vocabulary-extended model: its embeddings and LM head are trained
      data: [examples/corpus/medical_corpus.jsonl, /data/textbook.txt]
      block_size: 512
      lora: {r: 16, alpha: 32}

Documents (``text`` records of a JSONL corpus, or blank-line separated paragraphs of a .txt file) are
tokenized, joined with EOS and cut into ``block_size`` blocks; every token is a target. When the model
comes from a ``tokenizer`` stage (new tokens with freshly initialised rows), the input embeddings and the
output head are trained too, also under LoRA (``modules_to_save``; kept tied when the model ties them).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from hypnos.common.io import DataError, ReadReport, read_text
from hypnos.common.records import Text, read_records
from hypnos.common.stage import StageContext, StageResult, is_ref, log
from hypnos.train.common import TrainStageConfig, load_tokenizer_for_training
from hypnos.train.sft import finetune

EMBEDDINGS = ["embed_tokens", "lm_head"]


class Config(TrainStageConfig):
    """Continued pretraining on text records or plain .txt files."""

    data: list[str] = Field(min_length=1)
    """Corpus files: JSONL/JSON/CSV ``text`` records, or .txt (documents separated by blank lines)."""
    block_size: int = Field(512, ge=8)
    """Tokens per training block (documents are concatenated with EOS and cut into blocks)."""
    train_embeddings: bool | None = None
    """Train the input embeddings and LM head under LoRA; null = yes when the model comes from a tokenizer
    stage (its new token rows are untrained). Full fine-tuning trains them anyway."""

    def check(self, ctx: StageContext) -> list[str]:
        """Model, training arguments and corpus files."""
        problems = super().check(ctx)
        for d in self.data:
            problems += ctx.check_ref(d, "data")
        return problems

    needs_chat_template: ClassVar[bool] = False  # plain text: no chat rendering

    def default_training(self) -> dict:
        """Pretraining defaults: a lower LR for full training, like the SFT stage; blocks shuffled ("random"),
        not grouped by length (they are all ``block_size`` long but the last)."""
        return {"learning_rate": 2e-4 if self.lora else 5e-5, "train_sampling_strategy": "random"}


def read_documents(path: Path) -> list[str]:
    """The documents of a corpus file: text records, or blank-line separated paragraphs of a .txt file."""
    if path.suffix.lower() == ".txt":
        docs = [d.strip() for d in read_text(path).split("\n\n")]
        return [d for d in docs if d]
    docs = []
    for rec in read_records(path, kind="text", report=ReadReport()):
        assert isinstance(rec, Text)
        docs.append(rec.text)
    return docs


def make_blocks(tok, docs: list[str], block_size: int) -> list[dict]:
    """Tokenize documents, join them with EOS and cut the stream into blocks (the last one may be shorter)."""
    from hypnos.common.progress import track

    stream: list[int] = []
    for doc in track(docs, desc="tokenize", unit="doc"):
        stream += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    blocks = [stream[i: i + block_size] for i in range(0, len(stream), block_size)]
    return [{"input_ids": b, "labels": b} for b in blocks if len(b) > 1]


def wants_embeddings(cfg: Config, ctx: StageContext) -> bool:
    """Whether to train embeddings + LM head under LoRA (explicit, or the model comes from a tokenizer stage)."""
    if cfg.train_embeddings is not None:
        return cfg.train_embeddings
    return is_ref(cfg.model) and ctx.recipe.stage(cfg.model[1:].split(".")[0]).kind == "tokenizer"


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Tokenize the corpus into blocks, train, write the merged model."""
    model_ref = ctx.resolve_model(cfg.model)
    tok = load_tokenizer_for_training(model_ref, cfg.chat_template, require_template=False)
    docs = []
    for d in cfg.data:
        docs += read_documents(ctx.resolve(d))
    if not docs:
        raise DataError(cfg.data[0], None, "the corpus has no documents")
    blocks = make_blocks(tok, docs, cfg.block_size)
    embeddings = wants_embeddings(cfg, ctx)
    log.info("pretrain: %d documents -> %d blocks of <= %d tokens; embeddings trained: %s",
             len(docs), len(blocks), cfg.block_size, embeddings or cfg.lora is None)
    # Blocks are block_size long (the last may be shorter): plain rows, no packing and no per-example mask.
    outputs, metrics = finetune(ctx, model_ref, tok, blocks, cfg=cfg, stage_defaults=cfg.default_training(),
                                packing="padded", max_length=cfg.block_size,
                                extra_modules=EMBEDDINGS if embeddings else [])
    metrics["embeddings_trained"] = embeddings or cfg.lora is None
    counts = {"in": len(docs), "kept": len(docs), "dropped": 0, "blocks": len(blocks),
              "tokens": sum(len(b["input_ids"]) for b in blocks)}
    return StageResult(outputs=outputs, counts=counts, metrics=metrics)
