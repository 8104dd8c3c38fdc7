"""The stage kinds a recipe can use: kind -> module holding ``Config`` and ``run(cfg, ctx)``.

Modules are imported only when a recipe uses them, so ``hypnos validate`` stays fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES: dict[str, str] = {
    # 1 data engine
    "generate": "hypnos.data.generate",
    "crossfilter": "hypnos.data.crossfilter",
    "dedup": "hypnos.data.dedup",
    "decontaminate": "hypnos.data.decontaminate",
    "deidentify": "hypnos.data.deidentify",
    "mix": "hypnos.data.mix",
    # 2 vocabulary extension
    "tokenizer": "hypnos.tokenizer.stage",
    # 3 training
    "pretrain": "hypnos.train.pretrain",
    "sft": "hypnos.train.sft",
    "reward": "hypnos.train.reward",
    "rejection_sampling": "hypnos.train.rejection_sampling",
    "dpo": "hypnos.train.dpo",
    # 4 evaluation
    "eval": "hypnos.eval.run",
    "report": "hypnos.eval.report",
}


def load_stage(kind: str) -> ModuleType:
    """The module implementing a stage kind (with ``Config`` and ``run``)."""
    if kind not in STAGES:
        raise KeyError(f"unknown stage kind {kind!r}; known kinds: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[kind])
