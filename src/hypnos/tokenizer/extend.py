"""Add Chinese pieces to a base tokenizer without changing any existing token id.

Run: ``hypnos tokenizer extend BASE runs/spm/spm.model --out runs/tok --max-new-pieces 20000``

Two families:

* **SentencePiece** (LLaMA-1/2, Chinese-LLaMA; a ``tokenizer.model``): new pieces are appended to the
  ``ModelProto`` with scores below every existing piece, so existing merges still run first and byte fallback
  stays on. The HF files (``tokenizer.json``, ``tokenizer_config.json``) are regenerated with merges ordered by
  piece score, which makes the HF tokenizer give the same ids as SentencePiece itself.
* **Byte-level BPE** (SmolLM2, Qwen2, Llama-3; a ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``):
  new pieces become real vocabulary entries built by merges appended after the existing ones, so they go
  through the pre-tokenizer like any other token and round-trips stay exact. (``add_tokens`` would make them
  "added tokens" matched before pre-tokenization, which breaks round-trips of text around them.)

Both families need every new piece to be *reachable*: BPE only ever produces a token by merging two
adjacent tokens. ``_build_plan`` finds, for each piece, the binary tree over its base tokenization that
needs the fewest new intermediate tokens, and adds those intermediates too.

Only pieces made of Chinese characters and Chinese punctuation are added: the GPT-2 and Qwen2 pre-tokenizer
regexes keep a run of Chinese characters in one pre-token (``\\p{L}+``), so such pieces apply, while a piece
mixing Chinese and Latin letters or digits would straddle pre-tokens (or digit splits) and never apply.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from hypnos.common.progress import track

log = logging.getLogger(__name__)

CHINESE_PIECE = re.compile(r"^[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff01-\uff5e]+$")
"""CJK ideographs, CJK punctuation and full-width forms: what a new piece may consist of."""
NEW_PIECES_FILE = "new_tokens.json"
CHECK_TEXTS = ["患者术前行全身麻醉，丙泊酚2mg/kg静注。", "Hello world, 123 test", "GABA-A受体激动剂：咪达唑仑"]


class TokenizerFamilyError(ValueError):
    """The base tokenizer is neither a SentencePiece model nor a byte-level BPE tokenizer."""


def is_chinese_piece(piece: str) -> bool:
    """True for a non-empty string of Chinese characters/punctuation only."""
    return bool(CHINESE_PIECE.match(piece))


def detect_family(base: str | Path) -> str:
    """``"sentencepiece"`` or ``"bytelevel"`` for a tokenizer dir (or a ``.model`` file)."""
    base = Path(base)
    if base.is_file() and base.suffix == ".model" or (base / "tokenizer.model").is_file():
        return "sentencepiece"
    if (base / "tokenizer.json").is_file():
        tj = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
        if tj["model"]["type"] == "BPE" and "ByteLevel" in json.dumps(tj.get("decoder")):
            return "bytelevel"
        raise TokenizerFamilyError(f"{base}/tokenizer.json: not byte-level BPE (model {tj['model']['type']})")
    if (base / "vocab.json").is_file() and (base / "merges.txt").is_file():
        return "bytelevel"
    raise TokenizerFamilyError(f"{base}: no tokenizer.model, tokenizer.json or vocab.json+merges.txt found")


@dataclass
class Plan:
    """New tokens in id order: each is built by merging ``left`` and ``right`` (None for a leaf)."""

    tokens: list[str] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)
    requested: int = 0
    skipped_existing: int = 0
    skipped_not_chinese: int = 0


def _apply_merges(tokens: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on top of a base tokenization: repeatedly merge the adjacent pair with the lowest rank in ``ranks``.

    The base tokenization is the fixed point of the base merges, and base merges never involve a new token,
    so applying only the new merges to it gives what the extended tokenizer does.
    """
    tokens = list(tokens)
    while len(tokens) > 1:
        best = min(((ranks[p], i) for i, p in enumerate(itertools.pairwise(tokens)) if p in ranks), default=None)
        if best is None:
            break
        i = best[1]
        tokens[i : i + 2] = [tokens[i] + tokens[i + 1]]
    return tokens


