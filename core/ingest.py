"""``ingest``: raw logs in many formats -> canonical episodes, with nothing lost.

Every input record ends up in exactly one place: accepted (written to the output and/or the
store), counted as a duplicate of an earlier episode with the same content hash (in this run
or already in the store), or rejected into the quarantine file with its file, line and
reason. ``IngestSummary.balanced`` checks that the counts add up.
"""

from __future__ import annotations

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
from xpkit.core.io import DEFAULT_BATCH_SIZE, Source, SourceRow, open_binary, read_rows, resolve_inputs
from xpkit.core.quarantine import Quarantine, default_rejects_path
from xpkit.core.store import RunLog, Store

Sink = Callable[[list[dict[str, Any]]], None]


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
        fmt = get_format(fmt_name)
        if source.kind is None and source.path is not None and fmt is not claimed:
            raise UsageError(f"Input {source.name}: format {fmt.name} reads .jsonl, .json, "
                             ".parquet or .csv files, not this file type.")
        if fmt is claimed:
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
) -> IngestSummary:
    """Read ``inputs`` as ``format`` and hand canonical episodes to ``sink`` and/or ``store``.

    ``output`` only decides where the quarantine file goes by default. With ``store``, all
    writes of the run are one transaction. With ``strict``, any rejection fails the run
    (``StrictModeError``) and nothing is committed to the store.
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
    db = Store.open(store) if store else None
    seen: set[str] = set()
    try:
        if db is not None:
            db.con.execute("BEGIN TRANSACTION")
        for source in sources:
            fmt, detection, batches = _source_batches(source, format, formats, batch_size,
                                                      notice)
            summary.formats[source.name] = fmt.name
            if detection is not None:
                notice(detection.describe(source.name))
            for batch in batches:
                episodes = _parse_batch(batch, fmt, options, summary, quarantine)
                fresh = _dedup(episodes, seen, db, summary)
                if db is not None and fresh:
                    _insert(db, fresh, run.run_id)
                if sink is not None and fresh:
                    sink(fresh)
                if on_progress is not None:
                    on_progress(len(batch))
        run.counts = summary.counts()
        if strict and summary.rejected:
            raise StrictModeError(
                f"{summary.rejected} record(s) rejected (see {rejects_path}); --strict "
                "makes this a failure" + ("; the store was not changed." if db else "."))
        if db is not None:
            db.record_run(run)
            db.con.execute("COMMIT")
    except BaseException as exc:
        if db is not None:
            db.con.execute("ROLLBACK")
            run.status, run.error = "failed", str(exc) or type(exc).__name__
            run.counts = summary.counts()
            _record_failed_run(db, run)
        raise
    finally:
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


def _parse_batch(batch: list[SourceRow], fmt: InputFormat, options: FormatOptions,
                 summary: IngestSummary, quarantine: Quarantine) -> list[dict[str, Any]]:
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


def _dedup(episodes: list[dict[str, Any]], seen: set[str], db: Store | None,
           summary: IngestSummary) -> list[dict[str, Any]]:
    summary.episodes += len(episodes)
    fresh = []
    for ep in episodes:
        eid = ep["episode_id"]
        if eid in seen:
            continue
        seen.add(eid)
        fresh.append(ep)
    if db is not None and fresh:
        ids = [ep["episode_id"] for ep in fresh]
        existing = {r[0] for r in db.con.execute(
            "SELECT episode_id FROM episodes WHERE episode_id IN (SELECT unnest(?))",
            [ids]).fetchall()}
        if existing:
            fresh = [ep for ep in fresh if ep["episode_id"] not in existing]
    summary.accepted += len(fresh)
    summary.duplicates = summary.episodes - summary.accepted
    return fresh


def _insert(db: Store, episodes: list[dict[str, Any]], run_id: str) -> None:
    import orjson
    import pyarrow as pa

    ep_rows: dict[str, list] = {k: [] for k in (
        "episode_id", "source_format", "source_file", "source_line", "task", "success",
        "reward", "score", "answer", "reference", "model", "meta", "n_steps", "run_id")}
    st_rows: dict[str, list] = {k: [] for k in (
        "episode_id", "step", "role", "kind", "content", "name", "args")}
    for ep in episodes:
        src, out = ep["source"], ep["outcome"]
        for k, v in (("episode_id", ep["episode_id"]), ("source_format", src.get("format")),
                     ("source_file", src.get("file")), ("source_line", src.get("line")),
                     ("task", ep["task"]), ("success", out["success"]),
                     ("reward", out["reward"]), ("score", out["score"]),
                     ("answer", ep["answer"]), ("reference", ep["reference"]),
                     ("model", ep["model"]), ("meta", orjson.dumps(ep["meta"]).decode()),
                     ("n_steps", len(ep["steps"])), ("run_id", run_id)):
            ep_rows[k].append(v)
        for i, s in enumerate(ep["steps"]):
            st_rows["episode_id"].append(ep["episode_id"])
            st_rows["step"].append(i)
            st_rows["role"].append(s["role"])
            st_rows["kind"].append(s["kind"])
            st_rows["content"].append(s["content"])
            st_rows["name"].append(s.get("name"))
            st_rows["args"].append(orjson.dumps(s["args"]).decode() if "args" in s else None)
    con = db.con
    con.register("_ep_batch", pa.table(ep_rows))
    con.register("_st_batch", pa.table({**st_rows, "step": pa.array(st_rows["step"],
                                                                    pa.int32())}))
    try:
        con.execute("INSERT INTO episodes SELECT * FROM _ep_batch")
        con.execute("INSERT INTO steps SELECT * FROM _st_batch")
    finally:
        con.unregister("_ep_batch")
        con.unregister("_st_batch")
