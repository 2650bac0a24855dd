"""``ingest``: raw logs in many formats -> canonical episodes, with nothing lost.

Every input record ends up in exactly one place: accepted (written to the output and/or the
store), counted as a duplicate of an earlier episode with the same content hash (in this run
or already in the store), or rejected into the quarantine file with its file, line and
reason. ``IngestSummary.balanced`` checks that the counts add up.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpkit.core.errors import RecordError, StrictModeError, UsageError
from xpkit.core.formats import (
    Detection,
    FormatOptions,
    InputFormat,
    available_formats,
    detect,
    format_for_suffix,
    get_format,
)
from xpkit.core.io import (
    DEFAULT_BATCH_SIZE,
    Source,
    SourceRow,
    open_binary,
    read_jsonl_range,
    read_rows,
    resolve_inputs,
    splittable_size,
)
from xpkit.core.quarantine import Quarantine, default_rejects_path
from xpkit.core.records import episodes_to_arrow
from xpkit.core.store import RunLog, Store

Sink = Callable[[list[dict[str, Any]]], None]
ArrowSink = Callable[[Any], None]  # takes a pyarrow Table in episode_arrow_schema()

# Plain JSONL files at least this large are parsed by several processes; below it, starting
# them costs more than it saves.
PARALLEL_MIN_BYTES = 32 << 20
# The byte range a worker parses at a time: small enough that memory stays bounded and the
# workers evenly loaded, large enough that per-task overhead does not show.
CHUNK_BYTES = 4 << 20
MAX_WORKERS = 4


@dataclass
class IngestSummary:
    """What an ingest run did. ``records`` = ``parsed`` + ``rejected``; every parsed record
    gives one episode (a few formats give several), each ``accepted`` or a ``duplicate``."""

    records: int = 0
    parsed: int = 0
    rejected: int = 0
    episodes: int = 0
    accepted: int = 0
    duplicates: int = 0
    formats: dict[str, str] = field(default_factory=dict)
    rejects_path: str | None = None
    run_id: str = ""

    @property
    def balanced(self) -> bool:
        return (self.records == self.parsed + self.rejected
                and self.episodes == self.accepted + self.duplicates)

    def counts(self) -> dict[str, int]:
        return {"records": self.records, "parsed": self.parsed, "rejected": self.rejected,
                "episodes": self.episodes, "accepted": self.accepted,
                "duplicates": self.duplicates}


def _batched(rows: Iterable[SourceRow], size: int) -> Iterator[list[SourceRow]]:
    batch: list[SourceRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _file_rows(fmt: InputFormat, source: Source, size: int) -> Iterator[list[SourceRow]]:
    """Batches of the rows a format reads from a file in its own layout; closes the file."""
    with open_binary(source) as stream:
        yield from _batched(fmt.read_file(source.name, stream), size)


def _source_batches(source: Source, fmt_name: str, formats: dict[str, InputFormat],
                    batch_size: int, notice: Callable[[str], None]
                    ) -> tuple[InputFormat, Detection | None, Iterator[list[SourceRow]]]:
    """Pick the format for one source and return its batches of rows."""
    claimed = format_for_suffix(source.name, formats) if source.path else None
    if fmt_name != "auto":
        fmt = formats[fmt_name] if fmt_name in formats else get_format(fmt_name)
        if claimed is not None and claimed.name != fmt.name:
            claimed = None
        if source.kind is None and source.path is not None and claimed is None:
            raise UsageError(f"Input {source.name}: format {fmt.name} reads .jsonl, .json, "
                             ".parquet or .csv files, not this file type.")
        if claimed is not None:
            return fmt, None, _file_rows(fmt, source, batch_size)
        return fmt, None, read_rows(source, batch_size, notice)
    if claimed is not None:
        notice(f"{source.name}: reading as {claimed.name} (by file type)")
        return claimed, None, _file_rows(claimed, source, batch_size)
    if source.kind is None and source.path is not None:
        raise UsageError(f"Input {source.name}: unknown file type; expected .jsonl, .json, "
                         ".parquet or .csv (optionally .gz or .zst), or a file a format "
                         "reads itself (.traj, .txt).")
    batches = read_rows(source, batch_size, notice)
    first = next(batches, None)
    if first is None:
        return formats["episode"], None, iter(())
    detection = detect(source.name, first, formats)

    def chained() -> Iterator[list[SourceRow]]:
        yield first
        yield from batches

    return detection.format, detection, chained()


def ingest(
    inputs: Sequence[str],
    *,
    format: str = "auto",
    mapping: dict[str, str] | None = None,
    model_name: str | None = None,
    store: str | None = None,
    output: str | None = None,
    rejects: str | None = None,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    sink: Sink | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    run_args: dict[str, Any] | None = None,
    arrow_sink: ArrowSink | None = None,
    workers: int | None = None,
) -> IngestSummary:
    """Read ``inputs`` as ``format`` and hand canonical episodes to ``sink`` and/or ``store``.

    ``output`` only decides where the quarantine file goes by default. With ``store``, all
    writes of the run are one transaction. With ``strict``, any rejection fails the run
    (``StrictModeError``) and nothing is committed to the store.

    ``arrow_sink`` receives the accepted episodes as Arrow tables in
    ``episode_arrow_schema()`` (the shape Parquet output wants) rather than as dicts. Without
    a dict ``sink``, plain JSONL files of ``PARALLEL_MIN_BYTES`` or more are parsed by
    ``workers`` processes (default: one per CPU, up to ``MAX_WORKERS``; 1 turns this off);
    the results are the same, in the same order, as with one process.
    """
    notice = on_notice or (lambda _msg: None)
    formats = available_formats()
    if format != "auto":
        get_format(format)  # fail fast on an unknown name, before reading anything
    if format == "map" and not mapping:
        raise UsageError("--format map needs at least one --map FIELD=PATH.")
    if mapping and format == "auto":
        format = "map"
    options = FormatOptions(mapping=mapping or {}, model=model_name)
    sources = resolve_inputs(inputs, allow_other=True)
    run = RunLog("ingest", {**(run_args or {}), "format": format, "store": store})
    summary = IngestSummary(run_id=run.run_id)
    rejects_path = rejects or default_rejects_path(output, store)
    quarantine = Quarantine(rejects_path, run.run_id, "ingest")
    # Worker processes are forked before the store opens, so that no DuckDB thread exists
    # in the process being copied; they only ever run the parsers.
    n_workers = _worker_count(workers) if sink is None else 1
    pool = _start_pool(sources, n_workers)
    db = None
    try:
        db = Store.open(store) if store else None
        seen: set[int | str] = set()  # the _seen_key of every episode id of the run
        if db is not None:
            if pool is not None:
                # The workers keep n_workers cores busy; DuckDB threads beyond the rest only
                # contend with them (one thread inserts ~1.6x faster on 2 busy cores).
                db.con.execute(f"SET threads = {max(1, len(os.sched_getaffinity(0)) - n_workers)}")
            db.con.execute("BEGIN TRANSACTION")
        out = _Outputs(db, run.run_id, sink, arrow_sink)
        # All of a run's writes are one transaction, so the only rows of the store that
        # are not in ``seen`` are those it had before: an empty store needs no lookups.
        lookup = db is not None and _has_episodes(db)
        for source in sources:
            fmt, detection, batches = _source_batches(source, format, formats, batch_size,
                                                      notice)
            summary.formats[source.name] = fmt.name
            if detection is not None:
                notice(detection.describe(source.name))
            claimed = format_for_suffix(source.name, formats) if source.path else None
            if pool is not None and (claimed is None or claimed.name != fmt.name) and \
                    splittable_size(source) >= PARALLEL_MIN_BYTES:
                batches.close()
                lines = 0  # lines in the chunks before this one
                for chunk in _parallel_chunks(pool, n_workers + 1, source, fmt, options, out):
                    _accept_chunk(chunk, lines, seen, lookup, summary, quarantine, out)
                    lines += chunk.lines
                    if on_progress is not None:
                        on_progress(chunk.records)
                continue
            for batch in batches:
                episodes = _parse_batch(batch, fmt, options, summary, quarantine)
                fresh = _dedup(episodes, seen, db if lookup else None, summary)
                if fresh:
                    out.episodes(fresh)
                if on_progress is not None:
                    on_progress(len(batch))
        if pool is not None:  # all parsed: the workers' memory goes before the commit's
            pool.close()
            pool.join()
            pool = None
        run.counts = summary.counts()
        if strict and summary.rejected:
            raise StrictModeError(
                f"{summary.rejected} record(s) rejected (see {rejects_path}); --strict "
                "makes this a failure" + ("; the store was not changed." if db else "."))
        if db is not None:
            db.record_run(run)
            # Committing adds the run's keys to the table's own index, which takes about as
            # much memory again as the run's index: DuckDB's own limit applies to that.
            out.unbound_store_memory()
            db.con.execute("COMMIT")
    except BaseException as exc:
        if pool is not None:
            pool.terminate()
        if db is not None:
            # (A COMMIT that failed has ended the transaction already.)
            with contextlib.suppress(Exception):
                db.con.execute("ROLLBACK")
            run.status, run.error = "failed", str(exc) or type(exc).__name__
            run.counts = summary.counts()
            _record_failed_run(db, run)
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        quarantine.close()
        if db is not None:
            db.close()
    summary.rejects_path = rejects_path if quarantine.count else None
    return summary


def _record_failed_run(db: Store, run: RunLog) -> None:
    try:
        with db.transaction():
            db.record_run(run)
    except Exception:  # the original error matters more than the log row
        pass


def _has_episodes(db: Store) -> bool:
    return db.con.execute("SELECT EXISTS (SELECT 1 FROM episodes)").fetchone()[0]  # type: ignore[index]


# DuckDB holds a table's primary-key index (ART) in memory and cannot evict it, while the
# rows themselves can leave memory once written. By default it keeps up to 80% of RAM, so a
# large ingest grew by ~1.5 KB per episode. Its memory limit is kept at what the indexes use
# plus this much: the rest of its memory stays bounded, and a growing index (whose size no
# fixed limit could know in advance) never makes the run fail.
STORE_MEMORY_HEADROOM = 96 << 20


class _Outputs:
    """Where accepted episodes go: the store, a dict sink, an Arrow sink (any of them)."""

    def __init__(self, db: Store | None, run_id: str, sink: Sink | None,
                 arrow_sink: ArrowSink | None) -> None:
        self.db = db
        self.run_id = run_id
        self.sink = sink
        self.arrow_sink = arrow_sink
        self._memory_limit = 0
        if db is not None:
            self._default_memory_limit = db.con.execute(
                "SELECT current_setting('memory_limit')").fetchone()[0]  # type: ignore[index]
            self.bound_store_memory()

    def episodes(self, fresh: list[dict[str, Any]]) -> None:
        table = episodes_to_arrow(fresh) if self.db is not None or self.arrow_sink else None
        if self.db is not None:
            self.insert(*_store_tables(table, self.run_id))
        if self.sink is not None:
            self.sink(fresh)
        if self.arrow_sink is not None:
            self.arrow_sink(table)

    def insert(self, ep_table: Any, st_table: Any) -> None:
        """Add rows to the store's episodes and steps tables."""
        assert self.db is not None
        # Not con.register(): a registered table stays referenced until the transaction ends
        # (~2.5 KB per episode, so a 1 GB ingest held ~3 GB), even after unregister().
        self.db.con.from_arrow(ep_table).insert_into("episodes")
        self.db.con.from_arrow(st_table).insert_into("steps")
        self.bound_store_memory()

    def bound_store_memory(self) -> None:
        """Raise DuckDB's memory limit to what its indexes use plus STORE_MEMORY_HEADROOM
        (never lower it: the run may need what it already holds)."""
        assert self.db is not None
        index = self.db.con.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() "
            "WHERE tag = 'ART_INDEX'").fetchone()[0]  # type: ignore[index]
        limit = index + STORE_MEMORY_HEADROOM
        if limit > self._memory_limit + (16 << 20) or not self._memory_limit:
            try:
                self.db.con.execute(f"SET memory_limit = '{limit >> 20} MiB'")
            except Exception:  # (it holds more than that and cannot let go: try again later)
                return
            self._memory_limit = limit

    def unbound_store_memory(self) -> None:
        """Give DuckDB back its own memory limit. (SET, not RESET: in DuckDB 1.5, RESET
        restores the setting's value but leaves the buffer pool at the lower limit.)"""
        assert self.db is not None
        self.db.con.execute(f"SET memory_limit = '{self._default_memory_limit}'")


