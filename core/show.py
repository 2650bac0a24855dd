"""``show``: dereference a unit, an episode or one step to its full evidence (Memex).

Memex-style memory keeps short, indexed summaries in context and stable ids that lead back
to the full record when the details matter. ``show UNIT_ID`` returns the unit with every
episode of its evidence — the cited steps when the evidence names steps, else all of them —
and its links (EXG edges, both directions); ``show EPISODE_ID`` returns the episode with its
steps; ``show EPISODE_ID#STEP`` returns that step with the steps around it.
"""

from __future__ import annotations

from typing import Any

import orjson

from xpkit.core.errors import XpkitError

_UNIT_COLS = ("unit_id", "kind", "title", "when", "content", "example", "polarity", "evidence",
              "tags", "stats", "provenance", "meta", "created_at", "updated_at")
_EP_COLS = ("episode_id", "source_format", "source_file", "source_line", "task", "success",
            "reward", "score", "answer", "reference", "model", "meta", "n_steps")
_JSON = {"evidence", "tags", "stats", "provenance", "meta", "args"}


class NotFoundError(XpkitError):
    """No unit, episode or step has the given id."""


def _row(cols: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, v in zip(cols, row, strict=True):
        if c in _JSON and isinstance(v, str):
            v = orjson.loads(v)
        elif hasattr(v, "isoformat"):
            v = v.isoformat()
        out[c] = v
    return out


def _steps(con: Any, episode_id: str, only: list[int] | None = None,
           around: int = 0) -> list[dict[str, Any]]:
    cols = ("step", "role", "kind", "content", "name", "args")
    rows = con.execute(f"SELECT {', '.join(cols)} FROM steps WHERE episode_id = ? ORDER BY step",
                       [episode_id]).fetchall()
    out = [_row(cols, r) for r in rows]
    if only is not None:
        want = {s + d for s in only for d in range(-around, around + 1)}
        out = [s for s in out if s["step"] in want]
    for s in out:
        if s.get("name") is None:
            s.pop("name", None)
        if s.get("args") is None:
            s.pop("args", None)
    return out


def _episode(con: Any, episode_id: str, steps: list[int] | None = None,
             around: int = 0) -> dict[str, Any] | None:
    row = con.execute(f"SELECT {', '.join(_EP_COLS)} FROM episodes WHERE episode_id = ?",
                      [episode_id]).fetchone()
    if row is None:
        return None
    ep = _row(_EP_COLS, row)
    ep["outcome"] = {k: ep.pop(k) for k in ("success", "reward", "score")}
    ep["source"] = {"format": ep.pop("source_format"), "file": ep.pop("source_file"),
                    "line": ep.pop("source_line")}
    ep["steps"] = _steps(con, episode_id, steps, around)
    if steps is not None:
        ep["cited_steps"] = steps
    return ep


def show(store: str, ref: str, *, around: int = 1, links: bool = True) -> dict[str, Any]:
    """The record behind ``ref`` with its evidence dereferenced (read-only)."""
    from xpkit.core.links import neighbors
    from xpkit.core.store import Store

    with Store.open(store, read_only=True) as db:
        con = db.con
        row = con.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in _UNIT_COLS)} "
                          "FROM units WHERE unit_id = ?", [ref]).fetchone()
        if row is not None:
            unit = _row(_UNIT_COLS, row)
            evidence = []
            for ev in unit.get("evidence") or []:
                if isinstance(ev, str):
                    ev = {"episode_id": ev}
                eid = ev.get("episode_id")
                steps = ev.get("steps")
                ep = _episode(con, eid, steps, around if steps else 0) if eid else None
                evidence.append(ep if ep is not None else {"episode_id": eid, "missing": True})
            out: dict[str, Any] = {"type": "unit", "unit": unit, "evidence": evidence}
            if links:
                out["links"] = neighbors(con, [ref])
            return out
        episode_id, sep, step = ref.partition("#")
        if sep:
            if not step.isdigit():
                raise NotFoundError(f"{ref}: a step reference is EPISODE_ID#NUMBER.")
            ep = _episode(con, episode_id, [int(step)], around)
            if ep is None or not any(s["step"] == int(step) for s in ep["steps"]):
                raise NotFoundError(f"Store {store} has no step {ref}.")
            return {"type": "step", "ref": ref, "episode": ep}
        ep = _episode(con, ref)
        if ep is not None:
            out = {"type": "episode", "episode": ep}
            if links:
                out["links"] = neighbors(con, [ref])
            return out
    raise NotFoundError(f"Store {store} has no unit or episode {ref!r}; ids look like "
                        "u_..., a document's own id, ep_..., or ep_...#STEP.")