def _build_plan(pieces: list[str], vocab: set[str], base_tokenize, to_symbols, max_new: int | None,
                existing_merges: set[tuple[str, str]] = frozenset(), is_whole=lambda s: True,
                simulate: bool = False, plan: Plan | None = None, allowed=is_chinese_piece) -> Plan:
    """Choose the new tokens and the merges that build them.

    Args:
        pieces: candidate pieces as text, best first.
        vocab: existing tokens (in the model's alphabet).
        base_tokenize: symbol string -> list of base-model tokens (the leaves of the merge tree).
        to_symbols: text -> the model's alphabet (identity for SentencePiece, byte-level chars for BPE).
        max_new: stop once this many tokens (pieces plus intermediates) were added.
        existing_merges: merges the base already has (not repeated).
        is_whole: whether a symbol string is whole characters (byte-level: valid UTF-8). New intermediate
            tokens that split a character are avoided: they would waste vocabulary on byte fragments.
        simulate: byte-level BPE: build each piece's tree over what the tokenizer extended *so far* makes of
            it, not over its base tokenization. Merges added for earlier pieces rank first and may take
            sub-pieces away (低钾血症 -> 低 + 钾血症 once 钾血症 exists); a tree over the current tokens is
            always reachable, and later merges cannot break it (an earlier piece is one token by then).
        plan: continue this plan (its tokens count against ``max_new``).
        allowed: which pieces may be added (text -> bool).
    """
    plan = plan or Plan()
    plan.requested += len(pieces)
    known = set(vocab) | set(plan.tokens)
    merges = set(existing_merges) | set(plan.merges)
    ranks = {m: r for r, m in enumerate(plan.merges)}
    for text in track(pieces, desc="plan pieces", unit="piece"):
        if not allowed(text):
            plan.skipped_not_chinese += 1
            continue
        sym = to_symbols(text)
        if sym in known:
            plan.skipped_existing += 1
            continue
        leaves = base_tokenize(sym)
        if simulate:
            leaves = _apply_merges(leaves, ranks)
        new_tokens, new_merges = _cheapest_tree(tuple(leaves), known, is_whole)
        if max_new is not None and len(plan.tokens) + len(new_tokens) > max_new:
            break
        for tok in new_tokens:
            known.add(tok)
            plan.tokens.append(tok)
        for m in new_merges:
            if m not in merges:
                merges.add(m)
                ranks[m] = len(plan.merges)
                plan.merges.append(m)
    return plan


def _repair(plan: Plan, base_tokenize, vocab: set[str], existing_merges: set[tuple[str, str]], rounds: int = 4
            ) -> list[str]:
    """Make planned tokens encode to themselves alone by appending merges over what they encode to now.

    A tree built over a piece's tokens can still be pre-empted when one of its intermediate pairs was
    already a merge of an earlier piece with a lower rank. Such a piece gets merges over its actual current
    tokens (only when no new intermediate token is needed). Returns the tokens still unreachable.
    """
    known = set(vocab) | set(plan.tokens)
    merges = set(existing_merges) | set(plan.merges)
    failing: list[str] = []
    for _ in range(rounds):
        ranks = {m: r for r, m in enumerate(plan.merges)}
        failing = [t for t in plan.tokens if _apply_merges(base_tokenize(t), ranks) != [t]]
        if not failing:
            return []
        for t in failing:
            current = _apply_merges(base_tokenize(t), {m: r for r, m in enumerate(plan.merges)})
            new_tokens, new_merges = _cheapest_tree(tuple(current), known - {t})
            if new_tokens != [t]:
                continue  # would need another new token: leave it to be dropped
            for m in new_merges:
                if m not in merges:
                    merges.add(m)
                    plan.merges.append(m)
    return failing


