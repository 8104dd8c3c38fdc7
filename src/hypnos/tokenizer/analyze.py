"""Measure tokenizers and extended models: tokens per character, coverage, round-trips, bits per character.

Run: ``hypnos tokenizer analyze HELDOUT --tokenizer NAME=DIR ... [--model NAME=DIR ...] --out runs/analysis``

* ``tokens_per_char``: tokens (no special tokens) / characters of the text. Lower is cheaper.
* ``char_coverage``: share of Chinese character occurrences that are one token of the vocabulary.
* ``word_coverage``: share of multi-character jieba word occurrences that are one token.
* ``roundtrip``: share of texts for which ``decode(encode(text)) == text``.
* ``bits_per_char``: summed token negative log-likelihood in bits / characters. Unlike perplexity this does
  not depend on how many tokens a tokenizer cuts the text into, so models with different vocabularies compare.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hypnos.common.progress import bar
from hypnos.tokenizer.extend import to_bytelevel
from hypnos.tokenizer.train_spm import iter_corpus_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
CJK_WORD = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff]{2,}$")


def load_texts(paths: Iterable[str | Path], max_texts: int | None = None, max_chars: int = 300) -> list[str]:
    """Held-out texts from record or plain-text files, each cut to ``max_chars`` characters."""
    out = []
    for text in iter_corpus_texts(paths):
        text = text.strip()[:max_chars]
        if text:
            out.append(text)
        if max_texts is not None and len(out) >= max_texts:
            break
    return out


def is_bytelevel(tok: PreTrainedTokenizerBase) -> bool:
    """True for a byte-level BPE tokenizer (its vocabulary is in GPT-2's byte alphabet)."""
    return '"ByteLevel"' in tok.backend_tokenizer.to_str()


def tokenizer_stats(tok: PreTrainedTokenizerBase, texts: list[str]) -> dict:
    """tokens_per_char, char_coverage, word_coverage and roundtrip of one tokenizer on ``texts``."""
    import jieba

    vocab = tok.get_vocab()
    sym = to_bytelevel if is_bytelevel(tok) else (lambda s: s)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    n_tok = sum(map(len, ids))
    n_char = sum(map(len, texts))
    chars = [c for t in texts for c in CJK_CHAR.findall(t)]
    words = [w for t in texts for w in jieba.lcut(t) if CJK_WORD.match(w)]
    exact = sum(tok.decode(i) == t for i, t in zip(ids, texts))
    return {
        "vocab_size": len(tok),
        "tokens_per_char": n_tok / max(n_char, 1),
        "char_coverage": sum(sym(c) in vocab for c in chars) / max(len(chars), 1),
        "word_coverage": sum(sym(w) in vocab for w in words) / max(len(words), 1),
        "roundtrip": exact / max(len(texts), 1),
        "texts": len(texts), "chars": n_char, "tokens": n_tok,
    }


def bits_per_char(model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 8) -> float:
    """Summed NLL (bits) of every text token, given a BOS (or EOS) start token, per character of text."""
    import torch

    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    seqs = [[start, *ids] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    total_nats, device = 0.0, model.device
    model.eval()
    progress = bar(len(seqs), desc="bits/char", unit="text")
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([s + [start] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        total_nats += (nll * mask[:, 1:]).sum().item()
        progress.update(len(batch))
    progress.close()
    return total_nats / math.log(2) / sum(map(len, texts))


def lm_blocks(tok: PreTrainedTokenizerBase, texts: list[str], seq_len: int) -> list[dict]:
    """Texts joined with EOS and cut into ``seq_len`` blocks for causal-LM training."""
    flat: list[int] = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        flat.extend(ids + [tok.eos_token_id])
    return [{"input_ids": flat[i : i + seq_len], "labels": flat[i : i + seq_len]}
            for i in range(0, len(flat) - seq_len + 1, seq_len)]


def short_train(model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: list[str], out_dir: str | Path,
                steps: int = 30, seq_len: int = 128, batch_size: int = 4, lr: float = 2e-4, seed: int = 0) -> float:
    """A fixed causal-LM budget with the plain HF Trainer (fp32, no checkpointing on CPU); returns last loss."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hypnos.train.common import mixed_precision_bf16

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        warmup_steps=min(5, steps // 5), lr_scheduler_type="constant_with_warmup", weight_decay=0.0,
        logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], seed=seed, data_seed=seed,
        # bf16 autocast only where the hardware has it (≈14x slower on CPUs without bf16, STACK.md)
        bf16=mixed_precision_bf16(), gradient_checkpointing=False, use_cpu=not cuda, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=lm_blocks(tok, texts, seq_len),
                      data_collator=default_data_collator)
    result = trainer.train()
    return float(result.training_loss)


def write_report(rows: list[dict], out_prefix: str | Path, title: str = "Tokenizer analysis") -> dict[str, Path]:
    """Write ``rows`` (one dict per tokenizer/model) as ``.md``, ``.json`` and a ``.png`` bar plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
    md = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    paths = {"md": out_prefix.with_suffix(".md"), "json": out_prefix.with_suffix(".json"),
             "png": out_prefix.with_suffix(".png")}
    paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    paths["json"].write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")

    metrics = [c for c in ("tokens_per_char", "bits_per_char", "bits_per_char_trained") if any(c in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.5 * len(rows) + 1.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        names = [r["name"] for r in rows if r.get(m) is not None]
        ax.barh(names, [r[m] for r in rows if r.get(m) is not None])
        ax.set_title(m)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
