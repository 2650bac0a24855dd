"""The response and embedding cache: a rerun of the same command makes no model calls.

Keys are content hashes (BLAKE2b of the canonical JSON) of everything that determines an
output: the model's identity (a fingerprint of the GGUF file, or the server URL and model
name), the full prompt (all chat messages), the JSON schema, and the generation parameters.
Loading options that do not change outputs (threads, GPU layers, concurrency) are not part
of the key.

Storage: one SQLite file, ``$XPKIT_HOME/cache/llm.sqlite3``, in WAL mode. SQLite rather
than DuckDB because several xpkit processes (a pipeline, parallel cron jobs) share the cache
and DuckDB locks a database file to one writing process; SQLite's WAL lets readers and one
writer at a time proceed, and ``busy_timeout`` makes concurrent writers wait instead of
failing. Every completed response is committed as it arrives, so a run that is killed keeps
what it finished and the rerun resumes from there.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from xpkit.core.config import xpkit_home
from xpkit.core.errors import UsageError
from xpkit.core.records import content_hash

CACHE_VERSION = 1
_CHUNK = 500  # keys per SELECT ... IN (...)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, created REAL NOT NULL, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, created REAL NOT NULL, dim INTEGER NOT NULL,
    vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS responses_model ON responses(model);
CREATE INDEX IF NOT EXISTS embeddings_model ON embeddings(model);
"""
KINDS = ("all", "responses", "embeddings")


def default_cache_path() -> Path:
    return xpkit_home() / "cache" / "llm.sqlite3"


def cache_key(kind: str, model: str, payload: Any) -> str:
    """The cache key of one call: a 32-hex content hash of kind, model identity and payload."""
    return content_hash({"v": CACHE_VERSION, "kind": kind, "model": model, "payload": payload},
                        digest_size=16)


class LLMCache:
    """A process's handle on the shared cache file. Thread-safe (one connection, a lock)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, timeout=60, check_same_thread=False,
                                    isolation_level=None)
        self._con.execute("PRAGMA busy_timeout = 60000")
        self._con.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: durable across a process kill, fast commits.
        self._con.execute("PRAGMA synchronous = NORMAL")
        self._con.executescript(_SCHEMA)

    # -- responses -------------------------------------------------------------------------
    def get_responses(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Cached response values for those of ``keys`` that are present."""
        return {k: orjson.loads(v) for k, v in self._select("responses", "value", keys)}

    def put_response(self, key: str, model: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO responses(key, model, created, value) VALUES (?,?,?,?)",
                (key, model, time.time(), orjson.dumps(value)))

    # -- embeddings ------------------------------------------------------------------------
    def get_vectors(self, keys: Sequence[str]) -> dict[str, Any]:
        """Cached vectors (float32 numpy arrays) for those of ``keys`` that are present."""
        import numpy as np

        return {k: np.frombuffer(v, dtype=np.float32)
                for k, v in self._select("embeddings", "vector", keys)}

    def put_vectors(self, model: str, items: Iterable[tuple[str, Any]]) -> None:
        """Store ``(key, vector)`` pairs in one transaction."""
        import numpy as np

        now = time.time()
        rows = []
        for key, vec in items:
            arr = np.asarray(vec, dtype=np.float32)
            rows.append((key, model, now, int(arr.shape[0]), arr.tobytes()))
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.executemany(
                    "INSERT OR REPLACE INTO embeddings(key, model, created, dim, vector) "
                    "VALUES (?,?,?,?,?)", rows)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    # -- maintenance -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Path, size and entry counts per kind and per model."""
        with self._lock:
            per_model: dict[str, dict[str, int]] = {}
            totals = {}
            for table in ("responses", "embeddings"):
                rows = self._con.execute(
                    f"SELECT model, count(*) FROM {table} GROUP BY model").fetchall()
                totals[table] = sum(n for _, n in rows)
                for model, n in rows:
                    per_model.setdefault(model, {"responses": 0, "embeddings": 0})[table] = n
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*")
                   if p.is_file())
        return {"path": str(self.path), "bytes": size, **totals,
                "models": [{"model": m, **c} for m, c in sorted(per_model.items())]}

    def clear(self, kind: str = "all") -> dict[str, int]:
        """Delete cached entries of ``kind`` (all, responses, embeddings); returns counts."""
        if kind not in KINDS:
            raise UsageError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}.")
        tables = ("responses", "embeddings") if kind == "all" else (kind,)
        removed = {}
        with self._lock:
            for table in tables:
                removed[table] = self._con.execute(f"DELETE FROM {table}").rowcount
        if kind == "all":
            with self._lock:
                self._con.execute("VACUUM")
        return removed

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _select(self, table: str, column: str, keys: Sequence[str]) -> list[tuple[str, Any]]:
        keys = list(dict.fromkeys(keys))
        out: list[tuple[str, Any]] = []
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                out += self._con.execute(
                    f"SELECT key, {column} FROM {table} WHERE key IN ({marks})", chunk
                ).fetchall()
        return out


_shared: dict[Path, LLMCache] = {}
_shared_lock = threading.Lock()


def open_cache(path: str | Path | None = None) -> LLMCache:
    """The process-wide cache handle for ``path`` (default: under ``$XPKIT_HOME``)."""
    p = Path(path) if path is not None else default_cache_path()
    with _shared_lock:
        if p not in _shared:
            try:
                _shared[p] = LLMCache(p)
            except sqlite3.Error as exc:
                from xpkit.core.errors import XpkitError

                raise XpkitError(f"cannot open the model cache {p}: {exc}; fix the path's "
                                 "permissions, set XPKIT_HOME, or pass --no-cache.") from None
        return _shared[p]


def info() -> dict[str, Any]:
    """``xpkit cache info``: what the cache under ``$XPKIT_HOME`` holds."""
    return open_cache().info()


def clear(kind: str = "all") -> dict[str, int]:
    """``xpkit cache clear``: delete cached responses and/or embeddings."""
    return open_cache().clear(kind)
