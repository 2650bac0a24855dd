"""Streaming record I/O: one reader and one writer for every subcommand.

Reading: ``.jsonl``/``.ndjson``, ``.json`` (an array, one object, or an object of keyed
records), ``.parquet`` and ``.csv``, each plain or ``.gz``/``.zst`` (recognised by magic
bytes, not only by extension), from files, globs, or standard input (``-``, or a non-TTY
stdin when no input is named). Records flow in batches of ``SourceRow``, so memory stays
bounded by the batch, not the input; every row knows its file and line so that a bad record
can be quarantined with its origin. ``.json`` documents are parsed whole (JSON has no record
boundaries); use JSONL for inputs larger than memory.

Writing: JSONL (default, stdout), Parquet or CSV, chosen by the ``-o`` extension. Files are
written beside the target and renamed into place when complete, so a killed run never
leaves a half-written output that looks finished (which matters to ``make``).
"""

from __future__ import annotations

import contextlib
import csv
import glob as globmod
import gzip
import io
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from xpkit.core.errors import InputError, UsageError

DEFAULT_BATCH_SIZE = 2000
STDIN = "-"
STDIN_NAME = "<stdin>"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_MAGIC = b"PAR1"
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_KIND_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
    ".pq": "parquet", ".csv": "csv",
}
RECORD_KINDS = ("jsonl", "json", "parquet", "csv")
# Parquet key-value metadata naming the columns that hold JSON text (nested values, mixed
# types, or fields absent from some records) so that reading them back is exact.
JSON_COLUMNS_KEY = b"xpkit:json_columns"
_EMPTY_COLUMN = "_xpkit_empty"


@dataclass(frozen=True)
class Source:
    """One input: a file path, or standard input (``path is None``)."""

    path: str | None
    kind: str | None  # jsonl, json, parquet, csv; None = not a record file (a format reads it)
    compression: str | None

    @property
    def name(self) -> str:
        return self.path if self.path is not None else STDIN_NAME


@dataclass(slots=True)
class SourceRow:
    """One record as read, or the reason it could not be read.

    ``line`` is 1-based: the physical line for JSONL and CSV, the element number for JSON
    documents (``unit == "item"``), the row number for Parquet (``unit == "row"``).
    """

    file: str
    line: int
    value: dict[str, Any] | None
    error: str | None = None
    raw: bytes | None = None
    unit: str = "line"
    field: str | None = None


# --------------------------------------------------------------------------- sources


def split_suffixes(name: str) -> tuple[str | None, str | None]:
    """Return (record kind, compression) from a file name such as ``x.jsonl.gz``."""
    p = Path(name.lower())
    suffixes = p.suffixes
    compression = None
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        compression = _COMPRESSION_SUFFIXES[suffixes[-1]]
        suffixes = suffixes[:-1]
    kind = _KIND_SUFFIXES.get(suffixes[-1]) if suffixes else None
    return kind, compression


def resolve_inputs(inputs: Sequence[str], *, stdin_is_tty: bool | None = None,
                   allow_other: bool = False) -> list[Source]:
    """Expand globs and check that every named input exists.

    With no inputs, a non-TTY stdin is read; a TTY stdin is a usage error (nothing to read).
    ``allow_other`` accepts files that are not record files (for formats that read them).
    """
    if stdin_is_tty is None:
        stdin_is_tty = sys.stdin is None or sys.stdin.isatty()
    if not inputs:
        if stdin_is_tty:
            raise UsageError("No input: name files or globs, or pipe records on stdin.")
        return [Source(None, None, None)]
    sources: list[Source] = []
    for item in inputs:
        if item == STDIN:
            sources.append(Source(None, None, None))
            continue
        if any(ch in item for ch in "*?["):
            matches = sorted(globmod.glob(item, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise UsageError(f"Input {item}: the glob matches no file.")
        else:
            if not os.path.exists(item):
                raise UsageError(f"Input {item}: no such file.")
            if os.path.isdir(item):
                raise UsageError(f"Input {item}: is a directory; name files or a glob such as "
                                 f"'{item.rstrip('/')}/**/*.jsonl'.")
            matches = [item]
        for m in matches:
            kind, compression = split_suffixes(m)
            if kind is None and not allow_other:
                raise UsageError(f"Input {m}: unknown file type; expected .jsonl, .json, "
                                 ".parquet or .csv (optionally .gz or .zst).")
            sources.append(Source(m, kind, compression))
    return sources


def open_binary(source: Source) -> IO[bytes]:
    """Open a source for reading bytes, transparently decompressing gzip and zstd.

    Compression is recognised by magic bytes, so a mislabelled or piped file still reads.
    """
    try:
        raw: IO[bytes] = (open(source.path, "rb") if source.path is not None  # noqa: SIM115
                          else sys.stdin.buffer)
    except OSError as exc:
        raise InputError(f"Input {source.name}: cannot open ({exc.strerror}).",
                         file=source.name) from exc
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    head = buffered.peek(4)[:4]
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if head.startswith(_ZSTD_MAGIC):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(buffered))  # type: ignore[arg-type]
    return buffered


def _sniff_kind(stream: IO[bytes]) -> str:
    """Guess a record kind from the first bytes: ``{`` JSONL, ``[`` JSON, ``PAR1`` Parquet."""
    head = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"["):
        return "json"
    return "csv"


