"""Diversity over text sketches: TF-IDF feature hashing, k-means, k-center, facility location.

No embedding model is needed: each text becomes a TF-IDF vector of its words, hashed with
random signs into ``dim`` buckets (feature hashing, Weinberger et al. 2009, which keeps
inner products in expectation) and L2-normalised, so a dot product approximates the TF-IDF
cosine similarity. MinHash signatures are the other sketch on offer (similarity = fraction
of equal values, i.e. estimated Jaccard). Embeddings from a local model plug in later as one
more sketch.

- **k-center greedy** (Sener & Savarese 2018, "Active Learning for Convolutional Neural
  Networks: A Core-Set Approach"; Gonzalez 1985): repeatedly pick the record farthest from
  everything picked so far, a 2-approximation of the minimax cover.
- **facility location** (Nemhauser, Wolsey & Fisher 1978; used for data subsets by
  Mirzasoleiman et al. 2020, CRAIG): maximise ``sum_d max_{s in S} sim(d, s)`` greedily
  (a 1 - 1/e approximation, the function being monotone submodular), with lazy gain
  evaluation (Minoux 1978). The demand points are a seeded sample of the pool when the
  pool is large.
- **spherical k-means** (k-means++ seeding, Arthur & Vassilvitskii 2007) gives the
  ``cluster`` of every record and LEAD's clusters.

All generators yield picks lazily, so a budget stops them as soon as it is filled.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_WORD = re.compile(r"\w+")
DEFAULT_DIM = 256


def tfidf_sketches(texts: Callable[[Any], list[str]], indices: Any, *, dim: int = DEFAULT_DIM,
                   chunk: int = 4096) -> Any:
    """Hashed, L2-normalised TF-IDF vectors (``len(indices) x dim`` float32).

    ``texts(idx)`` returns the texts of an array of indices; they are read twice (document
    frequencies, then vectors), a chunk at a time. Weights are ``(1 + log tf) * idf`` with
    ``idf = log((1 + N) / (1 + df)) + 1``.
    """
    import numpy as np

    indices = np.asarray(indices, np.int64)
    n = indices.size
    vocab: dict[str, int] = {}
    ids: list[int] = []
    lens = np.zeros(n, np.int64)
    k = 0
    for lo in range(0, n, chunk):
        for text in texts(indices[lo:lo + chunk]):
            setdef = vocab.setdefault
            row = [setdef(t, len(vocab)) for t in _WORD.findall(text.lower())]
            ids.extend(row)
            lens[k] = len(row)
            k += 1
    out = np.zeros((n, dim), np.float32)
    if not vocab:
        return out
    words = list(vocab)
    h = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), np.uint64, len(words))
    h = (h * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)
    bucket = (h % np.uint64(dim)).astype(np.int64)
    sign = np.where((h >> np.uint64(40)) & np.uint64(1), 1.0, -1.0).astype(np.float32)
    # (document, word) keys sorted once: distinct pairs and their term frequencies.
    doc = np.repeat(np.arange(n, dtype=np.uint64), lens)
    keys = np.sort((doc << np.uint64(32)) | np.asarray(ids, np.uint64))
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(first)
    tf_all = np.diff(np.append(starts, keys.size))
    uk = keys[starts]
    row = (uk >> np.uint64(32)).astype(np.int64)
    ids_all = (uk & np.uint64(0xFFFFFFFF)).astype(np.int64)
    df = np.bincount(ids_all, minlength=len(words)).astype(np.float64)
    idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    w = (1.0 + np.log(tf_all.astype(np.float32))) * idf[ids_all] * sign[ids_all]
    np.add.at(out, (row, bucket[ids_all]), w)
    norms = np.linalg.norm(out, axis=1)
    out /= np.maximum(norms, 1e-12)[:, None]
    return out


# ------------------------------------------------------------------ similarity backends


class Sketches:
    """A pool's sketch vectors with one similarity: cosine (dense) or MinHash agreement."""

    def __init__(self, data: Any, kind: str) -> None:
        self.data = data
        self.kind = kind  # "dense" or "minhash"

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def sim_to(self, i: int, rows: Any = None) -> Any:
        """Similarity of record ``i`` to every record (or to ``rows``)."""
        import numpy as np

        x = self.data if rows is None else self.data[rows]
        if self.kind == "dense":
            return x @ self.data[i]
        return (x == self.data[i]).mean(axis=1, dtype=np.float32)

    def sim_matrix(self, rows: Any, cols: Any) -> Any:
        import numpy as np

        if self.kind == "dense":
            return self.data[rows] @ self.data[cols].T
        a = self.data[rows]
        b = self.data[cols]
        out = np.empty((len(rows), len(cols)), np.float32)
        for k in range(len(rows)):
            out[k] = (b == a[k]).mean(axis=1)
        return out


# ------------------------------------------------------------------ k-means


