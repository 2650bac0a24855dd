"""A library of units that grows by delta updates and never collapses.

Follows ACE (Zhang et al., 2025, "Agentic Context Engineering"): the library is a set of
itemised units with helpful / harmful counters, grown by incremental *delta* updates — a new
unit that says what an existing one says is merged into it (evidence and counters combined,
the existing wording kept), anything else is added — and never regenerated wholesale, which
is what causes "context collapse" when a model rewrites its whole playbook.

Two units are near-duplicates when they have the same kind and their lexical similarity
(Jaccard of content-word sets of title + when + content) reaches the threshold, or, when
vectors are supplied (``distill --embed-threshold`` supplies those of the store's unit
index), their cosine similarity reaches ``embed_threshold``.

Merging shards: ``merge_shards`` clusters the union of all shards' units by connected
components of the near-duplicate graph, then collapses each cluster to its representative
(most evidence, then smallest ``unit_id``). Components and representatives depend only on
the *set* of units, so the same shards give the same library in any order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpkit.core.units import merge_stats, normalize_evidence

DEFAULT_THRESHOLD = 0.6
DEFAULT_EMBED_THRESHOLD = 0.9
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "if", "in",
    "into", "is", "it", "its", "of", "on", "or", "that", "the", "their", "then", "this", "to",
    "was", "were", "will", "with", "when", "you", "your", "should", "before", "after", "do",
    "not"))



def unit_text(unit: dict[str, Any]) -> str:
    return " ".join(str(unit.get(k) or "") for k in ("title", "when", "content"))


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def merge_pair(keep: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``keep`` absorbs ``other``: evidence and tags unioned, counters added, wording kept."""
    merged = dict(keep)
    merged["evidence"] = normalize_evidence(keep.get("evidence", []) + other.get("evidence", []))
    merged["tags"] = sorted(set(keep.get("tags") or []) | set(other.get("tags") or []))
    merged["stats"] = merge_stats(keep.get("stats") or {}, other.get("stats") or {})
    prov = dict(keep.get("provenance") or {})
    absorbed = set(prov.get("merged_from") or []) | {other["unit_id"]}
    absorbed |= set((other.get("provenance") or {}).get("merged_from") or [])
    absorbed.discard(keep["unit_id"])
    prov["merged_from"] = sorted(absorbed)
    merged["provenance"] = prov
    return merged


def _rank_key(unit: dict[str, Any]) -> tuple[int, str]:
    return (-len(unit.get("evidence") or []), unit["unit_id"])


class _Index:
    """Candidate lookup: an inverted index of content words, per kind; and, with
    ``vectors`` (unit id -> L2-normalised embedding), a matrix of the vectors per kind."""

    def __init__(self, vectors: Mapping[str, np.ndarray] | None = None) -> None:
        self.words: dict[str, frozenset[str]] = {}
        self.kind: dict[str, str] = {}
        self.postings: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.vectors = vectors or {}
        self.vector_ids: dict[str, list[str]] = defaultdict(list)
        self._matrix: dict[str, np.ndarray] = {}

    def add(self, unit: dict[str, Any]) -> None:
        uid = unit["unit_id"]
        words = content_words(unit_text(unit))
        self.words[uid] = words
        self.kind[uid] = unit["kind"]
        for w in words:
            self.postings[(unit["kind"], w)].add(uid)
        if uid in self.vectors:
            self.vector_ids[unit["kind"]].append(uid)
            self._matrix.pop(unit["kind"], None)

    def best(self, unit: dict[str, Any], threshold: float,
             embed_threshold: float = 1.0) -> tuple[str | None, float]:
        """The existing unit this one duplicates: the lexically closest at ``threshold``,
        else the closest by cosine at ``embed_threshold`` (ties: the smaller id)."""
        best, sim = self._best_lexical(unit, threshold)
        if best is None and unit["unit_id"] in self.vectors:
            best, sim = self._best_vector(unit, embed_threshold)
        return best, sim

    def _best_vector(self, unit: dict[str, Any], threshold: float) -> tuple[str | None, float]:
        kind = unit["kind"]
        ids = self.vector_ids.get(kind)
        if not ids:
            return None, 0.0
        if kind not in self._matrix:
            self._matrix[kind] = np.stack([self.vectors[i] for i in ids])
        sims = self._matrix[kind] @ self.vectors[unit["unit_id"]]
        top = float(sims.max())
        if top < threshold:
            return None, 0.0
        return min(i for i, s in zip(ids, sims, strict=True) if s == top), top

    def _best_lexical(self, unit: dict[str, Any], threshold: float) -> tuple[str | None, float]:
        words = content_words(unit_text(unit))
        overlap: dict[str, int] = defaultdict(int)
        for w in words:
            for uid in self.postings.get((unit["kind"], w), ()):
                overlap[uid] += 1
        best, best_sim = None, 0.0
        for uid, shared in overlap.items():
            union = len(words) + len(self.words[uid]) - shared
            sim = shared / union if union else 0.0
            if sim >= threshold and (sim > best_sim or (sim == best_sim and uid < (best or "~"))):
                best, best_sim = uid, sim
        return best, best_sim


