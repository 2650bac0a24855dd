"""The persistent library: one DuckDB file holding episodes, steps, units and the runs log.

The schema is built by append-only migrations (``m001_...`` functions, applied in order and
recorded in ``_migrations``), so a store made by an older xpkit upgrades in place and a
migration, once released, never changes. Each command's writes happen in one transaction:
a run that is killed leaves the store as it was before it. DuckDB takes an exclusive file
lock for a read-write connection, which is how a second concurrent writer is refused with
``StoreLockedError`` instead of corrupting the file.

The FTS and VSS extensions are loaded from the ``duckdb-extension-fts`` /
``duckdb-extension-vss`` pip packages (DuckDB is pinned to their version); nothing is ever
downloaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from xpkit.core.errors import StoreError, StoreLockedError, UsageError

Migration = Callable[[Any], None]


def m001_initial(con: Any) -> None:
    """Episodes, their steps, experience units, and the runs log."""
    con.execute("""
        CREATE TABLE episodes (
            episode_id VARCHAR PRIMARY KEY,
            source_format VARCHAR, source_file VARCHAR, source_line BIGINT,
            task VARCHAR,
            success BOOLEAN, reward DOUBLE, score DOUBLE,
            answer VARCHAR, reference VARCHAR, model VARCHAR,
            meta JSON,
            n_steps INTEGER,
            run_id VARCHAR
        )""")
    con.execute("""
        CREATE TABLE steps (
            episode_id VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            role VARCHAR, kind VARCHAR, content VARCHAR, name VARCHAR, args JSON,
            PRIMARY KEY (episode_id, step)
        )""")
    con.execute("""
        CREATE TABLE units (
            unit_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            title VARCHAR, "when" VARCHAR, content VARCHAR, example VARCHAR,
            polarity VARCHAR,
            evidence JSON, tags JSON, stats JSON, provenance JSON, meta JSON,
            created_at TIMESTAMP, updated_at TIMESTAMP
        )""")
    con.execute("""
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            command VARCHAR, args JSON, versions JSON, counts JSON,
            started_at TIMESTAMP, finished_at TIMESTAMP, seconds DOUBLE,
            status VARCHAR, error VARCHAR
        )""")


def m002_index_tables(con: Any) -> None:
    """Search structures over units, episodes or steps: BM25 postings and dense vectors.

    ``indexes`` describes each index (what it was built from: level, parameters, embedding
    model, row count, input hash); ``index_docs`` numbers the indexed entries (numbers are
    never reused, so removing an entry only leaves an empty column); ``index_terms`` and
    ``index_postings`` hold the BM25 postings that ``xpkit.core.bm25`` scores in-process;
    ``index_vectors`` holds L2-normalised embeddings. Adding entries appends rows: nothing
    already indexed is rebuilt.
    """
    con.execute("""
        CREATE TABLE indexes (
            name VARCHAR PRIMARY KEY, level VARCHAR NOT NULL, params JSON,
            embed_model VARCHAR, embed_dim INTEGER,
            n_docs BIGINT, n_terms BIGINT, n_postings BIGINT, next_doc_no BIGINT,
            input_hash VARCHAR, xpkit_version VARCHAR,
            created_at TIMESTAMP, updated_at TIMESTAMP, run_id VARCHAR
        )""")
    con.execute("""
        CREATE TABLE index_docs (
            index_name VARCHAR NOT NULL, doc_no INTEGER NOT NULL, key VARCHAR NOT NULL,
            text_hash UBIGINT, length INTEGER,
            PRIMARY KEY (index_name, doc_no)
        )""")
    con.execute("""
        CREATE TABLE index_terms (
            index_name VARCHAR NOT NULL, term_id INTEGER NOT NULL, term VARCHAR NOT NULL,
            PRIMARY KEY (index_name, term_id)
        )""")
    con.execute("""
        CREATE TABLE index_postings (
            index_name VARCHAR NOT NULL, term_id INTEGER NOT NULL, doc_no INTEGER NOT NULL,
            tf INTEGER NOT NULL
        )""")
    con.execute("""
        CREATE TABLE index_vectors (
            index_name VARCHAR NOT NULL, doc_no INTEGER NOT NULL, vector FLOAT[] NOT NULL,
            PRIMARY KEY (index_name, doc_no)
        )""")


def m003_unit_links(con: Any) -> None:
    """Typed edges between units (and from units to episodes): the EXG experience graph.

    ``relation`` is ``derived-from``, ``refines``, ``contradicts`` (or a plugin's own);
    ``src`` and ``dst`` are unit ids, or episode ids (``ep_...``, ``ep_...#step``).
    """
    con.execute("""
        CREATE TABLE unit_links (
            src VARCHAR NOT NULL, dst VARCHAR NOT NULL, relation VARCHAR NOT NULL,
            weight DOUBLE, meta JSON, run_id VARCHAR, created_at TIMESTAMP
        )""")


def m004_gates(con: Any) -> None:
    """Decisions of ``evaluate --gate``: a batch of units kept or rejected, with both scores."""
    con.execute("""
        CREATE TABLE gates (
            run_id VARCHAR PRIMARY KEY, units_file VARCHAR, decision VARCHAR NOT NULL,
            score_without DOUBLE, score_with DOUBLE, p_value DOUBLE, n INTEGER, summary JSON,
            created_at TIMESTAMP DEFAULT current_timestamp
        )""")


def m005_steps_without_key(con: Any) -> None:
    """The steps table without its primary key on (episode_id, step).

    DuckDB never used that index for a lookup (``WHERE episode_id = ?`` scans either way),
    and ingest adds steps only with their new episode, numbered from 0, so the key checked
    nothing; maintaining it cost a third of the insert time, half the commit time, and the
    memory of an index over every step of the store, which DuckDB cannot evict.
    """
    con.execute("""
        CREATE TABLE steps_new (
            episode_id VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            role VARCHAR, kind VARCHAR, content VARCHAR, name VARCHAR, args JSON
        )""")
    con.execute("INSERT INTO steps_new SELECT * FROM steps ORDER BY episode_id, step")
    con.execute("DROP TABLE steps")
    con.execute("ALTER TABLE steps_new RENAME TO steps")


# Append only: never edit or reorder a released migration; add m00N_... at the end.
MIGRATIONS: list[Migration] = [m001_initial, m002_index_tables, m003_unit_links, m004_gates,
                               m005_steps_without_key]


def extension_path(name: str) -> Path:
    """Path of the ``.duckdb_extension`` file shipped by the ``duckdb-extension-<name>`` package."""
    import duckdb

    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(f"DuckDB extension {name} is not installed; "
                         f"pip install duckdb-extension-{name}=={duckdb.__version__}.")
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        found = sorted(p.parent.name for p in base.glob(f"extensions/*/{name}.duckdb_extension"))
        raise StoreError(f"DuckDB extension {name} is for DuckDB {', '.join(found) or '?'}, "
                         f"not v{duckdb.__version__}; install matching versions.")
    return path


def versions() -> dict[str, str]:
    """Versions recorded with every run."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("xpkit", "duckdb", "llama-cpp-python"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Store:
    """An open store. Use ``Store.open(path)`` as a context manager."""

    def __init__(self, con: Any, path: str, read_only: bool) -> None:
        self.con = con
        self.path = path
        self.read_only = read_only
        self._loaded: set[str] = set()

    @classmethod
    def open(cls, path: str, *, read_only: bool = False, create: bool = True) -> Store:
        """Open (and create or migrate) a store; raise ``StoreLockedError`` if another holds it."""
        import duckdb

        if not path.endswith((".duckdb", ".db", ".ddb")):
            raise UsageError(f"--store {path}: expected a .duckdb file.")
        exists = os.path.exists(path)
        if not exists and (read_only or not create):
            raise UsageError(f"--store {path}: no such store; create it with a command that "
                             "writes, such as 'xpkit ingest ... --store'.")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"--store {path}: directory {parent} does not exist.")
        try:
            con = duckdb.connect(path, read_only=read_only,
                                 config={"autoinstall_known_extensions": False,
                                         "autoload_known_extensions": False})
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" in msg.lower():
                pid = msg.split("PID", 1)[1].strip().split()[0].rstrip(")") if "PID" in msg else ""
                holder = f" (held by PID {pid})" if pid else ""
                raise StoreLockedError(f"Store {path} is locked by another process{holder}; "
                                       "wait for it to finish or use another --store.") from exc
            raise StoreError(f"Store {path} cannot be opened: {msg}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"Store {path} cannot be opened: {exc}") from exc
        store = cls(con, path, read_only)
        if not read_only:
            store.migrate()
        elif store.pending_migrations():
            con.close()
            raise StoreError(f"Store {path} was made by an older xpkit; open it once with a "
                             "writing command to upgrade it.")
        return store

    # ---------------------------------------------------------------- schema

    def _applied(self) -> set[str]:
        if not self.read_only:
            self.con.execute("CREATE TABLE IF NOT EXISTS _migrations "
                             "(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
        try:
            return {r[0] for r in self.con.execute("SELECT name FROM _migrations").fetchall()}
        except Exception:
            return set()

    def pending_migrations(self) -> list[Migration]:
        applied = self._applied()
        return [m for m in MIGRATIONS if m.__name__ not in applied]

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; return their names."""
        done = []
        for m in self.pending_migrations():
            with self.transaction():
                m(self.con)
                self.con.execute("INSERT INTO _migrations VALUES (?, ?)", [m.__name__, now()])
            done.append(m.__name__)
        return done

    def load_extension(self, name: str) -> None:
        """Load ``fts`` or ``vss`` from its pip package (never from the network)."""
        if name in self._loaded:
            return
        self.con.execute(f"LOAD '{extension_path(name)}'")
        self._loaded.add(name)

    # ---------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction: committed if the block finishes, rolled back if it raises."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            with contextlib.suppress(Exception):
                self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def record_run(self, run: RunLog) -> None:
        """Append the run's row to ``runs`` (inside the caller's transaction if one is open)."""
        self.con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run.run_id, run.command, orjson.dumps(run.args).decode(),
             orjson.dumps(versions()).decode(), orjson.dumps(run.counts).decode(),
             run.started_at, now(), time.monotonic() - run.t0, run.status, run.error],
        )

    # ---------------------------------------------------------------- records

    def episodes(self, where: str = "", params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Canonical episodes rebuilt from ``episodes`` and ``steps`` (``where`` filters the
        episodes table, e.g. ``"episode_id IN (SELECT unnest(?))"``)."""
        rows = self.con.execute(
            "SELECT episode_id, source_format, source_file, source_line, task, success, "
            "reward, score, answer, reference, model, meta FROM episodes "
            + (f"WHERE {where} " if where else "") + "ORDER BY episode_id",
            params or []).fetchall()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        steps: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for eid, role, kind, content, name, args in self.con.execute(
                "SELECT episode_id, role, kind, content, name, args FROM steps "
                "WHERE episode_id IN (SELECT unnest(?)) ORDER BY episode_id, step", [ids]
        ).fetchall():
            step: dict[str, Any] = {"role": role, "kind": kind, "content": content}
            if name is not None:
                step["name"] = name
            if args is not None:
                step["args"] = orjson.loads(args)
            steps[eid].append(step)
        return [{"episode_id": eid, "source": {"format": fmt, "file": file, "line": line},
                 "task": task, "steps": steps[eid],
                 "outcome": {"success": success, "reward": reward, "score": score},
                 "answer": answer, "reference": reference, "model": model,
                 "meta": orjson.loads(meta) if meta else {}}
                for (eid, fmt, file, line, task, success, reward, score, answer, reference,
                     model, meta) in rows]

    _UNIT_COLUMNS = ("unit_id", "kind", "title", "when", "content", "example", "polarity",
                     "evidence", "tags", "stats", "provenance", "meta")
    _UNIT_JSON = frozenset({"evidence", "tags", "stats", "provenance", "meta"})

    def units(self, where: str = "", params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Units as records (DESIGN.md "unit"), ordered by ``unit_id``."""
        cols = ", ".join(f'"{c}"' for c in self._UNIT_COLUMNS)
        rows = self.con.execute(f"SELECT {cols} FROM units "
                                + (f"WHERE {where} " if where else "") + "ORDER BY unit_id",
                                params or []).fetchall()
        out = []
        for row in rows:
            unit = {}
            for c, v in zip(self._UNIT_COLUMNS, row, strict=True):
                if c in self._UNIT_JSON:
                    v = orjson.loads(v) if v is not None else None
                    if c == "meta" and not v:
                        continue
                unit[c] = v
            out.append(unit)
        return out

    def upsert_units(self, units: list[dict[str, Any]]) -> None:
        """Insert new units and replace changed ones (by ``unit_id``), keeping created_at."""
        if not units:
            return
        stamp = now()
        cols = ", ".join(f'"{c}"' for c in self._UNIT_COLUMNS)
        marks = ", ".join("?" for _ in self._UNIT_COLUMNS)
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in self._UNIT_COLUMNS[1:])
        self.con.executemany(
            f"INSERT INTO units ({cols}, created_at, updated_at) VALUES ({marks}, ?, ?) "
            f"ON CONFLICT (unit_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
            [[orjson.dumps(u.get(c)).decode() if c in self._UNIT_JSON else u.get(c)
              for c in self._UNIT_COLUMNS] + [stamp, stamp] for u in units])

    def delete_units(self, unit_ids: list[str]) -> None:
        if unit_ids:
            self.con.execute("DELETE FROM units WHERE unit_id IN (SELECT unnest(?))", [unit_ids])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def append_run(store: str, run: RunLog, on_notice: Any = None) -> None:
    """Append ``run`` to the store's ``runs`` table for a command that did not hold the store
    open for writing (retrieve, evaluate without feedback). A busy store is reported through
    ``on_notice``; logging never turns a finished command into a failure."""
    notice = on_notice or (lambda _m: None)
    if not os.path.exists(store):
        return
    try:
        with Store.open(store) as db, db.transaction():
            db.record_run(run)
    except StoreLockedError:
        notice(f"{run.command}: {store} is busy; this run was not added to its runs table")
    except Exception:
        notice(f"{run.command}: could not add this run to {store}'s runs table")


class RunLog:
    """What a command did, for the ``runs`` table: command, arguments, counts, timing."""

    def __init__(self, command: str, args: dict[str, Any]) -> None:
        from uuid import uuid4

        self.run_id = "run_" + uuid4().hex[:16]
        self.command = command
        self.args = {"argv": sys.argv[1:], **{k: _jsonable(v) for k, v in args.items()}}
        self.counts: dict[str, Any] = {}
        self.started_at = now()
        self.t0 = time.monotonic()
        self.status = "ok"
        self.error: str | None = None


def _jsonable(v: Any) -> Any:
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
