"""``xpkit.core.index``: incremental postings, staleness, levels, links; BM25 against oracles."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pytest

from tests.conftest import FIXTURES, store_made_before
from xpkit.core.bm25 import BM25Matrix, BM25Params
from xpkit.core.errors import StrictModeError, UsageError
from xpkit.core.index import StaleIndexError, get_level, index, input_hash
from xpkit.core.retrieve import Library
from xpkit.core.tokenize import Analyzer

DOCS = FIXTURES / "docs_small.jsonl"
UNITS = FIXTURES / "units_small.jsonl"


def write(path: Path, records: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def docs_index(tmp_path: Path, **kw) -> str:
    store = str(tmp_path / "lib.duckdb")
    index([str(DOCS)], store=store, id_field="doc_id", text_field="body", **kw)
    return store


def table(store: str, sql: str) -> list[tuple]:
    with duckdb.connect(store, read_only=True) as con:
        return con.execute(sql).fetchall()


# --------------------------------------------------------------------------- analysis


def test_analyzer_matches_bm25s_chain():
    a = Analyzer()
    assert a("The runners were running quickly, isn't it?") == [
        "runner", "were", "run", "quick", "isn"]
    assert a("the and of a") == []
    assert Analyzer(stopwords="en_plus")("were running") == ["run"]
    assert Analyzer(stemmer="none")("Running dogs") == ["running", "dogs"]
    with pytest.raises(UsageError, match="--stemmer"):
        Analyzer(stemmer="klingon")


def _oracle_bm25(corpus: list[list[str]], query: list[str], k1=1.5, b=0.75) -> np.ndarray:
    """Textbook Lucene-variant BM25, written independently of xpkit.core.bm25."""
    n = len(corpus)
    avgdl = sum(map(len, corpus)) / n
    df = Counter(t for d in corpus for t in set(d))
    out = np.zeros(n)
    for i, d in enumerate(corpus):
        tf = Counter(d)
        for t in query:
            if t in tf:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                out[i] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return out


def _matrix(corpus: list[list[str]], params: BM25Params) -> BM25Matrix:
    vocab: dict[str, int] = {}
    t_ids, d_nos, tfs = [], [], []
    for d, toks in enumerate(corpus):
        for t, c in Counter(toks).items():
            t_ids.append(vocab.setdefault(t, len(vocab)))
            d_nos.append(d)
            tfs.append(c)
    return BM25Matrix.from_postings(list(vocab), np.array(t_ids), np.array(d_nos),
                                    np.array(tfs), np.array([len(x) for x in corpus], float),
                                    np.ones(len(corpus), bool), params)


def test_bm25_scores_equal_a_textbook_oracle():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    corpus = [list(rng.choice(words, size=rng.integers(3, 30))) for _ in range(200)]
    m = _matrix(corpus, BM25Params())
    queries = [list(rng.choice(words, size=rng.integers(1, 6))) for _ in range(30)]
    res, _ = m.search(queries, k=200)
    for q, (docs, scores) in zip(queries, res, strict=True):
        want = _oracle_bm25(corpus, q)
        got = np.zeros(len(corpus))
        got[docs] = scores
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bm25_top_k_equals_bm25s():
    bm25s = pytest.importorskip("bm25s", reason="bm25s is a bench extra: pip install .[bench]")
    texts = [line["body"] for line in map(orjson.loads, DOCS.read_bytes().splitlines())]
    texts += ["interest rates and inflation in the park", "golden bread crust with butter"]
    a = Analyzer(stemmer="none")
    m = _matrix(a.many(texts), BM25Params())
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    for q in ("interest rates", "bread butter golden", "the cat in the park"):
        _, scores = ref.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False),
                                   k=3, show_progress=False)
        [(_, ours)], _ = m.search([a(q)], k=3)
        assert np.allclose(ours, scores[0], rtol=1e-5)


def test_bm25_filter_mask_and_zero_score_docs_never_returned():
    corpus = [["a1", "b1"], ["a1"], ["c1"], ["a1", "a1"]]
    m = _matrix(corpus, BM25Params())
    [(docs, _)], _ = m.search([["a1"]], k=10)
    assert set(docs.tolist()) == {0, 1, 3}
    allowed = np.array([True, False, True, False])
    [(docs, _)], _ = m.search([["a1"]], k=10, allowed=allowed)
    assert docs.tolist() == [0]
    [(docs, _)], best = m.search([["zzz"]], k=10)
    assert len(docs) == 0 and best[0] > 0


# --------------------------------------------------------------------------- documents


def test_documents_become_units_of_kind_document_with_their_own_ids(tmp_path):
    store = docs_index(tmp_path)
    rows = table(store, "SELECT unit_id, kind, content, meta FROM units ORDER BY unit_id")
    assert [r[0] for r in rows] == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert {r[1] for r in rows} == {"document"}
    assert orjson.loads(rows[0][3]) == {"topic": "animals", "year": 2019}
    (n_docs, n_terms, params, ih), = table(
        store, "SELECT n_docs, n_terms, params, input_hash FROM indexes WHERE name = 'unit'")
    assert n_docs == 6 and n_terms > 20
    assert orjson.loads(params)["analysis"]["stemmer"] == "english"
    assert ih.startswith("6:")
    runs = table(store, "SELECT command, status, counts FROM runs")
    assert runs[-1][0] == "index" and runs[-1][1] == "ok"
    assert orjson.loads(runs[-1][2])["indexed_added"] == 6


def test_reindexing_the_same_input_changes_nothing(tmp_path):
    store = docs_index(tmp_path)
    before = table(store, "SELECT * FROM index_postings ORDER BY ALL")
    s = index([str(DOCS)], store=store, id_field="doc_id", text_field="body")
    assert (s.units_new, s.units_same, s.sync.added, s.sync.removed) == (0, 6, 0, 0)
    assert table(store, "SELECT * FROM index_postings ORDER BY ALL") == before


def test_adding_documents_is_incremental(tmp_path):
    store = docs_index(tmp_path)
    old = table(store, "SELECT doc_no, key FROM index_docs ORDER BY doc_no")
    more = write(tmp_path / "more.jsonl", [
        {"doc_id": "d1", "body": "Interest rates on savings accounts rose."},
        {"doc_id": "a1", "body": "The cat slept on the warm mat all afternoon."}])  # changed
    s = index([more], store=store, id_field="doc_id", text_field="body")
    assert (s.units_new, s.units_updated, s.sync.added, s.sync.removed) == (1, 1, 2, 1)
    new = table(store, "SELECT doc_no, key FROM index_docs ORDER BY doc_no")
    # untouched entries keep their numbers; new and changed ones are appended
    assert [r for r in new if r[1] not in ("a1", "d1")] == [r for r in old if r[1] != "a1"]
    assert {r[0] for r in new if r[1] in ("a1", "d1")} == {6, 7}
    assert table(store, "SELECT count(*) FROM index_postings WHERE doc_no = 0") == [(0,)]
    lib = Library.open(store)
    [(docs, _)], _ = lib.bm25.search([lib.analyzer("cat slept afternoon")], k=1)
    assert lib.keys[docs[0]] == "a1"
    lib.close()


def test_changing_the_analysis_rebuilds(tmp_path):
    store = docs_index(tmp_path)
    s = index([], store=store, stemmer="none")
    assert s.sync.rebuilt and "analysis" in s.sync.rebuilt
    assert s.sync.added == 6
    s = index([], store=store, stemmer="none", rebuild=True)
    assert s.sync.rebuilt == "--rebuild"


def test_stale_index_is_refused_and_refresh_updates_it(tmp_path):
    from xpkit.core.retrieve import retrieve

    store = docs_index(tmp_path)
    with duckdb.connect(store) as con:  # another tool changes the library under the index
        con.execute("UPDATE units SET content = 'Parrots can talk' WHERE unit_id = 'a2'")
    q = write(tmp_path / "q.jsonl", [{"task": "talking parrots"}])
    with pytest.raises(StaleIndexError, match=r"the unit index is stale .*--refresh"):
        retrieve([q], store=store, sink=lambda _r: None)
    out: list[dict] = []
    retrieve([q], store=store, refresh=True, sink=out.extend)
    assert out[0]["hits"][0]["unit_id"] == "a2"
    out.clear()
    retrieve([q], store=store, sink=out.extend)  # current again: no refresh needed
    assert out[0]["hits"][0]["unit_id"] == "a2"


def test_missing_index_is_reported_with_the_command_to_run(tmp_path):
    from xpkit.core.retrieve import retrieve
    from xpkit.core.store import Store

    store = str(tmp_path / "s.duckdb")
    with Store.open(store) as db:
        db.con.execute("INSERT INTO units (unit_id, kind, content) VALUES ('x', 'insight', 'y')")
    q = write(tmp_path / "q.jsonl", [{"task": "y"}])
    with pytest.raises(StaleIndexError, match="no unit index; run 'xpkit index --store"):
        retrieve([q], store=store, sink=lambda _r: None)


def test_bad_documents_are_quarantined_and_strict_fails(tmp_path):
    src = write(tmp_path / "d.jsonl", [{"doc_id": "ok", "body": "fine text"},
                                       {"doc_id": "nobody"}, {"body": "no id"},
                                       {"doc_id": {"x": 1}, "body": "object id"}])
    store = str(tmp_path / "lib.duckdb")
    s = index([src], store=store, id_field="doc_id", text_field="body")
    assert (s.records, s.units_new, s.rejected) == (4, 1, 3)
    rejects = [orjson.loads(x) for x in Path(s.rejects_path).read_bytes().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, "body"), (3, "doc_id"),
                                                         (4, "doc_id")]
    with pytest.raises(StrictModeError):
        index([src], store=str(tmp_path / "strict.duckdb"), id_field="doc_id",
              text_field="body", strict=True)
    assert table(str(tmp_path / "strict.duckdb"), "SELECT count(*) FROM units") == [(0,)]


def test_usage_errors(tmp_path):
    store = str(tmp_path / "s.duckdb")
    with pytest.raises(UsageError, match="--id and --text go together"):
        index([str(DOCS)], store=store, id_field="doc_id")
    with pytest.raises(UsageError, match="--level episode indexes the store's episodes"):
        index([str(DOCS)], store=store, level="episode")
    with pytest.raises(UsageError, match="--level"):
        get_level("paragraph")
    with pytest.raises(UsageError, match="--variant"):
        index([], store=store, variant="bm42")


# --------------------------------------------------------------------------- units and links


def test_experience_units_of_every_kind_and_their_links(tmp_path):
    store = str(tmp_path / "lib.duckdb")
    s = index([str(UNITS)], store=store)
    assert (s.units_new, s.links, s.rejected) == (6, 2, 0)
    kinds = {r[0] for r in table(store, "SELECT kind FROM units")}
    assert kinds == {"insight", "behavior", "skill", "exemplar"}
    assert sorted(table(store, "SELECT src, dst, relation FROM unit_links")) == [
        ("u_sql_index", "u_sql_plan", "refines"), ("u_sql_star", "u_sql_plan", "contradicts")]
    # indexing the same units again keeps counters and links as they were
    s = index([str(UNITS)], store=store)
    assert (s.units_new, s.units_same, s.links) == (0, 6, 0)
    [(raw,)] = table(store, "SELECT stats FROM units WHERE unit_id = 'u_sql_index'")
    stats = orjson.loads(raw)
    assert stats["helpful"] == 9


def test_episode_and_step_levels_index_the_stores_episodes(tmp_path):
    from xpkit.core.ingest import ingest

    store = str(tmp_path / "ep.duckdb")
    eps = write(tmp_path / "eps.jsonl", [
        {"episode_id": "x", "task": "Open the red door", "steps": [
            {"role": "assistant", "kind": "thought", "content": "I should look around."},
            {"role": "assistant", "kind": "action", "content": "look"},
            {"role": "environment", "kind": "observation", "content": "A red door is locked."},
            {"role": "assistant", "kind": "action", "content": "use key on door"},
            {"role": "environment", "kind": "observation", "content": "The door opens."}],
         "outcome": {"success": True}}])
    ingest([eps], format="episode", store=store)
    index([], store=store, level="episode")
    s = index([], store=store, level="step")
    assert s.sync.added == 2
    with duckdb.connect(store, read_only=True) as con:
        lvl = get_level("step")
        rows = con.execute(f"SELECT key, text, thought, result FROM ({lvl.source()}) "
                           "ORDER BY key").fetchall()
        n, _ = input_hash(con, lvl)
    assert n == 2
    assert rows[0][1] == "Open the red door" and rows[0][2] == "I should look around."
    assert rows[1][1] == "A red door is locked." and rows[1][3] == "The door opens."


def test_a_killed_index_run_leaves_the_store_unchanged(tmp_path, monkeypatch):
    import xpkit.core.index as mod

    store = docs_index(tmp_path)
    before = table(store, "SELECT count(*) FROM index_postings")

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(mod, "sync_index", boom)
    more = write(tmp_path / "more.jsonl", [{"doc_id": "z", "body": "zebra"}])
    with pytest.raises(RuntimeError):
        index([more], store=store, id_field="doc_id", text_field="body")
    assert table(store, "SELECT count(*) FROM units WHERE unit_id = 'z'") == [(0,)]
    assert table(store, "SELECT count(*) FROM index_postings") == before
    assert table(store, "SELECT status FROM runs ORDER BY started_at DESC LIMIT 1") == [
        ("failed",)]


def test_store_from_an_older_xpkit_is_migrated(tmp_path):
    """A store made before the index tables existed gains them on the next write."""
    from xpkit.core.store import Store

    store = str(tmp_path / "old.duckdb")
    with store_made_before(store, "m002_index_tables"):
        pass
    with Store.open(store) as db:
        names = {r[0] for r in db.con.execute("SELECT name FROM _migrations").fetchall()}
    assert {"m002_index_tables", "m003_unit_links"} <= names
