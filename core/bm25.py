"""Okapi BM25 scored in-process over a sparse term-by-document weight matrix.

BM25 as in Robertson & Zaragoza (2009), "The Probabilistic Relevance Framework: BM25 and
Beyond", with the variants compared by Kamphuis et al. (2020): ``lucene`` (the default, and
bm25s's), ``robertson`` and ``atire``. For a document *d* and query *q*::

    score(d, q) = Σ_{t ∈ q} qtf(t) · idf(t) · tf(t,d) · c / (tf(t,d) + k1 · (1 − b + b·|d|/avgdl))

with ``c = 1`` (lucene, robertson) or ``k1 + 1`` (atire), and idf ``log(1 + (N − df + ½)/(df + ½))``
(lucene), ``log((N − df + ½)/(df + ½))`` floored at 0 (robertson), ``log(N/df)`` (atire).
Query terms count with their repeats, as in bm25s.

The weights are precomputed per (term, document) — "eager" scoring, as bm25s does — so a
batch of queries is one sparse product ``Q (queries × terms) @ W (terms × docs)`` followed
by a per-row top-k. The product and the top-k are fused by ``sparse_dot_topn`` (C++, several
threads) when it is installed; otherwise scipy's product and ``numpy.argpartition`` do it.
The store's postings tables are the source of truth; ``BM25Matrix`` is derived from them
and cached on disk keyed by the index's input hash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

VARIANTS = ("lucene", "robertson", "atire")


@dataclass(frozen=True)
class BM25Params:
    k1: float = 1.5
    b: float = 0.75
    variant: str = "lucene"

    def as_dict(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "variant": self.variant}


def idf(df: np.ndarray, n_docs: int, variant: str = "lucene") -> np.ndarray:
    """Inverse document frequency of each term (``df`` may contain zeros: unseen terms)."""
    df = df.astype(np.float64)
    if variant == "lucene":
        out = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    elif variant == "robertson":
        out = np.log(np.maximum((n_docs - df + 0.5) / (df + 0.5), 1.0))
    elif variant == "atire":
        out = np.log(n_docs / np.maximum(df, 1.0)) if n_docs else np.zeros_like(df)
    else:
        raise ValueError(f"unknown BM25 variant {variant!r}")
    return out.astype(np.float32)


def _cap(params: BM25Params) -> float:
    """The supremum of the tf component: what one fully matched query term can add (× idf)."""
    return params.k1 + 1.0 if params.variant == "atire" else 1.0


@dataclass
class BM25Matrix:
    """Precomputed BM25 weights: ``weights`` is a CSR matrix of terms × doc numbers.

    ``vocab`` maps a term to its row; ``live`` marks doc numbers that exist (numbers of
    removed documents are never reused, so they are simply empty columns); ``idf`` and
    ``unseen_idf`` give the largest score a query can reach, for normalised scores.
    """

    vocab: dict[str, int]
    weights: Any  # scipy.sparse.csr_matrix, float32, (n_terms, n_doc_numbers)
    idf: np.ndarray
    live: np.ndarray
    n_docs: int
    avgdl: float
    params: BM25Params
    unseen_idf: float

    @classmethod
    def from_postings(cls, terms: Sequence[str], term_ids: np.ndarray, doc_nos: np.ndarray,
                      tfs: np.ndarray, doc_lengths: np.ndarray, live: np.ndarray,
                      params: BM25Params) -> BM25Matrix:
        """Build the weights from postings ``(term_id, doc_no, tf)``.

        ``doc_lengths`` and ``live`` are indexed by doc number. Document frequencies, N and
        avgdl are computed over live documents only.
        """
        import scipy.sparse as sp

        n_terms, n_cols = len(terms), len(live)
        keep = live[doc_nos] if len(doc_nos) else np.zeros(0, bool)
        term_ids, doc_nos, tfs = term_ids[keep], doc_nos[keep], tfs[keep].astype(np.float32)
        n_docs = int(live.sum())
        avgdl = float(doc_lengths[live].mean()) if n_docs else 1.0
        avgdl = avgdl or 1.0
        df = np.bincount(term_ids, minlength=n_terms)
        term_idf = idf(df, n_docs, params.variant)
        norm = (params.k1 * (1.0 - params.b + params.b * doc_lengths.astype(np.float32)
                             / np.float32(avgdl))).astype(np.float32)
        w = term_idf[term_ids] * tfs * np.float32(_cap(params)) / (tfs + norm[doc_nos])
        weights = sp.csr_matrix((w.astype(np.float32), (term_ids, doc_nos)),
                                shape=(n_terms, n_cols), dtype=np.float32)
        weights.sum_duplicates()
        weights.sort_indices()
        unseen = float(idf(np.zeros(1), n_docs, params.variant)[0])
        return cls({t: i for i, t in enumerate(terms)}, weights, term_idf, live, n_docs,
                   avgdl, params, unseen)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str) -> None:
        """Write the matrix as one ``.npz`` (renamed into place, so readers never see half)."""
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        w = self.weights
        np.savez(tmp, data=w.data, indices=w.indices, indptr=w.indptr,
                 shape=np.array(w.shape), idf=self.idf, live=self.live,
                 terms=np.array(list(self.vocab), dtype=object),
                 meta=np.array([self.n_docs, self.avgdl, self.params.k1, self.params.b,
                                self.unseen_idf]),
                 variant=np.array(self.params.variant))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> BM25Matrix:
        import scipy.sparse as sp

        with np.load(path, allow_pickle=True) as z:
            shape = tuple(int(x) for x in z["shape"])
            weights = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            n_docs, avgdl, k1, b, unseen = (float(x) for x in z["meta"])
            terms = z["terms"].tolist()
            return cls({t: i for i, t in enumerate(terms)}, weights, z["idf"], z["live"],
                       int(n_docs), avgdl, BM25Params(k1, b, str(z["variant"])), unseen)

    # ------------------------------------------------------------------ search

    def query_matrix(self, queries: Sequence[Sequence[str]]) -> tuple[Any, np.ndarray]:
        """Queries as a sparse matrix of term counts, and each query's largest possible score.

        The largest score counts every query term (also terms absent from the library, at the
        idf of an unseen term), so ``score / max`` is the share of the query's weight that a
        document matches: comparable across queries, which an in-scope test needs.
        """
        import scipy.sparse as sp

        vocab, term_idf, cap = self.vocab, self.idf, _cap(self.params)
        rows: list[int] = []
        cols: list[int] = []
        best = np.zeros(len(queries), np.float32)
        unseen = self.unseen_idf * cap
        for i, terms in enumerate(queries):
            total = 0.0
            for t in terms:
                j = vocab.get(t)
                if j is None:
                    total += unseen
                else:
                    rows.append(i)
                    cols.append(j)
                    total += float(term_idf[j]) * cap
            best[i] = total
        data = np.ones(len(rows), np.float32)
        q = sp.csr_matrix((data, (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
                          shape=(len(queries), len(vocab)), dtype=np.float32)
        q.sum_duplicates()  # repeats of a term add up, as in bm25s
        return q, best

    def search(self, queries: Sequence[Sequence[str]], k: int, *,
               allowed: np.ndarray | None = None, threads: int | None = None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Top-``k`` documents of each query: ``[(doc_nos, scores)]`` best first, and the maxima.

        ``allowed`` (boolean, by doc number) restricts the candidates, e.g. to a filter's
        result; documents that match no query term are never returned.
        """
        q, best = self.query_matrix(queries)
        weights = self.weights
        if allowed is not None:
            weights = _mask_columns(weights, allowed)
        if k <= 0 or weights.nnz == 0 or q.nnz == 0:
            empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            return [empty for _ in queries], best
        return _topk_product(q, weights, k, threads), best


