"""Confidence intervals shared by every evaluator: seeded percentile bootstrap over items."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 1000


def bootstrap_ci(values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT, alpha: float = 0.05,
                 stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over items (resampled with replacement, seeded).

    Returns:
        (low, high); (nan, nan) for no items.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = np.array([stat(x[i]) for i in idx]) if stat is not np.mean else x[idx].mean(axis=1)
    return float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def mean_ci(values: Sequence[float], seed: int = 0) -> dict:
    """``{"mean", "ci": [low, high], "n"}`` of per-item values."""
    lo, hi = bootstrap_ci(values, seed)
    return {"mean": float(np.mean(values)) if len(values) else float("nan"), "ci": [lo, hi], "n": len(values)}


def rates_ci(outcomes: Sequence[str], labels: Sequence[str], seed: int = 0) -> dict:
    """Share of each label among ``outcomes`` with a bootstrap CI each, e.g. win/tie/loss."""
    return {lab: mean_ci([float(o == lab) for o in outcomes], seed) for lab in labels}
