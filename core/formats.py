"""Input formats: the interface a format plugin implements, lookup, and ``--format auto``.

A format turns one input record (a dict) into one canonical episode, raising
``RecordError(reason, field)`` when the record lacks what the format requires. Formats whose
files are not record-per-line (text logs, single-document ``.traj`` files) also implement
``read_file``, which yields one ``SourceRow`` per record found in the file.

Detection reads up to ``SNIFF_ROWS`` records of a file and asks every format how well each
record fits (``sniff`` returns 0..1). The best mean wins when it is clear; otherwise the
error names the close candidates and the flag to pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from xpkit.core.errors import FormatDetectionError, UsageError
from xpkit.core.io import SourceRow

SNIFF_ROWS = 50
MIN_CONFIDENCE = 0.5
MIN_MARGIN = 0.1


@dataclass
class FormatOptions:
    """Options that reach every parser: ``--map`` field paths and ``--model-name``."""

    mapping: dict[str, str] = field(default_factory=dict)
    model: str | None = None


class InputFormat:
    """Base class of input formats (subclassing is optional; the attributes are the contract)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # File suffixes this format reads itself through ``read_file`` (e.g. ``.traj``).
    file_suffixes: ClassVar[tuple[str, ...]] = ()
    # Excluded from ``--format auto`` (e.g. ``map``, which needs ``--map``).
    explicit_only: ClassVar[bool] = False

    def sniff(self, record: dict[str, Any]) -> float:
        """How well ``record`` fits this format, from 0 (not at all) to 1 (certainly)."""
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        """Return one canonical episode (see ``xpkit.core.records.make_episode``)."""
        raise NotImplementedError

    def read_file(self, name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
        """Yield the records of a file in this format's own layout (only with file_suffixes)."""
        raise NotImplementedError


def available_formats() -> dict[str, InputFormat]:
    """Every registered format by name (built-ins and outside plugins)."""
    from xpkit.core.plugins import collect

    return {f.name: f for f in collect("register_formats")}


def get_format(name: str) -> InputFormat:
    formats = available_formats()
    if name not in formats:
        raise UsageError(f"--format {name}: unknown format; choose one of "
                         f"{', '.join(['auto', *sorted(formats)])}.")
    return formats[name]


def format_for_suffix(path: str, formats: dict[str, InputFormat]) -> InputFormat | None:
    """A format that claims this file by suffix (``.traj``, ``.txt``), if any."""
    low = path.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        if low.endswith(suffix):
            low = low[: -len(suffix)]
    for fmt in formats.values():
        if any(low.endswith(s) for s in fmt.file_suffixes):
            return fmt
    return None


@dataclass
class Detection:
    """The outcome of ``--format auto`` for one file."""

    format: InputFormat
    score: float
    sampled: int
    ranking: list[tuple[str, float]]

    def describe(self, file: str) -> str:
        runner_up = ", ".join(f"{n} {s:.2f}" for n, s in self.ranking[1:3] if s > 0)
        extra = f"; next: {runner_up}" if runner_up else ""
        return (f"{file}: detected format {self.format.name} "
                f"(fit {self.score:.2f} over {self.sampled} records{extra})")


def detect(file: str, rows: list[SourceRow], formats: dict[str, InputFormat]) -> Detection:
    """Choose the format that best fits the first valid records of a file."""
    sample = [r.value for r in rows if r.value is not None][:SNIFF_ROWS]
    candidates = [f for f in formats.values() if not f.explicit_only]
    if not sample:
        raise FormatDetectionError(f"{file}: no readable record to detect the format from; "
                                   f"pass --format ({', '.join(sorted(formats))}).")
    ranking = []
    for fmt in candidates:
        total = 0.0
        for rec in sample:
            # a sniffer that chokes on a record simply does not fit it
            with contextlib.suppress(Exception):
                total += float(fmt.sniff(rec))
        ranking.append((fmt.name, total / len(sample)))
    ranking.sort(key=lambda t: (-t[1], t[0]))
    best, score = ranking[0]
    second = ranking[1][1] if len(ranking) > 1 else 0.0
    if score < MIN_CONFIDENCE or score - second < MIN_MARGIN:
        close = ", ".join(f"{n} ({s:.2f})" for n, s in ranking[:3] if s > 0) or "none"
        fields = ", ".join(sorted(sample[0])[:12])
        raise FormatDetectionError(
            f"{file}: cannot tell the format (closest: {close}; fields: {fields}); "
            "pass --format NAME, or --format map with --map task=FIELD ...")
    return Detection(formats[best], score, len(sample), ranking)


def parse_mapping(items: list[str]) -> dict[str, str]:
    """Parse ``--map field=path`` options (``path`` is a dotted path into the record)."""
    from xpkit.plugins.formats.mapped import MAPPABLE_FIELDS

    mapping: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        key, path = key.strip(), path.strip()
        if not sep or not key or not path:
            raise UsageError(f"--map {item}: expected FIELD=PATH, e.g. --map task=prompt.")
        if key not in MAPPABLE_FIELDS:
            raise UsageError(f"--map {item}: unknown episode field {key!r}; choose from "
                             f"{', '.join(MAPPABLE_FIELDS)}.")
        mapping[key] = path
    return mapping

