"""Resize a causal LM to an extended tokenizer and initialise the new embedding rows.

Run: part of the ``tokenizer`` stage, or ``hypnos tokenizer extend ... --model BASE --init mean``.

Every new token replaces a known sequence of base tokens (its *sub-pieces*, recorded by ``extend.py`` in
``new_tokens.json``). Methods:

* ``mean``: the plain average of the sub-pieces' rows.
* ``fused``: the Hypnos paper's order-weighted fusion of the sub-piece rows ("fusing the vectors of the
  UTF-8 characters ... weighted by character order"). The paper does not give the weights; we use weights
  that grow linearly with position, w_i = i / sum(1..n). Why increasing: for a character split into UTF-8
  byte pieces, the first byte (0xE4-0xE9 for most Chinese characters) is shared by thousands of characters
  and says almost nothing, while the later bytes pick out the character; for a word, Chinese compounds are
  right-headed (全身麻醉 is a kind of 麻醉, 麻醉药 a kind of 药), so the last part carries the category.
  ``fusion_weights(n, "decreasing")`` gives the opposite order for the ablation in bench/bench_tokenizer.py.
* ``random``: what ``resize_token_embeddings`` does by itself (transformers samples new rows from a normal
  with the mean and covariance of the old rows).

Untied output heads get the same treatment on their own rows; tied models keep one matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

Init = Literal["fused", "mean", "random"]
INITS: tuple[str, ...] = ("fused", "mean", "random")


def fusion_weights(n: int, order: Literal["increasing", "decreasing"] = "increasing") -> torch.Tensor:
    """Weights of ``n`` sub-pieces for ``fused``: linear in position, summing to 1 (n=3: 1/6, 2/6, 3/6)."""
    import torch

    w = torch.arange(1, n + 1, dtype=torch.float64)
    if order == "decreasing":
        w = w.flip(0)
    return w / w.sum()


def combine(rows: torch.Tensor, method: Init, order: str = "increasing") -> torch.Tensor:
    """One new row from the sub-piece rows (``n x d``) by ``mean`` or ``fused``."""
    if method == "mean":
        return rows.double().mean(0).to(rows.dtype)
    w = fusion_weights(rows.shape[0], order).to(rows.device)
    return (w[:, None] * rows.double()).sum(0).to(rows.dtype)


def is_tied(model: PreTrainedModel) -> bool:
    """True when the output head shares the input embedding matrix."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def resize_and_init(
    model: PreTrainedModel,
    new_size: int,
    sub_pieces: dict[int, list[int]],
    method: Init = "mean",
    order: str = "increasing",
) -> dict:
    """Grow the embeddings (and an untied head) to ``new_size`` rows and initialise the new tokens' rows.

    Args:
        model: the base causal LM; rows below its current size are never changed.
        new_size: the extended tokenizer's length (``len(tokenizer)``).
        sub_pieces: new token id -> base token ids it replaces (``extend.read_new_tokens``).
        method: ``fused``, ``mean`` or ``random`` (see the module docstring).
        order: weight order for ``fused`` (``increasing`` is the default and the documented choice).

    Returns:
        Stats: old/new rows, whether the head is tied, how many rows were initialised.
    """
    import torch

    if method not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {method!r}")
    old_rows = model.get_input_embeddings().weight.shape[0]
    for new_id, sub in sub_pieces.items():
        if new_id >= max(new_size, old_rows) or not sub or max(sub) >= old_rows:
            raise ValueError(f"new token {new_id}: sub-pieces {sub} do not fit a model with {old_rows} rows")
    tied = is_tied(model)
    if new_size > old_rows:
        # mean_resizing=True is transformers' default: this *is* the "random" initialisation.
        model.resize_token_embeddings(new_size, mean_resizing=True)
    if method != "random":
        with torch.no_grad():
            matrices = [model.get_input_embeddings().weight]
            if not tied and model.get_output_embeddings() is not None:
                matrices.append(model.get_output_embeddings().weight)
            for w in matrices:
                for new_id, sub in sub_pieces.items():
                    w[new_id] = combine(w[sub], method, order)
    return {"old_rows": old_rows, "new_rows": model.get_input_embeddings().weight.shape[0], "tied": is_tied(model),
            "was_tied": tied, "initialised": len(sub_pieces), "init": method}