def _mask_columns(weights: Any, allowed: np.ndarray) -> Any:
    """``weights`` with the columns of disallowed documents emptied (same shape)."""
    import scipy.sparse as sp

    keep = allowed[weights.indices]
    if keep.all():
        return weights
    counts = np.add.reduceat(keep.astype(np.int64), weights.indptr[:-1]) if weights.nnz else None
    indptr = np.zeros(len(weights.indptr), np.int64)
    if counts is not None:
        # reduceat on an empty row returns the next element; zero those rows explicitly
        empty_row = np.diff(weights.indptr) == 0
        counts[empty_row] = 0
        np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((weights.data[keep], weights.indices[keep], indptr),
                         shape=weights.shape)


def _topk_product(q: Any, weights: Any, k: int, threads: int | None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    k = min(k, weights.shape[1])
    try:
        from sparse_dot_topn import sp_matmul_topn
    except ImportError:  # pragma: no cover - exercised when the accelerator is absent
        sp_matmul_topn = None
    if sp_matmul_topn is not None:
        n_threads = threads if threads is not None else _default_threads()
        res = sp_matmul_topn(q, weights, top_n=k, sort=True,
                             n_threads=n_threads if n_threads > 1 else None)
        indptr, indices, data = res.indptr, res.indices, res.data
        out = []
        for i in range(q.shape[0]):
            a, b = indptr[i], indptr[i + 1]
            idx, val = indices[a:b], data[a:b]
            nz = val > 0
            out.append((idx[nz].astype(np.int64), val[nz]))
        return out
    return _topk_scipy(q, weights, k)


def _topk_scipy(q: Any, weights: Any, k: int, chunk: int = 256
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fallback: scipy's sparse product in query chunks, then argpartition per row."""
    out = []
    for start in range(0, q.shape[0], chunk):
        s = q[start:start + chunk] @ weights
        indptr, indices, data = s.indptr, s.indices, s.data
        for i in range(s.shape[0]):
            a, b = indptr[i], indptr[i + 1]
            val, idx = data[a:b], indices[a:b]
            if b - a > k:
                part = np.argpartition(val, -k)[-k:]
                val, idx = val[part], idx[part]
            order = np.lexsort((idx, -val))  # score desc, then doc number: deterministic
            val, idx = val[order], idx[order]
            nz = val > 0
            out.append((idx[nz].astype(np.int64), val[nz]))
    return out


def _default_threads() -> int:
    env = os.environ.get("XPKIT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, os.cpu_count() or 1))

