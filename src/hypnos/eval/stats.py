"""Confidence intervals shared by every evaluator: seeded percentile bootstrap over items, and paired
comparisons of two models over the same items (paired bootstrap; McNemar's exact test for accuracy)."""

from __future__ import annotations

from collections import Counter
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


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact (binomial) two-sided McNemar p-value of paired right/wrong outcomes."""
    from scipy.stats import binomtest

    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(stat: Callable[[np.ndarray], float], n: int, seed: int = 0, n_boot: int = N_BOOT,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """(value, low, high): ``stat(item indices)`` on all items and its percentile CI when the same
    resampled items are used for both models (``stat`` computes the difference)."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    return float(stat(np.arange(n))), float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def paired(output_type: str, rows_a: list[dict], rows_b: list[dict], seed: int = 0) -> dict:
    """Model a minus model b over the items both answered, from their prediction rows.

    Accuracy (multiple choice, rotation 0): difference with a paired bootstrap CI and McNemar's exact p.
    ROUGE-L (generation, judge): mean per-item difference, paired bootstrap CI. NER: F1 difference,
    bootstrap over sentences (the same sentences for both).
    """
    key = (lambda r: r["id"]) if output_type != "multiple_choice" else (lambda r: (r["id"], r.get("rotation", 0)))
    b_by = {key(r): r for r in rows_b}
    pairs = [(r, b_by[key(r)]) for r in rows_a if key(r) in b_by and r.get("rotation", 0) == 0]
    n = len(pairs)
    out: dict = {"n": n}
    if output_type == "multiple_choice":
        a = np.array([bool(x["correct"]) for x, _ in pairs])
        b = np.array([bool(y["correct"]) for _, y in pairs])
        d = a.astype(float) - b
        out.update({"metric": "accuracy", "mcnemar_p": mcnemar_p(a.tolist(), b.tolist()),
                    "discordant": [int((a & ~b).sum()), int((b & ~a).sum())]})
        value, lo, hi = paired_bootstrap(lambda ix: d[ix].mean(), n, seed)
    elif output_type == "ner":
        from hypnos.eval.ner import prf

        ga = [_counter(x["gold"]) for x, _ in pairs]
        pa, pb = [_counter(x["pred"]) for x, _ in pairs], [_counter(y["pred"]) for _, y in pairs]
        out["metric"] = "f1"
        value, lo, hi = paired_bootstrap(lambda ix: prf([ga[i] for i in ix], [pa[i] for i in ix])["f1"]
                                         - prf([ga[i] for i in ix], [pb[i] for i in ix])["f1"], n, seed)
    else:
        d = np.array([x["rougeL"] - y["rougeL"] for x, y in pairs], dtype=float)
        out["metric"] = "rougeL"
        value, lo, hi = paired_bootstrap(lambda ix: d[ix].mean(), n, seed)
    out.update({"diff": value, "ci": [lo, hi]})
    return out


def _counter(items: list) -> Counter:
    return Counter(tuple(x) for x in items)
