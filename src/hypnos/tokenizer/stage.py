"""The ``tokenizer`` stage: train Chinese pieces, extend the base tokenizer, resize and initialise the model.

Run: ``hypnos stage-tokenizer --config tokenizer.yaml`` or as a recipe stage::

    - name: tokenizer
      kind: tokenizer
      base_model: smollm2-135m-instruct
      corpus: [corpus/medical_corpus.jsonl, "@mix"]
      vocab_size: 8000
      max_new_pieces: 4000
      heldout: bench/anesthesia_openqa.jsonl
      warmup: {steps: 16, lora_steps: 64}  # new rows, then rows + merged LoRA, before any fine-tuning (0: off)

Steps, each skipped when its result is already in the stage folder (so a killed run resumes):
``spm/spm.model`` (SentencePiece BPE on the corpus) -> ``tokenizer/`` (extended tokenizer and
``new_tokens.json``, with the reachability of every new piece) -> ``model/`` (resized, initialised checkpoint
with the extended tokenizer; written to ``model.tmp`` and renamed when complete) -> ``warm/`` (the new rows
trained on the corpus, then with a merged LoRA adapter; old embedding rows unchanged; ``warm.tmp`` holds checkpoints when
``warmup.save_steps`` is set) -> ``analysis.json`` (tokens/char, coverage, round-trips and bits/char of the
base, the initialised and the warmed-up model on ``heldout``).

Outputs: ``model`` (primary: later stages use ``"@tokenizer"``; the warmed-up model when the warm-up is on)
and ``analysis``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from hypnos.common.stage import StageConfig, StageContext, StageResult, log
from hypnos.tokenizer.extend import NEW_PIECES_FILE, copy_tokenizer_files, extend_tokenizer, read_new_tokens
from hypnos.tokenizer.train_spm import spm_pieces, train_spm
from hypnos.tokenizer.warmup import WarmupConfig


class Config(StageConfig):
    """Vocabulary extension of a base model for Chinese medical text."""

    base_model: str
    """Model to extend: ``"@stage"``, a local checkpoint dir or a built-in name (``smollm2-135m-instruct``)."""
    corpus: list[str] = Field(min_length=1)
    """Files the new pieces are learned from: record files (text/QA/dialogue) or plain text, or ``"@stage"``."""
    vocab_size: int = Field(8000, ge=100)
    """Size of the SentencePiece BPE model trained on the corpus (a soft limit for small corpora)."""
    jieba: bool = False
    """Segment the corpus into jieba words first, so pieces never cross a word boundary."""
    init: Literal["fused", "mean", "random"] = "mean"
    """How new embedding rows start: ``mean`` of the sub-pieces (measured best, see docs/tokenizer.md),
    the paper's order-weighted ``fused``, or transformers' ``random`` resize."""
    max_new_pieces: int | None = Field(4000, ge=1)
    """Most tokens to add (pieces plus the intermediate tokens BPE needs to reach them); null: all pieces."""
    heldout: str | None = None
    """Held-out Chinese text (record or plain-text file) for the analysis; null skips the analysis."""
    heldout_texts: int = Field(200, ge=1)
    """How many held-out texts (each cut to 300 characters) the analysis reads."""
    measure_bits: bool = True
    """Also measure the model's bits per character before and after (a forward pass per text and model)."""
    space_variants: int = Field(64, ge=0)
    """Byte-level tokenizers: most space-prefixed variants (" 检查") added for new pieces that follow a space
    in the corpus (``CT 检查``), on top of ``max_new_pieces``; without them no piece applies after a space."""
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    """Training of the new rows only, on the corpus, before any fine-tuning (docs/tokenizer.md: it brings
    held-out bits/char back towards the base model's); ``steps: 0`` turns it off."""

    def check(self, ctx: StageContext) -> list[str]:
        """Corpus and held-out files exist (or name earlier stages)."""
        problems = [p for c in self.corpus for p in ctx.check_ref(c, "corpus")]
        problems += [p for c in self.warmup.corpus or [] for p in ctx.check_ref(c, "warmup.corpus")]
        return problems + ctx.check_ref(self.heldout, "heldout")


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Run the stage into ``ctx.out_dir``; see the module docstring."""
    from hypnos.common.models import resolve_model

    out = ctx.out_dir
    base_dir = resolve_model(ctx.resolve_model(cfg.base_model))
    corpus = [ctx.resolve(c) for c in cfg.corpus]
    spm_model = out / "spm" / "spm.model"
    if not spm_model.is_file():
        train_spm(corpus, out / "spm", cfg.vocab_size, cfg.jieba)
    tok_dir = out / "tokenizer"
    if not (tok_dir / NEW_PIECES_FILE).is_file():
        shutil.rmtree(tok_dir, ignore_errors=True)
        extend_tokenizer(base_dir, spm_pieces(spm_model), tok_dir, cfg.max_new_pieces, corpus=corpus,
                         space_variants=cfg.space_variants)
    summary = json.loads((tok_dir / NEW_PIECES_FILE).read_text(encoding="utf-8"))
    model_dir = out / "model"
    if not (model_dir / NEW_PIECES_FILE).is_file():
        build_model(base_dir, tok_dir, model_dir, cfg.init)
    metrics = {k: summary[k] for k in ("family", "base_size", "new_size", "added", "skipped_existing")}
    metrics.update({f"reachable_{c}": f"{r['reachable']}/{r['checked']}"
                    for c, r in (summary.get("reachability") or {}).items()})
    models = {"before": base_dir, "after": model_dir}
    outputs = {"model": "model"}
    if cfg.warmup.steps > 0:
        warm_dir = out / "warm"
        if not (warm_dir / "warmup.json").is_file():
            from hypnos.tokenizer.warmup import warmup_model_dir

            warm_corpus = [ctx.resolve(c) for c in cfg.warmup.corpus] if cfg.warmup.corpus else corpus
            warmup_model_dir(model_dir, warm_corpus, warm_dir, cfg.warmup, teacher_dir=base_dir)
        stats = json.loads((warm_dir / "warmup.json").read_text(encoding="utf-8"))
        metrics.update({f"warmup_{k}": stats[k] for k in ("first_loss", "last_loss", "seconds")})
        metrics["warmup_texts"] = stats.get("corpus", {}).get("texts")
        models["warmed_up"] = warm_dir
        outputs = {"model": "warm"}
    if cfg.heldout:
        analysis = out / "analysis.json"
        if not analysis.is_file():
            rows = _analyze(cfg, ctx.resolve(cfg.heldout), models)
            analysis.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        rows = json.loads(analysis.read_text(encoding="utf-8"))
        metrics.update({f"{r['name']}_{k}": r[k] for r in rows for k in ("tokens_per_char", "bits_per_char")
                        if r.get(k) is not None})
        outputs["analysis"] = "analysis.json"
    return StageResult(outputs=outputs, counts={"added": summary["added"]}, metrics=metrics)


def build_model(base_dir: Path, tok_dir: Path, model_dir: Path, init: str) -> None:
    """Resized, initialised copy of the base model plus the extended tokenizer, written atomically to model_dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.tokenizer.init_embeddings import resize_and_init

    tmp = model_dir.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    stats = resize_and_init(model, len(AutoTokenizer.from_pretrained(tok_dir)), read_new_tokens(tok_dir), init)
    log.info("resized embeddings %d -> %d rows (%s init, tied=%s)", stats["old_rows"], stats["new_rows"], init,
             stats["tied"])
    model.save_pretrained(tmp)
    copy_tokenizer_files(tok_dir, tmp)  # new_tokens.json last in: its presence marks a complete model dir
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)


def _analyze(cfg: Config, heldout: Path, models: dict[str, Path]) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.tokenizer.analyze import bits_per_char, load_texts, tokenizer_stats

    texts = load_texts([heldout], cfg.heldout_texts)
    rows = []
    for name, d in models.items():
        tok = AutoTokenizer.from_pretrained(d)
        row = {"name": name, **tokenizer_stats(tok, texts)}
        if name != "before" and (Path(d) / NEW_PIECES_FILE).is_file():
            new = json.loads((Path(d) / NEW_PIECES_FILE).read_text(encoding="utf-8"))
            row["reachability"] = new.get("reachability")
            used = {i for ids in tok(texts, add_special_tokens=False)["input_ids"] for i in ids}
            row["new_tokens_used"] = sum(t["id"] in used for t in new["tokens"])
            row["new_tokens"] = len(new["tokens"])
        if cfg.measure_bits:
            row["bits_per_char"] = bits_per_char(AutoModelForCausalLM.from_pretrained(d), tok, texts)
        rows.append(row)
    return rows
