"""Batching for causal-LM training without a dense mask over the micro-batch; loss on target tokens only.

Three layouts (``sft.packing``):

- ``padding_free`` — the whole micro-batch is one row, ``position_ids`` restart at 0 for every example and
  there is no attention mask: flash-attention's varlen kernel reads the example boundaries from
  ``position_ids`` (TRL's ``padding_free``, transformers' ``DataCollatorWithFlattening``). Only with
  ``attn_implementation: flash_attention_2/3``: under sdpa/eager transformers would build a dense block-diagonal
  mask over the whole row, O(L²) in the micro-batch's total length (32×512 tokens on CPU: 15 s and +2.5 GB).
- ``rows`` — examples packed first-fit into rows of at most ``token_budget`` tokens, rows padded to the longest
  with a separate dummy "sequence" of pads; sdpa/eager build a block-diagonal mask per row only (rows × B²).
- ``padded`` — one example per row (with ``train_sampling_strategy: group_by_length`` the stage groups
  similar lengths), a plain padding mask.

``auto`` picks ``padding_free`` under flash-attention, else ``padded`` (on short Chinese QA padding was
faster than any packing on CPU, see docs/training.md). All layouts pass ``use_cache=False`` (with a cache
transformers skips the packed-sequence detection) and ``logits_to_keep``: a boolean mask of the positions
whose next token is a target, so the LM head runs only where the loss needs it. ``causal_lm_loss`` is the
matching ``compute_loss_func``; every layout gives the same loss (tested).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

IGNORE = -100
Layout = Literal["auto", "padding_free", "rows", "padded"]


def _keep_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is a target (the shift every causal LM loss does)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def _example_labels(f: dict[str, Any]) -> list[int]:
    # The first token of an example is never a target: it would be "predicted" from the previous one.
    return [IGNORE] + list(f["labels"][1:])


class PaddingFreeCollator:
    """Concatenate a batch of ``{input_ids, labels}`` into one row; boundaries in ``position_ids`` (flash varlen).

    Attributes:
        tokens: tokens collated so far (this process), for tokens/s.
    """

    def __init__(self) -> None:
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels, pos = [], [], []
        for f in features:
            ids += f["input_ids"]
            labels += _example_labels(f)
            pos += range(len(f["input_ids"]))
        self.tokens += len(ids)
        labels_t = torch.tensor([labels])
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "labels": labels_t,
                "logits_to_keep": _keep_mask(labels_t), "use_cache": False}


PackedCollator = PaddingFreeCollator  # the name earlier code and benchmarks use


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit packing of example indices into rows of at most ``budget`` tokens (a longer example gets its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(budget - n)
    return rows


class RowPackedCollator:
    """Pack a batch into rows of at most ``token_budget`` tokens; attention isolated per example within a row.

    Pads at a row's end form their own dummy sequence (positions from 0, labels ignored), so no attention mask
    is passed and transformers' packed-sequence detection masks per row: the mask is rows × budget², never
    (total tokens)². Attributes: ``tokens`` (non-pad tokens collated).
    """

    def __init__(self, pad_token_id: int, token_budget: int) -> None:
        self.pad_token_id, self.token_budget = pad_token_id, token_budget
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = pack_rows([len(f["input_ids"]) for f in features], self.token_budget)
        width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id)
        labels = torch.full((len(rows), width), IGNORE)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                f = features[i]
                n = len(f["input_ids"])
                ids[r, at: at + n] = torch.tensor(f["input_ids"])
                labels[r, at: at + n] = torch.tensor(_example_labels(f))
                pos[r, at: at + n] = torch.arange(n)
                at += n
            pos[r, at:] = torch.arange(width - at)
            self.tokens += at
        return {"input_ids": ids, "position_ids": pos, "labels": labels, "logits_to_keep": _keep_mask(labels),
                "use_cache": False}


class PaddedCollator:
    """Right-pad a batch of ``{input_ids, labels}`` (one example per row; pads cost compute)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id)
        labels = torch.full((len(features), width), IGNORE)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        self.tokens += int(mask.sum())
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits_to_keep": _keep_mask(labels),
                "use_cache": False}


def choose_layout(packing: Layout | bool, attn_implementation: str) -> str:
    """The concrete layout for a stage's ``packing`` and the attention kernel it loads.

    Raises:
        ValueError: ``padding_free`` without a flash-attention kernel (it would need a dense L×L mask).
    """
    flash = attn_implementation.startswith("flash_attention")
    if packing is True or packing == "auto":
        return "padding_free" if flash else "padded"
    if packing is False:
        return "padded"
    if packing == "padding_free" and not flash:
        raise ValueError("packing: padding_free needs attn_implementation flash_attention_2/3 (flash-attn varlen); "
                         "under sdpa/eager use packing: rows (per-row packing with a token budget) or padded")
    return packing


def make_collator(layout: str, pad_token_id: int, token_budget: int):
    """The collator for a concrete layout."""
    if layout == "padding_free":
        return PaddingFreeCollator()
    if layout == "rows":
        return RowPackedCollator(pad_token_id, token_budget)
    return PaddedCollator(pad_token_id)


def causal_lm_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
    """Token-level cross-entropy for logits computed only at ``logits_to_keep`` positions.

    ``outputs.logits`` has one row per kept position (row-major over the batch), in the same order as the
    targets ``labels[:, 1:] != -100``. Summed and divided by the number of targets in the whole accumulated
    (and, under data parallelism, global) batch, so packed, padded, accumulated and multi-process runs give
    the same gradients.
    """
    targets = labels[:, 1:]
    targets = targets[targets != IGNORE]
    logits = outputs.logits.float().reshape(-1, outputs.logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1)
    return loss / denom
