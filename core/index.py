"""``index``: units (or episodes, or decision steps) -> searchable entries in the store.

What is indexed, by ``level``:

- ``unit`` (default): the ``units`` table — every kind (insight, behavior, contrast,
  exemplar, summary, skill, and plain ``document``); the text is title, applicability
  condition (``when``), content and example. Records given as input are first added to
  ``units``: experience units as ``distill`` writes them, or any documents with
  ``id_field``/``text_field`` (stored as units of kind ``document`` whose ``unit_id`` is the
  document's own id), so a corpus needs no detour through ingest.
- ``episode``: the store's episodes, by their task (for "find a similar past attempt").
- ``step``: one entry per decision step (an action, or an assistant turn) keyed
  ``EPISODE_ID#STEP``, indexed by the state it acted in — the latest observation before it,
  else the task — as in step-level experience retrieval (SLEA-RL; TRAD, Zhou et al. 2024,
  "Trajectory-aware step-level retrieval and alignment of thoughts"). Its content shows the
  observation, the thought, the action and its result.

How: BM25 postings ``(term, entry, tf)`` and entry lengths live in the store's own tables
(``index_terms``, ``index_postings``, ``index_docs``), so adding entries appends rows and
nothing already indexed is rebuilt; ``xpkit.core.bm25`` scores them in-process. (DuckDB's FTS
index cannot be updated in place and measured 60-150x slower than bm25s; we keep the store as
the source of truth and do our own scoring.) With an embedding model, L2-normalised vectors
go to ``index_vectors``. The ``indexes`` row records what the index was built from: level,
analysis and BM25 parameters, embedding model, entry count and the *input hash* (an
order-independent hash of every entry's key and text), which ``retrieve`` compares with the
library to refuse a stale index.

Links between units (EXG experience graph: derived-from, refines, contradicts) arrive as
``links`` on unit records or as ``{src, dst, relation}`` records, and go to ``unit_links``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from xpkit.core.errors import RecordError, StrictModeError, UsageError, XpkitError
from xpkit.core.filters import Field

LEVELS = ("unit", "episode", "step")
DEFAULT_KIND = "document"
INDEX_VERSION = 1


class StaleIndexError(XpkitError):
    """The library changed after the index was last brought up to date."""


# --------------------------------------------------------------------------- levels


@dataclass(frozen=True)
class Level:
    """One kind of indexed entry: the SQL that lists them (``key``, ``text`` and the fields
    that filters may use) and the fields ``--where`` knows."""

    name: str
    noun: str
    source_sql: str
    fields: dict[str, Field]
    json_fields: frozenset[str]

    def source(self, episodes: bool = False) -> str:
        """The source query; with ``episodes`` it takes ``?`` = a list of episode ids."""
        return self.source_sql.replace(
            "/*EPISODES*/", "WHERE episode_id IN (SELECT unnest(?))" if episodes else "")


def unit_index_text(unit: dict[str, Any]) -> str:
    """The text the unit index holds for ``unit``: what ``_UNIT_SQL`` selects as ``text``
    (``concat_ws`` skips the fields that are null)."""
    return "\n".join(v for v in (unit.get("title"), unit.get("when"), unit.get("content"),
                                 unit.get("example")) if v is not None)


def indexed_unit_vectors(con: Any) -> tuple[str, dict[str, Any]] | None:
    """The unit index's embedding model and its vectors (unit id -> vector), if the store
    has a unit index with embeddings; else ``None``."""
    import numpy as np

    info = IndexInfo.read(con, "unit")
    if info is None or not info.embed_model:
        return None
    rows = con.execute("""
        SELECT d.key, v.vector FROM index_vectors v
        JOIN index_docs d ON d.index_name = v.index_name AND d.doc_no = v.doc_no
        WHERE v.index_name = 'unit'""").fetchall()
    return info.embed_model, {key: np.asarray(vec, np.float32) for key, vec in rows}


_UNIT_SQL = """
    SELECT unit_id AS key, concat_ws(chr(10), title, "when", content, example) AS text,
           unit_id, kind, title, "when", content, example, polarity, tags, stats,
           provenance, meta, evidence, created_at, updated_at
    FROM units"""
_EPISODE_SQL = """
    SELECT e.episode_id AS key, coalesce(e.task, s0.content, '') AS text,
           e.episode_id, e.task, e.success, e.reward, e.score, e.answer, e.reference,
           e.model, e.meta, e.n_steps, e.source_format
    FROM episodes e LEFT JOIN steps s0 ON s0.episode_id = e.episode_id AND s0.step = 0"""
# A decision step is an action (or an assistant message in a chat); its state is the latest
# observation (or user / tool / environment turn) before it, else the task.
_STEP_SQL = """
    WITH s AS (
        SELECT episode_id, step, role, kind, content, name,
               last_value(CASE WHEN kind = 'observation'
                                 OR role IN ('user', 'tool', 'environment')
                               THEN content END IGNORE NULLS)
                   OVER (PARTITION BY episode_id ORDER BY step
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS state,
               CASE WHEN lag(kind) OVER w = 'thought' THEN lag(content) OVER w END
                   AS thought,
               CASE WHEN lead(kind) OVER w = 'observation'
                      OR lead(role) OVER w IN ('tool', 'environment')
                    THEN lead(content) OVER w END AS result
        FROM steps /*EPISODES*/
        WINDOW w AS (PARTITION BY episode_id ORDER BY step))
    SELECT s.episode_id || '#' || s.step AS key, coalesce(s.state, e.task, '') AS text,
           s.episode_id, s.step, s.role, s.kind, s.content, s.name, s.state, s.thought,
           s.result, e.task, e.success, e.reward, e.model, e.meta
    FROM s JOIN episodes e ON e.episode_id = s.episode_id
    WHERE s.kind = 'action' OR (s.role = 'assistant' AND s.kind = 'message')"""

_T = "text"
LEVEL_SPECS: dict[str, Level] = {
    "unit": Level("unit", "units", _UNIT_SQL, {
        "unit_id": Field("s.unit_id", _T), "kind": Field("s.kind", _T),
        "title": Field("s.title", _T), "when": Field('s."when"', _T),
        "content": Field("s.content", _T), "example": Field("s.example", _T),
        "polarity": Field("s.polarity", _T), "tags": Field("s.tags", "list"),
        "stats": Field("s.stats", "json"), "provenance": Field("s.provenance", "json"),
        "meta": Field("s.meta", "json"), "created_at": Field("s.created_at", "time"),
        "updated_at": Field("s.updated_at", "time")},
        frozenset({"stats", "provenance", "meta"})),
    "episode": Level("episode", "episodes", _EPISODE_SQL, {
        "episode_id": Field("s.episode_id", _T), "task": Field("s.task", _T),
        "success": Field("s.success", "bool"), "reward": Field("s.reward", "number"),
        "score": Field("s.score", "number"), "answer": Field("s.answer", _T),
        "reference": Field("s.reference", _T), "model": Field("s.model", _T),
        "meta": Field("s.meta", "json"), "n_steps": Field("s.n_steps", "number"),
        "source_format": Field("s.source_format", _T)},
        frozenset({"meta"})),
    "step": Level("step", "decision steps", _STEP_SQL, {
        "episode_id": Field("s.episode_id", _T), "step": Field("s.step", "number"),
        "role": Field("s.role", _T), "kind": Field("s.kind", _T),
        "content": Field("s.content", _T), "name": Field("s.name", _T),
        "task": Field("s.task", _T), "success": Field("s.success", "bool"),
        "reward": Field("s.reward", "number"), "model": Field("s.model", _T),
        "meta": Field("s.meta", "json")},
        frozenset({"meta"})),
}


def get_level(name: str) -> Level:
    if name not in LEVEL_SPECS:
        raise UsageError(f"--level {name}: expected one of {', '.join(LEVELS)}.")
    return LEVEL_SPECS[name]


def input_hash(con: Any, level: Level) -> tuple[int, str]:
    """(entries, hash) of what the level would index now: order-independent, one SQL scan.

    Uses DuckDB's ``hash()``, which is stable for the pinned DuckDB version.
    """
    n, h = con.execute(f"SELECT count(*), bit_xor(hash(key, text)) FROM ({level.source()})"
                       ).fetchone()
    return int(n), f"{int(n)}:{int(h or 0):016x}"


# --------------------------------------------------------------------------- index state


@dataclass
class IndexInfo:
    """The ``indexes`` row of one level."""

    name: str
    level: str
    params: dict[str, Any]
    embed_model: str | None
    embed_dim: int | None
    n_docs: int
    n_terms: int
    n_postings: int
    next_doc_no: int
    input_hash: str
    updated_at: Any

    @classmethod
    def read(cls, con: Any, name: str) -> IndexInfo | None:
        row = con.execute(
            "SELECT name, level, params, embed_model, embed_dim, n_docs, n_terms, n_postings, "
            "next_doc_no, input_hash, updated_at FROM indexes WHERE name = ?", [name]).fetchone()
        if row is None:
            return None
        return cls(row[0], row[1], orjson.loads(row[2]) if row[2] else {}, row[3], row[4],
                   int(row[5] or 0), int(row[6] or 0), int(row[7] or 0), int(row[8] or 0),
                   row[9] or "", row[10])

    @property
    def generation(self) -> str:
        """Changes whenever the index's contents change: the key of derived caches."""
        raw = orjson.dumps([self.name, self.input_hash, self.next_doc_no, self.n_postings,
                            str(self.updated_at), self.params, self.embed_model],
                           option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(raw, digest_size=10).hexdigest()


def analysis_params(stopwords: str, stemmer: str) -> dict[str, Any]:
    from xpkit.core.tokenize import Analyzer

    return Analyzer(stopwords=stopwords, stemmer=stemmer).params()


@dataclass
class SyncResult:
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    rebuilt: str | None = None  # why the whole index was rebuilt, if it was
    embedded: int = 0
    n_docs: int = 0
    input_hash: str = ""


def sync_index(con: Any, level: Level, *, params: dict[str, Any], embedder: Any = None,
               rebuild: bool = False, run_id: str = "", batch_size: int = 5000,
               on_progress: Callable[[int], None] | None = None) -> SyncResult:
    """Bring the level's index up to date with the library, incrementally.

    Entries whose (key, text) are already indexed are left alone; new or changed ones are
    analyzed and appended; vanished ones are removed. The whole index is rebuilt only when
    asked, or when the analysis or embedding model differs from the recorded one (mixing
    them would make scores meaningless). Runs inside the caller's transaction.
    """
    import numpy as np
    import pyarrow as pa

    from xpkit.core.store import now
    from xpkit.core.tokenize import Analyzer

    name = level.name
    info = IndexInfo.read(con, name)
    result = SyncResult()
    embed_name = getattr(embedder, "name", None)
    if info is not None:
        reason = None
        if rebuild:
            reason = "--rebuild"
        elif info.params.get("analysis") != params.get("analysis"):
            reason = "the analysis (stopwords, stemmer) changed"
        elif embed_name and info.embed_model and info.embed_model != embed_name:
            reason = f"the embedding model changed ({info.embed_model} -> {embed_name})"
        if reason:
            for table in ("index_docs", "index_terms", "index_postings", "index_vectors"):
                con.execute(f"DELETE FROM {table} WHERE index_name = ?", [name])
            con.execute("DELETE FROM indexes WHERE name = ?", [name])
            result.rebuilt = reason
            info = None
    if embedder is None and info is not None and info.embed_model:
        # The index has vectors: new entries need them too, from the recorded model.
        embedder = _require_embedder(info.embed_model)
        embed_name = embedder.name

    params = dict(params)
    if embedder is not None:
        params["embedding"] = {"model": embed_name,
                               "identity": getattr(embedder, "identity", embed_name)}
    con.execute("CREATE OR REPLACE TEMP TABLE _xp_src AS "
                f"SELECT key, text, hash(text) AS h FROM ({level.source()})")
    # Entries that vanished or whose text changed.
    gone = con.execute("""
        SELECT d.doc_no FROM index_docs d LEFT JOIN _xp_src s ON s.key = d.key
        WHERE d.index_name = ? AND (s.key IS NULL OR s.h <> d.text_hash)""", [name]
                       ).fetchnumpy()["doc_no"]
    if len(gone):
        con.register("_xp_gone", pa.table({"doc_no": pa.array(gone, pa.int32())}))
        for table in ("index_postings", "index_vectors", "index_docs"):
            con.execute(f"DELETE FROM {table} WHERE index_name = ? "
                        "AND doc_no IN (SELECT doc_no FROM _xp_gone)", [name])
        con.unregister("_xp_gone")
        result.removed = len(gone)

    analyzer = Analyzer.from_params(params["analysis"])
    terms: dict[str, int] = {}
    for term, tid in con.execute("SELECT term, term_id FROM index_terms WHERE index_name = ?",
                                 [name]).fetchall():
        terms[term] = tid
    next_doc = info.next_doc_no if info is not None else 0
    # New or changed entries (their text, not the whole library's), in key order so that
    # doc numbers do not depend on the order of the input.
    fresh = con.execute("""
        SELECT s.key, s.text, s.h FROM _xp_src s
        ANTI JOIN (SELECT key, text_hash FROM index_docs WHERE index_name = ?) d
            ON d.key = s.key AND d.text_hash = s.h
        ORDER BY s.key""", [name]).to_arrow_table()
    for start in range(0, fresh.num_rows, batch_size):
        chunk = fresh.slice(start, batch_size).to_pydict()
        rows = list(zip(chunk["key"], chunk["text"], chunk["h"], strict=True))
        keys = [r[0] for r in rows]
        texts = [r[1] or "" for r in rows]
        n_new_terms = len(terms)
        t_ids: list[int] = []
        d_nos: list[int] = []
        tfs: list[int] = []
        lengths = []
        for i, text in enumerate(texts):
            toks = analyzer(text)
            lengths.append(len(toks))
            counts: dict[str, int] = {}
            for t in toks:
                counts[t] = counts.get(t, 0) + 1
            doc_no = next_doc + i
            for t, c in counts.items():
                tid = terms.get(t)
                if tid is None:
                    tid = terms[t] = len(terms)
                t_ids.append(tid)
                d_nos.append(doc_no)
                tfs.append(c)
        doc_nos = np.arange(next_doc, next_doc + len(rows), dtype=np.int32)
        con.register("_xp_docs", pa.table({
            "index_name": pa.array([name] * len(rows)), "doc_no": pa.array(doc_nos),
            "key": pa.array(keys), "text_hash": pa.array([r[2] for r in rows], pa.uint64()),
            "length": pa.array(lengths, pa.int32())}))
        con.execute("INSERT INTO index_docs SELECT * FROM _xp_docs")
        con.unregister("_xp_docs")
        if len(terms) > n_new_terms:
            new = list(terms)[n_new_terms:]
            con.register("_xp_terms", pa.table({
                "index_name": pa.array([name] * len(new)),
                "term_id": pa.array(range(n_new_terms, len(terms)), pa.int32()),
                "term": pa.array(new)}))
            con.execute("INSERT INTO index_terms SELECT * FROM _xp_terms")
            con.unregister("_xp_terms")
        con.register("_xp_post", pa.table({
            "index_name": pa.array([name] * len(t_ids)),
            "term_id": pa.array(t_ids, pa.int32()), "doc_no": pa.array(d_nos, pa.int32()),
            "tf": pa.array(tfs, pa.int32())}))
        con.execute("INSERT INTO index_postings SELECT * FROM _xp_post")
        con.unregister("_xp_post")
        if embedder is not None:
            vecs = embed_texts(embedder, texts)
            con.register("_xp_vec", pa.table({
                "index_name": pa.array([name] * len(rows)), "doc_no": pa.array(doc_nos),
                "vector": pa.array(list(vecs), pa.list_(pa.float32()))}))
            con.execute("INSERT INTO index_vectors SELECT * FROM _xp_vec")
            con.unregister("_xp_vec")
            result.embedded += len(rows)
        next_doc += len(rows)
        result.added += len(rows)
        if on_progress is not None:
            on_progress(len(rows))

    n_docs, n_postings = con.execute(
        "SELECT (SELECT count(*) FROM index_docs WHERE index_name = $1), "
        "(SELECT count(*) FROM index_postings WHERE index_name = $1)", [name]).fetchone()
    n_src, h = con.execute("SELECT count(*), bit_xor(hash(key, text)) FROM "
                           f"({level.source()})").fetchone()
    result.input_hash = f"{int(n_src)}:{int(h or 0):016x}"
    result.n_docs = int(n_docs)
    result.unchanged = result.n_docs - result.added
    dim = None
    if embedder is not None:
        dim = getattr(embedder, "dim", None) or (con.execute(
            "SELECT len(vector) FROM index_vectors WHERE index_name = ? LIMIT 1", [name]
        ).fetchone() or [None])[0]
    ts = now()
    from xpkit.core import __version__

    row = [name, level.name, orjson.dumps(params).decode(), embed_name, dim, n_docs,
           len(terms), n_postings, next_doc, result.input_hash, __version__, ts, ts, run_id]
    if info is None:
        con.execute("INSERT INTO indexes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    elif result.added or result.removed or info.input_hash != result.input_hash \
            or info.params != params or info.embed_model != embed_name:
        con.execute("""UPDATE indexes SET params = ?, embed_model = ?, embed_dim = ?,
                       n_docs = ?, n_terms = ?, n_postings = ?, next_doc_no = ?,
                       input_hash = ?, xpkit_version = ?, updated_at = ?, run_id = ?
                       WHERE name = ?""",
                    [row[2], embed_name, dim, n_docs, len(terms), n_postings, next_doc,
                     result.input_hash, __version__, ts, run_id, name])
    con.execute("DROP TABLE IF EXISTS _xp_src")
    return result


# --------------------------------------------------------------------------- embeddings


def _require_embedder(spec: str) -> Any:
    from xpkit.core.vectors import get_embedder

    return get_embedder(spec)


def embed_texts(embedder: Any, texts: Sequence[str]) -> Any:
    from xpkit.core.vectors import embed

    return embed(embedder, texts)


# --------------------------------------------------------------------------- input records


@dataclass
class IndexSummary:
    """What an index run did. ``records`` = ``units`` + ``links`` + ``rejected`` input rows."""

    records: int = 0
    units_new: int = 0
    units_updated: int = 0
    units_same: int = 0
    links: int = 0
    rejected: int = 0
    level: str = "unit"
    sync: SyncResult = field(default_factory=SyncResult)
    rejects_path: str | None = None
    run_id: str = ""

    def counts(self) -> dict[str, Any]:
        s = self.sync
        return {"records": self.records, "units_new": self.units_new,
                "units_updated": self.units_updated, "units_same": self.units_same,
                "links": self.links, "rejected": self.rejected, "level": self.level,
                "indexed_added": s.added, "indexed_removed": s.removed,
                "indexed_total": s.n_docs, "embedded": s.embedded, "rebuilt": s.rebuilt}


def _as_text(value: Any, field_name: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError("is missing or empty", field_name)
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _lookup(record: dict[str, Any], path: str) -> Any:
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def document_unit(record: dict[str, Any], *, id_field: str, text_field: str,
                  title_field: str | None, kind: str) -> dict[str, Any]:
    """A plain document as a unit: its own id, its text as content, the rest in ``meta``."""
    raw_id = _lookup(record, id_field)
    if raw_id is None or raw_id == "":
        raise RecordError("is missing or empty (named by --id)", id_field)
    if isinstance(raw_id, dict | list):
        raise RecordError("expected a text or number id", id_field)
    content = _as_text(_lookup(record, text_field), text_field)
    title = _lookup(record, title_field) if title_field else None
    used = {id_field.split(".")[0], text_field.split(".")[0]}
    if title_field:
        used.add(title_field.split(".")[0])
    tags = record.get("tags")
    meta = {k: v for k, v in record.items() if k not in used and k != "tags"}
    return {"unit_id": str(raw_id), "kind": kind, "title": None if title is None else
            _as_text(title, title_field or "title"), "when": None, "content": content,
            "example": None, "polarity": None, "evidence": [], "tags":
            sorted({str(t) for t in tags}) if isinstance(tags, list) else [],
            "stats": None, "provenance": {"source": "index --id/--text"}, "meta": meta or None}


def experience_unit(record: dict[str, Any]) -> dict[str, Any]:
    """A unit record as ``distill`` writes it (DESIGN.md "unit"), checked for the essentials."""
    from xpkit.core.units import normalize_evidence, unit_id_for

    kind = record.get("kind")
    if not isinstance(kind, str) or not kind:
        raise RecordError("is missing (an experience unit needs a kind; plain documents "
                          "need --id and --text)", "kind")
    content = _as_text(record.get("content"), "content")
    unit = {k: record.get(k) for k in ("unit_id", "kind", "title", "when", "content",
                                       "example", "polarity", "evidence", "tags", "stats",
                                       "provenance", "meta")}
    unit["content"] = content
    for k in ("title", "when", "example", "polarity"):
        if unit[k] is not None and not isinstance(unit[k], str):
            raise RecordError("expected text", k)
    unit["evidence"] = normalize_evidence(unit["evidence"] or [])
    tags = unit["tags"] or []
    if not isinstance(tags, list):
        raise RecordError("expected a list of tags", "tags")
    unit["tags"] = sorted({str(t) for t in tags})
    if not unit["unit_id"]:
        unit["unit_id"] = unit_id_for(unit)
    elif not isinstance(unit["unit_id"], str):
        raise RecordError("expected text", "unit_id")
    extra = {k: v for k, v in record.items() if k not in unit and k != "links"}
    if extra:
        unit["meta"] = {**(unit["meta"] or {}), **extra}
    return unit


def _merged_stats(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """Counters of a unit indexed again: per counter the larger, so a rerun adds nothing."""
    if not old or not new:
        return new or old
    out = dict(old)
    for k, v in new.items():
        if isinstance(v, int | float) and isinstance(old.get(k), int | float):
            out[k] = max(old[k], v)
        elif isinstance(v, dict) and isinstance(old.get(k), dict):
            out[k] = _merged_stats(old[k], v)
        elif k not in old:
            out[k] = v
    return out


_WORDING = ("kind", "title", "when", "content", "example", "polarity")


def _merge_copy(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two copies of a unit: same wording -> evidence and tags unioned, counters kept (max);
    other wording -> the newer copy replaces the older."""
    if any(old.get(k) != new.get(k) for k in _WORDING):
        return new
    ev = {orjson.dumps(e, option=orjson.OPT_SORT_KEYS): e
          for e in (old.get("evidence") or []) + (new.get("evidence") or [])}
    merged = dict(new)
    merged["evidence"] = [ev[k] for k in sorted(ev)]
    merged["tags"] = sorted(set(old.get("tags") or []) | set(new.get("tags") or []))
    merged["stats"] = _merged_stats(old.get("stats"), new.get("stats"))
    merged["provenance"] = old.get("provenance") or new.get("provenance")
    merged["meta"] = {**(old.get("meta") or {}), **(new.get("meta") or {})} or None
    return merged


_UNIT_COLUMNS = ("unit_id", "kind", "title", "when", "content", "example", "polarity",
                 "evidence", "tags", "stats", "provenance", "meta", "created_at", "updated_at")
_JSON_COLUMNS = ("evidence", "tags", "stats", "provenance", "meta")


def upsert_units(con: Any, units: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Add units; a known ``unit_id`` with other wording is replaced, with the same wording its
    evidence and tags are unioned and its counters kept (idempotent). Returns (new, updated,
    same)."""
    import pyarrow as pa

    from xpkit.core.store import now

    by_id: dict[str, dict[str, Any]] = {}
    for u in units:  # copies of one id in a batch: merged like a copy already in the store
        prev = by_id.get(u["unit_id"])
        by_id[u["unit_id"]] = u if prev is None else _merge_copy(prev, u)
    ids = list(by_id)
    existing = {r[0]: r for r in con.execute(
        f"SELECT {', '.join(chr(34) + c + chr(34) for c in _UNIT_COLUMNS)} FROM units "
        "WHERE unit_id IN (SELECT unnest(?))", [ids]).fetchall()}
    ts = now()
    new = updated = same = 0
    rows: list[dict[str, Any]] = []
    for uid, u in by_id.items():
        old = existing.get(uid)
        row = dict(u)
        row["created_at"] = ts
        row["updated_at"] = ts
        if old is not None:
            o = dict(zip(_UNIT_COLUMNS, old, strict=True))
            for k in _JSON_COLUMNS:
                o[k] = orjson.loads(o[k]) if o[k] else None
            row["created_at"] = o["created_at"]
            if all(o[k] == u.get(k) for k in _WORDING):
                row = {**_merge_copy(o, u), "created_at": o["created_at"], "updated_at": ts}
                if all(o[k] == row[k] for k in _JSON_COLUMNS):
                    same += 1
                    continue
            else:
                updated += 1
        else:
            new += 1
        rows.append(row)
    if not rows:
        return new, updated, same
    table = {c: [r.get(c) for r in rows] for c in _UNIT_COLUMNS}
    for c in _JSON_COLUMNS:
        table[c] = [None if v is None else orjson.dumps(v).decode() for v in table[c]]
    con.register("_xp_units", pa.table(table))
    con.execute("DELETE FROM units WHERE unit_id IN (SELECT unit_id FROM _xp_units)")
    con.execute("INSERT INTO units SELECT * FROM _xp_units")
    con.unregister("_xp_units")
    return new, updated, same


def _links_of(record: dict[str, Any], unit_id: str) -> list[tuple[str, str, str]]:
    from xpkit.core.links import parse_links

    return parse_links(record.get("links"), unit_id)


def index(
    inputs: Sequence[str],
    *,
    store: str,
    level: str = "unit",
    id_field: str | None = None,
    text_field: str | None = None,
    title_field: str | None = None,
    kind: str = DEFAULT_KIND,
    embed_model: str | None = None,
    stopwords: str = "en",
    stemmer: str = "english",
    k1: float = 1.5,
    b: float = 0.75,
    variant: str = "lucene",
    rebuild: bool = False,
    rejects: str | None = None,
    strict: bool = False,
    batch_size: int = 2000,
    on_notice: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    run_args: dict[str, Any] | None = None,
) -> IndexSummary:
    """Add ``inputs`` (units or documents) to the store and bring the ``level`` index up to date.

    All writes of the run are one transaction; with ``strict`` a rejected record fails the
    run and nothing is committed. Without inputs, only the index is synced with the store
    (e.g. after ``ingest`` for ``--level episode|step``).
    """
    from xpkit.core.bm25 import VARIANTS
    from xpkit.core.io import read_records, resolve_inputs
    from xpkit.core.links import insert_links, parse_link_record
    from xpkit.core.quarantine import Quarantine, default_rejects_path
    from xpkit.core.store import RunLog, Store

    lvl = get_level(level)
    if variant not in VARIANTS:
        raise UsageError(f"--variant {variant}: expected one of {', '.join(VARIANTS)}.")
    if k1 < 0 or not 0 <= b <= 1:
        raise UsageError("--k1 must be >= 0 and --b between 0 and 1.")
    if (id_field is None) != (text_field is None):
        raise UsageError("--id and --text go together: name the id field and the text field "
                         "of your documents.")
    if inputs and level != "unit":
        raise UsageError(f"--level {level} indexes the store's {lvl.noun}; put them there with "
                         "'xpkit ingest ... --store', then run 'xpkit index --level "
                         f"{level} --store {store}' without inputs.")
    params = {"analysis": analysis_params(stopwords, stemmer),
              "bm25": {"k1": k1, "b": b, "variant": variant}, "version": INDEX_VERSION}
    embedder = _require_embedder(embed_model) if embed_model else None
    sources = resolve_inputs(inputs) if inputs else []
    run = RunLog("index", {**(run_args or {}), "store": store, "level": level})
    summary = IndexSummary(level=level, run_id=run.run_id)
    rejects_path = rejects or default_rejects_path(None, store)
    quarantine = Quarantine(rejects_path, run.run_id, "index")
    db = Store.open(store)
    try:
        db.con.execute("BEGIN TRANSACTION")
        for batch in (read_records(sources, batch_size, on_notice) if sources else ()):
            units: list[dict[str, Any]] = []
            links: list[tuple[str, str, str]] = []
            for row in batch:
                summary.records += 1
                if row.error is not None:
                    summary.rejected += 1
                    quarantine.reject(file=row.file, line=row.line, unit=row.unit,
                                      reason=row.error, field=row.field, raw=row.raw)
                    continue
                rec = row.value or {}
                try:
                    link = parse_link_record(rec) if id_field is None else None
                    if link is not None:
                        links.append(link)
                        continue
                    if id_field is not None:
                        unit = document_unit(rec, id_field=id_field,
                                             text_field=text_field or "",
                                             title_field=title_field, kind=kind)
                    else:
                        unit = experience_unit(rec)
                    links.extend(_links_of(rec, unit["unit_id"]))
                except RecordError as exc:
                    summary.rejected += 1
                    quarantine.reject(file=row.file, line=row.line, unit=row.unit,
                                      reason=exc.reason, field=exc.field, record=rec)
                    continue
                units.append(unit)
            if units:
                n, u, s = upsert_units(db.con, units)
                summary.units_new += n
                summary.units_updated += u
                summary.units_same += s + (len(units) - len({x["unit_id"] for x in units}))
            if links:
                summary.links += insert_links(db.con, links, run.run_id)
        if strict and summary.rejected:
            raise StrictModeError(f"{summary.rejected} record(s) rejected (see {rejects_path});"
                                  " --strict makes this a failure; the store was not changed.")
        summary.sync = sync_index(db.con, lvl, params=params, embedder=embedder,
                                  rebuild=rebuild, run_id=run.run_id, on_progress=on_progress)
        run.counts = summary.counts()
        db.record_run(run)
        db.con.execute("COMMIT")
    except BaseException as exc:
        import contextlib

        with contextlib.suppress(Exception):
            db.con.execute("ROLLBACK")
        run.status, run.error = "failed", str(exc) or type(exc).__name__
        run.counts = summary.counts()
        with contextlib.suppress(Exception), db.transaction():
            db.record_run(run)
        raise
    finally:
        quarantine.close()
        db.close()
    summary.rejects_path = rejects_path if quarantine.count else None
    return summary

