"""Held-out bits per character: how well models read text none of them trained on, with paired CIs.

Run: ``hypnos eval heldout FILE... -m base=smollm2-135m-instruct -m ext=runs/demo/tokenizer/model \\
--pair ext,base [--mode answer] [--max-texts 200] [--max-chars 300] [--out heldout.json]``

Bits/char = summed negative log-likelihood of the scored characters' tokens, in bits, divided by the number of
scored characters. Unlike perplexity it does not depend on how a tokenizer cuts the text, so a model with an
extended vocabulary and its base compare directly. Each text is scored on its own after a BOS (or EOS) token.

Modes:

* ``text``: every text field of a record (question and answer of a QA record) joined by a newline, all scored.
* ``answer``: the answer is scored given the question (``instruction``/``input`` -> ``output``; a ShareGPT
  record's last assistant turn given the turns before it); question tokens are context only. Context and
  answer are tokenized separately, so the scored tokens cover exactly the answer's characters.

A difference between two models is reported with a paired percentile bootstrap over texts (the same resampled
texts for both models, the statistic being the ratio of summed bits to summed characters), so "A reads this
text better than B" is a claim with an interval.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from hypnos.common.io import DataError, iter_rows
from hypnos.train.common import Precision, autocast_bf16

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("hypnos")
Mode = Literal["text", "answer"]
N_BOOT = 2000


@dataclass(frozen=True)
class Item:
    """One held-out text: ``target`` is scored, ``context`` (possibly empty) only conditions it."""

    id: str
    context: str
    target: str


def _field(v) -> str:
    """A text field; Huatuo-style files hold one-element lists."""
    if isinstance(v, list):
        v = "\n".join(x for x in v if isinstance(x, str))
    return v.strip() if isinstance(v, str) else ""


def record_item(data: dict, mode: Mode, where: str) -> Item:
    """The ``Item`` of one record (QA, text or ShareGPT conversation); ``where`` names file:line in errors."""
    rid = str(data.get("id") or where)
    turns = [t for t in data.get("conversations") or [] if isinstance(t, dict) and _field(t.get("value"))]
    if turns:
        texts = [_field(t["value"]) for t in turns]
        answer_at = max((i for i, t in enumerate(turns) if t.get("from") in ("gpt", "assistant")), default=-1)
        if mode == "text" or answer_at <= 0:
            return Item(rid, "", "\n".join(texts))
        return Item(rid, "\n".join(texts[:answer_at]) + "\n", texts[answer_at])
    question = "\n".join(x for x in (_field(data.get("instruction")), _field(data.get("input"))) if x)
    answer = _field(data.get("output"))
    text = _field(data.get("text"))
    if answer:
        if mode == "answer" and question:
            return Item(rid, question + "\n", answer)
        return Item(rid, "", "\n".join(x for x in (question, answer) if x))
    if text:
        return Item(rid, "", text)
    raise DataError(where.rsplit(":", 1)[0], None, f"{where}: no text to score (expected output, text or "
                    "conversations)")


def load_items(paths: list[str | Path], mode: Mode = "text", max_texts: int | None = None,
               max_chars: int = 300) -> list[Item]:
    """Held-out items of record files (JSONL/JSON/CSV) or plain text (one text per line).

    The scored part of each item is cut to ``max_chars`` characters (after the context, which is kept whole
    up to ``max_chars`` too). Raises ``DataError`` naming file and line for a record without text.
    """
    items: list[Item] = []
    for path in map(Path, paths):
        if path.suffix.lower() in (".txt", ".md"):
            if not path.is_file():
                raise DataError(path, None, "file not found")
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            items += [Item(f"{path.name}:{i}", "", ln) for i, ln in enumerate(lines, 1) if ln]
        else:
            for row in iter_rows(path):
                if isinstance(row, DataError):
                    raise row
                items.append(record_item(row.data, mode, f"{path}:{row.line}"))
    items = [Item(it.id, it.context[-max_chars:], it.target[:max_chars]) for it in items if it.target]
    return items[:max_texts] if max_texts else items


def item_bits(model: PreTrainedModel, tok: PreTrainedTokenizerBase, items: list[Item],
              batch_size: int = 8) -> np.ndarray:
    """Bits of each item's target given BOS (or EOS) + its context: one float per item."""
    import torch

    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a text with")
    ctx_ids = tok([it.context for it in items], add_special_tokens=False)["input_ids"]
    tgt_ids = tok([it.target for it in items], add_special_tokens=False)["input_ids"]
    seqs = [([start, *c, *t], 1 + len(c)) for c, t in zip(ctx_ids, tgt_ids)]
    out = np.zeros(len(items))
    model.eval()
    # batches of similar length: less padding, same bits (padding is masked and never scored)
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][0]))
    for i in range(0, len(seqs), batch_size):
        rows = order[i : i + batch_size]
        batch = [seqs[k] for k in rows]
        width = max(len(s) for s, _ in batch)
        ids = torch.tensor([s + [start] * (width - len(s)) for s, _ in batch], device=model.device)
        # score only target tokens: position p predicts token p+1, which is a target token when p+1 >= first
        score = torch.tensor([[first <= p + 1 < len(s) for p in range(width - 1)] for s, first in batch],
                             device=model.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        out[rows] = ((nll * score).sum(1) / math.log(2)).cpu().numpy()
    return out


def item_chars(items: list[Item]) -> np.ndarray:
    """Scored characters of each item."""
    return np.array([len(it.target) for it in items], dtype=float)


def bits_per_char(bits: np.ndarray, chars: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """``{"bits_per_char", "ci": [lo, hi], "texts", "chars"}``: ratio of sums with a bootstrap CI over texts."""
    bits, chars = np.asarray(bits, float), np.asarray(chars, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(bits), size=(n_boot, len(bits)))
    boots = bits[idx].sum(1) / chars[idx].sum(1)
    return {"bits_per_char": float(bits.sum() / chars.sum()),
            "ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "texts": len(bits), "chars": int(chars.sum())}


def paired_difference(bits_a: np.ndarray, bits_b: np.ndarray, chars: np.ndarray, seed: int = 0,
                      n_boot: int = N_BOOT) -> dict:
    """Bits/char of A minus B on the same texts, with a paired bootstrap 95% CI (negative: A reads better).

    ``excludes_zero`` says whether the interval lies entirely on one side of 0.
    """
    a, b, c = (np.asarray(x, float) for x in (bits_a, bits_b, chars))
    if not (len(a) == len(b) == len(c)) or len(c) == 0:
        raise ValueError(f"paired texts differ in number: {len(a)}, {len(b)}, {len(c)}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(c), size=(n_boot, len(c)))
    boots = (a[idx].sum(1) - b[idx].sum(1)) / c[idx].sum(1)
    lo, hi = float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))
    return {"difference": float((a.sum() - b.sum()) / c.sum()), "ci": [lo, hi], "excludes_zero": lo > 0 or hi < 0,
            "texts": len(c)}


def evaluate(models: dict[str, str | Path], paths: list[str | Path], mode: Mode = "text",
             max_texts: int | None = 200, max_chars: int = 300, pairs: list[tuple[str, str]] = (),
             seed: int = 0, precision: Precision = "fp32") -> dict:
    """Bits/char of every model on the held-out files, and paired differences for ``pairs`` (A, B).

    ``precision``: ``fp32``, or ``bf16`` autocast over fp32 weights (2-3x faster on a CPU that multiplies bf16;
    measured on 63 demo texts: bits/char within 0.001 of fp32 overall, 0.014 per text at most), or ``auto``
    (bf16 where the hardware has it, as training does: ``hypnos.train.common.autocast_bf16``).

    Returns:
        ``{"settings", "models": {name: {...bits_per_char...}}, "pairs": [{"a", "b", "difference", "ci"}],
        "per_text": {name: [bits...]}, "chars": [...], "ids": [...]}``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.common.models import resolve_model

    for a, b in pairs:
        for name in (a, b):
            if name not in models:
                raise ValueError(f"pair {a},{b}: no model named {name!r} (models: {', '.join(models)})")
    available = load_items(paths, mode, None, max_chars)
    items = available[:max_texts] if max_texts else available
    if not items:
        raise DataError(", ".join(map(str, paths)), None, "no held-out text to score")
    if len(items) < len(available):  # a pooled set's later files may be cut whole: say so
        log.warning("held-out %s: %d of %d texts scored (max_texts %d)", ", ".join(map(str, paths)), len(items),
                    len(available), max_texts)
    chars = item_chars(items)
    bf16 = autocast_bf16(precision)
    per_text, summary = {}, {}
    for name, ref in models.items():
        d = resolve_model(ref)
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            bits = item_bits(model, tok, items)
        n_tok = sum(len(x) for x in tok([it.target for it in items], add_special_tokens=False)["input_ids"])
        per_text[name] = bits
        summary[name] = {**bits_per_char(bits, chars, seed), "tokens_per_char": n_tok / chars.sum()}
        del model
    out_pairs = [{"a": a, "b": b, **paired_difference(per_text[a], per_text[b], chars, seed)} for a, b in pairs]
    return {"settings": {"files": [str(p) for p in paths], "mode": mode, "max_texts": max_texts,
                         "texts_available": len(available),
                         "max_chars": max_chars, "seed": seed, "precision": "bf16 autocast" if bf16 else "fp32"},
            "models": summary, "pairs": out_pairs, "ids": [it.id for it in items], "chars": chars.tolist(),
            "per_text": {k: v.tolist() for k, v in per_text.items()}}


def write_result(result: dict, out: str | Path) -> None:
    """The result as JSON (per-text bits included, so later comparisons can be made without rescoring)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


def format_result(result: dict) -> str:
    """A short text table of ``evaluate``'s result: models, then pairs."""
    lines = [f"{'model':24} {'bits/char':>9}  {'95% CI':>15}  {'tokens/char':>11}  texts"]
    for name, r in result["models"].items():
        lines.append(f"{name:24} {r['bits_per_char']:9.3f}  [{r['ci'][0]:6.3f}, {r['ci'][1]:6.3f}]  "
                     f"{r['tokens_per_char']:11.3f}  {r['texts']}")
    for p in result["pairs"]:
        verdict = ("A reads better" if p["ci"][1] < 0 else "B reads better") if p["excludes_zero"] else "no difference"
        lines.append(f"{p['a']} - {p['b']}: {p['difference']:+.3f} bits/char, paired 95% CI "
                     f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] ({verdict})")
    return "\n".join(lines)
