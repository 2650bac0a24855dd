"""The quarantine file: every rejected record with its source file, line and reason.

Entries are appended as JSONL (one per rejected record, tagged with the run id) so that a
cron job's earlier rejections are never overwritten. The file is created only when there is
something to put in it. Raw input is kept whole: as text when it is valid UTF-8, otherwise
as base64, so that nothing is silently replaced.
"""

from __future__ import annotations

import base64
import os
from typing import IO, Any

import orjson


def default_rejects_path(output: str | None, store: str | None) -> str:
    """Beside the output file, else beside the store, else ``xpkit.rejects.jsonl`` here."""
    for target in (output, store):
        if target and target != "-":
            base = os.path.basename(target)
            stem = base.split(".", 1)[0] if "." in base else base
            return os.path.join(os.path.dirname(target), f"{stem}.rejects.jsonl")
    return "xpkit.rejects.jsonl"


class Quarantine:
    """Append-only writer of rejected records."""

    def __init__(self, path: str, run_id: str, command: str) -> None:
        self.path = path
        self.run_id = run_id
        self.command = command
        self.count = 0
        self._f: IO[bytes] | None = None

    def reject(self, *, file: str, line: int, reason: str, unit: str = "line",
               field: str | None = None, raw: bytes | None = None,
               record: dict[str, Any] | None = None) -> None:
        entry: dict[str, Any] = {"run_id": self.run_id, "command": self.command, "file": file,
                                 unit: line, "reason": reason}
        if field:
            entry["field"] = field
        if record is not None:
            entry["record"] = record
        elif raw is not None:
            raw = raw.rstrip(b"\r\n")
            try:
                entry["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_base64"] = base64.b64encode(raw).decode()
        if self._f is None:
            self._f = open(self.path, "ab")  # noqa: SIM115
        self._f.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE
                                   | orjson.OPT_NON_STR_KEYS))
        self.count += 1

    def reject_row(self, row: Any) -> None:
        """Quarantine a ``core.io.SourceRow`` that could not be read (its ``error`` is set)."""
        self.reject(file=row.file, line=row.line, unit=row.unit, reason=row.error,
                    field=row.field, raw=row.raw)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
