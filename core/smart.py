"""Test collections in the SMART format (CISI, CACM, MED, CRAN ...) and ranking metrics.

SMART files are tagged text: a record starts with ``.I <id>`` and has fields ``.T`` (title),
``.A`` (authors), ``.W`` (text), ``.B`` (publication), ``.X`` (cross references). Relevance
judgments are lines ``qid docid [...]``, every listed pair relevant. ``documents`` gives
records ready for ``xpkit index --id id --text text`` (title and abstract, the usual choice),
``queries`` records ready for ``xpkit retrieve --text query``.

Metrics: binary-relevance nDCG@k (Järvelin & Kekäläinen, 2002; gain 1, discount
log2(rank + 1)) and recall@k, averaged over queries that have at least one judgment.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_RECORD = re.compile(r"^\.I\s+(\S+)\s*$")
_FIELD = re.compile(r"^\.([A-Z])\s*$")


def _lines(path: str | Path) -> Iterator[str]:
    p = str(path)
    opener = gzip.open if p.endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
        for line in f:
            yield line.rstrip("\n")


def read_smart(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield ``{"id": str, "T": text, "W": text, ...}`` for each ``.I`` record."""
    rec: dict[str, Any] | None = None
    field: str | None = None
    buf: list[str] = []

    def flush() -> None:
        if rec is not None and field is not None:
            rec[field] = " ".join(" ".join(buf).split())

    for line in _lines(path):
        m = _RECORD.match(line)
        if m:
            flush()
            if rec is not None:
                yield rec
            rec, field, buf = {"id": m.group(1)}, None, []
            continue
        f = _FIELD.match(line)
        if f and rec is not None:
            flush()
            field, buf = f.group(1), []
            continue
        if field is not None:
            buf.append(line)
    flush()
    if rec is not None:
        yield rec


def documents(path: str | Path) -> list[dict[str, Any]]:
    """Documents as ``{id, title, text}``, where text is title and abstract."""
    out = []
    for r in read_smart(path):
        title, body = r.get("T", ""), r.get("W", "")
        out.append({"id": r["id"], "title": title, "text": f"{title}\n{body}".strip(),
                    "authors": r.get("A")})
    return out


def queries(path: str | Path) -> list[dict[str, Any]]:
    """Queries as ``{qid, query}`` (the ``.W`` text, with the ``.T`` title if any)."""
    out = []
    for r in read_smart(path):
        text = " ".join(x for x in (r.get("T"), r.get("W")) if x)
        out.append({"qid": r["id"], "query": text})
    return out


def qrels(path: str | Path) -> dict[str, set[str]]:
    """Relevance judgments: query id -> the set of relevant document ids."""
    out: dict[str, set[str]] = {}
    for line in _lines(path):
        parts = line.split()
        if len(parts) >= 2:
            out.setdefault(parts[0], set()).add(parts[1])
    return out


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int = 100) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def evaluate_run(run: Mapping[str, Sequence[str]], judgments: Mapping[str, set[str]],
                 k_ndcg: int = 10, k_recall: int = 100) -> dict[str, float]:
    """Mean nDCG@k and recall@k over the judged queries (a query missing from ``run`` scores 0)."""
    judged = [q for q, rel in judgments.items() if rel]
    if not judged:
        return {f"ndcg@{k_ndcg}": 0.0, f"recall@{k_recall}": 0.0, "queries": 0}
    nd = sum(ndcg_at_k(run.get(q, []), judgments[q], k_ndcg) for q in judged) / len(judged)
    rc = sum(recall_at_k(run.get(q, []), judgments[q], k_recall) for q in judged) / len(judged)
    return {f"ndcg@{k_ndcg}": nd, f"recall@{k_recall}": rc, "queries": len(judged)}