def kmeans(x: Any, k: int, seed: int = 0, iters: int = 10, sample: int = 20000) -> Any:
    """Spherical k-means labels for dense unit vectors ``x`` (k-means++ seeding on a sample)."""
    import numpy as np

    n = x.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, size=min(n, sample), replace=False) if n > sample else np.arange(n)
    xs = x[pick]
    centers = np.empty((k, x.shape[1]), np.float32)
    first = int(rng.integers(xs.shape[0]))
    centers[0] = xs[first]
    best = 1.0 - xs @ centers[0]
    for c in range(1, k):
        p = np.maximum(best, 0) ** 2
        total = p.sum()
        j = int(rng.choice(xs.shape[0], p=p / total)) if total > 0 else int(rng.integers(
            xs.shape[0]))
        centers[c] = xs[j]
        best = np.minimum(best, 1.0 - xs @ centers[c])
    for _ in range(iters):
        labels = (xs @ centers.T).argmax(axis=1)
        for c in range(k):
            members = xs[labels == c]
            if members.shape[0]:
                v = members.sum(axis=0)
                nv = np.linalg.norm(v)
                if nv > 0:
                    centers[c] = v / nv
    return assign(x, centers)


def assign(x: Any, centers: Any, chunk: int = 65536) -> Any:
    import numpy as np

    out = np.empty(x.shape[0], np.int64)
    for lo in range(0, x.shape[0], chunk):
        out[lo:lo + chunk] = (x[lo:lo + chunk] @ centers.T).argmax(axis=1)
    return out


# ------------------------------------------------------------------ greedy selections


def k_center_greedy(sk: Sketches, first: int) -> Iterator[tuple[int, float]]:
    """Farthest-first traversal from ``first``: yields ``(index, distance)`` where distance
    is 1 - similarity to the nearest earlier pick (the covering radius the pick removes)."""
    import numpy as np

    n = len(sk)
    if n == 0:
        return
    mind = 1.0 - sk.sim_to(first).astype(np.float32)
    mind[first] = -np.inf
    yield first, 1.0
    for _ in range(n - 1):
        j = int(np.argmax(mind))
        d = float(mind[j])
        if d == -np.inf:
            return
        yield j, max(d, 0.0)
        np.minimum(mind, 1.0 - sk.sim_to(j), out=mind)
        mind[j] = -np.inf


FL_MEMORY = 256 << 20  # bytes for the candidate x demand similarity matrix


def facility_location_greedy(sk: Sketches, demand: Any, tie_break: Any,
                             batch: int = 64) -> Iterator[tuple[int, float]]:
    """Lazy greedy maximisation of ``sum_{d in demand} max_{s in S} max(sim(d, s), 0)``.

    Yields ``(index, marginal gain / len(demand))``. The candidate x demand similarities
    are computed once, in blocks (the demand sample is trimmed so they fit ``FL_MEMORY``);
    upper bounds (stale gains) sit in a heap, the ``batch`` best are re-evaluated together
    and the best fresh gain is taken when no stale bound beats it (exact greedy). Once every
    gain is zero the remaining records follow in ``tie_break`` order with gain 0.
    """
    import heapq

    import numpy as np

    n = len(sk)
    demand = np.asarray(demand, np.int64)
    keep = max(64, min(demand.size, FL_MEMORY // max(4 * n, 1)))
    if keep < demand.size:
        demand = demand[np.linspace(0, demand.size - 1, keep).astype(np.int64)]
    m = max(demand.size, 1)
    sim = np.empty((n, demand.size), np.float32)
    for lo in range(0, n, 4096):
        rows = np.arange(lo, min(n, lo + 4096))
        sim[lo:lo + rows.size] = np.maximum(sk.sim_matrix(rows, demand), 0)
    cover = np.zeros(demand.size, np.float32)
    gains = sim.sum(axis=1)
    heap = [(-float(g), int(tie_break[i]), i) for i, g in enumerate(gains)]
    heapq.heapify(heap)
    while heap:
        if -heap[0][0] <= 1e-9:
            # Saturated: the rest add nothing measurable; keep a deterministic order.
            for _, _, j in sorted(heap, key=lambda t: t[1]):
                yield j, 0.0
            return
        top = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
        rows = np.asarray([t[2] for t in top], np.int64)
        fresh = np.maximum(sim[rows] - cover[None, :], 0).sum(axis=1)
        best = int(np.lexsort(([t[1] for t in top], -fresh))[0])
        bound = -heap[0][0] if heap else -1.0
        take = fresh[best] >= bound - 1e-9
        for k, t in enumerate(top):
            if k != best or not take:
                heapq.heappush(heap, (-float(fresh[k]), t[1], t[2]))
        if not take:
            continue  # a stale bound may still beat it: evaluate the next batch
        np.maximum(cover, sim[rows[best]], out=cover)
        yield int(rows[best]), float(fresh[best]) / m


def first_by(values: Sequence[float] | Any) -> int:
    """Index of the largest value (first on ties)."""
    import numpy as np

    return int(np.argmax(np.asarray(values)))
