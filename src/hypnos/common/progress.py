"""Progress bars for long steps (tqdm on stderr; quiet when HYPNOS_NO_PROGRESS=1, e.g. in CI logs)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _quiet() -> bool:
    return os.environ.get("HYPNOS_NO_PROGRESS") == "1"


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A progress bar to ``update()`` by hand and ``set_postfix()`` with live counts."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=_quiet())


def track(items: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterable[T]:
    """Wrap an iterable in a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=_quiet())
