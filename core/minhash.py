"""Vectorised MinHash signatures, LSH banding and exact Jaccard verification (numpy).

MinHash (Broder 1997, "On the resemblance and containment of documents") estimates the
Jaccard similarity of two shingle sets: under a random permutation of the shingle universe
the probability that both sets have the same minimum equals their Jaccard similarity. LSH
banding (Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3) splits a
signature of ``bands * rows`` values into bands and calls two documents candidates when any
band is identical, so a pair of similarity ``s`` becomes a candidate with probability
``1 - (1 - s**rows) ** bands``.

Everything here works on whole batches at once:

- shingles are the character n-grams of the UTF-8 bytes of the normalised text (packed
  into 64-bit integers) and its words (polynomial hashes of letter/digit runs, from prefix
  sums), each mixed once into a 32-bit shingle hash (``shingle_hashes``);
- the ``num_perm`` permutations are a multiply-add-shift universal family
  ``h_k(x) = (a_k * x + b_k) >> 32`` over 64-bit words (Dietzfelbinger 1996), evaluated for
  every (shingle, permutation) pair as one numpy expression, and the per-document minimum is
  a segmented ``minimum.reduceat``;
- LSH buckets are found by sorting band hashes, and candidates are verified by their true
  Jaccard similarity with one sort over all candidate pairs (``jaccard_pairs``), so what is
  reported as a near duplicate never rests on the estimate alone.

Character trigrams plus words rather than word 5-shingles: one dropped word changes only the
few trigrams around it (and one word), two swapped words only the trigrams that straddle
them (and no word), so the Jaccard similarity of a small edit stays high even in a ten-word
text, whereas 5-word shingles lose five shingles per edit (a median Jaccard of 0.75 for such
pairs on real records). Measured on real short texts (``bench/select_data.py``), trigrams plus
words separate small edits from distinct records better than 3-, 4- or 5-grams alone,
word uni+bigrams, or in-word trigrams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_MASK32 = 0xFFFFFFFF
# splitmix64 finaliser constants (Steele, Lea & Flood 2014): a good 64-bit mixer.
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
EMPTY = 0xFFFFFFFF  # signature value of a document with no shingles


def _unique(a: Any) -> Any:
    """Sorted distinct values (sort-based: numpy's hash-based ``unique`` is far slower here)."""
    import numpy as np

    if a.size == 0:
        return a
    a = np.sort(a)
    keep = np.empty(a.size, bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def normalize(text: str) -> str:
    """Case-fold and collapse whitespace: the text that is shingled and hashed."""
    return " ".join(text.casefold().split())


def _mix64(x: Any) -> Any:
    """splitmix64 finaliser on a uint64 array (in place where possible)."""
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(_C1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_C2)
    x ^= x >> np.uint64(31)
    return x


# Bytes that belong to a word: ASCII letters, digits, underscore, and every byte of a
# multi-byte UTF-8 character (letters of other scripts).
_WORD_BYTES = bytes(
    1 if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b == 95 or b >= 128) else 0
    for b in range(256))
_POLY = 0x100000001B3  # odd, so invertible modulo 2**64
_WORD_TAG = 0x5BD1E995


_POWERS: list[tuple[Any, Any]] = []  # the cached tables, replaced whole when they grow
_POWERS_CACHED = 1 << 22  # entries: two 32 MB tables at most stay in memory


def _powers(size: int) -> tuple[Any, Any]:
    """``P**k`` and ``P**-k`` modulo 2**64 for ``k < size`` (cumulative products are a third
    of the cost of hashing words, so tables up to ``_POWERS_CACHED`` are kept)."""
    import numpy as np

    if _POWERS and _POWERS[-1][0].size >= size:
        return _POWERS[-1]
    n = size if size > _POWERS_CACHED else min(max(size, 1 << 16) * 2, _POWERS_CACHED)
    powers = np.full(n, _POLY, np.uint64)
    powers[0] = 1
    powers = np.cumprod(powers, dtype=np.uint64)
    inv = np.full(n, pow(_POLY, -1, 1 << 64), np.uint64)
    inv[0] = 1
    inv = np.cumprod(inv, dtype=np.uint64)
    if n <= _POWERS_CACHED:
        _POWERS[:] = [(powers, inv)]
    return powers, inv


def _runs(isw: Any, starts: Any, lengths: Any) -> tuple[Any, Any]:
    """First and last byte of every maximal run of true ``isw``, runs never crossing from
    one text into the next."""
    import numpy as np

    total = isw.size
    doc_start = np.zeros(total, bool)
    doc_start[starts[lengths > 0]] = True
    prev = np.concatenate(([False], isw[:-1])) & ~doc_start
    first = np.flatnonzero(isw & ~prev)
    nxt = np.concatenate((isw[1:], [False]))
    doc_end = np.zeros(total, bool)
    ends = starts + lengths - 1
    doc_end[ends[lengths > 0]] = True
    last = np.flatnonzero(isw & ~(nxt & ~doc_end))
    return first, last


def _prefix_hashes(buf: Any) -> tuple[Any, Any]:
    """Prefix sums ``sum b[k] P^k`` (modulo 2**64) of the bytes, and the ``P^-k`` table that
    shifts a span's sum back to its start (``_span_hashes``)."""
    import numpy as np

    powers, inv = _powers(buf.size + 1)
    prefix = np.zeros(buf.size + 1, np.uint64)
    np.cumsum(buf * powers[:buf.size], out=prefix[1:])
    return prefix, inv


def _span_hashes(prefix: Any, inv: Any, first: Any, last: Any, bits: int = 32) -> Any:
    """A ``bits``-bit polynomial hash of the bytes ``first..last`` of each span, mixed."""
    import numpy as np

    h = (prefix[last + 1] - prefix[first]) * inv[first]
    return _mix64(h ^ np.uint64(_WORD_TAG)) >> np.uint64(64 - bits)


def _word_hashes(buf: Any, starts: Any, lengths: Any) -> tuple[Any, Any]:
    """(document, 32-bit hash) of every word (maximal run of word bytes) of every text."""
    import numpy as np

    total = int(lengths.sum())
    isw = np.frombuffer(_WORD_BYTES, np.uint8)[buf[:total].astype(np.uint8)].astype(bool)
    first, last = _runs(isw, starts, lengths)
    if first.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    h = _span_hashes(*_prefix_hashes(buf[:total]), first, last)
    doc = np.searchsorted(starts, first, side="right") - 1
    return doc.astype(np.int64), h


_NOT_SPACE = bytes(0 if b in b" \t\n\r\x0b\x0c" else 1 for b in range(256))


def word_sequences(texts: Sequence[str], max_words: int | None = None
                   ) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The words of each text in order, as 64-bit hashes, two ways: as written (separated by
    whitespace, each without the punctuation around it: "week." is "week", "(ip3)" is
    "ip3", a token of punctuation alone stays itself) and as runs of letters and digits
    (the words of ``shingle_hashes``: "it's" and "4**3" are two each).

    Returns two CSR pairs ``(values, offsets)``: text ``i``'s words are
    ``values[offsets[i]:offsets[i + 1]]``. With ``max_words``, a text with more words as
    written gets none either way (its offsets span nothing), so callers that only need short
    texts' words keep memory at the size of those.
    """
    import numpy as np

    count = len(texts)
    blobs = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(b) for b in blobs), np.int64, count)
    raw = np.frombuffer(b"".join(blobs), np.uint8)
    if raw.size == 0:
        empty = (np.zeros(0, np.uint64), np.zeros(count + 1, np.int64))
        return empty, empty
    buf = raw.astype(np.uint64)
    starts = np.zeros(count, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    prefix, inv = _prefix_hashes(buf)
    isw = np.frombuffer(_WORD_BYTES, np.uint8)[raw].astype(bool)
    first, last = _runs(np.frombuffer(_NOT_SPACE, np.uint8)[raw].astype(bool), starts, lengths)
    doc = np.searchsorted(starts, first, side="right") - 1
    rf, rl = _runs(isw, starts, lengths)  # a run of word bytes lies within one token
    token_of_run = np.searchsorted(first, rf, side="right") - 1
    keep = np.ones(count, bool)
    if max_words is not None:
        keep = np.bincount(doc, minlength=count) <= max_words
    # Trim each token to its first and last word byte, if it has one.
    if rf.size:
        runs_in = np.bincount(token_of_run, minlength=first.size)
        end = np.cumsum(runs_in)
        has = runs_in > 0
        first = np.where(has, rf[np.minimum(end - runs_in, rf.size - 1)], first)
        last = np.where(has, rl[np.maximum(end - 1, 0)], last)

    def pack(f: Any, la: Any, d: Any) -> tuple[Any, Any]:
        sel = keep[d]
        offsets = np.zeros(count + 1, np.int64)
        np.cumsum(np.bincount(d[sel], minlength=count), out=offsets[1:])
        return _span_hashes(prefix, inv, f[sel], la[sel], 64), offsets

    return pack(first, last, doc), pack(rf, rl, doc[token_of_run])


def shingle_hashes(texts: Sequence[str], n: int = 3, *, words: bool = True,
                   distinct: bool = True) -> tuple[Any, Any]:
    """32-bit hashes of the shingles of each (already normalised) text: its character
    ``n``-grams and, with ``words``, its words (runs of letters and digits).

    Words make the set robust to reordering: two swapped words change only the n-grams
    that straddle them, never the words. Returns ``(values, offsets)`` in CSR layout: the
    shingles of text ``i`` are ``values[offsets[i]:offsets[i + 1]]``. With ``distinct``
    they are sorted and distinct (a set, as Jaccard similarity needs); without, they may
    repeat, which is all a min-hash needs and saves a sort. A text shorter than ``n``
    bytes has one n-gram (itself); an empty text has no shingle. ``n`` is at most 8 because
    an n-gram is packed losslessly into a 64-bit word before it is mixed.
    """
    import numpy as np

    if not 1 <= n <= 8:
        raise ValueError("shingle size must be between 1 and 8 characters")
    count = len(texts)
    if count == 0:
        return np.zeros(0, np.uint32), np.zeros(1, np.int64)
    blobs = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(b) for b in blobs), np.int64, count)
    buf = np.frombuffer(b"".join(blobs) + b"\0" * n, np.uint8).astype(np.uint64)
    starts = np.zeros(count, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    total = int(lengths.sum())
    # Pack bytes i..i+n-1 into one word for every position (positions near the end of a text
    # read into the next text; they are masked out below).
    packed = buf[:total].copy()
    for k in range(1, n):
        packed |= buf[k:total + k] << np.uint64(8 * k)
    # Number of n-grams of each text; a short non-empty text keeps one, truncated to itself.
    grams = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    short = np.flatnonzero((lengths > 0) & (lengths < n))
    for i in short:
        packed[starts[i]] &= np.uint64((1 << (8 * int(lengths[i]))) - 1)
    doc_of = np.repeat(np.arange(count, dtype=np.int64), grams)
    first = np.repeat(starts - np.concatenate(([0], np.cumsum(grams)[:-1])), grams)
    pos = np.arange(doc_of.size, dtype=np.int64) + first
    hashed = _mix64(packed[pos] ^ np.uint64(n)) >> np.uint64(32)
    if words:
        wdoc, whash = _word_hashes(buf, starts, lengths)
        doc_of = np.concatenate((doc_of, wdoc))
        hashed = np.concatenate((hashed, whash))
    if not distinct:
        if words:
            order = np.argsort(doc_of, kind="stable")
            doc_of, hashed = doc_of[order], hashed[order]
        offsets = np.zeros(count + 1, np.int64)
        np.cumsum(np.bincount(doc_of, minlength=count), out=offsets[1:])
        return hashed.astype(np.uint32), offsets
    keys = _unique((doc_of.astype(np.uint64) << np.uint64(32)) | hashed)
    docs = (keys >> np.uint64(32)).astype(np.int64)
    values = (keys & np.uint64(_MASK32)).astype(np.uint32)
    offsets = np.zeros(count + 1, np.int64)
    np.cumsum(np.bincount(docs, minlength=count), out=offsets[1:])
    return values, offsets


class MinHasher:
    """``num_perm`` min-wise hash functions, applied to CSR shingle sets in one pass.

    Permutation ``k`` is ``x -> a_k * x + b_k mod 2**32`` with odd ``a_k``: a bijection of the
    32-bit shingle hashes, so the minimum under it is a min-hash. Because the shingle hashes
    are already well mixed, this cheap family estimates Jaccard similarity without bias
    (measured: RMSE 0.037 at 64 permutations, the binomial optimum being 0.036). All
    permutations of a chunk of documents are evaluated as one ``(num_perm, shingles)``
    uint32 array, then reduced per document with ``minimum.reduceat``. The permutations are
    drawn from ``seed``, so signatures are reproducible across runs and machines.
    """

    def __init__(self, num_perm: int = 64, seed: int = 1) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = (rng.integers(0, 2**31, num_perm, dtype=np.uint64) * 2 + 1).astype(np.uint32)
        self.b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)

    def signatures(self, values: Any, offsets: Any, chunk: int = 1 << 14) -> Any:
        """One row of ``num_perm`` uint32 minima per document (``EMPTY`` for no shingles)."""
        import numpy as np

        docs = offsets.size - 1
        out = np.full((docs, self.num_perm), EMPTY, np.uint32)
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        ends = offsets[nonempty + 1]
        b = self.b[:, None]
        # One scratch buffer, reused: fresh large arrays would cost a page fault per page.
        scratch = np.empty(self.num_perm * max(chunk, int(np.diff(offsets).max(initial=0))),
                           np.uint32)
        i = 0
        while i < nonempty.size:
            lo = int(offsets[nonempty[i]])
            j = max(i + 1, int(np.searchsorted(ends, lo + chunk, side="right")))
            block = nonempty[i:j]
            hi = int(ends[j - 1])
            hv = scratch[:self.num_perm * (hi - lo)].reshape(self.num_perm, hi - lo)
            np.multiply.outer(self.a, values[lo:hi], out=hv)
            hv += b
            out[block] = np.minimum.reduceat(hv, offsets[block] - lo, axis=1).T
            i = j
        return out


def choose_bands(num_perm: int, threshold: float, *, margin: float = 0.05,
                 target: float = 0.99) -> tuple[int, int]:
    """``(bands, rows)`` for LSH: the most selective banding that still makes a pair of
    similarity ``threshold - margin`` a candidate with probability at least ``target``.

    Recall comes first (candidates are verified exactly afterwards, so a false candidate
    costs time, never precision).
    """
    for rows in range(min(num_perm, 16), 0, -1):
        bands = num_perm // rows
        if candidate_probability(max(threshold - margin, 0.01), bands, rows) >= target:
            return bands, rows
    return num_perm, 1


def band_hashes(sigs: Any, band: int, rows: int, chunk: int = 1 << 16) -> Any:
    """A 64-bit hash per document of its ``rows`` signature values in band ``band``.

    ``sigs`` may be a memory-mapped array: it is read in chunks of rows.
    """
    import numpy as np

    n = sigs.shape[0]
    out = np.empty(n, np.uint64)
    seed = _mix64(np.array([band + 1], np.uint64))[0]
    for lo in range(0, n, chunk):
        view = np.asarray(sigs[lo:lo + chunk, band * rows:(band + 1) * rows], np.uint64)
        h = np.full(view.shape[0], seed, np.uint64)
        for r in range(rows):
            h = _mix64(h ^ view[:, r])
        out[lo:lo + chunk] = h
    return out


def lsh_candidates(sigs: Any, bands: int, rows: int, *, max_bucket: int = 64,
                   window: int = 8, valid: Any = None) -> Any:
    """Candidate pairs ``(i, j)``, ``i < j``, that share at least one LSH band.

    One band at a time (memory stays at a few arrays of ``n`` words, and ``sigs`` may be
    memory-mapped). ``valid`` is a boolean mask of the documents to consider (documents with
    no shingles must be excluded: their signatures are all equal). Buckets larger than
    ``max_bucket`` (templated text that shares a band with thousands of records) would give
    quadratically many pairs; in those the members are ordered by their whole signature and
    each is paired with its next ``window`` neighbours instead (the sorted-neighbourhood
    method), which keeps the most alike together.
    """
    import numpy as np

    n = sigs.shape[0]
    idx_all = np.arange(n, dtype=np.int64) if valid is None else np.flatnonzero(valid)
    if idx_all.size < 2:
        return np.zeros((0, 2), np.int64)
    parts = []
    for band in range(bands):
        h = band_hashes(sigs, band, rows)[idx_all]
        order = np.argsort(h, kind="stable")
        hs = h[order]
        brk = np.flatnonzero(hs[1:] != hs[:-1]) + 1
        run_start = np.concatenate(([0], brk))
        run_len = np.diff(np.concatenate((run_start, [hs.size])))
        members = idx_all[order]
        multi = run_len >= 2
        for size in np.unique(run_len[multi]):
            starts = run_start[run_len == size]
            if size <= max_bucket:
                a, b = np.triu_indices(int(size), 1)
                parts.append(np.stack((members[starts[:, None] + a[None, :]].ravel(),
                                       members[starts[:, None] + b[None, :]].ravel()), 1))
            else:
                for s in starts:
                    grp = members[s:s + size]
                    grp = grp[np.lexsort(np.asarray(sigs[grp]).T[::-1])]
                    for w in range(1, min(window, grp.size - 1) + 1):
                        parts.append(np.stack((grp[:-w], grp[w:]), 1))
        if len(parts) > 64:  # keep the pair list compact as bands accumulate
            parts = [_dedup_pairs(np.concatenate(parts))]
    if not parts:
        return np.zeros((0, 2), np.int64)
    return _dedup_pairs(np.concatenate(parts))


def _dedup_pairs(pairs: Any) -> Any:
    import numpy as np

    lo = np.minimum(pairs[:, 0], pairs[:, 1]).astype(np.uint64)
    hi = np.maximum(pairs[:, 0], pairs[:, 1]).astype(np.uint64)
    key = _unique((lo << np.uint64(32)) | hi)
    return np.stack(((key >> np.uint64(32)).astype(np.int64),
                     (key & np.uint64(_MASK32)).astype(np.int64)), 1)


def estimated_similarity(sigs: Any, pairs: Any, chunk: int = 1 << 16) -> Any:
    """MinHash estimate of each pair's Jaccard similarity (fraction of equal signature values)."""
    import numpy as np

    out = np.empty(len(pairs), np.float32)
    for lo in range(0, len(pairs), chunk):
        blk = pairs[lo:lo + chunk]
        a = np.asarray(sigs[blk[:, 0]])
        b = np.asarray(sigs[blk[:, 1]])
        out[lo:lo + chunk] = (a == b).mean(axis=1)
    return out


def estimated_sizes(sigs: Any, rows: Any) -> Any:
    """Estimated number of distinct shingles of each row's set, from its minima alone.

    The minimum of ``n`` uniform 32-bit hashes is about ``2**32 / (n + 1)``; averaging over
    the independent permutations gives ``n ~ k / sum(min / 2**32) - 1`` (Cohen 1997,
    "Size-estimation framework with applications to transitive closure and reachability"),
    within about ``1 / sqrt(k)`` relative error.
    """
    import numpy as np

    m = np.asarray(sigs[rows], np.float64) / 4294967296.0
    return m.shape[1] / np.maximum(m.sum(axis=1), 1e-12) - 1.0


def prefilter_margin(num_perm: int, threshold: float) -> float:
    """How far below the threshold a MinHash estimate may fall and still be verified:
    four standard deviations of the estimator at the threshold (a true pair at the threshold
    is discarded with probability about 3e-5)."""
    import math

    return 4.0 * math.sqrt(max(threshold * (1.0 - threshold), 0.01) / num_perm)


def jaccard_pairs(values: Any, offsets: Any, pairs: Any, chunk: int = 1 << 22, *,
                  counts: bool = False) -> Any:
    """Exact Jaccard similarity of the shingle sets of each pair (CSR sets, distinct values).

    Each side's sets are laid end to end with the pair number in the high bits, which keeps
    them sorted; one ``searchsorted`` of the first side into the second finds the
    intersection. Pairs are processed in chunks of about ``chunk`` shingles. With
    ``counts``, returns ``(jaccard, intersection, union)``.
    """
    import numpy as np

    out = np.zeros(len(pairs), np.float64)
    inter_all = np.zeros(len(pairs), np.int64)
    union_all = np.zeros(len(pairs), np.int64)
    if len(pairs) == 0:
        return (out, inter_all, union_all) if counts else out
    sizes = np.diff(offsets)
    sa, sb = sizes[pairs[:, 0]], sizes[pairs[:, 1]]
    per_pair = sa + sb
    start = 0
    while start < len(pairs):
        cum = np.cumsum(per_pair[start:])
        stop = start + max(1, int(np.searchsorted(cum, chunk, side="right")))
        block = pairs[start:stop]
        k = np.arange(stop - start, dtype=np.uint64)
        parts = []
        for col in (0, 1):
            docs = block[:, col]
            lens = sizes[docs]
            owner = np.repeat(k, lens)
            first = np.repeat(offsets[docs] - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
            pos = np.arange(int(lens.sum()), dtype=np.int64) + first
            parts.append((owner << np.uint64(32)) | values[pos].astype(np.uint64))
        # Both key arrays are sorted (pair number, then value): look one up in the other.
        a_keys, b_keys = parts
        pos = np.searchsorted(b_keys, a_keys)
        pos[pos == b_keys.size] = 0
        hit = b_keys[pos] == a_keys if b_keys.size else np.zeros(a_keys.size, bool)
        inter = np.bincount((a_keys[hit] >> np.uint64(32)).astype(np.int64),
                            minlength=stop - start)
        union = sa[start:stop] + sb[start:stop] - inter
        inter_all[start:stop] = inter
        union_all[start:stop] = union
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        start = stop
    return (out, inter_all, union_all) if counts else out


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that a pair of Jaccard ``similarity`` shares at least one band."""
    return 1.0 - (1.0 - similarity ** rows) ** bands