# --------------------------------------------------------------------------- readers


def read_rows(source: Source, batch_size: int = DEFAULT_BATCH_SIZE,
              on_notice: Callable[[str], None] | None = None) -> Iterator[list[SourceRow]]:
    """Yield batches of ``SourceRow`` from one record source."""
    stream = open_binary(source)
    try:
        kind = source.kind
        if kind is None or source.path is None:
            kind = _sniff_kind(stream)
            if source.path is None and on_notice:
                on_notice(f"{STDIN_NAME}: reading as {kind}")
        if kind == "jsonl":
            first = stream.peek(256)[:256].lstrip(b"\xef\xbb\xbf \t\r\n")
            if first.startswith(b"["):
                if on_notice:
                    on_notice(f"{source.name}: holds a JSON array, not JSON lines; "
                              "reading it as one array")
                kind = "json"
        if kind == "jsonl":
            yield from _read_jsonl(stream, source.name, batch_size)
        elif kind == "json":
            yield from _read_json_document(stream, source.name, batch_size)
        elif kind == "parquet":
            yield from _read_parquet(stream, source, batch_size)
        elif kind == "csv":
            yield from _read_csv(stream, source.name, batch_size)
        else:  # pragma: no cover - resolve_inputs guards this
            raise UsageError(f"Input {source.name}: unknown record kind {kind}.")
    except (OSError, EOFError) as exc:
        raise InputError(f"Input {source.name}: cannot be read ({exc}).",
                         file=source.name) from exc
    finally:
        if source.path is not None:
            stream.close()


def read_records(inputs: Sequence[str] | Sequence[Source], batch_size: int = DEFAULT_BATCH_SIZE,
                 on_notice: Callable[[str], None] | None = None) -> Iterator[list[SourceRow]]:
    """Yield batches of rows from every input in order (files, globs, ``-`` or stdin)."""
    sources = (list(inputs) if inputs and isinstance(inputs[0], Source)
               else resolve_inputs(inputs))  # type: ignore[arg-type]
    for source in sources:
        yield from read_rows(source, batch_size, on_notice)  # type: ignore[arg-type]


