"""Experience units (DESIGN.md "unit"): the records ``distill`` writes and ``index`` searches.

A unit is one piece of reusable experience: an insight, a behavior, a contrast, an
exemplar, a summary, a skill, or a plain document. Its ``unit_id`` is a hash of its wording,
so the same unit distilled twice (or on two machines) gets the same id. ``evidence`` points
back to the episodes (and steps) it came from; ``stats`` holds the helpful / harmful / uses
counters that ``evaluate`` fills, in total and per model.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.records import content_hash

UNIT_KINDS = ("insight", "behavior", "contrast", "exemplar", "summary", "skill", "document")
POLARITIES = ("do", "avoid")
COUNTERS = ("helpful", "harmful", "uses")
_WORDING = ("kind", "title", "when", "content", "example", "polarity")


def empty_stats() -> dict[str, Any]:
    return {"helpful": 0, "harmful": 0, "uses": 0, "per_model": {}}


def unit_id_for(unit: dict[str, Any]) -> str:
    """``u_`` + hash of the unit's wording (kind, title, when, content, example, polarity)."""
    return "u_" + content_hash({k: unit.get(k) for k in _WORDING})


def prompt_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def normalize_evidence(evidence: Any, field: str = "evidence") -> list[dict[str, Any]]:
    """Evidence as a sorted list of ``{episode_id, steps?}`` with unique, sorted step numbers."""
    if not isinstance(evidence, list):
        raise RecordError("expected a list", field)
    by_episode: dict[str, set[int] | None] = {}
    for i, ev in enumerate(evidence):
        if isinstance(ev, str):
            ev = {"episode_id": ev}
        if not isinstance(ev, dict) or not isinstance(ev.get("episode_id"), str):
            raise RecordError("expected {episode_id, steps?}", f"{field}.{i}")
        steps = ev.get("steps")
        eid = ev["episode_id"]
        if steps is None:
            by_episode.setdefault(eid, None)
            continue
        if not isinstance(steps, list) or not all(isinstance(s, int) for s in steps):
            raise RecordError("expected a list of step numbers", f"{field}.{i}.steps")
        known = by_episode.get(eid)
        by_episode[eid] = (known or set()) | set(steps)
    return [{"episode_id": eid, **({"steps": sorted(s)} if s else {})}
            for eid, s in sorted(by_episode.items())]


def make_unit(*, kind: str, content: str, title: str | None = None, when: str | None = None,
              example: str | None = None, polarity: str = "do",
              evidence: list[dict[str, Any]] | None = None, tags: list[str] | None = None,
              stats: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
              meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble and validate a unit and give it its content-hash id."""
    if kind not in UNIT_KINDS:
        raise RecordError(f"unknown kind {kind!r}", "kind")
    if polarity not in POLARITIES:
        raise RecordError(f"expected do or avoid, found {polarity!r}", "polarity")
    if not isinstance(content, str) or not content.strip():
        raise RecordError("is missing or empty", "content")
    unit: dict[str, Any] = {
        "unit_id": "",
        "kind": kind,
        "title": (title or "").strip() or None,
        "when": (when or "").strip() or None,
        "content": content.strip(),
        "example": (example or "").strip() or None,
        "polarity": polarity,
        "evidence": normalize_evidence(evidence or []),
        "tags": sorted(set(tags or [])),
        "stats": stats or empty_stats(),
        "provenance": provenance or {},
    }
    if meta:
        unit["meta"] = meta
    unit["unit_id"] = unit_id_for(unit)
    return unit


def provenance(distiller: str, model: str | None, prompt: str | None) -> dict[str, Any]:
    return {"distiller": distiller, "model": model,
            "prompt_hash": prompt_hash(prompt) if prompt else None,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Add counters, overall and per model (merging never loses a count)."""
    out = {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in COUNTERS}
    per: dict[str, dict[str, int]] = {}
    for src in (a.get("per_model") or {}, b.get("per_model") or {}):
        for model, counts in src.items():
            cur = per.setdefault(model, {k: 0 for k in COUNTERS})
            for k in COUNTERS:
                cur[k] += int(counts.get(k, 0))
    out["per_model"] = dict(sorted(per.items()))
    return out
