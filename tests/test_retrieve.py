"""``xpkit.core.retrieve``: budgets, selectivity, filters, utility, MMR, links, templates."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURES
from xpkit.core.errors import UsageError
from xpkit.core.filters import compile_where
from xpkit.core.index import get_level, index
from xpkit.core.retrieve import Library, Options, mmr_order, retrieve, retrieve_batch, utility_of
from xpkit.core.show import NotFoundError, show
from xpkit.core.tokens import count_tokens

UNITS = FIXTURES / "units_small.jsonl"
DOCS = FIXTURES / "docs_small.jsonl"
SQL_Q = "my SQL query with a join is slow"


def write(path: Path, records: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def units_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    store = str(tmp_path_factory.mktemp("units") / "lib.duckdb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XPKIT_HOME", str(tmp_path_factory.mktemp("home")))
        index([str(UNITS)], store=store)
    return store


def run(store: str, tmp_path: Path, queries: list[dict], **kw) -> list[dict]:
    out: list[dict] = []
    retrieve([write(tmp_path / "q.jsonl", queries)], store=store, sink=out.extend, **kw)
    return out


def opts(**kw) -> Options:
    base = dict(mode="bm25", k=5, pool=50, min_score=None, mmr=None, budget_tokens=None,
                utility=False, model=None, template="plain", follow=[],
                hnsw_threshold=100_000)
    return Options(**{**base, **kw})


# --------------------------------------------------------------------------- basics


def test_retrieval_record_shape(units_store, tmp_path):
    [rec] = run(units_store, tmp_path, [{"task": SQL_Q, "id": 7}], utility=False)
    assert rec["id"] == 7 and rec["task"] == SQL_Q
    hits = rec["hits"]
    assert hits and {h["unit_id"] for h in hits} <= {"u_sql_index", "u_sql_plan", "u_sql_star"}
    h = hits[0]
    assert set(h) >= {"unit_id", "score", "components", "content", "tokens", "kind", "rank"}
    assert h["components"]["bm25"] == h["score"] and 0 < h["components"]["bm25_norm"] <= 1
    assert [x["rank"] for x in hits] == list(range(1, len(hits) + 1))
    assert rec["context"].startswith("Relevant experience:\n\n1. [")
    assert rec["context_tokens"] == count_tokens(rec["context"])
    assert rec["_retrieve"]["in_scope"] is True and rec["_retrieve"]["mode"] == "bm25"


def test_query_field_and_text_option(units_store, tmp_path):
    out = run(units_store, tmp_path, [{"query": SQL_Q}, {"text": SQL_Q},
                                      {"prompt": {"body": SQL_Q}}], text_field=None)
    assert len(out) == 2  # the third has no task/query/text and is quarantined
    out = run(units_store, tmp_path, [{"prompt": {"body": SQL_Q}}], text_field="prompt.body")
    assert out[0]["hits"]


def test_empty_library_gives_empty_context_not_an_error(tmp_path):
    from xpkit.core.store import Store

    store = str(tmp_path / "empty.duckdb")
    Store.open(store).close()
    [rec] = run(store, tmp_path, [{"task": "anything"}])
    assert rec["hits"] == [] and rec["context"] == "" and rec["context_tokens"] == 0
    assert rec["_retrieve"]["reason"] == "the library is empty"


def test_query_of_only_stopwords(units_store, tmp_path):
    [rec] = run(units_store, tmp_path, [{"task": "the and of a to is it"}])
    assert rec["hits"] == [] and rec["context"] == ""
    assert rec["_retrieve"]["in_scope"] is False
    assert "no searchable terms" in rec["_retrieve"]["reason"]


def test_out_of_scope_query_gets_no_context_and_says_so(units_store, tmp_path):
    q = [{"task": "what is the capital of Mongolia"},
         {"task": "How to retry an HTTP request after a timeout"}]
    out = run(units_store, tmp_path, q, min_score=0.3)
    assert out[0]["hits"] == [] and out[0]["context"] == "" and out[0]["context_tokens"] == 0
    assert out[0]["_retrieve"]["in_scope"] is False
    assert "reason" in out[0]["_retrieve"]
    assert out[1]["hits"][0]["unit_id"] == "u_retry"
    assert all(h["components"]["bm25_norm"] >= 0.3 for h in out[1]["hits"])
    # a threshold nothing reaches: out of scope, and the reason names the best relevance
    [rec] = run(units_store, tmp_path, q[1:], min_score=0.99)
    assert rec["hits"] == [] and "< --min-score 0.99" in rec["_retrieve"]["reason"]


# --------------------------------------------------------------------------- budget


@pytest.fixture
def lib(units_store):
    lib = Library.open(units_store)
    yield lib
    lib.close()


QUERY_WORDS = ["sql", "slow", "query", "join", "index", "traceback", "test", "http", "retry",
               "flight", "book", "plan", "columns", "the", "fails"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(min_value=0, max_value=400),
       words=st.lists(st.sampled_from(QUERY_WORDS), min_size=1, max_size=6),
       template=st.sampled_from(["plain", "markdown", "chat"]),
       k=st.integers(min_value=1, max_value=8))
def test_budget_is_never_exceeded(lib, budget, words, template, k):
    [rec] = retrieve_batch(lib, [{"task": " ".join(words)}], [" ".join(words)],
                           opts(budget_tokens=budget, template=template, k=k), None, False)
    assert rec["context_tokens"] <= budget
    assert len(rec["hits"]) <= k
    if template == "chat":
        recount = sum(count_tokens(m["content"]) + 4 for m in rec["context"])
    else:
        recount = count_tokens(rec["context"]) if rec["context"] else 0
    assert rec["context_tokens"] == recount
    if not rec["hits"]:
        assert rec["context"] in ("", [])


def test_budget_packs_a_varying_number_of_units(lib):
    """DynaICL: the number of units follows the budget, not a fixed k."""
    counts = []
    for budget in (30, 80, 160, 1000):
        [rec] = retrieve_batch(lib, [{"task": SQL_Q}], [SQL_Q],
                               opts(budget_tokens=budget, k=50), None, False)
        counts.append(len(rec["hits"]))
        assert rec["context_tokens"] <= budget
    assert counts == sorted(counts) and counts[0] < counts[-1]
    [rec] = retrieve_batch(lib, [{"task": SQL_Q}], [SQL_Q], opts(budget_tokens=5), None, False)
    assert rec["hits"] == [] and "fits --budget-tokens 5" in rec["_retrieve"]["reason"]


# --------------------------------------------------------------------------- filters


def test_kind_tag_and_where_filters(units_store, tmp_path):
    q = [{"task": SQL_Q}]
    [rec] = run(units_store, tmp_path, q, kind=["behavior"])
    assert [h["unit_id"] for h in rec["hits"]] == ["u_sql_star"]
    [rec] = run(units_store, tmp_path, q, tag=["performance"])
    assert [h["unit_id"] for h in rec["hits"]] == ["u_sql_index"]
    [rec] = run(units_store, tmp_path, q, where="polarity = 'avoid' or title like '%plan%'")
    assert {h["unit_id"] for h in rec["hits"]} == {"u_sql_star", "u_sql_plan"}
    [rec] = run(units_store, tmp_path, q, where="stats.helpful >= 5")
    assert [h["unit_id"] for h in rec["hits"]] == ["u_sql_index"]
    [rec] = run(units_store, tmp_path, q, where="kind in ('skill', 'exemplar')")
    assert rec["hits"] == []


@pytest.mark.parametrize("bad", [
    "kind = 'x'; DROP TABLE units",
    "kind = 'x' or 1=1 --",
    "read_csv('/etc/passwd')",
    "kind = 'x') UNION SELECT unit_id FROM units --",
    "__import__('os').system('true')",
    "content = 'a' or 1",
    "secret_column = 1",
    "kind =",
    "",
])
def test_where_injection_attempts_are_rejected_cleanly(units_store, tmp_path, bad):
    with pytest.raises(UsageError, match="--where"):
        run(units_store, tmp_path, [{"task": SQL_Q}], where=bad)
    with duckdb.connect(units_store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM units").fetchone()[0] == 6


def test_where_values_are_bound_not_pasted():
    sql, params = compile_where("title = 'x'' OR ''1''=''1' and meta.a.b > 3",
                                get_level("unit").fields, {"meta", "stats", "provenance"})
    assert "'" not in sql and "OR" not in sql
    assert params == ["x' OR '1'='1", "$.a.b", 3]


# --------------------------------------------------------------------------- utility, MMR


def test_utility_prior_reranks_by_measured_helpfulness(units_store, tmp_path):
    q = [{"task": "slow SQL query"}]
    [plain] = run(units_store, tmp_path, q, utility=False)
    [used] = run(units_store, tmp_path, q)
    rank = {h["unit_id"]: h["rank"] for h in used["hits"]}
    plain_rank = {h["unit_id"]: h["rank"] for h in plain["hits"]}
    assert rank["u_sql_index"] < rank["u_sql_star"]  # 9 helpful vs 8 harmful
    assert rank["u_sql_star"] >= plain_rank["u_sql_star"]
    comp = next(h for h in used["hits"] if h["unit_id"] == "u_sql_star")["components"]
    assert comp["utility"] == pytest.approx(1 / 10) and comp["utility_n"] == 8
    # model-aware: for "small" the index insight was harmful 6 times
    [small] = run(units_store, tmp_path, q, model="small")
    comp = next(h for h in small["hits"] if h["unit_id"] == "u_sql_index")["components"]
    assert comp["utility"] == pytest.approx(1 / 8)


def test_utility_of_counts():
    assert utility_of(None, None) == (0.5, 0)
    assert utility_of({"helpful": 3, "harmful": 1}, None) == (4 / 6, 4)
    per = {"helpful": 0, "harmful": 0, "per_model": {"m": {"helpful": 2, "harmful": 0}}}
    assert utility_of(per, "m") == (3 / 4, 2)
    assert utility_of(per, "other") == (0.5, 0)


def test_mmr_prefers_novel_items():
    import numpy as np

    rel = np.array([1.0, 0.99, 0.5], np.float32)
    sim = np.array([[1, 0.95, 0], [0.95, 1, 0], [0, 0, 1]], np.float32)
    assert [i for i, _ in mmr_order(rel, sim, 1.0, 3)] == [0, 1, 2]
    assert [i for i, _ in mmr_order(rel, sim, 0.5, 3)] == [0, 2, 1]


def test_mmr_option_diversifies_with_bm25_vectors(units_store, tmp_path):
    [rec] = run(units_store, tmp_path, [{"task": SQL_Q}], mmr=0.3, k=3)
    assert all("mmr" in h["components"] for h in rec["hits"])
    with pytest.raises(UsageError, match="--mmr"):
        run(units_store, tmp_path, [{"task": SQL_Q}], mmr=1.5)


# --------------------------------------------------------------------------- links, show


def test_follow_adds_linked_units(units_store, tmp_path):
    [rec] = run(units_store, tmp_path, [{"task": "index the join column"}], k=1,
                follow=["refines"], kind=["insight"], where="unit_id = 'u_sql_index'")
    ids = [h["unit_id"] for h in rec["hits"]]
    assert ids == ["u_sql_index", "u_sql_plan"]
    assert rec["hits"][1]["components"]["via"] == {"relation": "refines", "from": "u_sql_index"}


def test_show_dereferences_units_episodes_and_steps(tmp_path):
    from xpkit.core.ingest import ingest

    store = str(tmp_path / "s.duckdb")
    eps = write(tmp_path / "e.jsonl", [{"task": "t", "steps": [
        {"role": "user", "kind": "message", "content": "hi"},
        {"role": "assistant", "kind": "action", "content": "act"},
        {"role": "environment", "kind": "observation", "content": "obs"}],
        "outcome": {"success": True}}])
    ingest([eps], format="episode", store=store)
    with duckdb.connect(store) as con:
        eid = con.execute("SELECT episode_id FROM episodes").fetchone()[0]
    unit = {"unit_id": "u1", "kind": "insight", "content": "c",
            "evidence": [{"episode_id": eid, "steps": [1]}, {"episode_id": "ep_gone"}],
            "links": [{"relation": "derived-from", "dst": "u0"}]}
    index([write(tmp_path / "u.jsonl", [unit])], store=store)
    rec = show(store, "u1", around=0)
    assert rec["type"] == "unit" and rec["unit"]["content"] == "c"
    assert rec["evidence"][0]["episode_id"] == eid
    assert [s["step"] for s in rec["evidence"][0]["steps"]] == [1]
    assert rec["evidence"][1] == {"episode_id": "ep_gone", "missing": True}
    assert rec["links"] == [{"src": "u1", "dst": "u0", "relation": "derived-from",
                             "direction": "out"}]
    ep = show(store, eid)
    assert ep["type"] == "episode" and len(ep["episode"]["steps"]) == 3
    step = show(store, f"{eid}#2", around=1)
    assert [s["step"] for s in step["episode"]["steps"]] == [1, 2]
    with pytest.raises(NotFoundError, match="no unit or episode 'nope'"):
        show(store, "nope")
    with pytest.raises(NotFoundError, match="no step"):
        show(store, f"{eid}#9")


# --------------------------------------------------------------------------- templates


def test_templates(units_store, tmp_path):
    q = [{"task": "retry an http request"}]
    [plain] = run(units_store, tmp_path, q, template="plain", k=1)
    assert plain["context"].startswith("Relevant experience:\n\n1. [skill] Retry with backoff\n"
                                       "When: an HTTP request fails")
    [md] = run(units_store, tmp_path, q, template="markdown", k=1)
    assert md["context"].startswith("## Relevant experience\n\n### 1. Retry with backoff (skill)")
    [chat] = run(units_store, tmp_path, q, template="chat", k=1)
    assert chat["context"][0]["role"] == "system"
    assert "### 1. Retry with backoff" in chat["context"][0]["content"]
    with pytest.raises(UsageError, match="--template"):
        run(units_store, tmp_path, q, template="html")


# --------------------------------------------------------------------------- streaming


def test_10k_queries_stream_with_bounded_memory(tmp_path):
    store = str(tmp_path / "lib.duckdb")
    index([str(DOCS)], store=store, id_field="doc_id", text_field="body")
    words = ["cat", "interest", "bread", "park", "inflation", "salt", "the", "garden"]
    path = tmp_path / "q.jsonl"
    with open(path, "wb") as f:
        for i in range(10_000):
            f.write(orjson.dumps({"i": i, "task": f"{words[i % 8]} {words[(i * 3) % 8]}"}) + b"\n")
    sizes: list[int] = []
    seen = 0

    def sink(batch: list[dict]) -> None:
        nonlocal seen
        sizes.append(len(batch))
        seen += len(batch)

    tracemalloc.start()
    s = retrieve([str(path)], store=store, sink=sink, batch_size=500, k=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == s.queries == 10_000 and max(sizes) == 500
    assert peak < 40 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
