"""``--where``: a small, safe filter language compiled to parameterised DuckDB SQL.

User text is never evaluated (no Python ``eval``) and never pasted into SQL: it is parsed
by the grammar below, field names must be ones the level declares (or a dotted path inside
one of its JSON columns, such as ``meta.topic`` or ``stats.helpful``), and every value is
bound as a query parameter. Anything else is a ``UsageError`` that quotes the offending
text, so ``kind = 'x'; DROP TABLE units`` or ``read_csv('/etc/passwd')`` are rejected
before any SQL runs.

Grammar (keywords are case-insensitive)::

    expr  := term (OR term)*
    term  := fact (AND fact)*
    fact  := NOT fact | '(' expr ')' | cmp
    cmp   := field op value | field [NOT] IN '(' value, ... ')' | field IS [NOT] NULL
           | field CONTAINS value | field [NOT] LIKE 'pattern'
    op    := = | == | != | <> | < | <= | > | >=
    value := 'text' | "text" | number | true | false

``CONTAINS`` is list membership for list fields (``tags CONTAINS 'sql'``) and a
case-insensitive substring test for text fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from xpkit.core.errors import UsageError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<op><=|>=|!=|<>|==|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "contains", "like", "true", "false"}


@dataclass(frozen=True)
class Field:
    """A filterable field: its SQL expression and type (text, number, bool, list, json, time)."""

    sql: str
    type: str


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            bad = text[pos:].strip()
            raise UsageError(f"--where: cannot read {_show(bad)} (at character {pos + 1}); "
                             "write field = 'value' joined by and/or, e.g. "
                             "\"kind = 'insight' and tags contains 'sql'\".")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        out.append((kind, value))
        pos = m.end()
    return out


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


class _Parser:
    def __init__(self, text: str, fields: dict[str, Field], json_fields: set[str]) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.fields = fields
        self.json_fields = json_fields
        self.params: list[Any] = []

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value and tok[1] != value):
            want = value or kind or "more"
            got = "the end" if tok is None else _show(tok[1])
            raise UsageError(f"--where {_show(self.text)}: expected {want}, found {got}.")
        self.i += 1
        return tok

    def accept(self, kind: str, value: str | None = None) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return True
        return False

    def parse(self) -> str:
        if not self.toks:
            raise UsageError("--where is empty; give a condition such as \"kind = 'insight'\".")
        sql = self.expr()
        if self.peek() is not None:
            raise UsageError(f"--where {_show(self.text)}: unexpected {_show(self.peek()[1])}"  # type: ignore[index]
                             "; join conditions with and/or.")
        return sql

    def expr(self) -> str:
        parts = [self.term()]
        while self.accept("kw", "or"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def term(self) -> str:
        parts = [self.fact()]
        while self.accept("kw", "and"):
            parts.append(self.fact())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def fact(self) -> str:
        if self.accept("kw", "not"):
            return f"(NOT {self.fact()})"
        if self.accept("punct", "("):
            inner = self.expr()
            self.take("punct", ")")
            return inner
        return self.cmp()

    def field(self) -> Field:
        _, name = self.take("word")
        if name in self.fields:
            return self.fields[name]
        head, _, rest = name.partition(".")
        if rest and head in self.json_fields:
            path = "$." + rest
            self.params.append(path)
            return Field(f"json_extract_string({self.fields[head].sql}, ?)", "json")
        known = ", ".join(sorted(self.fields)) + ", " + ", ".join(
            f"{j}.KEY" for j in sorted(self.json_fields))
        raise UsageError(f"--where: unknown field {name!r}; known fields: {known}.")

    def value(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise UsageError(f"--where {_show(self.text)}: a value is missing at the end.")
        self.i += 1
        kind, raw = tok
        if kind == "str":
            q = raw[0]
            return raw[1:-1].replace(q * 2, q)
        if kind == "num":
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if kind == "kw" and raw in ("true", "false"):
            return raw == "true"
        raise UsageError(f"--where {_show(self.text)}: expected a value (a quoted text or a "
                         f"number), found {_show(raw)}.")

    def bind(self, f: Field, value: Any) -> str:
        """The SQL for ``f`` on the left of a comparison with ``value``: JSON values are cast."""
        if f.type == "json" and isinstance(value, bool):
            return f"TRY_CAST({f.sql} AS BOOLEAN)"
        if f.type == "json" and isinstance(value, int | float):
            return f"TRY_CAST({f.sql} AS DOUBLE)"
        if f.type == "time":
            return f"CAST({f.sql} AS VARCHAR)"
        return f.sql

    def cmp(self) -> str:
        f = self.field()
        if self.accept("kw", "is"):
            negate = self.accept("kw", "not")
            self.take("kw", "null")
            return f"({f.sql} IS {'NOT ' if negate else ''}NULL)"
        negate = self.accept("kw", "not")
        if self.accept("kw", "in"):
            self.take("punct", "(")
            values = [self.value()]
            while self.accept("punct", ","):
                values.append(self.value())
            self.take("punct", ")")
            left = self.bind(f, values[0])
            self.params.extend(values)
            marks = ", ".join("?" for _ in values)
            return f"({left} {'NOT ' if negate else ''}IN ({marks}))"
        if self.accept("kw", "like"):
            value = self.value()
            self.params.append(str(value))
            return f"({f.sql} {'NOT ' if negate else ''}ILIKE ?)"
        if negate:
            raise UsageError(f"--where {_show(self.text)}: NOT goes before a condition, or "
                             "in 'NOT IN' / 'NOT LIKE'.")
        if self.accept("kw", "contains"):
            value = self.value()
            self.params.append(str(value))
            if f.type == "list":
                return f"list_contains(TRY_CAST({f.sql} AS VARCHAR[]), ?)"
            return f"(contains(lower(CAST({f.sql} AS VARCHAR)), lower(?)))"
        _, op = self.take("op")
        op = {"==": "=", "<>": "!="}.get(op, op)
        value = self.value()
        left = self.bind(f, value)
        self.params.append(value)
        return f"({left} {op} ?)"


def compile_where(text: str, fields: dict[str, Field],
                  json_fields: set[str]) -> tuple[str, list[Any]]:
    """Compile ``--where`` text to ``(sql, params)``; raise ``UsageError`` on anything else."""
    p = _Parser(text, fields, json_fields)
    return p.parse(), p.params
