"""Reading and writing record files: JSONL, JSON and CSV, with errors that name the file and line.

Real Chinese medical data arrives as UTF-8 (sometimes with a BOM) or GBK/GB18030, as JSONL, a JSON
array, or CSV. Files are read line by line in one encoding: the one declared (``encoding=``, or a
stage's ``encoding:`` field), else the one detected on a sample (UTF-8 when most lines decode as
UTF-8, else charset-normalizer's guess). A line that does not decode is a bad row of its own; one bad
byte never switches the encoding of the whole file. JSONL is split on ``\\n`` only, so U+2028 or U+0085
inside a JSON string (``json.dumps(ensure_ascii=False)`` writes them raw) never splits a row. A row
longer than ``max_row_bytes`` is rejected without being read whole.

Every reader reports a bad row as ``file:line: reason``; it either stops (``on_error="raise"``) or
writes the row, with its raw bytes, to a quarantine file (``on_error="quarantine"``). No row is ever
dropped silently. Inside a recipe stage the runner sets a ``ReadPolicy`` (the stage's ``on_error`` and
``encoding``), which every ``iter_rows`` call in that stage follows.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import contextvars
import csv
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

OnError = Literal["raise", "quarantine"]

MAX_ROW_BYTES = int(os.environ.get("HYPNOS_MAX_ROW_BYTES") or 16 << 20)
"""Longest row (line, CSV record) accepted; longer ones are bad rows. ``HYPNOS_MAX_ROW_BYTES`` overrides."""
SAMPLE_BYTES = 1 << 20  # how much of a file encoding detection looks at
RAW_KEEP = 4096  # raw bytes kept with a bad row (quarantine file, error) beyond which only a preview is kept
_GB = {"gbk", "gb2312", "gb18030", "cp936", "hz"}  # GB18030 is a superset of all of them


class DataError(ValueError):
    """A bad input row or file, always reported as ``file:line: reason``.

    ``raw`` holds the row's bytes (at most ``RAW_KEEP``) when the row could not even be decoded or parsed.
    """

    def __init__(self, path: str | Path, line: int | None, reason: str, raw: bytes | None = None):
        self.path, self.line, self.reason, self.raw = str(path), line, reason, raw
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # picklable across processes (DataLoader workers, multiprocessing)
        return (DataError, (self.path, self.line, self.reason, self.raw))


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


# ---- the policy a recipe stage reads under ---------------------------------------------------------------

@dataclass
class ReadPolicy:
    """How ``iter_rows`` treats bad rows inside one recipe stage (set by the runner).

    With ``on_error="quarantine"`` bad rows are not yielded: they are kept here (by file and line) and the
    runner writes them to ``<stage>/quarantine/`` and counts them in the manifest. ``exclude`` holds rows a
    stage itself rejected (a DataError it raised) that a re-run of the stage must skip.
    """

    on_error: OnError = "raise"
    encoding: str | None = None
    own_dir: str | None = None  # the run folder: files under it are our own outputs, always UTF-8
    check_types: bool = True
    rows: dict[str, int] = field(default_factory=dict)  # file -> rows seen (good and bad), last full read
    bad: dict[str, dict[int | None, DataError]] = field(default_factory=dict)  # file -> line -> error
    exclude: set[tuple[str, int]] = field(default_factory=set)

    def reject(self, err: DataError) -> None:
        self.bad.setdefault(err.path, {})[err.line] = err


_POLICY: contextvars.ContextVar[ReadPolicy | None] = contextvars.ContextVar("hypnos_read_policy", default=None)


@contextlib.contextmanager
def read_policy(policy: ReadPolicy) -> Iterator[ReadPolicy]:
    """Make every ``iter_rows`` / ``read_records`` in this block follow ``policy`` (the runner's job)."""
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def current_policy() -> ReadPolicy | None:
    """The policy of the stage running now, if any."""
    return _POLICY.get()


# ---- encodings ----------------------------------------------------------------------------------------

def _canonical(encoding: str, path: str | Path) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(path, None, f"unknown encoding {encoding!r}") from None
    return "gb18030" if name in _GB else name


def _declared(encoding: str, path: str | Path, start: bytes) -> str:
    """A declared encoding; UTF-8 declared for a file with a BOM (Excel's "CSV UTF-8") drops the BOM."""
    enc = _canonical(encoding, path)
    return "utf-8-sig" if enc == "utf-8" and start.startswith(codecs.BOM_UTF8) else enc


def _is_binary(sample: bytes) -> bool:
    if not sample:
        return False
    # C0 controls other than \t \n \f \r and ESC: text has next to none, binary data ~10 %
    controls = sum(sample.count(bytes([b])) for b in (*range(9), 11, *range(14, 27), *range(28, 32)))
    return controls / len(sample) > 0.05


def detect_encoding(path: str | Path, sample: bytes | None = None) -> str:
    """The encoding of a text file, decided on a sample; never a guess from one bad byte.

    A UTF-8 BOM means UTF-8. Otherwise, if at least half of the sample's non-ASCII lines are valid UTF-8,
    the file is UTF-8 (the bad ones are bad rows); else charset-normalizer names the encoding (any GB
    family answer becomes GB18030, their superset).

    Raises:
        DataError: a UTF-16/32 file or binary data, as a file-level error.
    """
    if sample is None:
        with open(path, "rb") as f:
            sample = f.read(SAMPLE_BYTES)
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(path, None, "UTF-16/UTF-32 text is not supported; convert it to UTF-8 "
                        "(iconv -f UTF-16 -t UTF-8)")
    if _is_binary(sample):
        raise DataError(path, None, "binary data, not a text record file")
    lines = sample.split(b"\n")
    if len(sample) == SAMPLE_BYTES:  # the sample may end mid-character
        # a one-line file (``json.dump`` writes a whole array on one line) keeps its line, cut back to the
        # last whole character, or it would read as undecodable in every encoding
        lines = lines[:-1] if len(lines) > 1 else [_whole_characters(lines[0])]
    non_ascii = [ln for ln in lines if not ln.isascii()]
    if not non_ascii:
        return "utf-8"
    ok = sum(_decodes(ln, "utf-8") for ln in non_ascii)
    if ok * 2 >= len(non_ascii):
        return "utf-8"
    from charset_normalizer import from_bytes

    # charset-normalizer drops every encoding a sample does not decode in, so one bad pair in a GBK sample
    # would make it answer a single-byte code page. Ask it about the lines that do decode as GB18030
    # (Big5 decodes as GB18030 too, as mojibake; its language model tells them apart).
    gb = [ln for ln in non_ascii if _decodes(ln, "gb18030")]
    if len(gb) * 2 >= len(non_ascii):
        best = from_bytes(b"\n".join(gb)).best()
        name = _canonical(best.encoding, path) if best is not None else "gb18030"
        return name if name in ("big5", "big5hkscs", "cp950") else "gb18030"
    best = from_bytes(b"\n".join(non_ascii)).best()
    if best is None:
        raise DataError(path, None, "binary data or an unknown text encoding; declare it with `encoding:`")
    return _canonical(best.encoding, path)


def _whole_characters(raw: bytes) -> bytes:
    """``raw`` without a multi-byte character cut at its end (UTF-8 or GB18030: at most 3 bytes)."""
    for enc in ("utf-8", "gb18030"):  # UTF-8 first: cut UTF-8 often still decodes as GB18030 mojibake
        for k in range(4):
            if _decodes(raw[: len(raw) - k], enc):
                return raw[: len(raw) - k]
    return raw


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


def _decode(raw: bytes, encoding: str, path: str | Path, line: int) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        name = "UTF-8" if encoding.startswith("utf-8") else encoding
        raise DataError(path, line, f"not valid {name} text: byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                        f"(declare the file's `encoding:` if it is not {name})", raw[:RAW_KEEP]) from None


def _raw_lines(f: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None, int, bytes]]:
    """(line number, bytes without the line end, size, preview) for each ``\\n``-terminated line.

    A line over ``max_bytes`` is skipped in chunks, never held whole in memory: its bytes are None and
    the preview holds its first ``RAW_KEEP`` bytes."""
    n = 0
    while True:
        chunk = f.readline(max_bytes + 1)
        if not chunk:
            return
        n += 1
        if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
            size = len(chunk)
            while True:  # skip the rest of this line
                more = f.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    size -= more.endswith(b"\n")  # the line's size without its line end
                    break
            yield n, None, size, chunk[:RAW_KEEP]
            continue
        chunk = chunk[:-1] if chunk.endswith(b"\n") else chunk
        yield n, (chunk[:-1] if chunk.endswith(b"\r") else chunk), len(chunk), b""


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """A whole text file (plain-text corpora), in its declared or detected encoding (BOM stripped).

    Raises:
        DataError: a byte that is not valid in that encoding, with its line.
    """
    path = Path(path)
    raw = path.read_bytes()
    enc = _declared(encoding, path, raw) if encoding else detect_encoding(path, raw[:SAMPLE_BYTES])
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        start, end = raw.rfind(b"\n", 0, e.start) + 1, raw.find(b"\n", e.start)
        _decode(raw[start : end if end >= 0 else len(raw)], enc, path, raw[: e.start].count(b"\n") + 1)
        raise  # not reached: _decode raised for that line


# ---- rows ---------------------------------------------------------------------------------------------

def _detect_format(path: Path, first: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".json":
        # Some ".json" files are really JSONL: one object per line.
        return "json" if first.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[" else "jsonl"
    raise DataError(path, None, f"unknown file format {suffix!r} (expected .jsonl, .json, .csv or .tsv)")


_TEXT_FIELDS = ("instruction", "input", "output", "question", "text", "explanation", "title", "category")


def type_problem(data: dict) -> str | None:
    """Why a row's well-known fields have the wrong JSON type (``None`` when they are fine).

    Only fields whose type every record kind and importer agrees on are checked, so stages that read raw
    public formats keep working; the full check of a record is ``hypnos.common.records.parse_row``.
    """
    for k in _TEXT_FIELDS:
        v = data.get(k)
        if v is not None and not isinstance(v, str):
            return f"{k}: expected text, got {type(v).__name__}"
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, dict):
        return f"meta: expected an object, got {type(meta).__name__}"
    conv = data.get("conversations")
    if conv is not None and not (isinstance(conv, list) and all(
            isinstance(t, dict) and isinstance(t.get("value", ""), str) for t in conv)):
        return "conversations: expected a list of {from, value} objects with text values"
    for k in ("responses", "labels"):
        v = data.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return f"{k}: expected a list of texts"
    opts = data.get("options")
    if isinstance(opts, dict) and not all(isinstance(x, str) for x in opts.values()):
        return "options: expected text values"
    return None


def iter_rows(path: str | Path, encoding: str | None = None, on_error: OnError | None = None,
              max_row_bytes: int | None = None, check_types: bool | None = None) -> Iterator[Row | DataError]:
    """Yield each row of a JSONL/JSON/CSV/TSV file, or a DataError for each row that cannot be used.

    Args:
        path: the file.
        encoding: its text encoding; detected when None (see ``detect_encoding``).
        on_error: "raise" yields bad rows as DataErrors (the caller raises or collects them);
            "quarantine" hands them to the current ``ReadPolicy`` instead. Default: the policy's, else raise.
        max_row_bytes: longest row accepted (default ``MAX_ROW_BYTES``).
        check_types: also reject rows whose well-known fields have the wrong type (``type_problem``).
            Default: on inside a recipe stage, off otherwise (importers check rows themselves).

    Raises:
        DataError: a problem with the whole file (not found, unknown format or encoding, binary data,
            a broken JSON array), as ``file: reason`` or ``file:line: reason``.
    """
    path = Path(path)
    policy = _POLICY.get()
    on_error = on_error or (policy.on_error if policy else "raise")
    if on_error == "quarantine" and policy is None:
        on_error = "raise"  # nobody to hand bad rows to: the caller collects the yielded errors
    check = check_types if check_types is not None else policy is not None and policy.check_types
    if encoding is None and policy is not None and policy.encoding and not _under(path, policy.own_dir):
        encoding = policy.encoding  # a stage's `encoding:` is about its inputs, not earlier stages' outputs
    limit = max_row_bytes or MAX_ROW_BYTES
    if not path.is_file():
        raise DataError(path, None, "is a directory, not a record file" if path.is_dir() else "file not found")
    excluded = {ln for p, ln in policy.exclude if p == str(path)} if policy else set()
    seen = 0
    with path.open("rb") as f:
        sample = f.read(SAMPLE_BYTES)
        f.seek(0)
        fmt = _detect_format(path, sample)
        enc = _declared(encoding, path, sample) if encoding else detect_encoding(path, sample)
        if fmt == "json":
            items: Iterator[Row | DataError] = _json_array(path, f, enc)
        elif fmt == "jsonl":
            items = _jsonl(path, f, enc, limit)
        else:
            items = _csv(path, f, enc, limit, "\t" if fmt == "tsv" else ",")
        for item in items:
            seen += 1
            if item.line in excluded:
                continue  # rejected by the stage itself on an earlier try; already quarantined
            if check and isinstance(item, Row) and (why := type_problem(item.data)):
                item = DataError(path, item.line, why)
            if isinstance(item, DataError) and on_error == "quarantine":
                policy.reject(item)
                continue
            yield item
    if policy is not None:
        policy.rows[str(path)] = seen


def _under(path: Path, folder: str | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _jsonl(path: Path, f: IO[bytes], enc: str, limit: int) -> Iterator[Row | DataError]:
    for i, raw, size, preview in _raw_lines(f, limit):
        if raw is None:
            yield DataError(path, i, f"row is {size:,} bytes, over the {_mib(limit)} row limit "
                            f"(HYPNOS_MAX_ROW_BYTES)", preview)
            continue
        if i == 1 and enc == "utf-8-sig":
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if not raw.strip():
            continue
        try:
            text = _decode(raw, "utf-8" if enc == "utf-8-sig" else enc, path, i)
        except DataError as e:
            yield e
            continue
        try:
            obj = _DECODER.decode(text)
        except json.JSONDecodeError as e:
            yield DataError(path, i, f"invalid JSON: {e.msg} at column {e.colno}", raw[:RAW_KEEP])
            continue
        except RecursionError:
            yield DataError(path, i, "invalid JSON: nested too deeply", raw[:RAW_KEEP])
            continue
        except ValueError as e:  # NaN / Infinity
            yield DataError(path, i, f"invalid JSON: {e}", raw[:RAW_KEEP])
            continue
        if not isinstance(obj, dict):
            yield DataError(path, i, f"expected a JSON object, got {type(obj).__name__}", raw[:RAW_KEEP])
            continue
        if _SURROGATE_ESCAPE.search(raw) and not _encodable(obj):
            yield DataError(path, i, "invalid JSON: a lone surrogate escape (\\ud800-\\udfff) is not text",
                            raw[:RAW_KEEP])
            continue
        yield Row(obj, str(path), i)


# "\ud83d\ude00" (an escaped emoji) is fine; "\ud800" alone decodes to a str that cannot be written as UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (write null, or the number as text)")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # one decoder: json.loads(..., kw) builds one per call


def _encodable(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _json_array(path: Path, f: IO[bytes], enc: str) -> Iterator[Row | DataError]:
    """A JSON array of objects; each element's "line" is the line it starts on."""
    raw = f.read()
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, line, f"not valid {enc} text: byte 0x{raw[e.start]:02x} (a JSON array cannot be "
                        "read in part; fix the byte or declare the file's `encoding:`)") from None
    text = text.removeprefix("\ufeff")
    dec = _DECODER
    maybe_surrogates = re.search(r"\\u[dD][89a-fA-F]", text) is not None
    pos = len(text) - len(text.lstrip())
    if text[pos:pos + 1] != "[":
        raise DataError(path, 1, "expected a JSON array of objects")
    pos += 1
    line = text.count("\n", 0, pos) + 1
    last = pos
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise DataError(path, text.count("\n") + 1, "invalid JSON: the array is not closed (truncated file?)")
        if text[pos] == "]":
            return
        line += text.count("\n", last, pos)
        last = pos
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON: {e.msg} (a JSON array cannot be read in part)") from None
        except (ValueError, RecursionError) as e:  # NaN/Infinity, nesting
            raise DataError(path, line, f"invalid JSON: {e or 'nested too deeply'}") from None
        if not isinstance(obj, dict):
            yield DataError(path, line, f"expected a JSON object, got {type(obj).__name__}")
            continue
        if maybe_surrogates and not _encodable(obj):
            yield DataError(path, line, "invalid JSON: a lone surrogate escape (\\ud800-\\udfff) is not text")
            continue
        yield Row(obj, str(path), line)


def _csv(path: Path, f: IO[bytes], enc: str, limit: int, delim: str) -> Iterator[Row | DataError]:
    fed: list[int] = []  # physical line number of every line handed to the csv reader
    errors: list[DataError] = []

    def lines() -> Iterator[str]:
        for i, raw, size, preview in _raw_lines(f, limit):
            if raw is None:
                errors.append(DataError(path, i, f"row is {size:,} bytes, over the {_mib(limit)} row limit", preview))
                continue
            if i == 1 and enc == "utf-8-sig":
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                text = _decode(raw, "utf-8" if enc == "utf-8-sig" else enc, path, i)
            except DataError as e:
                errors.append(e)
                continue
            fed.append(i)
            yield text + "\n"

    csv.field_size_limit(max(limit, csv.field_size_limit()))
    reader = csv.reader(lines(), delimiter=delim)
    header: list[str] | None = None
    mark = 0
    while True:
        try:
            rec = next(reader)
            err = None
        except StopIteration:
            rec, err = None, None
        except csv.Error as e:
            rec, err = [], str(e)
        yield from errors
        errors.clear()
        if rec is None:
            return
        line, mark = (fed[mark] if mark < len(fed) else (fed[-1] if fed else 1)), len(fed)
        if err is not None:
            yield DataError(path, line, f"CSV: {err}")
            continue
        last = fed[-1] if fed else line  # the record's last physical line
        if header is None:
            header = [h.strip() for h in rec]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise DataError(path, line, f"duplicate column name(s) in the header: {', '.join(dup)}")
            continue
        if not any(c.strip() for c in rec):
            continue
        if len(rec) != len(header):
            span = f" (a quoted field runs from line {line} to {last}: an unclosed quote?)" if last > line else ""
            yield DataError(path, line, f"expected {len(header)} columns, got {len(rec)}{span}")
            continue
        if any("\x00" in c for c in rec):
            yield DataError(path, line, "NUL byte in a field (binary data?)")
            continue
        yield Row(dict(zip(header, rec)), str(path), line)


# ---- quarantine ---------------------------------------------------------------------------------------

def quarantine_path(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where rejected rows of ``path`` go: ``<out_dir or its folder>/<name>.quarantine.jsonl``."""
    p = Path(path)
    return Path(out_dir or p.parent) / f"{p.name}.quarantine.jsonl"


def quarantine_entry(e: DataError) -> dict:
    """One quarantine line: file, line, reason, and the raw bytes (base64, plus a readable copy)."""
    entry: dict[str, Any] = {"file": e.path, "line": e.line, "reason": e.reason}
    raw = e.raw if e.raw is not None else _raw_line(e.path, e.line)
    if raw is not None:
        entry["raw"] = raw.decode("utf-8", "backslashreplace")
        entry["raw_b64"] = base64.b64encode(raw).decode("ascii")
    return entry


def _raw_line(path: str, line: int | None) -> bytes | None:
    """The bytes of one line of a text file (at most RAW_KEEP), for rows rejected after parsing."""
    if line is None or not Path(path).is_file() or Path(path).suffix.lower() not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        return None
    with open(path, "rb") as f:
        for i, raw, _, preview in _raw_lines(f, MAX_ROW_BYTES):
            if i == line:
                return raw[:RAW_KEEP] if raw is not None else preview
    return None


def write_quarantine(errors: list[DataError], qpath: Path) -> None:
    """Write rejected rows, each with its file, line, reason and raw bytes, to a quarantine JSONL."""
    write_jsonl(qpath, (quarantine_entry(e) for e in errors))


# ---- writing ------------------------------------------------------------------------------------------

def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (temp file then rename) so a crash never leaves half a file.

    The temp file is the writer's own (pid in its name): two processes writing one output leave one whole
    file, never a mix of both or a failed rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (bad row, Ctrl-C) leaves no temp file behind
        raise
    return n


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row and flush it to disk: used for results that cost money to recompute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Every row of a JSONL file we wrote ourselves (predictions, results), strictly.

    Split on ``\\n`` only: ``str.splitlines`` would also split at U+2028/U+0085 inside a JSON string.

    Raises:
        DataError: a line that is not a JSON object, as ``file:line: reason``.
    """
    return [item.data if isinstance(item, Row) else _raise(item)
            for item in iter_rows(path, encoding="utf-8", on_error="raise", check_types=False)]


def _raise(err: DataError):
    raise err


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Read an append-only JSONL log, ignoring only a torn final line (a kill mid-write)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")  # "\n" only: U+2028 in a value is not a line end
    while lines and not lines[-1].strip():
        lines.pop()
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
