"""Exact and near-duplicate removal for Chinese instructions (MinHash LSH on character n-grams).

Run: ``hypnos dedup --config dedup.yaml`` or as a recipe stage::

    - name: dedup
      kind: dedup
      input: "@generate"             # the rows to deduplicate (before the cross-filter pays judges)
      references: [seeds.jsonl]      # rows that win against any duplicate in ``input`` (never dropped)
      threshold: 0.7

Why not the Self-Instruct ROUGE-L filter: rouge_score's default tokenizer keeps only [a-z0-9] tokens,
so every Chinese pair scores 0 and nothing is ever filtered; with a character tokenizer it works but
compares all pairs (quadratic: days at 10^6 items, see bench/bench_dedup.py).

How: texts are normalised (``text.normalize``), exact duplicates go by hash, then every text gets a
MinHash signature computed for a whole batch at once with numpy (a polynomial rolling hash of its
character n-grams, then ``num_perm`` multiply-shift hash functions, min per text via ``reduceat``).
Memory is bounded whatever a row's size: a batch holds at most ``_GRAMS_PER_BATCH`` n-grams, and a
text longer than that is hashed in slices (overlapping by n-1 characters) whose minima are combined,
so a 50 MB row costs a few hundred MB, not (grams x num_perm) x 8 bytes.

LSH bands are chosen for recall (``lsh_params``): the most rows per band (fewest false candidates)
such that a pair whose true Jaccard equals the threshold becomes a candidate with probability >=
``lsh_recall`` (0.97: at 0.7 with 128 permutations, 25 bands x 5 rows, 0.990; the old optimiser's
16 x 8 centred at 0.71 and found 62% of pairs at 0.70-0.75). Candidates come from sorting band keys and are then verified on
their *exact* Jaccard similarity of n-gram sets (the signature estimate has a standard deviation of
~0.04 at 128 permutations: verifying on it would lose about half of the pairs right at the
threshold). Verified pairs join into clusters whose kept item is the earliest one (references come
first, so a reference always wins). ``bench/bench_dedup.py`` prints the measured recall curve.

Outputs: ``kept`` (rows), ``dropped`` (rows + ``dedup``: reason, duplicate_of, similarity),
``clusters`` (kept id -> duplicate ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import Field

from hypnos.common.io import DataError, Row, iter_rows, write_jsonl
from hypnos.common.progress import bar
from hypnos.common.stage import StageConfig, StageContext, StageResult
from hypnos.data.text import normalize, record_text

_PAD = "\0"  # pads texts shorter than one n-gram; never survives normalize(), so it can't collide with text
# a batch's (num_perm x grams) uint64 buffer stays cache-sized (8 MB at 128 perms): 3-4x faster than 100 MB
# batches, which are memory-bound; it also bounds memory whatever a row's size (long texts go in slices)
_GRAMS_PER_BATCH = 8192
_ESTIMATE_MARGIN = 0.2  # candidates estimated this far below the threshold skip exact verification (5 sigma)
_EXACT_SET_CHARS = 20_000  # longer texts are compared on hashed n-grams (numpy) instead of Python string sets


class MinHasher:
    """Vectorised MinHash signatures of character n-gram sets.

    Args:
        num_perm: number of hash functions (signature length).
        ngram: characters per gram.
        seed: seeds the hash functions; equal seeds give equal signatures.
    """

    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        # multiply-shift hashing: (a*x + b) mod 2^64, top 32 bits; a must be odd
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def signatures(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Signatures of already-normalised texts, shape (len(texts), num_perm), uint32."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        pb = bar(total=len(texts), desc="minhash", unit="text") if progress else None
        start = 0
        while start < len(texts):
            if len(texts[start]) > _GRAMS_PER_BATCH:  # one long text: in slices, bounded memory
                out[start] = self._long(texts[start])
                end = start + 1
            else:
                end, grams = start, 0
                while end < len(texts) and len(texts[end]) <= _GRAMS_PER_BATCH and (
                        grams + len(texts[end]) <= _GRAMS_PER_BATCH or end == start):
                    grams += max(len(texts[end]) - self.ngram + 1, 1)
                    end += 1
                out[start:end] = self._batch(texts[start:end])
            if pb is not None:
                pb.update(end - start)
            start = end
        if pb is not None:
            pb.close()
        return out

    def _long(self, text: str) -> np.ndarray:
        """The signature of one long text: slices of ``_GRAMS_PER_BATCH`` grams, overlapping by n-1 chars."""
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        step = _GRAMS_PER_BATCH
        for s in range(0, max(len(text) - self.ngram + 1, 1), step):
            np.minimum(sig, self._batch([text[s : s + step + self.ngram - 1]])[0], out=sig)
        return sig

    def grams(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 hash of every n-gram window of every text, concatenated; windows per text)."""
        n = self.ngram
        padded = [t if len(t) >= n else t + _PAD * (n - len(t)) for t in texts]
        lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
        cps = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        # rolling polynomial hash of every n-gram window of the concatenation (wraps mod 2^64)
        windows = len(cps) - n + 1
        h = np.zeros(windows, dtype=np.uint64)
        mult = np.uint64(0x100000001B3)
        for j in range(n):
            h = h * mult + cps[j : j + windows]
        # keep only windows inside one text: text k has lengths[k]-n+1 of them starting at its offset
        counts = lengths - n + 1
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        seg = np.concatenate(([0], np.cumsum(counts)[:-1]))
        starts = np.repeat(offsets - seg, counts) + np.arange(counts.sum())
        return h[starts], counts

    def _batch(self, texts: Sequence[str]) -> np.ndarray:
        grams, counts = self.grams(texts)
        seg = np.concatenate(([0], np.cumsum(counts)[:-1]))
        # in place on one (num_perm x grams) buffer: no temporaries, and the per-text minimum runs along
        # contiguous rows (reduceat over axis 0 of the transposed layout was 10x slower)
        vals = np.multiply(self.a[:, None], grams[None, :])
        vals += self.b[:, None]
        vals >>= np.uint64(32)
        return np.minimum.reduceat(vals, seg, axis=1).T.astype(np.uint32)


