"""Ranking metrics against relevance judgments (qrels): recall@k, MRR, nDCG@k.

- nDCG@k (Järvelin & Kekäläinen, 2002, "Cumulated gain-based evaluation of IR techniques"):
  gain = the judged relevance grade (1 for binary judgments), discount log2(rank + 1),
  normalised by the ideal ordering of the judged documents;
- recall@k: judged-relevant documents in the top k over all judged-relevant ones;
- MRR (Voorhees, 1999, TREC-8 QA track): 1 / rank of the first relevant document.

Averages are over the queries that have at least one relevant judgment; a judged query the
run never answered scores 0 (it is not skipped, which would flatter the run).

Qrels files: TREC (``qid 0 docid grade``), SMART/CISI (``qid docid ...``, every pair
relevant), or records (JSONL/CSV/Parquet) with a query id field (``qid``, ``query_id``,
``id``), a document id field (``docid``, ``doc_id``, ``unit_id``, ``corpus_id``) and an
optional grade (``relevance``, ``rel``, ``score``, ``grade``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from xpkit.core.errors import InputError

Qrels = dict[str, dict[str, float]]  # query id -> document id -> relevance grade (> 0)

QUERY_FIELDS = ("qid", "query_id", "query-id", "id")
DOC_FIELDS = ("docid", "doc_id", "corpus_id", "corpus-id", "unit_id")
GRADE_FIELDS = ("relevance", "rel", "score", "grade", "label")
TEXT_QRELS = (".txt", ".rel", ".qrels", ".tsv", ".trec")


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float] | set[str],
              k: int = 10) -> float:
    grades = _grades(relevant)
    dcg = sum(grades.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float] | set[str],
                k: int = 100) -> float:
    rel = {d for d, g in _grades(relevant).items() if g > 0}
    return len(set(ranked[:k]) & rel) / len(rel) if rel else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: Mapping[str, float] | set[str]) -> float:
    rel = _grades(relevant)
    for i, d in enumerate(ranked):
        if rel.get(d, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def retrieval_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]],
                      ks: Sequence[int] = (10, 100)) -> dict[str, float | int]:
    """Mean nDCG@k and recall@k for every k, and MRR, over the judged queries of ``qrels``."""
    judged = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    out: dict[str, float | int] = {"queries": len(judged),
                                   "answered": sum(1 for q in judged if run.get(q))}
    if not judged:
        return out
    for k in ks:
        out[f"ndcg@{k}"] = sum(ndcg_at_k(run.get(q, []), qrels[q], k) for q in judged) / len(judged)
        out[f"recall@{k}"] = (sum(recall_at_k(run.get(q, []), qrels[q], k) for q in judged)
                              / len(judged))
    out["mrr"] = sum(reciprocal_rank(run.get(q, []), qrels[q]) for q in judged) / len(judged)
    return out


def read_qrels(path: str) -> Qrels:
    """Judgments from a TREC or SMART text file, or from records (see the module doc)."""
    p = str(path)
    lowered = p.lower().removesuffix(".gz")
    if lowered.endswith(TEXT_QRELS) or Path(lowered).suffix == "":
        return _read_text_qrels(p)
    from xpkit.core.io import iter_values

    out: Qrels = {}
    for n, rec in enumerate(iter_values([p]), 1):
        q = _first(rec, QUERY_FIELDS)
        d = _first(rec, DOC_FIELDS)
        if q is None or d is None:
            missing = "query id" if q is None else "document id"
            fields = QUERY_FIELDS if q is None else DOC_FIELDS
            raise InputError(f"{p}, record {n}: no {missing} field (one of {', '.join(fields)}).",
                             file=p, line=n)
        g = _first(rec, GRADE_FIELDS)
        try:
            grade = 1.0 if g is None else float(g)
        except (TypeError, ValueError):
            raise InputError(f"{p}, record {n}: relevance {g!r} is not a number.", file=p,
                             line=n) from None
        if grade > 0:
            out.setdefault(str(q), {})[str(d)] = grade
    return out


def _read_text_qrels(path: str) -> Qrels:
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    out: Qrels = {}
    trec: bool | None = None  # decided on the first line: TREC's second column is 0 or Q0
    try:
        f = opener(path, "rt", encoding="utf-8", errors="replace")  # type: ignore[operator]
    except OSError as exc:
        raise InputError(f"{path}: cannot read qrels ({exc.strerror or exc}).", file=path) from exc
    with f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if trec is None:
                trec = len(parts) == 4 and parts[1] in ("0", "Q0")
            if trec and len(parts) == 4:  # TREC: qid iteration docid grade
                q, d, g = parts[0], parts[2], parts[3]
            elif not trec and len(parts) >= 2:  # SMART/CISI: qid docid [...]
                q, d, g = parts[0], parts[1], "1"
            else:
                raise InputError(f"{path}, line {n}: expected 'qid docid' or "
                                 "'qid 0 docid grade'.", file=path, line=n)
            try:
                grade = float(g)
            except ValueError:
                raise InputError(f"{path}, line {n}: relevance {g!r} is not a number.",
                                 file=path, line=n) from None
            if grade > 0:
                out.setdefault(q, {})[d] = grade
    return out


def _grades(relevant: Mapping[str, float] | set[str]) -> Mapping[str, float]:
    return {d: 1.0 for d in relevant} if isinstance(relevant, set | frozenset) else relevant


def _first(rec: Mapping[str, object], names: Sequence[str]) -> object:
    for name in names:
        if rec.get(name) is not None:
            return rec[name]
    return None