def _parse_batch(batch: list[SourceRow], fmt: InputFormat, options: FormatOptions,
                 summary: IngestSummary, quarantine: Quarantine | _RejectLog
                 ) -> list[dict[str, Any]]:
    episodes: list[dict[str, Any]] = []
    parse = fmt.parse
    for row in batch:
        summary.records += 1
        if row.error is not None:
            summary.rejected += 1
            quarantine.reject(file=row.file, line=row.line, unit=row.unit, reason=row.error,
                              field=row.field, raw=row.raw)
            continue
        try:
            result = parse(row.value, options)  # type: ignore[arg-type]
        except RecordError as exc:
            summary.rejected += 1
            quarantine.reject(file=row.file, line=row.line, unit=row.unit,
                              reason=f"{fmt.name}: {exc.reason}", field=exc.field,
                              record=row.value)
            continue
        summary.parsed += 1
        source = {"format": fmt.name, "file": row.file, "line": row.line}
        for ep in result if isinstance(result, list) else [result]:
            ep["source"] = source
            episodes.append(ep)
    return episodes


def _seen_key(episode_id: str) -> int | str:
    """``episode_id`` as a member of the run's set of seen ids: a canonical id
    (``ep_`` + 24 lower-case hex digits) as the int it spells, which takes half the memory
    of the string (~40 MB less per million episodes); any other id as itself."""
    if len(episode_id) == 27 and episode_id.startswith("ep_"):
        try:
            value = int(episode_id[3:], 16)
        except ValueError:
            return episode_id
        if f"{value:024x}" == episode_id[3:]:  # (int() also takes "0x", "_", "+", upper case)
            return value
    return episode_id


