"""Chinese text helpers shared by dedup, decontamination and parsing.

``normalize`` makes two texts that differ only in width, case, spacing or punctuation equal:
full-width ``，`` and ASCII ``,`` both vanish, ``ＡＢＣ`` becomes ``abc``. ``record_text`` picks the
text that identifies a record (its question, not its answer) for every record kind.
"""

from __future__ import annotations

import re
import unicodedata

# \W in Python's unicode regexes is everything that is not a letter, digit or underscore: spaces,
# CJK and ASCII punctuation, symbols. Han characters count as letters, so they stay.
_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """NFKC, lowercase, then drop whitespace, punctuation and symbols.

    Args:
        text: any text.

    Returns:
        The normalised text, e.g. ``"患者，男 ５５岁。"`` -> ``"患者男55岁"``.
    """
    if not unicodedata.is_normalized("NFKC", text):  # the quick check is 2x faster than normalising anyway
        text = unicodedata.normalize("NFKC", text)
    return _NON_WORD.sub("", text.lower())


def char_ngrams(text: str, n: int) -> list[str]:
    """Overlapping character n-grams; a text shorter than ``n`` is its own single gram (if non-empty)."""
    if len(text) <= n:
        return [text] if text else []
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def record_text(row: dict, with_answer: bool = False) -> str:
    """The identifying text of a record of any kind.

    qa: input + instruction (+ output); mcq: question + options (+ explanation); ranked: question;
    dialogue: the human turns (+ the rest); text/ner: the text.

    Args:
        row: a record as a dict (any kind from docs/records.md).
        with_answer: also include the answer part (output, explanation, assistant turns).

    Raises:
        ValueError: the row has none of the known text fields.
    """
    if "instruction" in row:
        parts = [row.get("input", ""), row["instruction"]]
        if with_answer:
            parts.append(row.get("output", ""))
    elif "question" in row:
        parts = [row["question"]]
        opts = row.get("options")
        if isinstance(opts, dict):
            parts += [f"{k}{v}" for k, v in opts.items()]
        if with_answer:
            parts += [row.get("explanation", "")] + list(row.get("responses", [])[:1])
    elif "conversations" in row:
        parts = [t.get("value", "") for t in row["conversations"]
                 if with_answer or t.get("from") in ("human", "user")]
    elif "text" in row:
        parts = [row["text"]]
    else:
        raise ValueError(f"no text field (instruction, question, conversations or text) in keys {sorted(row)}")
    return "\n".join(p for p in parts if p)
