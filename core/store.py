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


# Append only: never edit or reorder a released migration; add m00N_... at the end.
MIGRATIONS: list[Migration] = [m001_initial]


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
                holder = ""
                if "PID" in msg:
                    holder = " (held by PID " + msg.split("PID", 1)[1].strip().split()[0].rstrip(")") + ")"
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

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


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
