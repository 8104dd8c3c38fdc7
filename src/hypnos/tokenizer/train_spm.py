"""Train a Chinese SentencePiece BPE tokenizer on a corpus, optionally on jieba-segmented text.

Run: ``hypnos tokenizer train CORPUS... --out runs/spm --vocab-size 8000 [--jieba]``

The trained model is a source of new pieces for ``extend.py``; it is never used on its own to encode text.
With ``jieba=True`` every text is segmented into words first and the words are joined by spaces, so BPE
merges cannot cross a word boundary and whole medical words (麻醉药, 硬膜外) become pieces instead of
frequent-but-meaningless character pairs that straddle two words.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from hypnos.common.io import DataError, iter_rows, read_text
from hypnos.common.progress import track

log = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "instruction", "input", "output")
"""Record fields that hold corpus text (text records and QA records)."""
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")
MAX_CHUNK_CHARS = 1000  # SentencePiece skips sentences longer than max_sentence_length bytes
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;\n])")


def iter_corpus_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    """Yield the texts of corpus files: record files (text/QA/dialogue rows) or plain text (one per line).

    Record rows contribute their ``text``, ``instruction``, ``input`` and ``output`` fields, and the
    ``value`` of every turn of a ShareGPT ``conversations`` list.

    Raises:
        DataError: a file is missing or unreadable, or a row has none of those fields (``file:line``).
    """
    for path in paths:
        path = Path(path)
        if path.suffix.lower() not in RECORD_SUFFIXES:
            if not path.is_file():
                raise DataError(path, None, "file not found")
            yield from (line.strip() for line in read_text(path).splitlines() if line.strip())
            continue
        for row in iter_rows(path):
            if isinstance(row, DataError):
                raise row
            texts = [row.data[k] for k in TEXT_FIELDS if isinstance(row.data.get(k), str) and row.data[k].strip()]
            for turn in row.data.get("conversations") or []:
                if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                    texts.append(turn["value"])
            if not texts:
                raise DataError(path, row.line, f"no text field (expected one of {', '.join(TEXT_FIELDS)} "
                                                "or conversations)")
            yield from texts


def chunk(text: str, max_chars: int = MAX_CHUNK_CHARS) -> Iterator[str]:
    """Split a long text at sentence ends into pieces of at most ``max_chars`` characters."""
    buf = ""
    for sent in _SENTENCE_END.split(text):
        if len(buf) + len(sent) > max_chars and buf:
            yield buf
            buf = ""
        while len(sent) > max_chars:  # a "sentence" without punctuation: cut it hard
            yield sent[:max_chars]
            sent = sent[max_chars:]
        buf += sent
    if buf.strip():
        yield buf


def segment(text: str) -> str:
    """Text as jieba words separated by single spaces (existing whitespace collapses)."""
    import jieba

    return " ".join(w for w in jieba.lcut(text) if w.strip())


def write_training_text(texts: Iterable[str], out: Path, use_jieba: bool = False) -> int:
    """Write the SentencePiece training file (one chunk per line); returns the number of lines."""
    if use_jieba:
        import jieba

        jieba.setLogLevel(logging.WARNING)
    n = 0
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for text in track(texts, desc="corpus", unit="text"):
            for piece in chunk(text):
                line = segment(piece) if use_jieba else " ".join(piece.split())
                if line:
                    f.write(line + "\n")
                    n += 1
    tmp.replace(out)
    return n


def train_spm(
    corpus: Iterable[str | Path],
    out_dir: str | Path,
    vocab_size: int = 8000,
    use_jieba: bool = False,
    num_threads: int = 2,
) -> Path:
    """Train a SentencePiece BPE model on corpus files.

    Args:
        corpus: record files (.jsonl/.json/.csv) or plain text files.
        out_dir: where ``corpus.txt`` and ``spm.model``/``spm.vocab`` go.
        vocab_size: target size; a soft limit, so a small corpus yields a smaller model instead of an error.
        use_jieba: pre-segment with jieba so pieces never cross word boundaries.
        num_threads: trainer threads.

    Returns:
        Path of ``spm.model``.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    txt = out_dir / "corpus.txt"
    lines = write_training_text(iter_corpus_texts(corpus), txt, use_jieba)
    if lines == 0:
        raise DataError(", ".join(map(str, corpus)), None, "the corpus holds no text")
    log.info("training SentencePiece BPE (vocab %d, jieba=%s) on %d lines", vocab_size, use_jieba, lines)
    spm.SentencePieceTrainer.train(
        input=str(txt),
        model_prefix=str(out_dir / "spm"),
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=0.9995,  # keeps rare characters out; they stay byte-encoded in the base model
        split_digits=True,  # LLaMA and SmolLM2 split numbers into digits; new pieces must not hold digits
        max_sentence_length=16384,
        num_threads=num_threads,
        minloglevel=2,
    )
    return out_dir / "spm.model"


def spm_pieces(model_path: str | Path) -> list[str]:
    """The normal pieces of a trained SentencePiece model, best (highest score) first, without ``▁``.

    The word-boundary marker is stripped because the pieces are added to tokenizers that see Chinese
    text without spaces; duplicates that arise from stripping keep their best position.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(Path(model_path).read_bytes())
    normal = [p for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    seen: dict[str, None] = {}
    for p in sorted(normal, key=lambda p: -p.score):
        piece = p.piece.replace("▁", "")
        if piece:
            seen.setdefault(piece)
    return list(seen)