def candidate_probability(j: float | np.ndarray, bands: int, rows: int):
    """P(a pair with Jaccard ``j`` shares at least one band) = 1 - (1 - j^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(j, dtype=float) ** rows) ** bands


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int, recall: float = 0.97) -> tuple[int, int]:
    """(bands, rows): the most rows per band whose candidate probability at ``threshold`` is >= ``recall``.

    More rows per band means fewer false candidates to verify; the recall target at the threshold
    itself (pairs above it are found even more often) is what the stage promises. With too few
    permutations for the target, the best reachable (bands, rows) is returned.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall:
            best = (bands, rows)
    return best


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Pairs (first, other) of items sharing an LSH band; ``first`` is the earliest item of the bucket.

    Returns:
        int64 array of shape (k, 2), unique rows, first < other.
    """
    n = len(sigs)
    rng = np.random.default_rng(7)
    mix = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    found = []
    for bnd in range(bands):
        block = sigs[:, bnd * rows : (bnd + 1) * rows].astype(np.uint64)
        keys = (block * mix[None, :]).sum(axis=1)  # wraps; a collision only adds a candidate to verify
        order = np.argsort(keys)  # unstable (2-3x faster than stable): each run's smallest index comes next
        ks = keys[order]
        new = np.empty(n, dtype=bool)
        new[:1] = True
        new[1:] = ks[1:] != ks[:-1]
        group_first = np.flatnonzero(new)
        first = np.minimum.reduceat(order, group_first)[np.cumsum(new) - 1] if n else order
        pick = first != order
        found.append(np.stack([first[pick], order[pick]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.uint64)
    if not len(pairs):
        return pairs.astype(np.int64)
    key = _sorted_unique((pairs[:, 0] << np.uint64(32)) | pairs[:, 1])  # one key per pair: fast, sorted
    return np.stack([key >> np.uint64(32), key & np.uint64(0xFFFFFFFF)], axis=1).astype(np.int64)


def gram_set(text: str, ngram: int) -> set[str]:
    """The character n-gram set of a normalised text (a text shorter than n is its own gram)."""
    return {text[i : i + ngram] for i in range(max(len(text) - ngram + 1, 1))}


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` for a 1-d integer array by sorting (numpy 2.3's hash-based unique took 6 s for 2M keys)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def gram_hashes(text: str, ngram: int) -> np.ndarray:
    """The n-gram set of a (long) text as sorted unique uint64 hashes, built slice by slice (bounded memory)."""
    out = []
    for s in range(0, max(len(text) - ngram + 1, 1), _GRAMS_PER_BATCH):
        cps = np.frombuffer(text[s : s + _GRAMS_PER_BATCH + ngram - 1].encode("utf-32-le"), dtype=np.uint32)
        cps = cps.astype(np.uint64)
        w = max(len(cps) - ngram + 1, 1)
        h = np.zeros(w, dtype=np.uint64)
        for j in range(min(ngram, len(cps))):
            h = h * np.uint64(0x100000001B3) + cps[j : j + w]
        out.append(_sorted_unique(h))
    return _sorted_unique(np.concatenate(out))


def jaccard(a: str, b: str, ngram: int) -> float:
    """Exact Jaccard similarity of the n-gram sets of two normalised texts (hashed when one is long)."""
    if max(len(a), len(b)) <= _EXACT_SET_CHARS:
        sa, sb = gram_set(a, ngram), gram_set(b, ngram)
        return len(sa & sb) / len(sa | sb) if sa or sb else 1.0
    ha, hb = gram_hashes(a, ngram), gram_hashes(b, ngram)
    inter = len(np.intersect1d(ha, hb, assume_unique=True))
    return inter / (len(ha) + len(hb) - inter)


def _estimate(sigs: np.ndarray, pairs: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Signature agreement (the MinHash estimate of Jaccard) of each pair."""
    out = np.empty(len(pairs), dtype=np.float32)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = (sigs[p[:, 0]] == sigs[p[:, 1]]).mean(axis=1)
    return out


