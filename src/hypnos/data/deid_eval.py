"""The independent de-identification evaluation set, and per-type precision/recall on it.

The set lives in ``tests/deid/*.txt``: clinical sentences written and labelled by hand, one per line,
with the personal information marked inline as ``{type:exact text}``. Offsets are computed here from
the markup, so a label can never point at the wrong characters. ``dev`` is the part the scrubber was
tuned on. The held-out parts were each written before the scrubber was run on them and evaluated once
("first look", reported in docs/deidentify.md); each was written before reacting to the previous
one's errors, so the first-look numbers of all five are honest estimates on unseen text (part 5 is
names-focused: names after 由/经/请, in lists, in parentheses, with surnames that are common words). After its
first look a part counts as seen (fixes may have followed), so today's numbers on it are regression
figures, not estimates.

Run: ``hypnos data deid-eval`` (every part), ``--part heldout4``, ``--set my.txt``, ``--errors``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hypnos.common.io import DataError

TYPES = ("name", "hospital", "id", "phone", "record", "address", "dob", "email", "age")
SET_DIR = Path(__file__).resolve().parents[3] / "tests" / "deid"
"""Where the set lives in a source checkout (the CLI's default)."""
PARTS = ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8",
         "heldout9", "heldout10", "heldout11", "heldout12", "heldout13", "heldout14", "heldout15", "heldout16")

_MARK = re.compile(r"\{(?P<type>[a-z]+):(?P<text>[^{}]+)\}")


@dataclass(frozen=True)
class GoldSpan:
    start: int
    end: int
    type: str
    text: str


@dataclass
class Example:
    """One labelled sentence; ``where`` is ``file:line`` for error messages and reports."""

    text: str
    spans: list[GoldSpan]
    genre: str
    where: str
    part: str = ""
    extra: dict = field(default_factory=dict)


def parse_line(line: str, where: str = "<line>") -> tuple[str, list[GoldSpan]]:
    """Plain text and gold spans of one marked-up line; a stray brace or unknown type is an error."""
    text, spans, pos = "", [], 0
    for m in _MARK.finditer(line):
        text += line[pos : m.start()]
        kind, value = m.group("type"), m.group("text")
        if kind not in TYPES:
            raise DataError(where.rsplit(":", 1)[0], int(where.rsplit(":", 1)[1]) if ":" in where else None,
                            f"unknown PII type {kind!r} (known: {', '.join(TYPES)})")
        spans.append(GoldSpan(len(text), len(text) + len(value), kind, value))
        text += value
        pos = m.end()
    text += line[pos:]
    if "{" in text or "}" in text:
        path, _, ln = where.rpartition(":")
        raise DataError(path or where, int(ln) if ln.isdigit() else None, "unbalanced label braces")
    return text, spans


def load_set(path: str | Path, part: str = "") -> list[Example]:
    """Every labelled sentence of one set file (comments and blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "evaluation set not found")
    out, genre = [], ""
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.startswith("## "):
            genre = line[3:].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        text, spans = parse_line(line, f"{path}:{n}")
        out.append(Example(text, spans, genre, f"{path}:{n}", part or path.stem))
    return out


def load_parts(parts: Iterable[str] = PARTS, set_dir: Path = SET_DIR) -> dict[str, list[Example]]:
    return {p: load_set(set_dir / f"{p}.txt", p) for p in parts}


Predict = Callable[[str], Iterable]  # text -> spans with .start/.end/.type


def _blank() -> dict[str, int]:
    return {"gold": 0, "pred": 0, "tp_exact": 0, "tp_overlap": 0, "pred_ok_exact": 0, "pred_ok_overlap": 0}


def score(predict: Predict, examples: list[Example]) -> dict[str, dict[str, float]]:
    """Per-type (and "all") precision and recall, exact-span and overlap.

    Exact: a gold span is found when a predicted span of the same type has the same start and end.
    Overlap: found when a predicted span of the same type shares at least one character with it; a
    predicted span is correct when it overlaps a gold span of its type. Precision counts predicted
    spans, recall gold spans, so one long prediction covering two names counts once on each side.
    """
    stats: dict[str, dict[str, int]] = {}

    def bump(kind: str, key: str) -> None:
        for k in (kind, "all"):
            stats.setdefault(k, _blank())[key] += 1

    for ex in examples:
        pred = [(p.start, p.end, p.type) for p in predict(ex.text)]
        for g in ex.spans:
            bump(g.type, "gold")
            if any(t == g.type and s == g.start and e == g.end for s, e, t in pred):
                bump(g.type, "tp_exact")
            if any(t == g.type and min(e, g.end) > max(s, g.start) for s, e, t in pred):
                bump(g.type, "tp_overlap")
        for s, e, t in pred:
            bump(t, "pred")
            if any(t == g.type and s == g.start and e == g.end for g in ex.spans):
                bump(t, "pred_ok_exact")
            if any(t == g.type and min(e, g.end) > max(s, g.start) for g in ex.spans):
                bump(t, "pred_ok_overlap")
    out: dict[str, dict[str, float]] = {}
    for k, s in stats.items():
        r = dict(s)
        for mode in ("exact", "overlap"):
            r[f"precision_{mode}"] = s[f"pred_ok_{mode}"] / s["pred"] if s["pred"] else 1.0
            r[f"recall_{mode}"] = s[f"tp_{mode}"] / s["gold"] if s["gold"] else 1.0
        out[k] = r
    return out


def errors(predict: Predict, examples: list[Example]) -> list[tuple[str, str, str, str]]:
    """(where, "miss"|"false", type, text) for every gold span not overlapped and every wrong prediction."""
    out = []
    for ex in examples:
        pred = list(predict(ex.text))
        for g in ex.spans:
            if not any(p.type == g.type and min(p.end, g.end) > max(p.start, g.start) for p in pred):
                out.append((ex.where, "miss", g.type, g.text))
        for p in pred:
            if not any(p.type == g.type and min(p.end, g.end) > max(p.start, g.start) for g in ex.spans):
                out.append((ex.where, "false", p.type, ex.text[p.start : p.end]))
    return out
