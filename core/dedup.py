"""Exact and near-duplicate removal that keeps the best member of each group.

*Exact*: records whose normalised text (case-folded, whitespace collapsed) has the same
64-bit hash form a group. *Near*: MinHash LSH (Broder 1997; Leskovec, Rajaraman & Ullman,
*Mining of Massive Datasets* ch. 3) over character n-gram shingles proposes candidate pairs;
a MinHash estimate far below the threshold discards a candidate cheaply, and every other
candidate is verified by the true Jaccard similarity of its two shingle sets. Only verified
pairs (similarity >= threshold) ever merge records.

Groups are formed greedily in priority order: the best remaining record becomes a keeper
and absorbs its verified neighbours that are not yet taken. A dropped record therefore
always names a keeper it is itself similar to (no chaining A~B~C that would drop C for A).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpkit.core.minhash import (
    EMPTY,
    MinHasher,
    choose_bands,
    estimated_similarity,
    jaccard_pairs,
    lsh_candidates,
    normalize,
    prefilter_margin,
    shingle_hashes,
)

DEFAULT_THRESHOLD = 0.7
DEFAULT_SHINGLE = 3
DEFAULT_NUM_PERM = 128


def text_hash(normalized: str) -> int:
    """64-bit hash of an already normalised text (exact duplicates share it)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(),
                          "little")


@dataclass
class NearDupParams:
    """Near-duplicate settings: Jaccard ``threshold`` on character ``shingle``-grams."""

    threshold: float = DEFAULT_THRESHOLD
    shingle: int = DEFAULT_SHINGLE
    num_perm: int = DEFAULT_NUM_PERM
    seed: int = 1
    bands: int = 0  # 0: chosen from threshold and num_perm (choose_bands)
    rows: int = 0

    def banding(self) -> tuple[int, int]:
        if self.bands and self.rows:
            return self.bands, self.rows
        return choose_bands(self.num_perm, self.threshold)


@dataclass
class DedupStats:
    exact: int = 0
    near: int = 0
    candidates: int = 0
    verified: int = 0
    groups: int = 0
    largest_group: int = 1
    group_sizes: dict[int, int] = field(default_factory=dict)


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
                    pair_chunk: int = 1 << 18) -> tuple[Any, Any, DedupStats]:
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
    bands, rows = params.banding()
    cand = lsh_candidates(sigs, bands, rows, valid=valid)
    stats.candidates = len(cand)
    if on_progress:
        on_progress(f"near-dup: {len(cand):,} LSH candidate pairs ({bands} bands x {rows})")
    if len(cand):
        est = estimated_similarity(sigs, cand)
        cand = cand[est >= params.threshold - prefilter_margin(params.num_perm,
                                                               params.threshold)]
    edges: list[Any] = []
    sims: list[Any] = []
    for lo in range(0, len(cand), pair_chunk):
        block = cand[lo:lo + pair_chunk]
        docs, local = np.unique(block, return_inverse=True)
        local = local.reshape(block.shape)
        values, offsets = shingle_hashes(texts_of(docs), params.shingle)
        jac = jaccard_pairs(values, offsets, local)
        keep = jac >= params.threshold
        edges.append(block[keep])
        sims.append(jac[keep].astype(np.float32))
    if not edges or not sum(len(e) for e in edges):
        return kept_of, similarity, stats
    e = np.concatenate(edges)
    s = np.concatenate(sims)
    stats.verified = len(e)
    # Adjacency in both directions, then greedy groups in priority order.
    src = np.concatenate((e[:, 0], e[:, 1]))
    dst = np.concatenate((e[:, 1], e[:, 0]))
    sim2 = np.concatenate((s, s))
    order = np.lexsort((priority[dst], src))
    src, dst, sim2 = src[order], dst[order], sim2[order]
    nodes = np.unique(src)
    starts = np.searchsorted(src, nodes)
    stops = np.searchsorted(src, nodes, side="right")
    span = {int(v): (int(a), int(b)) for v, a, b in zip(nodes, starts, stops, strict=True)}
    prio = priority
    for i in nodes[np.argsort(prio[nodes], kind="stable")]:
        i = int(i)
        if kept_of[i] != -1:
            continue
        a, b = span[i]
        for j, sj in zip(dst[a:b].tolist(), sim2[a:b].tolist(), strict=True):
            if kept_of[j] == -1 and prio[j] > prio[i]:
                kept_of[j] = i
                similarity[j] = sj
    return kept_of, similarity, stats


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
           "signatures_for", "text_hash"]