@dataclass
class GrowResult:
    """The delta of one update: units added, units merged (new id -> existing id)."""

    added: list[dict[str, Any]] = field(default_factory=list)
    merged: dict[str, str] = field(default_factory=dict)
    updated: dict[str, dict[str, Any]] = field(default_factory=dict)


def grow(existing: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]], *,
         threshold: float = DEFAULT_THRESHOLD,
         vectors: Mapping[str, np.ndarray] | None = None,
         embed_threshold: float = DEFAULT_EMBED_THRESHOLD) -> GrowResult:
    """Apply new units to a library as a delta: merge near-duplicates, add the rest.

    ``existing`` is not modified; ``updated`` holds the new versions of existing units that
    absorbed a new one, ``added`` the new units (which later new units may also merge into).
    With ``vectors`` (unit id -> L2-normalised embedding, for the units that have one), a new
    unit with no lexical near-duplicate merges into the existing unit of its kind whose
    cosine similarity is highest and at least ``embed_threshold``.
    """
    index = _Index(vectors)
    library: dict[str, dict[str, Any]] = {}
    for u in existing:
        library[u["unit_id"]] = u
        index.add(u)
    result = GrowResult()
    added_ids: dict[str, int] = {}
    for u in new:
        uid = u["unit_id"]
        target = uid if uid in library else index.best(u, threshold, embed_threshold)[0]
        if target is None:
            library[uid] = u
            index.add(u)
            added_ids[uid] = len(result.added)
            result.added.append(u)
            continue
        merged = merge_pair(library[target], u)
        library[target] = merged
        result.merged[uid] = target
        if target in added_ids:
            result.added[added_ids[target]] = merged
        else:
            result.updated[target] = merged
    return result


def merge_shards(units: Iterable[dict[str, Any]], *,
                 threshold: float = DEFAULT_THRESHOLD) -> list[dict[str, Any]]:
    """Merge libraries distilled separately into one, independent of shard order."""
    by_id: dict[str, dict[str, Any]] = {}
    for u in units:
        uid = u["unit_id"]
        by_id[uid] = merge_pair(by_id[uid], u) if uid in by_id else u
    ids = sorted(by_id)
    parent = {uid: uid for uid in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    words = {uid: content_words(unit_text(by_id[uid])) for uid in ids}
    postings: dict[tuple[str, str], list[str]] = defaultdict(list)
    for uid in ids:
        for w in words[uid]:
            postings[(by_id[uid]["kind"], w)].append(uid)
    for uid in ids:
        seen: set[str] = set()
        for w in words[uid]:
            for other in postings[(by_id[uid]["kind"], w)]:
                if other <= uid or other in seen:
                    continue
                seen.add(other)
                if jaccard(words[uid], words[other]) >= threshold:
                    ra, rb = find(uid), find(other)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
    clusters: dict[str, list[str]] = defaultdict(list)
    for uid in ids:
        clusters[find(uid)].append(uid)
    out = []
    for members in clusters.values():
        ranked = sorted((by_id[m] for m in members), key=_rank_key)
        rep = ranked[0]
        for other in ranked[1:]:
            rep = merge_pair(rep, other)
        out.append(rep)
    return sorted(out, key=lambda u: u["unit_id"])


def utility(unit: dict[str, Any]) -> float:
    """Posterior mean of helpfulness, Beta(1 + helpful, 1 + harmful): the eviction score."""
    stats = unit.get("stats") or {}
    h, x = int(stats.get("helpful", 0)), int(stats.get("harmful", 0))
    return (1 + h) / (2 + h + x)


def evict(units: Sequence[dict[str, Any]], max_units: int) -> tuple[list[dict[str, Any]],
                                                                    list[dict[str, Any]]]:
    """Keep the ``max_units`` most useful units; return (kept, evicted).

    Rule: rank by posterior helpfulness (see ``utility``), then by evidence count, then by
    uses, then by ``unit_id`` (for determinism); the lowest ranked are evicted.
    """
    ranked = sorted(units, key=lambda u: (-utility(u), -len(u.get("evidence") or []),
                                          -int((u.get("stats") or {}).get("uses", 0)),
                                          u["unit_id"]))
    return ranked[:max_units], ranked[max_units:]