def iter_values(inputs: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[dict]:
    """Yield the records of inputs as plain dicts, raising ``InputError`` on the first bad one.

    For stages whose input is xpkit's own output, where a bad record means a broken pipe.
    """
    for batch in read_records(inputs, batch_size):
        for row in batch:
            if row.error is not None:
                raise InputError(f"{row.file}, {row.unit} {row.line}: {row.error}",
                                 file=row.file, line=row.line, field=row.field)
            yield row.value  # type: ignore[misc]


def _describe_json_error(exc: orjson.JSONDecodeError, raw: bytes) -> str:
    msg = str(exc)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return f"invalid UTF-8 at byte {uexc.start}"
    if exc.pos >= len(raw.rstrip()) - 1 and raw.rstrip()[-1:] not in (b"}", b"]"):
        return f"truncated JSON ({msg})"
    return f"invalid JSON ({msg})"


def _not_object(value: Any) -> str:
    kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
    return f"expected a JSON object, found {kind}"


def _read_jsonl(stream: IO[bytes], name: str, batch_size: int,
                at_start: bool = True) -> Iterator[list[SourceRow]]:
    """Batches of rows from JSON lines; ``at_start`` = the stream starts at the file's start
    (where a byte-order mark may be). Lines are numbered from 1 either way."""
    loads = orjson.loads
    batch: list[SourceRow] = []
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1 and at_start and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            value = loads(raw)
        except orjson.JSONDecodeError as exc:
            batch.append(SourceRow(name, lineno, None, _describe_json_error(exc, raw), raw))
        else:
            if type(value) is dict:
                batch.append(SourceRow(name, lineno, value))
            else:
                batch.append(SourceRow(name, lineno, None, _not_object(value), raw))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def splittable_size(source: Source) -> int:
    """The size of a source that ``read_jsonl_range`` can read in pieces (a plain, seekable
    file that ``read_rows`` reads as JSON lines), else 0."""
    if source.path is None or source.kind != "jsonl" or source.compression is not None:
        return 0
    try:
        with open(source.path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return 0
            head = f.read(256)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return 0
    if head.startswith((_GZIP_MAGIC, _ZSTD_MAGIC)):
        return 0
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):  # a JSON array: read whole
        return 0
    return size


def read_jsonl_range(path: str, name: str, start: int, end: int,
                     batch_size: int = DEFAULT_BATCH_SIZE
                     ) -> tuple[Iterator[list[SourceRow]], int]:
    """Batches of the rows of the lines of a plain JSONL file that start in bytes
    ``[start, end)``, and how many lines start there.

    A line belongs to the range it starts in, so ranges that tile a file read every line
    once. Line numbers count from 1 at the range's first line: add the number of lines in
    the ranges before it for the line in the file.
    """
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the end of a line that started before this range
        pos = f.tell()
        data = f.read(end - pos) if pos < end else b""
        if data and not data.endswith(b"\n"):
            data += f.readline()  # the last line starts in the range: read all of it
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return _read_jsonl(io.BytesIO(data), name, batch_size, start == 0), lines


def _looks_keyed(doc: dict) -> bool:
    """True for ``{"id1": {...}, "id2": {...}}``: an object of records keyed by id."""
    if len(doc) < 2 or not all(type(v) is dict for v in doc.values()):
        return False
    sample = [set(v) for v in list(doc.values())[:5]]
    first = sample[0]
    return all(len(first & s) * 2 >= max(len(first | s), 1) for s in sample[1:])


def _read_json_document(stream: IO[bytes], name: str,
                        batch_size: int) -> Iterator[list[SourceRow]]:
    data = stream.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        return
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        line = data.count(b"\n", 0, exc.pos) + 1
        yield [SourceRow(name, line, None, _describe_json_error(exc, data), data[:4096])]
        return
    if type(doc) is list:
        items: Iterable[tuple[int, Any]] = enumerate(doc, 1)
    elif type(doc) is dict and _looks_keyed(doc):
        items = ((i, {"_key": k, **v}) for i, (k, v) in enumerate(doc.items(), 1))
    else:
        items = [(1, doc)]
    batch: list[SourceRow] = []
    for i, value in items:
        if type(value) is dict:
            batch.append(SourceRow(name, i, value, unit="item"))
        else:
            batch.append(SourceRow(name, i, None, _not_object(value),
                                   orjson.dumps(value), unit="item"))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_parquet(stream: IO[bytes], source: Source,
                  batch_size: int) -> Iterator[list[SourceRow]]:
    import pyarrow.parquet as pq

    target: Any = source.path
    if source.path is None or source.compression is not None:
        # Parquet needs random access: spool a pipe or a compressed file to a temp file.
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - must outlive this block
        while chunk := stream.read(1 << 20):
            spool.write(chunk)
        spool.seek(0)
        target = spool
    try:
        pf = pq.ParquetFile(target)
    except Exception as exc:
        raise InputError(f"Input {source.name}: not a readable Parquet file ({exc}).",
                         file=source.name) from exc
    meta = pf.schema_arrow.metadata or {}
    json_cols = set(orjson.loads(meta[JSON_COLUMNS_KEY])) if JSON_COLUMNS_KEY in meta else set()
    row = 0
    for rb in pf.iter_batches(batch_size=batch_size):
        batch: list[SourceRow] = []
        for rec in rb.to_pylist():
            row += 1
            if json_cols:
                rec = _decode_json_columns(rec, json_cols)
            batch.append(SourceRow(source.name, row, rec, unit="row"))
        yield batch


def _decode_json_columns(rec: dict, json_cols: set[str]) -> dict:
    """Undo the JSON-text encoding of the columns named in the file's metadata.

    A plain name is a top-level column (SQL null = the key was absent). ``col[].field`` is a
    field inside a list of structs (null = the field was absent from that element).
    """
    out = {}
    for k, v in rec.items():
        if k in json_cols:
            if v is not None and k != _EMPTY_COLUMN:
                out[k] = orjson.loads(v)
        else:
            out[k] = v
    for spec in json_cols:
        col, sep, sub = spec.partition("[].")
        if sep and isinstance(out.get(col), list):
            items = []
            for item in out[col]:
                item = {ik: iv for ik, iv in item.items() if iv is not None}
                if sub in item:
                    item[sub] = orjson.loads(item[sub])
                items.append(item)
            out[col] = items
    return out


def _read_csv(stream: IO[bytes], name: str, batch_size: int) -> Iterator[list[SourceRow]]:
    # surrogateescape keeps invalid UTF-8 visible so the row can be quarantined, never replaced.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    batch: list[SourceRow] = []
    start = reader.line_num + 1
    for fields in reader:
        line = start
        start = reader.line_num + 1
        if not fields:
            continue
        if len(fields) != len(header):
            raw = ",".join(fields).encode("utf-8", "surrogateescape")
            batch.append(SourceRow(name, line, None,
                                   f"expected {len(header)} columns, found {len(fields)}", raw))
        elif any(_has_surrogates(f) for f in fields):
            raw = ",".join(fields).encode("utf-8", "surrogateescape")
            batch.append(SourceRow(name, line, None, "invalid UTF-8", raw))
        else:
            batch.append(SourceRow(name, line, dict(zip(header, fields, strict=True))))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --------------------------------------------------------------------------- writers


def output_kind(path: str | None) -> str:
    """The record kind an ``-o`` path asks for (``jsonl`` for stdout)."""
    if path is None or path == STDIN:
        return "jsonl"
    kind, _ = split_suffixes(path)
    if kind not in ("jsonl", "parquet", "csv"):
        raise UsageError(f"Output {path}: unknown file type; use .jsonl, .parquet or .csv "
                         "(optionally .jsonl.gz or .jsonl.zst).")
    return kind


class RecordWriter:
    """Stream records to stdout or a file; the file appears only when the writer closes cleanly.

    JSONL streams straight through (flushed per batch so pipelines see records as they
    finish). Parquet and CSV need the full set of columns before the first row, so records
    are spooled to a temporary JSONL file while column types are tracked, then written in
    batches: memory stays bounded either way. Pass ``arrow_schema`` when the record shape is
    known (episodes, units) to skip spooling and keep native nested Parquet types.
    """

    def __init__(self, path: str | None = None, *, arrow_schema: Any = None,
                 arrow_transform: Callable[[dict], dict] | None = None,
                 stdout: IO[bytes] | None = None) -> None:
        self.path = None if path in (None, STDIN) else path
        self.kind = output_kind(self.path)
        self.count = 0
        self._schema = arrow_schema
        self._transform = arrow_transform
        self._types = _ColumnTypes()
        self._closed = False
        if self.path is None:
            self._out: IO[bytes] = stdout or sys.stdout.buffer
            self._tmp_path = None
        else:
            out_dir = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(out_dir):
                raise UsageError(f"Output {self.path}: directory {out_dir} does not exist.")
            fd, self._tmp_path = tempfile.mkstemp(prefix=".xpkit-", suffix=".part", dir=out_dir)
            os.close(fd)
            self._out = None  # type: ignore[assignment]
        self._spool: IO[bytes] | None = None
        self._pq_writer: Any = None
        if self.kind == "jsonl" and self.path is not None:
            _, compression = split_suffixes(self.path)
            self._out = _open_compressed_writer(self._tmp_path, compression)  # type: ignore[arg-type]
        elif self.kind in ("parquet", "csv") and not (self.kind == "parquet" and self._schema):
            self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()

    def write_many(self, records: Iterable[dict]) -> None:
        dumps = orjson.dumps
        opt = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
        if self.kind == "jsonl":
            chunk = [dumps(r, option=opt) for r in records]
            self._out.write(b"".join(chunk))
            self._out.flush()
            self.count += len(chunk)
        elif self._spool is not None:
            for r in records:
                self._types.observe(r)
                self._spool.write(dumps(r, option=opt))
                self.count += 1
        else:
            records = list(records)
            if records:
                self._write_parquet_known(records)
                self.count += len(records)

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_arrow(self, table: Any) -> None:
        """Write an Arrow table that is already in this writer's ``arrow_schema`` (Parquet
        output only): the fast path for records built column by column."""
        if self.kind != "parquet" or self._schema is None:
            raise ValueError("write_arrow needs a Parquet output with a known arrow_schema")
        if self._pq_writer is None:
            import pyarrow.parquet as pq

            self._pq_writer = pq.ParquetWriter(self._tmp_path, self._schema, compression="zstd")
        self._pq_writer.write_table(table)
        self.count += table.num_rows

    def _write_parquet_known(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._transform is not None:
            records = [self._transform(r) for r in records]
        table = pa.Table.from_pylist(records, schema=self._schema)
        if self._pq_writer is None:
            self._pq_writer = pq.ParquetWriter(self._tmp_path, self._schema, compression="zstd")
        self._pq_writer.write_table(table)

    def close(self) -> None:
        """Finish the output: flush, convert a spool, and rename the file into place."""
        if self._closed:
            return
        self._closed = True
        if self.kind == "jsonl":
            if self.path is not None:
                self._out.close()
            else:
                self._out.flush()
        elif self._spool is not None:
            self._spool.seek(0)
            if self.kind == "parquet":
                _spool_to_parquet(self._spool, self._types, self._tmp_path)  # type: ignore[arg-type]
            else:
                _spool_to_csv(self._spool, self._types, self._tmp_path)  # type: ignore[arg-type]
            self._spool.close()
        else:
            if self._pq_writer is None:
                import pyarrow.parquet as pq

                pq.ParquetWriter(self._tmp_path, self._schema).close()
            else:
                self._pq_writer.close()
        if self._tmp_path is not None:
            os.replace(self._tmp_path, self.path)  # type: ignore[arg-type]

    def abort(self) -> None:
        """Drop a partial output file."""
        self._closed = True
        for f in (self._spool, self._pq_writer):
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[union-attr]
        if self._tmp_path is not None:
            with contextlib.suppress(Exception):
                if self.kind == "jsonl":
                    self._out.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp_path)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _open_compressed_writer(path: str, compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return gzip.open(path, "wb", compresslevel=6)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(open(path, "wb"))  # type: ignore[return-value]
    return open(path, "wb", buffering=1 << 20)


class _ColumnTypes:
    """Track, per column, which JSON kinds occur and whether the key is ever absent."""

    def __init__(self) -> None:
        self.order: dict[str, None] = {}
        self.kinds: dict[str, set[type]] = {}
        self.present: dict[str, int] = {}
        self.rows = 0

    def observe(self, rec: dict) -> None:
        self.rows += 1
        for k, v in rec.items():
            if k not in self.kinds:
                self.order[k] = None
                self.kinds[k] = set()
                self.present[k] = 0
            self.present[k] += 1
            self.kinds[k].add(type(v))

    def plan(self) -> dict[str, str]:
        """Map each column to bool, int64, float64, string, or json (exact round-trip)."""
        out = {}
        for k in self.order:
            kinds = self.kinds[k] - {type(None)}
            if self.present[k] < self.rows or len(kinds) > 1:
                out[k] = "json"
            elif not kinds:
                out[k] = "string"
            else:
                out[k] = {bool: "bool", int: "int64", float: "float64", str: "string"}.get(
                    next(iter(kinds)), "json")
        return out


def _spooled(spool: IO[bytes], plan: dict[str, str],
             batch_size: int = 5000) -> Iterator[dict[str, list]]:
    cols: dict[str, list] = {k: [] for k in plan}
    n = 0
    for line in spool:
        rec = orjson.loads(line)
        for k, kind in plan.items():
            if kind == "json":
                cols[k].append(orjson.dumps(rec[k]).decode() if k in rec else None)
            else:
                cols[k].append(rec.get(k))
        n += 1
        if n >= batch_size:
            yield cols
            cols = {k: [] for k in plan}
            n = 0
    if n:
        yield cols


def _spool_to_parquet(spool: IO[bytes], types: _ColumnTypes, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    plan = types.plan() or {_EMPTY_COLUMN: "json"}  # rows with no fields still count
    arrow = {"bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64(),
             "string": pa.string(), "json": pa.string()}
    json_cols = [k for k, v in plan.items() if v == "json"]
    schema = pa.schema([(k, arrow[v]) for k, v in plan.items()],
                       metadata={JSON_COLUMNS_KEY: orjson.dumps(json_cols)})
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for cols in _spooled(spool, plan):
            writer.write_table(pa.table(cols, schema=schema))


def _spool_to_csv(spool: IO[bytes], types: _ColumnTypes, path: str) -> None:
    plan = types.plan()
    nested = {k for k, v in plan.items() if v == "json"}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(plan))
        for line in spool:
            rec = orjson.loads(line)
            writer.writerow([
                (orjson.dumps(rec[k]).decode() if k in nested and k in rec
                 and not isinstance(rec[k], str) else rec.get(k, ""))
                for k in plan
            ])
