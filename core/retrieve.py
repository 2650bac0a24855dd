"""``retrieve``: queries -> queries with ranked hits and a packed, budgeted context.

A query is a task (or, for ``level="step"``, the current observation). Each output record is
the query record with ``hits`` (``unit_id, score, components, content, tokens``), the
rendered ``context``, ``context_tokens`` and ``_retrieve`` (what was done and, when the
context is empty, why). The methods, in the order they apply:

1. **Candidates.** BM25 (Robertson & Zaragoza, 2009; ``xpkit.core.bm25``) and/or cosine
   similarity of embeddings (exact, or HNSW for large libraries; ``xpkit.core.vectors``),
   restricted by filters (``kind``, ``tag``, ``where``: ``xpkit.core.filters``, never eval).
2. **Fusion.** ``hybrid`` ranks by reciprocal rank fusion, Σ 1/(60 + rank) over the BM25 and
   dense lists (Cormack, Clarke & Büttcher, 2009).
3. **Selective retrieval.** With ``min_score``, a candidate is in scope only if its
   normalised BM25 score (the share of the query's IDF weight it matches, 0-1) or its
   cosine reaches the threshold; a query with nothing in scope gets no context at all and
   its record says so (Selective Contextual Reasoning: no context beats misleading context).
4. **Measured utility.** Units whose ``stats`` carry helpful/harmful counts (per model under
   ``per_model``, else in total) are re-weighted by the posterior mean of a Beta(1, 1)
   bandit prior: ``score × (1 + w·(2·E[p] − 1))`` — CASCADE-style utility-aware skill
   selection, model-aware when ``model`` is given; off with ``utility=False``.
5. **Diversity.** ``mmr=λ`` re-ranks greedily by λ·relevance − (1 − λ)·max similarity to
   what is already chosen (Carbonell & Goldstein, 1998), with embedding cosine, or BM25
   term-vector cosine when the index has no vectors.
6. **Links.** ``follow`` adds units linked to a hit (EXG experience graph relations).
7. **Budget.** Hits are packed whole, in rank order, while the rendered context fits
   ``budget_tokens`` (tiktoken, ``xpkit.core.tokens``); a hit that does not fit is skipped
   and smaller later ones may still fit, so the number of units varies per query (DynaICL:
   a dynamic number of demonstrations under a budget). ``k`` caps the count.

Step-level retrieval (``level="step"``) matches the current observation against the
states of past decision steps and returns what was done there (SLEA-RL; TRAD).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from xpkit.core.errors import RecordError, StoreError, StrictModeError, UsageError
from xpkit.core.index import IndexInfo, Level, StaleIndexError, get_level, input_hash

MODES = ("bm25", "dense", "hybrid")
RRF_K = 60
DEFAULT_K = 5
DEFAULT_K_WITH_BUDGET = 50
QUERY_FIELDS = ("task", "query", "text")
STEP_QUERY_FIELDS = ("observation", "state", "task", "query", "text")
UTILITY_WEIGHT = 0.5

Sink = Callable[[list[dict[str, Any]]], None]


# --------------------------------------------------------------------------- the library


def _cache_dir() -> str | None:
    try:
        from xpkit.core.config import xpkit_home

        path = os.path.join(str(xpkit_home()), "cache", "index")
        os.makedirs(path, exist_ok=True)
        return path
    except OSError:
        return None


class Library:
    """An opened index of one level: the BM25 matrix, vectors, keys, and the store."""

    def __init__(self, db: Any, level: Level, info: IndexInfo | None) -> None:
        self.db = db
        self.con = db.con
        self.level = level
        self.info = info
        self._bm25: Any = None
        self._keys: np.ndarray | None = None
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None
        self._hnsw: Any = None
        self._embedder: Any = None
        self._doc_vectors: Any = None

    @classmethod
    def open(cls, store: str, level: str = "unit", *, refresh: bool = False,
             embed_model: str | None = None,
             on_notice: Callable[[str], None] | None = None) -> Library:
        """Open the store and check the index is current (or bring it up to date: ``refresh``)."""
        from xpkit.core.store import RunLog, Store

        lvl = get_level(level)
        if refresh:
            from xpkit.core.index import analysis_params, sync_index

            db = Store.open(store)
            info = IndexInfo.read(db.con, lvl.name)
            params = info.params if info is not None else {
                "analysis": analysis_params("en", "english"),
                "bm25": {"k1": 1.5, "b": 0.75, "variant": "lucene"}, "version": 1}
            params = {k: v for k, v in params.items() if k != "embedding"}
            embedder = None
            if embed_model:
                from xpkit.core.vectors import get_embedder

                embedder = get_embedder(embed_model)
            run = RunLog("index", {"store": store, "level": level, "via": "retrieve --refresh"})
            with db.transaction():
                res = sync_index(db.con, lvl, params=params, embedder=embedder,
                                 run_id=run.run_id)
                run.counts = {"indexed_added": res.added, "indexed_removed": res.removed,
                              "indexed_total": res.n_docs}
                db.record_run(run)
            if on_notice and (res.added or res.removed):
                on_notice(f"retrieve: --refresh indexed {res.added:,} new or changed and "
                          f"removed {res.removed:,} {lvl.noun}")
            return cls(db, lvl, IndexInfo.read(db.con, lvl.name))
        db = Store.open(store, read_only=True)
        try:
            info = IndexInfo.read(db.con, lvl.name)
            n_now, h_now = input_hash(db.con, lvl)
            if info is None:
                if n_now:
                    raise StaleIndexError(
                        f"Store {store} has {n_now:,} {lvl.noun} but no {lvl.name} index; run "
                        f"'xpkit index --store {store}"
                        + ("" if lvl.name == "unit" else f" --level {lvl.name}")
                        + "' or pass --refresh.")
            elif info.input_hash != h_now:
                raise StaleIndexError(
                    f"Store {store}: the {lvl.name} index is stale (it covers "
                    f"{info.n_docs:,} {lvl.noun}; the library now has {n_now:,}, and some were "
                    f"added, changed or removed since); run 'xpkit index --store {store}"
                    + ("" if lvl.name == "unit" else f" --level {lvl.name}")
                    + "' or pass --refresh.")
        except BaseException:
            db.close()
            raise
        return cls(db, lvl, info)

    def close(self) -> None:
        if self._hnsw is not None:
            self._hnsw.close()
        self.db.close()

    @property
    def empty(self) -> bool:
        return self.info is None or self.info.n_docs == 0

    @property
    def has_vectors(self) -> bool:
        return self.info is not None and bool(self.info.embed_model)

    def _cache_path(self, what: str) -> str | None:
        d = _cache_dir()
        if d is None or self.info is None:
            return None
        sid = hashlib.blake2b(os.path.abspath(self.db.path).encode(), digest_size=6).hexdigest()
        return os.path.join(d, f"{sid}-{self.level.name}-{self.info.generation}.{what}")

    # ------------------------------------------------------------------ derived structures

    @property
    def keys(self) -> np.ndarray:
        """The entry key of each doc number (None for numbers whose entry was removed)."""
        if self._keys is None:
            n = self.info.next_doc_no if self.info else 0
            keys = np.full(n, None, dtype=object)
            res = self.con.execute("SELECT doc_no, key FROM index_docs WHERE index_name = ?",
                                   [self.level.name]).fetchnumpy()
            keys[res["doc_no"]] = res["key"]
            self._keys = keys
        return self._keys

    @property
    def bm25(self) -> Any:
        """The BM25 weight matrix: from the cache file if current, else from the postings."""
        if self._bm25 is None:
            from xpkit.core.bm25 import BM25Matrix, BM25Params

            path = self._cache_path("bm25.npz")
            if path and os.path.exists(path):
                with contextlib.suppress(Exception):
                    self._bm25 = BM25Matrix.load(path)
            if self._bm25 is None:
                assert self.info is not None
                name = self.level.name
                terms = [r[0] for r in self.con.execute(
                    "SELECT term FROM index_terms WHERE index_name = ? ORDER BY term_id",
                    [name]).fetchall()]
                post = self.con.execute(
                    "SELECT term_id, doc_no, tf FROM index_postings WHERE index_name = ?",
                    [name]).fetchnumpy()
                docs = self.con.execute(
                    "SELECT doc_no, length FROM index_docs WHERE index_name = ?",
                    [name]).fetchnumpy()
                n = self.info.next_doc_no
                lengths = np.zeros(n, np.float32)
                live = np.zeros(n, bool)
                lengths[docs["doc_no"]] = docs["length"]
                live[docs["doc_no"]] = True
                p = self.info.params.get("bm25", {})
                self._bm25 = BM25Matrix.from_postings(
                    terms, np.asarray(post["term_id"], np.int64),
                    np.asarray(post["doc_no"], np.int64), np.asarray(post["tf"]), lengths,
                    live, BM25Params(p.get("k1", 1.5), p.get("b", 0.75),
                                     p.get("variant", "lucene")))
                if path:
                    with contextlib.suppress(OSError):
                        self._bm25.save(path)
        return self._bm25

    @property
    def analyzer(self) -> Any:
        from xpkit.core.tokenize import Analyzer

        params = (self.info.params if self.info else {}).get("analysis", {})
        if not hasattr(self, "_analyzer"):
            self._analyzer = Analyzer.from_params(params)
        return self._analyzer

    @property
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(matrix by doc number, present mask); rows of absent numbers are zeros."""
        if self._vectors is None:
            assert self.info is not None
            path = self._cache_path("vec.npy")
            mat = None
            if path and os.path.exists(path):
                with contextlib.suppress(Exception):
                    mat = np.load(path)
            n, dim = self.info.next_doc_no, int(self.info.embed_dim or 0)
            if mat is None:
                tbl = self.con.execute(
                    "SELECT doc_no, vector FROM index_vectors WHERE index_name = ?",
                    [self.level.name]).to_arrow_table()
                mat = np.zeros((n, dim), np.float32)
                if tbl.num_rows:
                    rows = tbl.column("doc_no").to_numpy()
                    flat = tbl.column("vector").combine_chunks().flatten().to_numpy()
                    mat[rows] = flat.reshape(len(rows), dim)
                if path:
                    with contextlib.suppress(OSError):
                        tmp = f"{path}.{os.getpid()}.tmp.npy"
                        np.save(tmp, mat)
                        os.replace(tmp, path)
            present = np.abs(mat).sum(axis=1) > 0
            self._vectors = (mat, present)
        return self._vectors

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from xpkit.core.vectors import get_embedder

            assert self.info is not None and self.info.embed_model
            emb = get_embedder(self.info.embed_model)
            want = (self.info.params.get("embedding") or {}).get("identity")
            if want and emb.identity != want:
                raise StaleIndexError(
                    f"Store {self.db.path}: the {self.level.name} index was embedded with "
                    f"{self.info.embed_model} ({want}), which now resolves to another model "
                    f"({emb.identity}); reindex with 'xpkit index --rebuild --embed-model ...'.")
            self._embedder = emb
        return self._embedder

    def dense_search(self, qvecs: np.ndarray, k: int, allowed: np.ndarray | None,
                     hnsw_threshold: int) -> list[tuple[np.ndarray, np.ndarray]]:
        from xpkit.core.vectors import HNSW, exact_search

        mat, present = self.vectors
        if int(present.sum()) >= hnsw_threshold:
            if self._hnsw is None:
                path = self._cache_path("hnsw.duckdb")
                if path is None:
                    raise StoreError("HNSW search needs a writable cache directory "
                                     "(XPKIT_HOME); raise --hnsw-threshold to search exactly.")
                self._hnsw = HNSW.open_or_build(path, mat, present)
            res = self._hnsw.search(qvecs, k, allowed)
            if allowed is None or all(len(r[0]) >= min(k, int(allowed.sum())) for r in res):
                return res
        return exact_search(mat, present, qvecs, k, allowed)

    def doc_vector_sim(self, a: Sequence[int]) -> np.ndarray:
        """Pairwise cosine of BM25 term-weight vectors of doc numbers ``a`` (for MMR)."""
        if self._doc_vectors is None:
            self._doc_vectors = self.bm25.weights.T.tocsr()
        sub = self._doc_vectors[list(a)]
        norms = np.sqrt(np.asarray(sub.multiply(sub).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        sims = (sub @ sub.T).toarray() / np.outer(norms, norms)
        return sims.astype(np.float32)

    # ------------------------------------------------------------------ filters and rows

    def allowed(self, kind: Sequence[str] | None, tag: Sequence[str] | None,
                where: str | None) -> np.ndarray | None:
        """Doc numbers that pass the filters (None: no filter)."""
        from xpkit.core.filters import compile_where

        conds: list[str] = []
        params: list[Any] = []
        lvl = self.level
        if kind:
            if "kind" not in lvl.fields:
                raise UsageError(f"--kind filters units; the {lvl.name} level has no kind.")
            conds.append(f"{lvl.fields['kind'].sql} IN (SELECT unnest(?))")
            params.append(list(kind))
        if tag:
            if "tags" not in lvl.fields:
                raise UsageError(f"--tag filters units; the {lvl.name} level has no tags.")
            conds.append("list_has_any(TRY_CAST(s.tags AS VARCHAR[]), ?)")
            params.append(list(tag))
        if where is not None:
            sql, wparams = compile_where(where, lvl.fields, set(lvl.json_fields))
            conds.append(sql)
            params.extend(wparams)
        if not conds:
            return None
        n = self.info.next_doc_no if self.info else 0
        mask = np.zeros(n, bool)
        if n == 0:
            return mask
        try:
            res = self.con.execute(
                f"SELECT d.doc_no FROM index_docs d JOIN ({lvl.source()}) s ON s.key = d.key "
                f"WHERE d.index_name = ? AND {' AND '.join(conds)}",
                [self.level.name, *params]).fetchnumpy()
        except Exception as exc:  # a type mismatch in a well-formed filter, say
            import duckdb

            if isinstance(exc, duckdb.Error):
                raise UsageError(f"--where {where!r} cannot be applied: "
                                 f"{str(exc).splitlines()[0]}") from exc
            raise
        mask[res["doc_no"]] = True
        return mask

    def rows(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Display fields of entries: what a hit shows and what templates render."""
        if not keys:
            return {}
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        if self.level.name == "unit":
            for r in self.con.execute(
                    'SELECT unit_id, kind, title, "when", content, example, polarity, stats '
                    "FROM units WHERE unit_id IN (SELECT unnest(?))", [keys]).fetchall():
                out[r[0]] = {"kind": r[1], "title": r[2], "when": r[3], "content": r[4] or "",
                             "example": r[5], "polarity": r[6],
                             "stats": orjson.loads(r[7]) if r[7] else None}
        elif self.level.name == "episode":
            for r in self.con.execute(
                    "SELECT episode_id, task, answer, success, reward, model FROM episodes "
                    "WHERE episode_id IN (SELECT unnest(?))", [keys]).fetchall():
                lines = [f"Task: {r[1] or ''}"]
                if r[2]:
                    lines.append(f"Answer: {r[2]}")
                if r[3] is not None or r[4] is not None:
                    outcome = ("success" if r[3] else "failure") if r[3] is not None \
                        else f"reward {r[4]}"
                    lines.append(f"Outcome: {outcome}")
                out[r[0]] = {"kind": "episode", "content": "\n".join(lines),
                             "episode_id": r[0], "success": r[3], "model": r[5]}
        else:
            episodes = sorted({k.rsplit("#", 1)[0] for k in keys})
            want = set(keys)
            for r in self.con.execute(
                    "SELECT key, episode_id, step, task, state, thought, content, result, "
                    f"success, kind FROM ({self.level.source(episodes=True)})",
                    [episodes]).fetchall():
                if r[0] not in want:
                    continue
                lines = [f"Task: {r[3] or ''}"]
                if r[4]:
                    lines.append(f"Observation: {r[4]}")
                if r[5]:
                    lines.append(f"Thought: {r[5]}")
                lines.append(("Action: " if r[9] == "action" else "Response: ") + (r[6] or ""))
                if r[7]:
                    lines.append(f"Result: {r[7]}")
                out[r[0]] = {"kind": "step", "content": "\n".join(lines), "episode_id": r[1],
                             "step": r[2], "success": r[8]}
        return out

    def has_utility_stats(self) -> bool:
        if self.level.name != "unit":
            return False
        return bool(self.con.execute(
            "SELECT count(*) FROM units WHERE stats IS NOT NULL AND "
            "(coalesce(TRY_CAST(json_extract(stats, '$.helpful') AS DOUBLE), 0) > 0 OR "
            " coalesce(TRY_CAST(json_extract(stats, '$.harmful') AS DOUBLE), 0) > 0)"
        ).fetchone()[0])


# --------------------------------------------------------------------------- per-query logic


def utility_of(stats: dict[str, Any] | None, model: str | None) -> tuple[float, int]:
    """Posterior mean of a unit's helpfulness under a Beta(1, 1) prior, and its evidence count.

    Counts for ``model`` (``stats.per_model[model]``) are used when present; else the
    totals. No counts gives 0.5, which leaves the score unchanged.
    """
    if not stats:
        return 0.5, 0
    src = stats
    if model and isinstance(stats.get("per_model"), dict) and model in stats["per_model"]:
        src = stats["per_model"][model]
    try:
        h = float(src.get("helpful") or 0)
        x = float(src.get("harmful") or 0)
    except (TypeError, ValueError, AttributeError):
        return 0.5, 0
    return (1.0 + h) / (2.0 + h + x), int(h + x)


def mmr_order(rel: np.ndarray, sim: np.ndarray, lam: float, n: int) -> list[tuple[int, float]]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998): indices and their MMR values."""
    chosen: list[tuple[int, float]] = []
    if len(rel) == 0:
        return chosen
    top = float(rel.max()) or 1.0
    rel = rel / top
    best_sim = np.full(len(rel), -np.inf, np.float32)
    left = np.ones(len(rel), bool)
    for _ in range(min(n, len(rel))):
        penalty = np.where(np.isfinite(best_sim), best_sim, 0.0)
        val = lam * rel - (1.0 - lam) * penalty
        val[~left] = -np.inf
        i = int(np.argmax(val))
        chosen.append((i, float(val[i])))
        left[i] = False
        best_sim = np.maximum(best_sim, sim[i])
    return chosen


@dataclass
class Options:
    mode: str
    k: int
    pool: int
    min_score: float | None
    mmr: float | None
    budget_tokens: int | None
    utility: bool
    model: str | None
    template: str
    follow: list[str]
    hnsw_threshold: int


@dataclass
class RetrieveSummary:
    queries: int = 0
    answered: int = 0
    empty: int = 0
    rejected: int = 0
    hits: int = 0
    context_tokens: int = 0
    mode: str = ""
    rejects_path: str | None = None
    run_id: str = ""
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {"queries": self.queries, "answered": self.answered, "empty": self.empty,
                "rejected": self.rejected, "hits": self.hits,
                "context_tokens": self.context_tokens, "mode": self.mode}


def _query_text(rec: dict[str, Any], text_field: str | None, level: str) -> str:
    if text_field:
        cur: Any = rec
        for part in text_field.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        value = cur
        name = text_field
    else:
        name = "|".join(STEP_QUERY_FIELDS if level == "step" else QUERY_FIELDS)
        value = None
        for f in STEP_QUERY_FIELDS if level == "step" else QUERY_FIELDS:
            if isinstance(rec.get(f), str) and rec[f].strip():
                value = rec[f]
                break
    if not isinstance(value, str) or not value.strip():
        raise RecordError("no query text (name the field with --text)", name)
    return value


def _candidates(lib: Library, texts: list[str], toks: list[list[str]], opts: Options,
                allowed: np.ndarray | None) -> list[dict[int, dict[str, float]]]:
    """Per query: doc number -> components (bm25, bm25_norm, dense, rrf)."""
    out: list[dict[int, dict[str, float]]] = [{} for _ in texts]
    if opts.mode in ("bm25", "hybrid"):
        res, best = lib.bm25.search(toks, opts.pool, allowed=allowed)
        for i, (docs, scores) in enumerate(res):
            top = float(best[i]) or 1.0
            for rank, (d, s) in enumerate(zip(docs.tolist(), scores.tolist(), strict=True), 1):
                c = out[i].setdefault(d, {})
                c["bm25"] = s
                c["bm25_norm"] = min(1.0, s / top)
                c["bm25_rank"] = rank
    if opts.mode in ("dense", "hybrid"):
        qv = lib.embedder.embed(texts)
        res = lib.dense_search(qv, opts.pool, allowed, opts.hnsw_threshold)
        for i, (docs, sims) in enumerate(res):
            for rank, (d, s) in enumerate(zip(docs.tolist(), sims.tolist(), strict=True), 1):
                c = out[i].setdefault(d, {})
                c["dense"] = s
                c["dense_rank"] = rank
    if opts.mode == "hybrid":
        for cands in out:
            for c in cands.values():
                c["rrf"] = sum(1.0 / (RRF_K + c[r]) for r in ("bm25_rank", "dense_rank")
                               if r in c)
    return out


def _in_scope(c: dict[str, float], min_score: float | None) -> bool:
    if min_score is None:
        return True
    return c.get("bm25_norm", -1.0) >= min_score or c.get("dense", -1.0) >= min_score


def _rank_one(lib: Library, cands: dict[int, dict[str, float]], rows: dict[str, dict],
              opts: Options, use_utility: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Order one query's candidates into hits (before packing). Returns (hits, info)."""
    keys = lib.keys
    primary = {"bm25": "bm25", "dense": "dense", "hybrid": "rrf"}[opts.mode]
    info: dict[str, Any] = {"candidates": len(cands)}
    scored: list[tuple[float, int, dict[str, float]]] = []
    best_rel = None
    for d, c in cands.items():
        rel = c.get(primary, 0.0)
        scope = max(c.get("bm25_norm", -1.0), c.get("dense", -1.0))
        best_rel = scope if best_rel is None else max(best_rel, scope)
        if not _in_scope(c, opts.min_score):
            continue
        comp = {k: round(v, 6) for k, v in c.items() if not k.endswith("_rank")}
        score = rel
        if use_utility:
            key = keys[d]
            u, n = utility_of((rows.get(key) or {}).get("stats"), opts.model)
            comp["utility"] = round(u, 6)
            if n:
                comp["utility_n"] = n
            score = rel * (1.0 + UTILITY_WEIGHT * (2.0 * u - 1.0))
        scored.append((score, d, comp))
    if not scored:
        if not cands:
            info["reason"] = "no entry matches the query"
        else:
            info["reason"] = (f"nothing in scope: best relevance {best_rel:.3f} < --min-score "
                              f"{opts.min_score}")
        return [], info
    scored.sort(key=lambda t: (-t[0], t[1]))
    if opts.mmr is not None and len(scored) > 1:
        docs = [d for _, d, _ in scored]
        rel = np.array([max(s, 0.0) for s, _, _ in scored], np.float32)
        if lib.has_vectors:
            mat, _ = lib.vectors
            sub = mat[docs]
            sim = sub @ sub.T
        else:
            sim = lib.doc_vector_sim(docs)
        order = mmr_order(rel, sim, opts.mmr, len(scored))
        reordered = []
        for i, val in order:
            s, d, comp = scored[i]
            comp["mmr"] = round(val, 6)
            reordered.append((s, d, comp))
        scored = reordered
    hits = []
    for s, d, comp in scored:
        key = keys[d]
        row = rows.get(key)
        if row is None:  # removed since the index was read: never show a ghost
            continue
        hit = {"unit_id": key, "score": round(float(s), 6), "components": comp, **row}
        hits.append(hit)
    return hits, info


def _follow(lib: Library, hits: list[dict[str, Any]], relations: list[str]
            ) -> list[dict[str, Any]]:
    """Insert units linked to each hit (EXG) right after it, once each."""
    from xpkit.core.links import neighbors

    if not hits or not relations:
        return hits
    edges = neighbors(lib.con, [h["unit_id"] for h in hits], relations)
    linked: dict[str, list[tuple[str, str]]] = {}
    for e in edges:
        this, other = (e["src"], e["dst"]) if e["direction"] == "out" else (e["dst"], e["src"])
        linked.setdefault(this, []).append((other, e["relation"]))
    others = [o for pairs in linked.values() for o, _ in pairs]
    rows = lib.rows(others) if lib.level.name == "unit" else {}
    seen = {h["unit_id"] for h in hits}
    out = []
    for h in hits:
        out.append(h)
        for other, rel in linked.get(h["unit_id"], []):
            if other in seen or other not in rows:
                continue
            seen.add(other)
            out.append({"unit_id": other, "score": h["score"],
                        "components": {"via": {"relation": rel, "from": h["unit_id"]}},
                        **rows[other]})
    return out


_TOKEN_CACHE: dict[str, int] = {}
_TOKEN_CACHE_MAX = 200_000


def _count_block(text: str) -> int:
    """Budget tokens of a rendered block, memoised: popular units recur across queries."""
    n = _TOKEN_CACHE.get(text)
    if n is None:
        from xpkit.core.tokens import count_tokens

        if len(_TOKEN_CACHE) >= _TOKEN_CACHE_MAX:
            _TOKEN_CACHE.clear()
        n = _TOKEN_CACHE[text] = count_tokens(text)
    return n


def _pack(hits: list[dict[str, Any]], opts: Options) -> tuple[list[dict[str, Any]], Any, int, int]:
    """Choose hits (≤ k, within the budget) and render: (hits, context, tokens, skipped)."""
    from xpkit.core.render import context_tokens, render_block, render_context
    from xpkit.core.tokens import count_tokens

    chosen: list[dict[str, Any]] = []
    blocks: list[str] = []
    skipped = 0
    base = context_tokens(render_context(["x"], opts.template), _count_block) - 1
    used = base
    primary = 0
    for h in hits:
        linked = "via" in h["components"]  # units added by --follow do not count toward k
        if not linked and primary >= opts.k:
            break
        block = render_block(h, len(chosen) + 1, opts.template)
        n = _count_block(block)
        if opts.budget_tokens is not None and used + n + 1 > opts.budget_tokens:
            skipped += 1
            continue
        h["tokens"] = n
        primary += not linked
        chosen.append(h)
        blocks.append(block)
        used += n + 1
    context = render_context(blocks, opts.template)
    total = context_tokens(context, count_tokens)
    # BPE counts are not exactly additive at block boundaries: check the whole, trim if over.
    while opts.budget_tokens is not None and total > opts.budget_tokens and chosen:
        chosen.pop()
        blocks.pop()
        skipped += 1
        context = render_context(blocks, opts.template)
        total = context_tokens(context, count_tokens)
    return chosen, context, total, skipped


_HIT_FIELDS = ("unit_id", "score", "components", "content", "tokens", "kind", "title",
               "episode_id", "step")


def _public(hit: dict[str, Any], rank: int) -> dict[str, Any]:
    out = {k: hit[k] for k in _HIT_FIELDS if hit.get(k) is not None}
    out["rank"] = rank
    return out


def retrieve_batch(lib: Library, records: list[dict[str, Any]], texts: list[str],
                   opts: Options, allowed: np.ndarray | None, use_utility: bool
                   ) -> list[dict[str, Any]]:
    """Retrieval records for one batch of queries (the core loop, no I/O)."""
    base = {"mode": opts.mode, "level": lib.level.name}
    if lib.empty:
        return [{**r, "hits": [], "context": [] if opts.template == "chat" else "",
                 "context_tokens": 0,
                 "_retrieve": {**base, "in_scope": False, "reason": "the library is empty"}}
                for r in records]
    toks = lib.analyzer.many(texts)
    cands = _candidates(lib, texts, toks, opts, allowed)
    keys = lib.keys
    rows = lib.rows([keys[d] for c in cands for d in c])
    out = []
    for rec, c, terms in zip(records, cands, toks, strict=True):
        hits, info = _rank_one(lib, c, rows, opts, use_utility)
        if not terms and not c:
            info["reason"] = ("the query has no searchable terms (only stopwords or "
                              "one-letter words)")
        if opts.follow:
            hits = _follow(lib, hits, opts.follow)
        chosen, context, total, skipped = _pack(hits, opts)
        meta = {**base, **info, "in_scope": bool(chosen)}
        if not chosen and hits:
            meta["reason"] = (f"no entry fits --budget-tokens {opts.budget_tokens}"
                              if opts.budget_tokens is not None else "no entry selected")
        if skipped:
            meta["skipped_for_budget"] = skipped
        if opts.budget_tokens is not None:
            meta["budget_tokens"] = opts.budget_tokens
        out.append({**rec, "hits": [_public(h, i) for i, h in enumerate(chosen, 1)],
                    "context": context, "context_tokens": total, "_retrieve": meta})
    return out


def retrieve(
    inputs: Sequence[str],
    *,
    store: str,
    level: str = "unit",
    mode: str | None = None,
    k: int | None = None,
    kind: Sequence[str] | None = None,
    tag: Sequence[str] | None = None,
    where: str | None = None,
    mmr: float | None = None,
    budget_tokens: int | None = None,
    min_score: float | None = None,
    utility: bool = True,
    model: str | None = None,
    template: str = "plain",
    text_field: str | None = None,
    follow: Sequence[str] | None = None,
    refresh: bool = False,
    embed_model: str | None = None,
    hnsw_threshold: int | None = None,
    pool: int | None = None,
    rejects: str | None = None,
    strict: bool = False,
    batch_size: int = 1000,
    sink: Sink | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    run_args: dict[str, Any] | None = None,
) -> RetrieveSummary:
    """Read queries from ``inputs`` and hand retrieval records to ``sink``, batch by batch.

    Memory is bounded by ``batch_size`` queries (plus the index). The store is opened
    read-only, so several retrievals can run at once; the ``runs`` row is appended at the
    end when the store is free (a notice says so when it is not).
    """
    from xpkit.core.io import read_records, resolve_inputs
    from xpkit.core.llm import model_key
    from xpkit.core.quarantine import Quarantine, default_rejects_path
    from xpkit.core.render import check_template
    from xpkit.core.store import RunLog, append_run
    from xpkit.core.vectors import DEFAULT_HNSW_THRESHOLD

    if mode is not None and mode not in MODES:
        raise UsageError(f"--mode {mode}: expected one of {', '.join(MODES)}.")
    if k is not None and k < 1:
        raise UsageError("-k must be at least 1.")
    if mmr is not None and not 0.0 <= mmr <= 1.0:
        raise UsageError(f"--mmr {mmr}: λ must be between 0 and 1 (1 = relevance only).")
    if budget_tokens is not None and budget_tokens < 0:
        raise UsageError("--budget-tokens must be >= 0.")
    check_template(template)
    sources = resolve_inputs(inputs)
    notice = on_notice or (lambda _m: None)
    run = RunLog("retrieve", {**(run_args or {}), "store": store, "level": level})
    summary = RetrieveSummary(run_id=run.run_id)
    lib = Library.open(store, level, refresh=refresh, embed_model=embed_model,
                       on_notice=notice)
    try:
        if mode is None:
            mode = "hybrid" if lib.has_vectors else "bm25"
        elif mode in ("dense", "hybrid") and not lib.has_vectors and not lib.empty:
            raise UsageError(f"--mode {mode} needs vectors, and the {lib.level.name} index "
                             "has none; index with --embed-model MODEL, or use --mode bm25.")
        summary.mode = mode
        k_eff = k if k is not None else (DEFAULT_K_WITH_BUDGET if budget_tokens is not None
                                         else DEFAULT_K)
        use_utility = utility and lib.has_utility_stats()
        rerank = (mmr is not None or use_utility or budget_tokens is not None or bool(follow)
                  or mode == "hybrid")
        opts = Options(mode=mode, k=k_eff,
                       pool=pool or (max(4 * k_eff, 50) if rerank else k_eff),
                       min_score=min_score, mmr=mmr, budget_tokens=budget_tokens,
                       utility=use_utility, model=model_key(model), template=template,
                       follow=list(follow or []),
                       hnsw_threshold=hnsw_threshold if hnsw_threshold is not None
                       else DEFAULT_HNSW_THRESHOLD)
        allowed = None if lib.empty else lib.allowed(kind, tag, where)
        rejects_path = rejects or default_rejects_path(None, store)
        quarantine = Quarantine(rejects_path, run.run_id, "retrieve")
        try:
            for batch in read_records(sources, batch_size, notice):
                recs: list[dict[str, Any]] = []
                texts: list[str] = []
                for row in batch:
                    summary.queries += 1
                    if row.error is not None:
                        summary.rejected += 1
                        quarantine.reject_row(row)
                        continue
                    try:
                        texts.append(_query_text(row.value or {}, text_field, lib.level.name))
                    except RecordError as exc:
                        summary.rejected += 1
                        quarantine.reject(file=row.file, line=row.line, unit=row.unit,
                                          reason=exc.reason, field=exc.field, record=row.value)
                        continue
                    recs.append(row.value or {})
                if recs:
                    out = retrieve_batch(lib, recs, texts, opts, allowed, use_utility)
                    for r in out:
                        if r["hits"]:
                            summary.answered += 1
                        else:
                            summary.empty += 1
                        summary.hits += len(r["hits"])
                        summary.context_tokens += r["context_tokens"]
                    if sink is not None:
                        sink(out)
                if on_progress is not None:
                    on_progress(len(batch))
        finally:
            quarantine.close()
        summary.rejects_path = rejects_path if quarantine.count else None
        if strict and summary.rejected:
            raise StrictModeError(f"{summary.rejected} quer(y/ies) rejected (see "
                                  f"{rejects_path}); --strict makes this a failure.")
    except BaseException as exc:
        run.status, run.error = "failed", str(exc) or type(exc).__name__
        raise
    finally:
        run.counts = summary.counts()
        lib.close()
        append_run(store, run, notice)
    return summary

