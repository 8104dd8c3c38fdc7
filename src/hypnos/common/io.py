"""Reading and writing record files: JSONL, JSON and CSV, with errors that name the file and line.

Real Chinese medical data arrives as UTF-8 (sometimes with a BOM) or GBK/GB18030, as JSONL, a JSON
array, or CSV. Every reader here reports a bad row as ``file:line: reason``; it either stops
(``on_error="raise"``) or writes the row to a quarantine file next to the output
(``on_error="quarantine"``). No row is ever dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OnError = Literal["raise", "quarantine"]


class DataError(ValueError):
    """A bad input row or file, always reported as ``file:line: reason``."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass
class Row:
    """One parsed row with where it came from."""

    data: dict[str, Any]
    path: str
    line: int


@dataclass
class ReadReport:
    """What a read saw: rows read and rows rejected (with reasons), for manifests."""

    read: int = 0
    rejected: list[DataError] = field(default_factory=list)

    @property
    def reasons(self) -> dict[str, int]:
        # The part before the first ":" names the kind of problem; the rest is row detail.
        return dict(Counter(err.reason.split(":")[0] for err in self.rejected))


def read_text(path: str | Path) -> str:
    """Read a text file as UTF-8 (BOM stripped), falling back to GB18030, a superset of GBK."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError as e:
        # Find the line so the user can look at it.
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, line, "not valid UTF-8 or GB18030 text") from None


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".json":
        # Some ".json" files are really JSONL: one object per line.
        return "json" if text.lstrip()[:1] == "[" else "jsonl"
    raise DataError(path, None, f"unknown file format {suffix!r} (expected .jsonl, .json, .csv or .tsv)")


def iter_rows(path: str | Path) -> Iterator[Row | DataError]:
    """Yield each row of a JSONL/JSON/CSV file, or a DataError for each row that cannot be parsed."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "file not found")
    text = read_text(path)
    fmt = _detect_format(path, text)
    if fmt == "jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield DataError(path, i, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield DataError(path, i, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield Row(obj, str(path), i)
    elif fmt == "json":
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON: {e.msg}") from None
        if not isinstance(arr, list):
            raise DataError(path, 1, "expected a JSON array of objects")
        # Line numbers in a JSON array: report the element index (1-based) as the "line".
        for i, obj in enumerate(arr, 1):
            if not isinstance(obj, dict):
                yield DataError(path, i, f"element {i}: expected a JSON object")
                continue
            yield Row(obj, str(path), i)
    else:
        delim = "\t" if fmt == "tsv" else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
        header: list[str] | None = None
        for rec in reader:
            line = reader.line_num
            if header is None:
                header = [h.strip() for h in rec]
                continue
            if not any(c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                yield DataError(path, line, f"expected {len(header)} columns, got {len(rec)}")
                continue
            yield Row(dict(zip(header, rec)), str(path), line)


def quarantine_path(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where rejected rows of ``path`` go: ``<out_dir or its folder>/<name>.quarantine.jsonl``."""
    p = Path(path)
    return Path(out_dir or p.parent) / f"{p.name}.quarantine.jsonl"


def write_quarantine(errors: list[DataError], qpath: Path) -> None:
    """Append rejected rows, each with its file, line and reason, to a quarantine JSONL."""
    qpath.parent.mkdir(parents=True, exist_ok=True)
    with qpath.open("a", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps({"file": e.path, "line": e.line, "reason": e.reason}, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (temp file then rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row and flush it to disk: used for results that cost money to recompute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Read an append-only JSONL log, ignoring only a torn final line (a kill mid-write)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # torn last line from a killed writer; the request will be re-done
            raise DataError(path, i + 1, "corrupt line in the middle of an append-only log") from None
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def fingerprint_path(path: str | Path) -> str:
    """A content fingerprint of a file or a directory (all files under it, sorted)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
