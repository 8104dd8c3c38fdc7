"""Typed records: instruction QA, dialogue, multiple choice, ranked answers, NER spans, text.

The formats are documented in docs/records.md. Alpaca rows (instruction/input/output) are QA rows;
ShareGPT rows (conversations with from/value) are dialogue rows. ``read_records`` validates every
row and reports each bad one as ``file:line: reason``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hypnos.common.io import (
    DataError,
    OnError,
    ReadReport,
    Row,
    current_policy,
    iter_rows,
    quarantine_path,
    write_quarantine,
)


class Record(BaseModel):
    """Base of all records: an id, a source, and free-form ``meta`` for importer leftovers."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    source: str = ""
    meta: dict = Field(default_factory=dict)

    def to_dict(self) -> dict:
        """The record as a plain dict, without an empty ``meta``."""
        d = self.model_dump()
        if not d.get("meta"):
            d.pop("meta", None)
        return d


class QA(Record):
    """Instruction QA (Alpaca compatible). Case vignettes go in ``input``."""

    instruction: str = Field(min_length=1)
    input: str = ""
    output: str = ""
    category: str = ""
    kind: str = "knowledge"

    def prompt(self) -> str:
        """The user turn: vignette (if any) then the question."""
        return f"{self.input}\n{self.instruction}" if self.input else self.instruction


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # ShareGPT speaker names; "user"/"assistant" are accepted as aliases by the importer.
    from_: Literal["system", "human", "gpt"] = Field(alias="from")
    value: str

    def model_dump(self, **kw):  # keep the ShareGPT key name on the way out
        return super().model_dump(by_alias=True, **kw)


class Dialogue(Record):
    """Multi-turn dialogue (ShareGPT compatible)."""

    conversations: list[Turn] = Field(min_length=2)
    category: str = ""

    @model_validator(mode="after")
    def _has_answer(self):
        if not any(t.from_ == "gpt" for t in self.conversations):
            raise ValueError("dialogue has no assistant ('gpt') turn")
        return self

    def to_messages(self) -> list[dict]:
        """OpenAI-style chat messages."""
        role = {"system": "system", "human": "user", "gpt": "assistant"}
        return [{"role": role[t.from_], "content": t.value} for t in self.conversations]

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["conversations"] = [t.model_dump() for t in self.conversations]
        return d


LETTERS = "ABCDEFGH"


class MCQ(Record):
    """Multiple choice with one correct letter."""

    question: str = Field(min_length=1)
    options: dict[str, str]
    answer: str
    explanation: str = ""
    category: str = ""
    difficulty: str = ""
    split: str = "test"

    @model_validator(mode="after")
    def _answer_is_option(self):
        keys = list(self.options)
        if len(keys) < 2 or keys != list(LETTERS[: len(keys)]):
            raise ValueError(f"options must be keyed A, B, C... in order, got {keys}")
        if self.answer not in self.options:
            raise ValueError(f"answer {self.answer!r} is not one of the options {keys}")
        return self


class Ranked(Record):
    """Answers to one question ranked best first (a preference pair is two answers)."""

    question: str = Field(min_length=1)
    responses: list[str] = Field(min_length=2)
    labels: list[str] = Field(default_factory=list)
    category: str = ""

    @model_validator(mode="after")
    def _labels_match(self):
        if self.labels and len(self.labels) != len(self.responses):
            raise ValueError(f"{len(self.labels)} labels for {len(self.responses)} responses")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """All ordered (better, worse) pairs: the pairwise ranking loss uses every one."""
        r = self.responses
        return [(r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]


class Span(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = Field(ge=0)
    end: int
    type: str
    text: str


class NER(Record):
    """A sentence with typed entity spans (end exclusive)."""

    text: str = Field(min_length=1)
    entities: list[Span] = Field(default_factory=list)

    @model_validator(mode="after")
    def _spans_match_text(self):
        for s in self.entities:
            if not (0 <= s.start < s.end <= len(self.text)) or self.text[s.start : s.end] != s.text:
                raise ValueError(f"span {s.start}:{s.end} is {self.text[s.start:s.end]!r}, not {s.text!r}")
        return self


class Text(Record):
    """A corpus passage for tokenizer training and continued pretraining."""

    text: str = Field(min_length=1)
    title: str = ""
    domain: str = ""


KINDS: dict[str, type[Record]] = {
    "qa": QA, "dialogue": Dialogue, "mcq": MCQ, "ranked": Ranked, "ner": NER, "text": Text,
}


def detect_kind(row: dict) -> str:
    """Guess a row's record kind from its keys."""
    if "conversations" in row:
        return "dialogue"
    if "options" in row:
        return "mcq"
    if "responses" in row:
        return "ranked"
    if "entities" in row:
        return "ner"
    if "instruction" in row:
        return "qa"
    if "text" in row:
        return "text"
    raise ValueError(f"cannot tell the record kind from keys {sorted(row)}")


def _reason(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "row"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {err['msg']}{more}"


def parse_row(row: Row, kind: str | None = None) -> Record:
    """Validate one row into its record type, raising DataError(file, line, reason)."""
    try:
        k = kind or detect_kind(row.data)
        return KINDS[k].model_validate(row.data)
    except ValidationError as e:
        raise DataError(row.path, row.line, _reason(e)) from None
    except (ValueError, KeyError) as e:
        raise DataError(row.path, row.line, str(e)) from None


def read_records(
    path: str | Path,
    kind: str | None = None,
    on_error: OnError | None = None,
    quarantine_dir: str | Path | None = None,
    report: ReadReport | None = None,
    encoding: str | None = None,
) -> list[Record]:
    """Read and validate every row of a file.

    Args:
        path: a .jsonl/.json/.csv file in one of the record formats.
        kind: the record kind (qa, dialogue, mcq, ranked, ner, text); guessed per row if None.
        on_error: "raise" stops at the first bad row; "quarantine" writes bad rows to
            ``<name>.quarantine.jsonl`` (in ``quarantine_dir`` or next to the file) and goes on.
            Default: the running stage's ``on_error`` (inside a recipe), else "raise".
        quarantine_dir: where quarantine files go (inside a recipe stage without one: the stage's
            quarantine folder, written by the runner).
        report: filled with counts of rows read and rejected.
        encoding: the file's text encoding (default: the stage's ``encoding:``, else detected).

    Returns:
        The valid records, in file order.
    """
    report = report if report is not None else ReadReport()
    policy = current_policy()
    on_error = on_error or (policy.on_error if policy else "raise")
    out: list[Record] = []
    bad: list[DataError] = []
    for item in iter_rows(path, encoding=encoding, on_error="raise"):
        try:
            if isinstance(item, DataError):
                raise item
            out.append(parse_row(item, kind))
        except DataError as e:
            if on_error == "raise":
                raise
            bad.append(e)
    report.read += len(out) + len(bad)
    report.rejected.extend(bad)
    if bad and policy is not None and quarantine_dir is None:
        for e in bad:
            policy.reject(e)  # the runner writes them to the stage's quarantine folder
    elif bad:
        write_quarantine(bad, quarantine_path(path, quarantine_dir))
    return out