_HASH_BITS = 44  # n-gram hashes kept for exact Jaccard; the top 20 bits carry a text or pair number


def _gram_sets(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of every text's n-gram set: sorted unique 44-bit hashes, and offsets (len(texts) + 1)."""
    hasher = MinHasher(1, ngram)
    mask = np.uint64((1 << _HASH_BITS) - 1)
    values, counts = [], np.zeros(len(texts), dtype=np.int64)
    start = 0
    while start < len(texts):  # batches of about _GRAMS_PER_BATCH grams (a long text alone, in one go)
        end, grams = start, 0
        while end < len(texts) and (grams < _GRAMS_PER_BATCH * 16 or end == start):
            grams += max(len(texts[end]) - ngram + 1, 1)
            end += 1
        h, cnt = hasher.grams(texts[start:end])
        tid = np.repeat(np.arange(end - start, dtype=np.uint64), cnt)
        key = _sorted_unique((tid << np.uint64(_HASH_BITS)) | (h & mask))  # by text, then hash
        values.append(key & mask)
        counts[start:end] = np.bincount((key >> np.uint64(_HASH_BITS)).astype(np.int64), minlength=end - start)
        start = end
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return (np.concatenate(values) if values else np.empty(0, np.uint64)), offsets


def _ranges(offsets: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the CSR entries of texts ``ids`` (concatenated) and each entry's position in ``ids``."""
    lens = offsets[ids + 1] - offsets[ids]
    owner = np.repeat(np.arange(len(ids), dtype=np.uint64), lens)
    first = np.repeat(offsets[ids] - (np.cumsum(lens) - lens), lens)
    return first + np.arange(lens.sum()), owner


def _similarity(texts: Sequence[str], pairs: np.ndarray, ngram: int, budget: int = 4_000_000) -> np.ndarray:
    """Exact Jaccard of the n-gram sets of each candidate pair, vectorised.

    The two sets of a pair are concatenated under the pair's number and sorted; equal neighbours are
    the intersection. Pairs go in chunks of about ``budget`` set entries, so memory stays bounded.
    """
    out = np.empty(len(pairs), dtype=np.float32)
    if not len(pairs):
        return out
    used = _sorted_unique(pairs.ravel())
    local = np.searchsorted(used, pairs)
    vals, offsets = _gram_sets([texts[i] for i in used], ngram)
    sizes = offsets[1:] - offsets[:-1]
    per_pair = sizes[local[:, 0]] + sizes[local[:, 1]]
    s = 0
    while s < len(pairs):
        e = s + max(1, int(np.searchsorted(np.cumsum(per_pair[s : s + (1 << 20)]), budget)))
        e = min(e, s + (1 << 20), len(pairs))  # the pair number must fit in the top 20 bits
        p = local[s:e]
        i0, o0 = _ranges(offsets, p[:, 0])
        i1, o1 = _ranges(offsets, p[:, 1])
        key = np.concatenate(((o0 << np.uint64(_HASH_BITS)) | vals[i0], (o1 << np.uint64(_HASH_BITS)) | vals[i1]))
        key.sort()
        same = key[1:] == key[:-1]
        inter = np.bincount((key[1:][same] >> np.uint64(_HASH_BITS)).astype(np.int64), minlength=e - s)
        union = sizes[p[:, 0]] + sizes[p[:, 1]] - inter
        out[s:e] = inter / np.maximum(union, 1)
        s = e
    return out


class NearDupIndex:
    """An incremental near-duplicate index: ``query`` a text against everything ``add``-ed so far.

    MinHash LSH buckets (the same recall-first parameters as the dedup stage) find candidates; each is
    verified on exact Jaccard. Used by Self-Instruct generation to check each new item against the
    growing pool before it counts.
    """

    def __init__(self, threshold: float = 0.7, ngram: int = 3, num_perm: int = 128):
        self.threshold, self.ngram = threshold, ngram
        self.hasher = MinHasher(num_perm, ngram)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.texts: list[str] = []
        self.ids: list[str] = []
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]

    def __len__(self) -> int:
        return len(self.texts)

    def _keys(self, text: str) -> list[bytes]:
        sig = self.hasher.signatures([text])[0]
        return [sig[b * self.rows : (b + 1) * self.rows].tobytes() for b in range(self.bands)]

    def query(self, text: str) -> tuple[str, float] | None:
        """(id, Jaccard) of the most similar indexed text at or above the threshold, else None."""
        t = normalize(text)
        cands = {i for b, k in enumerate(self._keys(t)) for i in self._buckets[b].get(k, ())}
        best = None
        for i in sorted(cands):
            j = jaccard(t, self.texts[i], self.ngram)
            if j >= self.threshold and (best is None or j > best[1]):
                best = (self.ids[i], j)
        return best

    def add(self, item_id: str, text: str) -> None:
        t = normalize(text)
        for b, k in enumerate(self._keys(t)):
            self._buckets[b].setdefault(k, []).append(len(self.texts))
        self.texts.append(t)
        self.ids.append(item_id)


@dataclass
class DedupResult:
    """Which items are duplicates, of what, and how similar.

    ``duplicate_of[i]`` is -1 for a kept item, else the index of the kept item of its cluster;
    ``reason[i]`` is "", "exact" or "near"; ``similarity[i]`` the exact Jaccard to the item it
    was matched with (1.0 for exact).
    """

    duplicate_of: np.ndarray
    reason: list[str]
    similarity: np.ndarray
    params: dict = field(default_factory=dict)


def find_duplicates(texts: Sequence[str], threshold: float = 0.7, ngram: int = 3, num_perm: int = 128,
                    protected: int = 0, progress: bool = False, lsh_recall: float = 0.97) -> DedupResult:
    """Exact + near-duplicate detection over texts; earlier items win.

    Args:
        texts: raw texts (normalised here).
        threshold: Jaccard similarity of n-gram sets at or above which two texts are duplicates (verified exactly).
        ngram: characters per gram.
        num_perm: MinHash signature length.
        protected: the first ``protected`` texts are references: never dropped, always win.
        progress: show progress bars.
        lsh_recall: candidate probability required of a pair exactly at the threshold (``lsh_params``).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(texts)
    norm = [normalize(t) for t in texts]
    dup = np.full(n, -1, dtype=np.int64)
    sim = np.zeros(n, dtype=np.float32)
    reason = [""] * n
    first_seen: dict[bytes, int] = {}
    for i, t in enumerate(norm):
        key = hashlib.blake2b(t.encode(), digest_size=12).digest()
        j = first_seen.setdefault(key, i)
        if j != i and i >= protected:
            dup[i], sim[i], reason[i] = j, 1.0, "exact"
    alive = np.flatnonzero(dup < 0)
    alive_texts = [norm[i] for i in alive]
    sigs = MinHasher(num_perm, ngram).signatures(alive_texts, progress=progress)
    bands, rows = lsh_params(threshold, num_perm, lsh_recall)
    pairs = candidate_pairs(sigs, bands, rows)
    # cheap vectorised estimate first: the signature agreement has sd ~0.04 at 128 permutations, so a pair
    # estimated 0.2 below the threshold is not a duplicate; only the rest pay for exact Jaccard
    est = _estimate(sigs, pairs)
    candidates = len(pairs)
    pairs = pairs[est >= threshold - _ESTIMATE_MARGIN]
    del sigs, est
    s = _similarity(alive_texts, pairs, ngram)
    keep = s >= threshold
    pairs, s = pairs[keep], s[keep]
    m = len(alive)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    root = np.full(labels.max() + 1 if m else 0, m, dtype=np.int64)
    np.minimum.at(root, labels, np.arange(m))
    best = np.zeros(m, dtype=np.float32)
    np.maximum.at(best, pairs[:, 1], s)
    for k in np.flatnonzero(root[labels] != np.arange(m)):
        i = alive[k]
        if i >= protected:
            dup[i], sim[i], reason[i] = alive[root[labels[k]]], best[k], "near"
    return DedupResult(dup, reason, sim, {"bands": bands, "rows": rows, "candidates": candidates,
                                          "exactly_checked": len(keep), "verified_pairs": len(pairs)})


# ---- the stage ------------------------------------------------------------------------------------


class Config(StageConfig):
    """Dedup stage config."""

    input: str
    """Rows to deduplicate (path or "@stage[.output]"); any record kind."""
    references: list[str] = Field(default_factory=list)
    """Rows that always win (e.g. the seeds): a row of ``input`` duplicating one of them is dropped."""
    threshold: float = Field(0.7, gt=0, le=1)
    """Jaccard similarity of character n-gram sets at or above which rows are duplicates (LSH finds >= 99% of
    pairs at exactly this similarity; every candidate is verified exactly)."""
    ngram: int = Field(3, ge=1)
    """Characters per n-gram: 3 suits short Chinese questions (one changed character of a 25-character question
    still leaves 3-gram Jaccard ≈ 0.8; with 5-grams ≈ 0.7)."""
    num_perm: int = Field(128, ge=8)
    """MinHash signature length (more = more exact similarity estimates, slower)."""
    lsh_recall: float = Field(0.97, gt=0, lt=1)
    """LSH bands are chosen so that a pair exactly at ``threshold`` is a candidate with at least this probability."""
    with_answer: bool = False
    """Compare question and answer; by default only the question (instruction + input) counts."""

    def check(self, ctx: StageContext) -> list[str]:
        probs = ctx.check_ref(self.input, "input")
        for r in self.references:
            probs += ctx.check_ref(r, "references")
        return probs


def _rows(path: Path):
    for item in iter_rows(path):
        if isinstance(item, DataError):
            raise item
        yield item


def _text(row: Row, with_answer: bool) -> str:
    try:
        return record_text(row.data, with_answer)
    except ValueError as e:
        raise DataError(row.path, row.line, str(e)) from None


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Drop exact and near duplicates of ``input`` (within it and against ``references``)."""
    ref_ids, texts = [], []
    for ref in cfg.references:
        for row in _rows(ctx.resolve(ref)):
            ref_ids.append(str(row.data.get("id", f"{ref}:{row.line}")))
            texts.append(_text(row, cfg.with_answer))
    in_path = ctx.resolve(cfg.input)
    ids = []
    for row in _rows(in_path):
        ids.append(str(row.data.get("id", f"line{row.line}")))
        texts.append(_text(row, cfg.with_answer))
    res = find_duplicates(texts, cfg.threshold, cfg.ngram, cfg.num_perm, protected=len(ref_ids), progress=True,
                          lsh_recall=cfg.lsh_recall)
    del texts
    all_ids = ref_ids + ids
    p = len(ref_ids)
    clusters: dict[str, list[str]] = {}
    kept, dropped = [], []
    reasons: dict[str, int] = {}
    for k, row in enumerate(_rows(in_path)):
        i = p + k
        if res.duplicate_of[i] < 0:
            kept.append(row.data)
            continue
        j = int(res.duplicate_of[i])
        why = ("exact" if res.reason[i] == "exact" else "near") + ("_of_reference" if j < p else "")
        reasons[why] = reasons.get(why, 0) + 1
        clusters.setdefault(all_ids[j], []).append(ids[k])
        dropped.append({**row.data, "dedup": {"reason": why, "duplicate_of": all_ids[j],
                                              "similarity": round(float(res.similarity[i]), 3)}})
    write_jsonl(ctx.out_dir / "kept.jsonl", kept)
    write_jsonl(ctx.out_dir / "dropped.jsonl", dropped)
    write_jsonl(ctx.out_dir / "clusters.jsonl", ({"kept": k, "duplicates": v} for k, v in clusters.items()))
    return StageResult(
        outputs={"kept": "kept.jsonl", "dropped": "dropped.jsonl", "clusters": "clusters.jsonl"},
        counts={"in": len(ids), "references": p, "kept": len(kept), "dropped": len(dropped)},
        dropped=reasons, metrics={"lsh": res.params, "clusters": len(clusters)})