FRAGMENT_COST = 1000  # a new token holding part of a character: only when no whole-character tree exists


def _cheapest_tree(leaves: tuple[str, ...], known: set[str], is_whole=lambda s: True
                   ) -> tuple[list[str], list[tuple[str, str]]]:
    """Binary merge tree over ``leaves`` with the fewest tokens not in ``known``; post-order lists."""

    def cost(s: str) -> int:
        return 0 if s in known else 1 if is_whole(s) else FRAGMENT_COST

    @cache
    def best(i: int, j: int) -> tuple[int, int]:  # (cost, split point)
        if j - i == 1:
            return cost(leaves[i]), -1
        own = cost("".join(leaves[i:j]))
        # On ties the longest left part wins: a character's leading bytes are shared by many characters,
        # so ((a b) c) reuses the fragment "a b" where (a (b c)) would need one fragment per character.
        cost_k = min((own + best(i, k)[0] + best(k, j)[0], -k) for k in range(i + 1, j))
        return cost_k[0], -cost_k[1]

    tokens: list[str] = []
    merges: list[tuple[str, str]] = []

    def emit(i: int, j: int) -> None:
        s = "".join(leaves[i:j])
        k = best(i, j)[1]
        if k >= 0:
            emit(i, k)
            emit(k, j)
            merges.append(("".join(leaves[i:k]), "".join(leaves[k:j])))
        if s not in known and s not in tokens:
            tokens.append(s)

    emit(0, len(leaves))
    return tokens, merges


# ---- SentencePiece ------------------------------------------------------------------------------

def _load_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(path.read_bytes())
    return m