def _id_of(key: int | str) -> str:
    """The episode id whose _seen_key is ``key``."""
    return f"ep_{key:024x}" if type(key) is int else key  # type: ignore[return-value]


def _fresh_mask(keys: list[int | str], seen: set[int | str], db: Store | None,
                summary: IngestSummary) -> list[bool]:
    """Which of these episodes (by the _seen_key of their ids) are new: not earlier in the
    run, nor already in ``db``."""
    summary.episodes += len(keys)
    if seen.isdisjoint(keys) and len(set(keys)) == len(keys):  # the usual case, at C speed
        seen.update(keys)
        keep = [True] * len(keys)
    else:
        keep = []
        for key in keys:
            if key in seen:
                keep.append(False)
            else:
                seen.add(key)
                keep.append(True)
    if db is not None and any(keep):
        ids = [_id_of(key) for key in keys]
        existing = {r[0] for r in db.con.execute(
            "SELECT episode_id FROM episodes WHERE episode_id IN (SELECT unnest(?))",
            [[eid for eid, k in zip(ids, keep, strict=True) if k]]).fetchall()}
        if existing:
            keep = [k and eid not in existing for eid, k in zip(ids, keep, strict=True)]
    summary.accepted += sum(keep)
    summary.duplicates = summary.episodes - summary.accepted
    return keep


