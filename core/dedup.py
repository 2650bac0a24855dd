"""Exact and near-duplicate removal that keeps the best member of each group.

*Exact*: records whose normalised text (case-folded, whitespace collapsed) has the same
64-bit hash form a group. *Near*: MinHash LSH (Broder 1997; Leskovec, Rajaraman & Ullman,
*Mining of Massive Datasets* ch. 3) over shingles (character trigrams and words) proposes
candidate pairs; a MinHash estimate far below the thresholds discards a candidate cheaply,
and every other candidate is verified on its two true shingle sets. Only verified pairs ever
merge records. A pair is a near duplicate when

- its sets differ by at most ``max_diff`` shingles (13: about one dropped word or two
  swapped words, whatever the length of the text) and their Jaccard similarity is still at
  least ``floor`` (0.6), or
- its Jaccard similarity is at least ``threshold`` (0.85): long texts with several small
  edits;

and, when the longer text has at most ``edit_check_words`` words (64), the two texts are
also within ``max(word_edits, word_edit_share x words)`` word edits (2 and 10%: words
inserted, deleted or replaced). Words are counted two ways and either may pass: as written
(separated by whitespace, without the punctuation around them), where dropping
"$<<2*2=4>>4" is one edit, and as runs of letters and digits, where "4 ** 3" / "4**3" and
"Here is" / "Here's" are at most one.

One small edit changes a roughly constant number of shingles, which is a large fraction of a
five-word claim (Jaccard 0.65-0.75) but a small one of a paragraph: the difference rule
finds small edits at any length, where a Jaccard threshold low enough for short texts would
merge paraphrases of long ones. Measured on 200k real records with 10% planted one-word
edits (``bench/select_data.py``): Jaccard alone reaches 97.6% recall at 98.7% precision (0.77);
the two shingle rules together (13 shingles, 0.85) 98.5% at 99.0%. Nearly all their false
pairs are short texts that share most of their characters but differ by three to six
words, a third of a twelve-word sentence: "There are a total of 7 x 8 = 56 slices" /
"There are 7 x 8 = 56 slices", "The Palace of Caserta is near Naples" / "Naples is near
the Palace of Caserta", "Fist of Legend is a remake." / "Fist of Legend is a remake of Fist
of Fury.". The word-edit check rejects those and keeps every dropped word and every pair of
swapped words (98.5% at 99.9%). It stops at 64 words: there the Jaccard threshold already
bounds the share of changed words, a moved sentence (many word edits, the same shingles) is
still a near duplicate, and the distance costs time in proportion to the product of the
lengths.

Verified pairs must not change a number (``same_numbers``): when each text has a number the
other lacks ("released in 2011" / "released in 2014", two GSM8K problems that differ in one
quantity) they are different records however similar their text. A number present in only
one of them is a dropped word like any other.

Groups are formed greedily in priority order: the best remaining record becomes a keeper
and absorbs its verified neighbours that are not yet taken. A dropped record therefore
always names a keeper it is itself similar to (no chaining A~B~C that would drop C for A),
the most similar one among those verified. Verification is lazy, in rounds of records in
priority order: only edges from a still-undecided record are checked, so a dense cluster of
templated records costs about (keepers x members) checks, not members squared.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpkit.core.minhash import (
    EMPTY,
    MinHasher,
    choose_bands,
    estimated_similarity,
    estimated_sizes,
    jaccard_pairs,
    lsh_candidates,
    normalize,
    prefilter_margin,
    shingle_hashes,
    word_sequences,
)

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
DEFAULT_THRESHOLD = 0.85
DEFAULT_MAX_DIFF = 13
DEFAULT_FLOOR = 0.6
DEFAULT_SHINGLE = 3
DEFAULT_WORD_EDITS = 2
DEFAULT_WORD_EDIT_SHARE = 0.1
DEFAULT_EDIT_CHECK_WORDS = 64
# Set sizes estimated from 128 minima are within ~9% (one standard deviation); a set is
# "small" for the difference rule up to 1.4x the bound, about four deviations of slack.
SIZE_MARGIN = 1.4
DEFAULT_NUM_PERM = 128


def text_hash(normalized: str) -> int:
    """64-bit hash of an already normalised text (exact duplicates share it)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(),
                          "little")