def extend_sentencepiece(base: str | Path, pieces: list[str], out_dir: str | Path,
                         max_new: int | None = None) -> dict:
    """Append pieces to a SentencePiece model and write it with regenerated HF tokenizer files.

    Returns:
        Summary: base and new sizes, counts, and the new tokens with their base-token ids.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    base = Path(base)
    model_file = base if base.is_file() else base / "tokenizer.model"
    proto = _load_proto(model_file)
    vocab = {p.piece for p in proto.pieces}
    # Strip add_dummy_prefix for the leaves: a piece is looked at on its own, without a leading "▁".
    plain = _load_proto(model_file)
    plain.normalizer_spec.add_dummy_prefix = False
    sp_plain = _sp_from_proto(plain)
    plan = _build_plan(pieces, vocab, list, lambda t: t, max_new)

    # Scores below every normal piece: existing merges keep running first (as appended BPE merges do).
    # The -1e9 whitespace pieces of LLaMA are left out of the minimum; float32 cannot count below them.
    floor = min((p.score for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL and p.score > -1e6),
                default=0.0)
    base_size = len(proto.pieces)
    for k, tok in enumerate(plan.tokens):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=tok, score=floor - 1 - k,
                                                        type=pb.ModelProto.SentencePiece.NORMAL))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    _write_hf_llama(proto, base if base.is_dir() else None, out_dir)
    new = [{"id": base_size + k, "piece": tok, "text": tok, "base_ids": sp_plain.encode(tok)}
           for k, tok in enumerate(plan.tokens)]
    return _summary("sentencepiece", base_size, plan, new, out_dir)


def _sp_from_proto(proto):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def _write_hf_llama(proto, base_dir: Path | None, out_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json for a SentencePiece BPE model, ids equal to SentencePiece's."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    T = pb.ModelProto.SentencePiece
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    scores = {p.piece: p.score for p in proto.pieces if p.type in (T.NORMAL, T.USER_DEFINED)}
    skip = {p.piece for p in proto.pieces if p.type not in (T.NORMAL, T.USER_DEFINED)}
    # transformers' own conversion orders merges by id, which puts LLaMA's "▁▁" (score -1e9) first and
    # makes its ids differ from SentencePiece's on runs of spaces; ordering by score matches them.
    merges = generate_merges(vocab, scores, skip_tokens=skip)
    cfg = {"add_bos_token": True, "add_eos_token": False}
    if base_dir is not None and (base_dir / "tokenizer_config.json").is_file():
        old = json.loads((base_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg.update({k: old[k] for k in ("add_bos_token", "add_eos_token", "chat_template", "model_max_length")
                    if k in old})
    if base_dir is not None and "chat_template" not in cfg and (base_dir / "chat_template.jinja").is_file():
        # transformers 5 saves the template beside tokenizer_config.json, not in it
        cfg["chat_template"] = (base_dir / "chat_template.jinja").read_text(encoding="utf-8")
    special = {"unk_token": proto.pieces[proto.trainer_spec.unk_id].piece,
               "bos_token": proto.pieces[proto.trainer_spec.bos_id].piece,
               "eos_token": proto.pieces[proto.trainer_spec.eos_id].piece}
    tok = LlamaTokenizer(vocab=vocab, merges=merges, **special, **cfg)
    tok.save_pretrained(out_dir)
    conf = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    conf["tokenizer_class"] = "LlamaTokenizer"  # without it AutoTokenizer drops the "▁" prefix
    (out_dir / "tokenizer_config.json").write_text(json.dumps(conf, ensure_ascii=False, indent=2), encoding="utf-8")


# ---- byte-level BPE -----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by every byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def to_bytelevel(text: str) -> str:
    """Text in the byte-level alphabet (each UTF-8 byte as one printable character)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def load_bytelevel(base: str | Path):
    """The HF fast tokenizer of a byte-level BPE dir; a bare vocab.json+merges.txt is read as Qwen2."""
    from transformers import AutoTokenizer, Qwen2Tokenizer

    base = Path(base)
    if (base / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(base)
    return Qwen2Tokenizer(vocab=str(base / "vocab.json"), merges=str(base / "merges.txt"))


def extend_bytelevel(base: str | Path, pieces: list[str], out_dir: str | Path, max_new: int | None = None,
                     corpus: list[str | Path] | None = None, space_variants: int = 64) -> dict:
    """Add pieces as vocabulary entries plus merges to a byte-level BPE ``tokenizer.json``.

    Every added token is checked to encode to itself alone (``_repair``); a requested piece that cannot be
    made reachable without more tokens is dropped and the plan rebuilt without it. With a ``corpus``, up to
    ``space_variants`` space-prefixed variants (" 检查发现") are added for the new pieces that most often
    start a Chinese run after a space there (``CT 检查发现``): both pre-tokenizers glue the space to the run
    and the base merges glue it to the first byte, so without a variant no piece applies at that spot.

    Returns:
        Summary: base and new sizes, counts, and the new tokens with their base-token ids; its
        ``reachability`` (see ``reachability``) is measured on the written tokenizer.
    """
    from tokenizers import Tokenizer

    base, out_dir = Path(base), Path(out_dir)
    hf = load_bytelevel(base)
    tj = json.loads(hf.backend_tokenizer.to_str())
    model = tj["model"]
    vocab: dict[str, int] = model["vocab"]
    old_merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    bpe = Tokenizer.from_str(hf.backend_tokenizer.to_str()).model

    @cache
    def base_tokenize(sym: str) -> list[str]:
        return [t.value for t in bpe.tokenize(sym)]

    def build(cands: list[str]) -> tuple[Plan, list[str]]:
        plan = _build_plan(cands, set(vocab), base_tokenize, to_bytelevel, max_new, set(old_merges), _is_utf8,
                           simulate=True)
        return plan, _repair(plan, base_tokenize, set(vocab), set(old_merges))

    dropped: set[str] = set()
    for _ in range(4):
        plan, failing = build([p for p in pieces if p not in dropped])
        if not failing:
            break
        log.warning("%d new tokens do not encode to themselves; dropping them and planning again: %s",
                    len(failing), ", ".join(_text(t) for t in failing[:10]))
        dropped |= {_text(t) for t in failing}
    if failing:
        raise RuntimeError(f"{len(failing)} new tokens stay unreachable after dropping: "
                           f"{', '.join(_text(t) for t in failing[:10])}")
    n_main = len(plan.tokens)
    if corpus and space_variants:
        cands = _space_variant_candidates(corpus, plan, base_tokenize, space_variants)
        plan = _build_plan(cands, set(vocab), base_tokenize, to_bytelevel, None, set(old_merges), _is_utf8,
                           simulate=True, plan=plan, allowed=lambda t: t[:1] == " " and is_chinese_piece(t[1:]))
        plan.requested -= len(cands)
        failing = _repair(plan, base_tokenize, set(vocab), set(old_merges))
        if failing:  # no requested piece of the main plan can fail here: earlier pieces are single tokens
            raise RuntimeError(f"space variants unreachable: {', '.join(_text(t) for t in failing[:10])}")
    # Added (special) tokens may sit above the model vocabulary (Qwen2). transformers rebuilds such a tokenizer
    # from the model vocabulary and re-adds them at the next free id, so they go into the vocabulary at their
    # own ids first; the new tokens follow everything.
    for a in tj.get("added_tokens", []):
        vocab.setdefault(a["content"], a["id"])
    base_size = max(vocab.values()) + 1
    for k, tok in enumerate(plan.tokens):
        vocab[tok] = base_size + k
    model["merges"] = [list(m) for m in old_merges + plan.merges]

    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    for stale in ("vocab.json", "merges.txt"):  # tokenizer.json is the one source of truth from here on
        (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    new = [{"id": vocab[tok], "piece": tok, "text": _text(tok), "base_ids": [vocab[t] for t in base_tokenize(tok)]}
           for tok in plan.tokens]
    extra = {"dropped_unreachable": sorted(dropped), "space_variants": len(plan.tokens) - n_main}
    return _summary("bytelevel", base_size, plan, new, out_dir, extra)


def _text(sym: str) -> str:
    """A byte-level token as text (a character split across tokens shows as U+FFFD)."""
    return bytes(_unbyte(sym)).decode("utf-8", errors="replace")


SPACED_RUN = re.compile(r"(?<= )[\u3400-\u4dbf\u4e00-\u9fff]+")


def _space_variant_candidates(corpus: list[str | Path], plan: Plan, base_tokenize, limit: int,
                              min_count: int = 2) -> list[str]:
    """" X" for the new tokens X that most often start a Chinese run right after a space in the corpus."""
    from collections import Counter

    from hypnos.tokenizer.train_spm import iter_corpus_texts

    ranks = {m: r for r, m in enumerate(plan.merges)}
    new = set(plan.tokens)
    counts: Counter[str] = Counter()
    for text in iter_corpus_texts(corpus):
        for run in SPACED_RUN.findall(text):
            first = _apply_merges(base_tokenize(to_bytelevel(run)), ranks)[0]
            if first in new:
                counts[first] += 1
    return [" " + _text(t) for t, c in counts.most_common(limit) if c >= min_count]


CONTEXTS = {"alone": ("", ""), "after_space": ("CT ", "。"), "after_comma": ("检查，", "。"),
            "after_period": ("结束。", "。"), "after_latin": ("CT", "。"), "in_sentence": ("患者", "，")}
"""Where each new piece is tried: prefix and suffix around it (``reachability``)."""


def reachability(tok, tokens: list[dict], max_examples: int = 8) -> dict:
    """How many new pieces come out as one token alone and in typical contexts.

    A piece counts as reached in a context when one token of the encoding is exactly the piece (after a
    space, the piece or its space-prefixed variant). Space variants themselves are only tried alone.
    Tokens that split a character (byte fragments, text with U+FFFD) are intermediates and not tried.

    Returns:
        ``{context: {"checked", "reachable", "examples": [unreached pieces]}}``.
    """
    whole = [t for t in tokens if "\ufffd" not in t["text"]]
    out = {}
    for ctx, (pre, post) in CONTEXTS.items():
        cands = whole if ctx == "alone" else [t for t in whole if not t["text"].startswith(" ")]
        texts = [pre + t["text"] + post for t in cands]
        encs = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        ok, bad = 0, []
        for t, ids in zip(cands, encs):
            pieces = {tok.decode([i]) for i in ids}
            # SentencePiece puts a "▁" before a text's first piece; it decodes to nothing and is ignored
            if ([i for i in ids if tok.decode([i])] == [t["id"]]) if ctx == "alone" else (t["text"] in pieces or " " + t["text"] in pieces):
                ok += 1
            elif len(bad) < max_examples:
                bad.append(t["text"])
        out[ctx] = {"checked": len(cands), "reachable": ok, "examples": bad}
    return out


def _unbyte(sym: str) -> list[int]:
    inv = {c: b for b, c in bytes_to_unicode().items()}
    return [inv[c] for c in sym]


def _is_utf8(sym: str) -> bool:
    try:
        bytes(_unbyte(sym)).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---- both -----------------------------------------------------------------------------------------

def _summary(family: str, base_size: int, plan: Plan, new: list[dict], out_dir: Path, extra: dict | None = None
             ) -> dict:
    from transformers import AutoTokenizer

    summary = {
        "family": family, "base_size": base_size, "new_size": base_size + len(new), "added": len(new),
        "requested_pieces": plan.requested, "skipped_existing": plan.skipped_existing,
        "skipped_not_chinese": plan.skipped_not_chinese, "added_merges": len(plan.merges), **(extra or {}),
    }
    summary["reachability"] = reachability(AutoTokenizer.from_pretrained(out_dir), new)
    (out_dir / NEW_PIECES_FILE).write_text(json.dumps({**summary, "tokens": new}, ensure_ascii=False, indent=0),
                                           encoding="utf-8")
    return summary


def extend_tokenizer(base: str | Path, pieces: list[str], out_dir: str | Path, max_new: int | None = None,
                     corpus: list[str | Path] | None = None, space_variants: int = 64) -> dict:
    """Extend a base tokenizer of either family with ``pieces`` (best first); see the module docstring.

    Args:
        base: a tokenizer or model dir, or a SentencePiece ``.model`` file.
        pieces: candidate pieces as plain text; existing and non-Chinese ones are skipped.
        out_dir: where the extended tokenizer files and ``new_tokens.json`` go.
        max_new: cap on added tokens (pieces plus the intermediates they need).
        corpus: byte-level only: the corpus the pieces came from, for space-prefixed variants.
        space_variants: byte-level only: most space-prefixed variants to add (beyond ``max_new``).

    Returns:
        Summary dict (also written, with every new token and its base ids, to ``out_dir/new_tokens.json``).
    """
    family = detect_family(base)
    if family == "sentencepiece":
        return extend_sentencepiece(base, pieces, out_dir, max_new)
    return extend_bytelevel(base, pieces, out_dir, max_new, corpus, space_variants)


def read_new_tokens(tok_dir: str | Path) -> dict[int, list[int]]:
    """new token id -> ids of the base-tokenizer tokens it replaces, from ``new_tokens.json``."""
    data = json.loads((Path(tok_dir) / NEW_PIECES_FILE).read_text(encoding="utf-8"))
    return {t["id"]: t["base_ids"] for t in data["tokens"]}


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy every tokenizer file of an extended tokenizer dir into a model dir."""
    for f in Path(src).iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "chat_template"))
                            or f.name == NEW_PIECES_FILE):
            shutil.copy2(f, Path(dst) / f.name)