def _dedup(episodes: list[dict[str, Any]], seen: set[int | str], db: Store | None,
           summary: IngestSummary) -> list[dict[str, Any]]:
    keep = _fresh_mask([_seen_key(ep["episode_id"]) for ep in episodes], seen, db, summary)
    return [ep for ep, k in zip(episodes, keep, strict=True) if k]


def _store_tables(table: Any, run_id: str) -> tuple[Any, Any]:
    """The rows of the store's ``episodes`` and ``steps`` tables, as Arrow, for episodes in
    ``episode_arrow_schema()`` (the Parquet table: the same values, laid out for the store)."""
    import numpy as np
    import pyarrow as pa

    n = table.num_rows
    source_format, source_file, source_line = table["source"].combine_chunks().flatten()
    success, reward, score = table["outcome"].combine_chunks().flatten()
    steps = table["steps"].combine_chunks()
    offsets = steps.offsets.to_numpy()
    n_steps = np.diff(offsets).astype(np.int32)
    episode_id = table["episode_id"].combine_chunks()
    ep_table = pa.table({
        "episode_id": episode_id, "source_format": source_format, "source_file": source_file,
        "source_line": source_line, "task": table["task"], "success": success,
        "reward": reward, "score": score, "answer": table["answer"],
        "reference": table["reference"], "model": table["model"], "meta": table["meta"],
        "n_steps": pa.array(n_steps, pa.int32()), "run_id": pa.array([run_id] * n, pa.string()),
    })
    role, kind, content, name, args = steps.flatten().flatten()
    st_table = pa.table({
        "episode_id": episode_id.take(np.repeat(np.arange(n), n_steps)),
        "step": pa.array(np.arange(len(role), dtype=np.int32)
                         - np.repeat(offsets[:-1] - offsets[0], n_steps).astype(np.int32)),
        "role": role, "kind": kind, "content": content, "name": name, "args": args,
    })
    return ep_table, st_table


