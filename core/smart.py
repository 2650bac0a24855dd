"""Test collections in the SMART format (CISI, CACM, MED, CRAN ...) and ranking metrics.

SMART files are tagged text: a record starts with ``.I <id>`` and has fields ``.T`` (title),
``.A`` (authors), ``.W`` (text), ``.B`` (publication), ``.X`` (cross references). Relevance
judgments are lines ``qid docid [...]``, every listed pair relevant. ``documents`` gives
records ready for ``xpkit index --id id --text text`` (title and abstract, the usual choice),
``queries`` records ready for ``xpkit retrieve --text query``.

``evaluate_run`` averages binary-relevance nDCG@k and recall@k (``core.ir_metrics``) over
the queries that have at least one judgment.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xpkit.core.ir_metrics import read_qrels, retrieval_metrics

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
    return {q: set(docs) for q, docs in read_qrels(str(path)).items()}


def evaluate_run(run: Mapping[str, Sequence[str]], judgments: Mapping[str, set[str]],
                 k_ndcg: int = 10, k_recall: int = 100) -> dict[str, float]:
    """Mean nDCG@k and recall@k over the judged queries (a query missing from ``run`` scores 0)."""
    m = retrieval_metrics(run, {q: dict.fromkeys(d, 1.0) for q, d in judgments.items()},
                          ks=(k_ndcg, k_recall))
    return {f"ndcg@{k_ndcg}": m.get(f"ndcg@{k_ndcg}", 0.0),
            f"recall@{k_recall}": m.get(f"recall@{k_recall}", 0.0), "queries": m["queries"]}
