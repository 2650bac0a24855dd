"""Dense retrieval: embedding models behind a small interface, exact and HNSW search.

An *embedder* here is anything with ``name`` and ``embed(texts) -> float32 array`` of
L2-normalised rows (so a dot product is the cosine). ``get_embedder(spec)`` resolves an
``--embed-model`` value through ``xpkit.core.embeddings`` — llama.cpp GGUF models, OpenAI-
compatible servers, and any plugin registered with the ``register_embedders`` hook (tests
register a deterministic hashing embedder that way).

Search is exact (one matrix product per query chunk, top-k by ``argpartition``) below
``hnsw_threshold`` entries; above it, an HNSW graph (Malkov & Yashunin, 2018) built by
DuckDB's VSS extension answers approximately. DuckDB's persisted HNSW index is still marked
experimental, so it is never written into the store: it lives in a disposable sidecar file
in the cache, keyed by the index generation, written whole and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpkit.core.errors import UsageError

DEFAULT_HNSW_THRESHOLD = 100_000


@dataclass
class EmbedderRef:
    """A resolved embedding model: the spec as given, its identity, and the loaded embedder."""

    name: str
    identity: str
    impl: Any

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        return np.asarray(self.impl.embed(list(texts)), dtype=np.float32)


def get_embedder(spec: str) -> EmbedderRef:
    """Resolve ``--embed-model`` (``default``, a GGUF path, a URL, or ``plugin-kind:arg``)."""
    from xpkit.core import embeddings

    impl = embeddings.get_embedder(spec)
    identity = getattr(getattr(impl, "spec", None), "identity", "") or spec
    return EmbedderRef(spec, identity, impl)


def embed(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised float32 vectors for ``texts`` (re-normalised here, defensively)."""
    vecs = np.asarray(embedder.embed(list(texts)), dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(texts):
        raise UsageError(f"embedding model {getattr(embedder, 'name', '?')} returned "
                         f"{vecs.shape} for {len(texts)} texts.")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)


def exact_search(matrix: np.ndarray, present: np.ndarray, queries: np.ndarray, k: int,
                 allowed: np.ndarray | None = None, chunk: int = 64
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-``k`` rows of ``matrix`` by cosine for each query: ``[(doc_nos, sims)]``."""
    ok = present if allowed is None else present & allowed[: len(present)]
    cand = np.flatnonzero(ok)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    if len(cand) == 0 or k <= 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(queries))]
    sub = matrix[cand] if len(cand) < len(matrix) else matrix
    k = min(k, len(cand))
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ sub.T
        if k < sims.shape[1]:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        for i in range(sims.shape[0]):
            idx = part[i]
            val = sims[i, idx]
            order = np.lexsort((idx, -val))
            order = order[val[order] > 0]  # orthogonal or opposite: not a candidate at all
            out.append((cand[idx[order]].astype(np.int64), val[order].astype(np.float32)))
    return out


class HNSW:
    """An HNSW index over the vectors, in a sidecar DuckDB file (a cache, never the store)."""

    def __init__(self, path: str, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.con: Any = None

    @classmethod
    def open_or_build(cls, path: str, matrix: np.ndarray, present: np.ndarray) -> HNSW:
        import duckdb
        import pyarrow as pa

        from xpkit.core.store import extension_path

        dim = int(matrix.shape[1])
        self = cls(path, dim)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            con = duckdb.connect(tmp, config={"autoinstall_known_extensions": False,
                                              "autoload_known_extensions": False})
            try:
                con.execute(f"LOAD '{extension_path('vss')}'")
                con.execute("SET hnsw_enable_experimental_persistence = true")
                rows = np.flatnonzero(present)
                flat = pa.array(matrix[rows].reshape(-1), pa.float32())
                con.register("_v", pa.table({
                    "doc_no": pa.array(rows.astype(np.int32)),
                    "vec": pa.FixedSizeListArray.from_arrays(flat, dim)}))
                con.execute(f"CREATE TABLE v AS SELECT doc_no, vec::FLOAT[{dim}] AS vec FROM _v")
                con.execute("CREATE INDEX v_hnsw ON v USING HNSW (vec) WITH (metric = 'cosine')")
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, path)
        self.con = duckdb.connect(path, read_only=True,
                                  config={"autoinstall_known_extensions": False,
                                          "autoload_known_extensions": False})
        self.con.execute(f"LOAD '{extension_path('vss')}'")
        return self

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        want = k if allowed is None else k * 4
        sql = (f"SELECT doc_no, array_cosine_similarity(vec, $1::FLOAT[{self.dim}]) AS s "
               f"FROM v ORDER BY array_cosine_distance(vec, $1::FLOAT[{self.dim}]) LIMIT {want}")
        for q in queries:
            res = self.con.execute(sql, [q.tolist()]).fetchnumpy()
            idx, val = res["doc_no"].astype(np.int64), res["s"].astype(np.float32)
            idx, val = idx[val > 0], val[val > 0]
            if allowed is not None:
                keep = allowed[idx]
                idx, val = idx[keep][:k], val[keep][:k]
            out.append((idx, val))
        return out

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
