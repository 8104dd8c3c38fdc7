"""Row counts, balance and length of a record file, for ``hypnos data stats``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypnos.common.io import DataError, iter_rows
from hypnos.common.records import detect_kind
from hypnos.data.text import record_text

BALANCE_FIELDS = ("category", "kind", "difficulty", "split", "domain", "labels")


def file_stats(path: str | Path, encoding: str | None = None) -> dict:
    """Summary of one record file.

    Returns:
        ``{"rows", "kind", "mean_chars", "balance": {field: {value: count}}}``: ``kind`` is the
        record kind (or "mixed"), ``mean_chars`` the mean length of the full record text (question
        and answer), ``balance`` counts the values of category/kind/difficulty/split/domain/labels
        where rows have them (each label of a ``labels`` list counts once), most frequent first.

    Raises:
        DataError: a row that is not JSON, has no text field or a field of the wrong type, with its file and line.
    """
    rows, chars = 0, 0
    kinds: Counter = Counter()
    balance: dict[str, Counter] = {f: Counter() for f in BALANCE_FIELDS}
    for item in iter_rows(path, encoding=encoding, check_types=True):  # a wrong-typed field is a file:line error, not a TypeError
        if isinstance(item, DataError):
            raise item
        try:
            kinds[detect_kind(item.data)] += 1
            chars += len(record_text(item.data, with_answer=True))
        except ValueError as e:
            raise DataError(item.path, item.line, str(e)) from None
        rows += 1
        for f in BALANCE_FIELDS:
            v = item.data.get(f)
            if isinstance(v, list):
                balance[f].update(str(x) for x in v)
            elif v not in (None, ""):
                balance[f][str(v)] += 1
    kind = next(iter(kinds)) if len(kinds) == 1 else ("mixed" if kinds else "empty")
    return {"rows": rows, "kind": kind, "mean_chars": chars / rows if rows else 0.0,
            "balance": {f: dict(c.most_common()) for f, c in balance.items() if c}}
