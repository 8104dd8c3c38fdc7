"""Batching for causal-LM training: padding-free packing, or plain padding, with a loss on target tokens only.

Short Chinese QA (40–90 tokens) wastes most of a padded batch. ``PackedCollator`` concatenates the batch's
examples into one row with ``position_ids`` restarting at 0 for every example and no ``attention_mask``.
transformers 5.x (``masking_utils.find_packed_sequence_indices``) then builds a block-diagonal causal mask
for sdpa/eager attention, so each example attends only to itself (flash-attention uses the same
position_ids as varlen boundaries). This needs ``use_cache=False``: with a KV cache the detection is
skipped and examples attend to each other (checked in tests/test_train_sft.py). Both collators also pass ``logits_to_keep``: a boolean mask of the
positions whose next token is a target, so the LM head (49k-wide for SmolLM2: most of a small model's
compute) runs only where the loss needs it. ``causal_lm_loss`` is the matching ``compute_loss_func``.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100


def _keep_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is a target (the shift every causal LM loss does)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


class PackedCollator:
    """Concatenate a batch of ``{input_ids, labels}`` into one row, attention isolated per example.

    Attributes:
        tokens: tokens collated so far (this process), for tokens/s.
    """

    def __init__(self) -> None:
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels, pos = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids += f["input_ids"]
            # The first token of an example is never a target: it would be "predicted" from the previous one.
            labels += [IGNORE] + list(f["labels"][1:])
            pos += range(n)
        self.tokens += len(ids)
        labels_t = torch.tensor([labels])
        # use_cache=False matters: with a cache (the default even in train mode) transformers skips the
        # packed-sequence detection and examples silently attend to each other.
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "labels": labels_t,
                "logits_to_keep": _keep_mask(labels_t), "use_cache": False}


class PaddedCollator:
    """Right-pad a batch of ``{input_ids, labels}`` (the classic layout; pads cost compute)."""

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
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits_to_keep": _keep_mask(labels)}


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