# --------------------------------------------------------------------------- in parallel


class _RejectLog:
    """Quarantine entries a worker collects for the main process to write."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def reject(self, **entry: Any) -> None:
        self.entries.append(entry)


@dataclass
class _Chunk:
    """What a worker made of one byte range of a file; line numbers count from its start."""

    lines: int
    records: int
    parsed: int
    rejected: int
    rejects: list[dict[str, Any]]
    keys: list[int | str]  # the _seen_key of each episode's id
    arrow: Any = None  # episodes in episode_arrow_schema(), for an Arrow sink
    store: tuple[Any, Any] | None = None  # rows of the store's episodes and steps tables


def _worker_count(workers: int | None) -> int:
    """How many processes parse a large input: ``workers``, else one per usable CPU (up to
    ``MAX_WORKERS``); 1 where processes cannot be forked."""
    if workers is not None:
        return max(1, workers)
    if not sys.platform.startswith("linux"):
        return 1
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def _start_pool(sources: list[Source], n: int) -> Any:
    if n < 2 or not any(splittable_size(s) >= PARALLEL_MIN_BYTES for s in sources):
        return None
    import multiprocessing

    import pyarrow as pa

    # pyarrow imports pandas, when it is installed, the first time it converts a list: do
    # that once here rather than in every worker (~0.5 s and ~50 MB each).
    pa.array([], pa.string())
    return multiprocessing.get_context("fork").Pool(n, initializer=_worker_init,
                                                     initargs=(os.getpid(),))


def _worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the main process handles it for everyone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker dies with the main process, even a killed one (which cannot stop its pool).
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


_worker_formats: dict[str, InputFormat] = {}


def _parse_chunk(path: str, name: str, start: int, end: int, fmt_name: str,
                 options: FormatOptions, want_arrow: bool, store_run: str | None) -> _Chunk:
    """Read and parse one byte range of a file (in a worker process). Episodes become Arrow
    ``_ARROW_BATCH`` records at a time, so few are ever held as Python objects."""
    import pyarrow as pa

    if not _worker_formats:
        _worker_formats.update(available_formats())
    fmt = _worker_formats[fmt_name]
    build = want_arrow or store_run is not None
    # Parsing makes many short-lived dicts and no cycles: the cycle collector would
    # only rescan them (~10% of the time). It runs again once the chunk is done.
    gc.disable()
    try:
        batches, lines = read_jsonl_range(path, name, start, end, _ARROW_BATCH)
        summary = IngestSummary()
        rejects = _RejectLog()
        keys: list[int | str] = []
        tables: list[Any] = []
        for batch in batches:
            episodes = _parse_batch(batch, fmt, options, summary, rejects)
            keys += [_seen_key(ep["episode_id"]) for ep in episodes]
            if build and episodes:
                tables.append(episodes_to_arrow(episodes))
        table = pa.concat_tables(tables) if tables else None
        return _Chunk(lines, summary.records, summary.parsed, summary.rejected,
                      rejects.entries, keys, table if want_arrow else None,
                      _store_tables(table, store_run) if store_run and table is not None
                      else None)
    finally:
        gc.enable()


# Records a worker turns into Arrow at a time (see _parse_chunk).
_ARROW_BATCH = 500


def _parallel_chunks(pool: Any, window: int, source: Source, fmt: InputFormat,
                     options: FormatOptions, out: _Outputs) -> Iterator[_Chunk]:
    """The chunks of a file in order, at most ``window`` in flight (so memory is bounded)."""
    assert source.path is not None
    size = splittable_size(source)
    pending: deque[Any] = deque()
    for start in range(0, size, CHUNK_BYTES):
        args = (source.path, source.name, start, min(start + CHUNK_BYTES, size), fmt.name,
                options, out.arrow_sink is not None, out.run_id if out.db is not None else None)
        pending.append(pool.apply_async(_parse_chunk, args))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _accept_chunk(chunk: _Chunk, lines: int, seen: set[int | str], lookup: bool,
                  summary: IngestSummary, quarantine: Quarantine, out: _Outputs) -> None:
    """Count, quarantine, deduplicate and write a worker's chunk (``lines`` = lines before)."""
    summary.records += chunk.records
    summary.parsed += chunk.parsed
    summary.rejected += chunk.rejected
    for entry in chunk.rejects:
        entry["line"] += lines
        quarantine.reject(**entry)
    if not chunk.keys:
        return
    keep = _fresh_mask(chunk.keys, seen, out.db if lookup else None, summary)
    if not any(keep):
        return
    if out.db is not None and chunk.store is not None:
        ep_table, st_table = chunk.store
        ep_table = _shift_column(ep_table, "source_line", lines)
        if not all(keep):
            import numpy as np

            st_table = st_table.filter(np.repeat(keep, ep_table["n_steps"].to_numpy()))
            ep_table = ep_table.filter(keep)
        out.insert(ep_table, st_table)
    if out.arrow_sink is not None and chunk.arrow is not None:
        table = _shift_source_line(chunk.arrow, lines)
        out.arrow_sink(table if all(keep) else table.filter(keep))


def _shift_column(table: Any, name: str, by: int) -> Any:
    """The table with ``by`` added to the integer column ``name``."""
    if not by:
        return table
    return table.set_column(table.schema.get_field_index(name), name,
                            _shifted(table[name].combine_chunks(), by))


def _shift_source_line(table: Any, by: int) -> Any:
    """The table with ``by`` added to ``source.line``."""
    import pyarrow as pa

    if not by:
        return table
    source = table["source"].combine_chunks()
    shifted = pa.StructArray.from_arrays(
        [source.field("format"), source.field("file"), _shifted(source.field("line"), by)],
        fields=list(source.type), mask=source.is_null() if source.null_count else None)
    return table.set_column(table.schema.get_field_index("source"), "source", shifted)


def _shifted(array: Any, by: int) -> Any:
    # numpy rather than pyarrow.compute, whose import alone takes longer than a small run.
    import pyarrow as pa

    if array.null_count:
        return pa.array([None if v is None else v + by for v in array.to_pylist()], array.type)
    return pa.array(array.to_numpy() + by, array.type)
