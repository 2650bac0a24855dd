"""Typed links between units: the experience graph of EXG.

Units are not independent: an insight can be *derived from* another unit (or an episode), a
newer one *refines* an older one, two can *contradict* each other. The edges live in the
store's ``unit_links`` table (``src``, ``dst``, ``relation``, ``weight``) so they survive
re-indexing and can be followed: ``retrieve --follow refines`` adds the units linked to a hit,
and ``xpkit show`` lists a unit's edges both ways.

Input forms: a unit record's ``links`` field — a list of ``{relation, dst}`` (``target`` and
``unit_id`` are accepted for ``dst``) or ``"relation:dst"`` strings — or a standalone record
``{src, dst, relation}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from xpkit.core.errors import RecordError

RELATIONS = ("derived-from", "refines", "contradicts")


def _check_relation(rel: Any, field: str) -> str:
    if not isinstance(rel, str) or not rel.strip():
        raise RecordError(f"expected a relation ({', '.join(RELATIONS)})", field)
    return rel.strip().lower().replace("_", "-")


def parse_links(value: Any, src: str, field: str = "links") -> list[tuple[str, str, str]]:
    """The ``links`` field of a unit record as ``(src, dst, relation)`` triples."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError("expected a list of {relation, dst}", field)
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str) and ":" in item:
            rel, dst = item.split(":", 1)
        elif isinstance(item, dict):
            rel = item.get("relation")
            dst = item.get("dst") or item.get("target") or item.get("unit_id")
        else:
            raise RecordError("expected {relation, dst} or 'relation:dst'", f"{field}.{i}")
        if not isinstance(dst, str) or not dst:
            raise RecordError("is missing", f"{field}.{i}.dst")
        out.append((src, dst, _check_relation(rel, f"{field}.{i}.relation")))
    return out


def parse_link_record(record: dict[str, Any]) -> tuple[str, str, str] | None:
    """A standalone ``{src, dst, relation}`` record, or None if the record is not one."""
    if not {"src", "dst", "relation"} <= record.keys() or "content" in record:
        return None
    src, dst = record["src"], record["dst"]
    for name, v in (("src", src), ("dst", dst)):
        if not isinstance(v, str) or not v:
            raise RecordError("expected a unit or episode id", name)
    return src, dst, _check_relation(record["relation"], "relation")


def insert_links(con: Any, links: Iterable[tuple[str, str, str]], run_id: str = "") -> int:
    """Add edges that are not there yet; return how many were new."""
    import pyarrow as pa

    from xpkit.core.store import now

    uniq = sorted(set(links))
    if not uniq:
        return 0
    con.register("_xp_links", pa.table({"src": [x[0] for x in uniq],
                                        "dst": [x[1] for x in uniq],
                                        "relation": [x[2] for x in uniq]}))
    before = con.execute("SELECT count(*) FROM unit_links").fetchone()[0]
    con.execute("""
        INSERT INTO unit_links
        SELECT l.src, l.dst, l.relation, 1.0, NULL, ?, ? FROM _xp_links l
        ANTI JOIN unit_links u ON u.src = l.src AND u.dst = l.dst AND u.relation = l.relation
        """, [run_id, now()])
    con.unregister("_xp_links")
    return con.execute("SELECT count(*) FROM unit_links").fetchone()[0] - before


def neighbors(con: Any, ids: Sequence[str], relations: Sequence[str] | None = None,
              direction: str = "both") -> list[dict[str, Any]]:
    """Edges touching ``ids``: ``{src, dst, relation, direction}`` (out = from the id)."""
    if not ids:
        return []
    rel_sql = "AND relation IN (SELECT unnest(?))" if relations else ""
    out: list[dict[str, Any]] = []
    if direction in ("both", "out"):
        args: list[Any] = [list(ids)] + ([list(relations)] if relations else [])
        for src, dst, rel in con.execute(
                f"SELECT src, dst, relation FROM unit_links WHERE src IN (SELECT unnest(?)) "
                f"{rel_sql} ORDER BY src, relation, dst", args).fetchall():
            out.append({"src": src, "dst": dst, "relation": rel, "direction": "out"})
    if direction in ("both", "in"):
        args = [list(ids)] + ([list(relations)] if relations else [])
        for src, dst, rel in con.execute(
                f"SELECT src, dst, relation FROM unit_links WHERE dst IN (SELECT unnest(?)) "
                f"{rel_sql} ORDER BY dst, relation, src", args).fetchall():
            out.append({"src": src, "dst": dst, "relation": rel, "direction": "in"})
    return out
