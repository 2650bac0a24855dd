"""The ``qa-tsv`` input format: graded answers as tab-separated values.

One answer per line: ``question``, ``answer``, and optionally ``reference`` and ``grade``
columns, in that order, or in any order when the first line is a header naming them. Values
use the escapes of "linear TSV" (``\\t``, ``\\n``, ``\\r``, ``\\\\``), so a field can hold a tab
or a newline. A grade is a verdict (``1``/``0``, ``true``/``false``, ``pass``/``fail``,
``correct``/``incorrect``) or a score between 0 and 1.

The format reads ``.tsv`` files itself (``file_suffixes`` + ``read_file``): ingest gives it
the open file and it yields one ``SourceRow`` per line, or a row with the error for a line it
cannot read, which ingest quarantines with the file and line. ``parse`` then turns each row
into a canonical episode: the question is the task, a user and an assistant message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.io import SourceRow
from xpkit.core.records import make_episode, make_outcome, make_step

COLUMNS = ("question", "answer", "reference", "grade")
PASS = {"1", "true", "yes", "pass", "passed", "correct", "right"}
FAIL = {"0", "false", "no", "fail", "failed", "incorrect", "wrong"}
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def unescape(field: str) -> str:
    """Undo linear-TSV escapes; a backslash before any other character is kept as is."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field) and field[i + 1] in _ESCAPES:
            out.append(_ESCAPES[field[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_grade(raw: str) -> dict[str, Any]:
    """A grade cell as an outcome: a verdict, or a score in [0, 1] (1 and 0 are verdicts)."""
    text = raw.strip().lower()
    if not text:
        return make_outcome()
    if text in PASS:
        return make_outcome(success=True, score=1.0)
    if text in FAIL:
        return make_outcome(success=False, score=0.0)
    try:
        score = float(text)
    except ValueError:
        raise RecordError(f"{raw!r} is neither pass/fail nor a number", "grade") from None
    if not 0.0 <= score <= 1.0:
        raise RecordError(f"score {score:g} is outside [0, 1]", "grade")
    return make_outcome(score=score)


class QaTsvFormat(InputFormat):
    name = "qa-tsv"
    description = "graded answers as TSV: question, answer[, reference[, grade]] (.tsv files)"
    file_suffixes = (".tsv",)

    def sniff(self, record: dict[str, Any]) -> float:
        # .tsv files are claimed by suffix, so --format auto never has to guess them; JSON
        # records with question/answer fields are graded-qa's to claim.
        return 0.0

    def read_file(self, name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
        header: tuple[str, ...] | None = None
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield SourceRow(name, number, None, f"not UTF-8 ({exc.reason})", raw)
                continue
            if not line.strip():
                continue
            cells = line.split("\t")
            if header is None:
                header = COLUMNS
                names = [c.strip().lower() for c in cells]
                if "question" in names and set(names) <= set(COLUMNS):
                    header = tuple(names)
                    continue
            if not 2 <= len(cells) <= len(header):
                yield SourceRow(name, number, None,
                                f"expected 2 to {len(header)} tab-separated columns "
                                f"({', '.join(header)}), found {len(cells)}", raw)
                continue
            value = {col: unescape(cell) for col, cell in zip(header, cells, strict=False)}
            yield SourceRow(name, number, value)

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        question = (record.get("question") or "").strip()
        if not question:
            raise RecordError("is missing or empty", "question")
        answer = record.get("answer") or ""
        return make_episode(
            task=question,
            steps=[make_step("user", "message", question),
                   make_step("assistant", "message", answer)],
            outcome=parse_grade(record.get("grade") or ""),
            answer=answer,
            reference=record.get("reference") or None,
            model=options.model,
        )