@dataclass
class NearDupParams:
    """Near-duplicate settings: Jaccard ``threshold`` on the shingle sets (character
    ``shingle``-grams and words), or at most ``max_diff`` differing shingles with a Jaccard
    similarity of at least ``floor``; texts of up to ``edit_check_words`` words must also be
    within ``max(word_edits, word_edit_share x words)`` word edits (``edit_check_words=0``
    turns that check off)."""

    threshold: float = DEFAULT_THRESHOLD
    max_diff: int = DEFAULT_MAX_DIFF
    floor: float = DEFAULT_FLOOR
    shingle: int = DEFAULT_SHINGLE
    num_perm: int = DEFAULT_NUM_PERM
    seed: int = 1
    bands: int = 0  # 0: chosen from threshold and num_perm (choose_bands)
    rows: int = 0
    same_numbers: bool = True
    word_edits: int = DEFAULT_WORD_EDITS
    word_edit_share: float = DEFAULT_WORD_EDIT_SHARE
    edit_check_words: int = DEFAULT_EDIT_CHECK_WORDS

    def within_edits(self, a: Sequence[Hashable], b: Sequence[Hashable]) -> bool:
        """Whether two word sequences are within ``max(word_edits, word_edit_share x the
        longer's length)`` word edits."""
        budget = max(self.word_edits, int(max(len(a), len(b)) * self.word_edit_share))
        return abs(len(a) - len(b)) <= budget and word_edit_distance(a, b) <= budget

    @property
    def lowest(self) -> float:
        """The lowest similarity a verified pair can have."""
        return min(self.threshold, self.floor) if self.max_diff > 0 else self.threshold

    def accept(self, jaccard: Any, inter: Any, union: Any) -> Any:
        """Which verified pairs are near duplicates (arrays of similarity and set counts)."""
        ok = jaccard >= self.threshold
        if self.max_diff > 0:
            ok |= ((union - inter) <= self.max_diff) & (jaccard >= self.floor)
        return ok


@dataclass
class DedupStats:
    exact: int = 0
    near: int = 0
    candidates: int = 0
    verified: int = 0
    number_mismatch: int = 0
    too_many_edits: int = 0
    groups: int = 0
    largest_group: int = 1
    group_sizes: dict[int, int] = field(default_factory=dict)


def number_key(text: str) -> tuple[str, ...]:
    """The numbers in a text, sorted."""
    return tuple(sorted(_NUMBER.findall(text)))


def numbers_changed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when each side has a number the other lacks (a changed number, not a dropped
    one)."""
    if a == b:
        return False
    ca, cb = Counter(a), Counter(b)
    return bool(ca - cb) and bool(cb - ca)


def word_edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance between two word sequences (insertions, deletions and
    replacements of whole words).

    Myers' bit-parallel algorithm (Myers 1999, "A fast bit-vector algorithm for approximate
    string matching"; global distance as in Hyyrö 2001): one column of the DP matrix is two
    bit vectors over the shorter sequence, so each word of the longer one costs a handful of
    integer operations. A common prefix and suffix are skipped first (they never change the
    distance), so a dropped word or two swapped words cost a few comparisons.
    """
    lo, la, lb = 0, len(a), len(b)
    while lo < la and lo < lb and a[lo] == b[lo]:
        lo += 1
    while la > lo and lb > lo and a[la - 1] == b[lb - 1]:
        la -= 1
        lb -= 1
    a, b = a[lo:la], b[lo:lb]
    if len(a) > len(b):
        a, b = b, a
    m = len(a)
    if m == 0:
        return len(b)
    peq: dict[Hashable, int] = {}
    for i, w in enumerate(a):
        peq[w] = peq.get(w, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for w in b:
        eq = peq.get(w, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def signatures_for(texts: Sequence[str], params: NearDupParams,
                   hasher: MinHasher | None = None) -> Any:
    """MinHash signatures (``len(texts) x num_perm`` uint32) of normalised texts."""
    hasher = hasher or MinHasher(params.num_perm, params.seed)
    values, offsets = shingle_hashes(texts, params.shingle, distinct=False)
    return hasher.signatures(values, offsets)


def exact_duplicates(hashes: Any, priority: Any, active: Any) -> Any:
    """``kept_of`` for exact duplicates: -1 for keepers (and inactive records), else the
    index of the record kept in its place (the group member with the lowest ``priority``)."""
    import numpy as np

    n = hashes.size
    kept_of = np.full(n, -1, np.int64)
    idx = np.flatnonzero(active)
    if idx.size < 2:
        return kept_of
    order = idx[np.lexsort((priority[idx], hashes[idx]))]
    h = hashes[order]
    first = np.ones(order.size, bool)
    first[1:] = h[1:] != h[:-1]
    leader = order[np.maximum.accumulate(np.where(first, np.arange(order.size), 0))]
    dup = ~first
    kept_of[order[dup]] = leader[dup]
    return kept_of


def near_duplicates(sigs: Any, texts_of: Callable[[Any], list[str]], priority: Any,
                    active: Any, params: NearDupParams,
                    on_progress: Callable[[str], None] | None = None,
                    verify_round: int = 256) -> tuple[Any, Any, DedupStats]:
    """Near duplicates among ``active`` records.

    ``sigs`` holds one MinHash signature per record (memory-mapped is fine), ``texts_of``
    returns the normalised texts of an array of record indices (for verification), and a
    lower ``priority`` wins. Returns ``(kept_of, similarity, stats)``: ``kept_of[i]`` is the
    keeper that replaces ``i`` (-1 if ``i`` stays) and ``similarity[i]`` their verified
    Jaccard similarity.
    """
    import numpy as np

    n = sigs.shape[0]
    kept_of = np.full(n, -1, np.int64)
    similarity = np.zeros(n, np.float32)
    stats = DedupStats()
    valid = np.asarray(active, bool).copy()
    if n:
        valid &= np.asarray(sigs[:, 0]) != EMPTY  # no shingles: nothing to compare
    # Two tiers of LSH: every record at the main threshold; records with small shingle sets
    # (the only ones that can meet the difference rule) also at the lower floor.
    bands, rows = choose_bands(params.num_perm, params.threshold) if not (
        params.bands and params.rows) else (params.bands, params.rows)
    cand = lsh_candidates(sigs, bands, rows, valid=valid)
    tiers = f"{bands} bands x {rows}"
    est_size = np.zeros(n)
    idx = np.flatnonzero(valid)
    for lo in range(0, idx.size, 65536):
        est_size[idx[lo:lo + 65536]] = estimated_sizes(sigs, idx[lo:lo + 65536])
    if params.max_diff > 0 and params.floor < params.threshold:
        small = valid & (est_size <= SIZE_MARGIN * params.max_diff / (1.0 - params.threshold))
        # Short texts' near duplicates sit well above the floor (a one-word edit of a
        # five-word claim: Jaccard 0.65-0.75), so this tier asks P(candidate) >= 0.98 at the
        # floor itself, which keeps the flood of 0.2-0.4 pairs between short texts down.
        b2, r2 = choose_bands(params.num_perm, params.floor, margin=0.0, target=0.98)
        if small.sum() >= 2 and (b2, r2) != (bands, rows):
            more = lsh_candidates(sigs, b2, r2, valid=small)
            if len(more):
                cand = np.unique(np.concatenate((cand, more)), axis=0)
            tiers += f"; {int(small.sum()):,} short texts also at {b2} bands x {r2}"
    stats.candidates = len(cand)
    if on_progress:
        on_progress(f"near-dup: {len(cand):,} LSH candidate pairs ({tiers})")
    if len(cand):
        est = estimated_similarity(sigs, cand)
        low = params.lowest
        need = np.full(len(cand), params.threshold - prefilter_margin(params.num_perm,
                                                                       params.threshold))
        if low < params.threshold:
            # The difference rule needs union <= max_diff / (1 - J) < max_diff / (1 - t):
            # only pairs of small sets can meet it (sizes estimated, with a margin).
            small_sets = SIZE_MARGIN * params.max_diff / (1.0 - params.threshold)
            size = np.maximum(est_size[cand[:, 0]], est_size[cand[:, 1]])
            need[size <= small_sets] = low - prefilter_margin(params.num_perm, low)
        cand = cand[est >= need]
    if len(cand) == 0:
        return kept_of, similarity, stats
    # Shingle sets of every record that is in a candidate pair, computed once (CSR).
    docs = np.unique(cand)
    local_of = np.full(n, -1, np.int64)
    local_of[docs] = np.arange(docs.size)
    vals: list[Any] = []
    offs = [np.zeros(1, np.int64)]
    nums: list[tuple[str, ...]] = []
    # The words of the texts short enough for the word-edit check, in order, as 64-bit hashes
    # (CSR), both as written and as runs of letters and digits: Python lists of strings for
    # every candidate record would cost hundreds of MB.
    check = params.edit_check_words > 0
    written: list[tuple[Any, Any]] = []
    runs: list[tuple[Any, Any]] = []
    base = 0
    for lo in range(0, docs.size, 4096):
        texts = texts_of(docs[lo:lo + 4096])
        v, o = shingle_hashes(texts, params.shingle)
        vals.append(v)
        offs.append(o[1:] + base)
        base += int(o[-1])
        if params.same_numbers:
            nums.extend(number_key(t) for t in texts)
        if check:
            (tv, to), (rv, ro) = word_sequences(texts, params.edit_check_words)
            written.append((tv, np.diff(to)))
            runs.append((rv, np.diff(ro)))
    values = np.concatenate(vals)
    offsets = np.concatenate(offs)
    words = {False: _csr(written, docs.size), True: _csr(runs, docs.size)} if check else {}
    del written, runs

    def words_of(i: int, as_runs: bool) -> list[int]:
        v, o = words[as_runs]
        return v[o[i]:o[i + 1]].tolist()

    # Both directions, each record's neighbours in priority order.
    src = np.concatenate((cand[:, 0], cand[:, 1]))
    dst = np.concatenate((cand[:, 1], cand[:, 0]))
    order = np.lexsort((priority[dst], priority[src]))
    src, dst = src[order], dst[order]
    nodes, starts = np.unique(src, return_index=True)
    stops = np.append(starts[1:], src.size)
    span = {int(v): (int(a), int(b)) for v, a, b in zip(nodes, starts, stops, strict=True)}
    undecided, keeper, dropped = 0, 1, 2
    state = np.zeros(n, np.int8)
    # Greedy in priority order, verified lazily: a round takes the next undecided records,
    # verifies their edges to records still undecided (an edge between two dropped records
    # never needs checking), then settles the round in order.
    best_keeper: dict[int, tuple[float, int]] = {}
    queue = nodes[np.argsort(priority[nodes], kind="stable")]
    pos = 0
    while pos < queue.size:
        round_ = []
        while pos < queue.size and len(round_) < verify_round:
            i = int(queue[pos])
            pos += 1
            if state[i] == undecided:
                round_.append(i)
        if not round_:
            break
        pa, pb = [], []
        for i in round_:
            a, b = span[i]
            js = dst[a:b]
            js = js[(state[js] == undecided) & (priority[js] > priority[i])]
            pa.append(np.full(js.size, i, np.int64))
            pb.append(js)
        ea, eb = np.concatenate(pa), np.concatenate(pb)
        jac = np.zeros(0)
        stats.verified += int(ea.size)
        if ea.size:
            jac, inter, union = jaccard_pairs(
                values, offsets, np.stack((local_of[ea], local_of[eb]), 1), counts=True)
            ok = params.accept(jac, inter, union)
            for k in np.flatnonzero(ok).tolist() if params.same_numbers or check else ():
                la, lb = int(local_of[ea[k]]), int(local_of[eb[k]])
                if params.same_numbers and numbers_changed(nums[la], nums[lb]):
                    ok[k] = False
                    stats.number_mismatch += 1
                elif check:
                    wo = words[False][1]
                    if wo[la + 1] == wo[la] or wo[lb + 1] == wo[lb]:
                        continue  # a text over edit_check_words words: not checked
                    if not any(params.within_edits(words_of(la, r), words_of(lb, r))
                               for r in (False, True)):
                        ok[k] = False
                        stats.too_many_edits += 1
            ea, eb, jac = ea[ok], eb[ok], jac[ok]
        accepted: dict[int, list[tuple[int, float]]] = {}
        for a, b, j in zip(ea.tolist(), eb.tolist(), jac.tolist(), strict=True):
            accepted.setdefault(a, []).append((b, j))
        for i in round_:
            if state[i] != undecided:
                continue
            state[i] = keeper
            for j, sj in accepted.get(i, ()):
                if state[j] == undecided:
                    state[j] = dropped
                    kept_of[j] = i
                    similarity[j] = sj
                    best_keeper[j] = (sj, i)
                elif state[j] == dropped and sj > best_keeper[j][0]:
                    # A dropped record names the keeper most similar to it.
                    best_keeper[j] = (sj, i)
    for j, (sj, i) in best_keeper.items():
        kept_of[j] = i
        similarity[j] = sj
    return kept_of, similarity, stats


def _csr(chunks: list[tuple[Any, Any]], size: int) -> tuple[Any, Any]:
    """(values, offsets) from chunks of (values, count per row)."""
    import numpy as np

    offsets = np.zeros(size + 1, np.int64)
    if chunks:
        np.cumsum(np.concatenate([c for _, c in chunks]), out=offsets[1:])
    return np.concatenate([v for v, _ in chunks]) if chunks else np.zeros(0, np.uint64), offsets


def group_sizes(kept_of: Any) -> dict[int, int]:
    """Histogram ``{group size: number of groups}`` over groups with duplicates."""
    import numpy as np

    dropped = kept_of[kept_of >= 0]
    if dropped.size == 0:
        return {}
    _, counts = np.unique(dropped, return_counts=True)
    sizes, freq = np.unique(counts + 1, return_counts=True)
    return {int(s): int(f) for s, f in zip(sizes, freq, strict=True)}


__all__ = ["DEFAULT_NUM_PERM", "DEFAULT_SHINGLE", "DEFAULT_THRESHOLD", "DedupStats",
           "NearDupParams", "exact_duplicates", "group_sizes", "near_duplicates", "normalize",
           "signatures_for", "text_hash", "word_edit_distance"]
