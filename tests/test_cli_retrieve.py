"""``xpkit retrieve`` and ``xpkit show`` through the real CLI."""

from __future__ import annotations

import shutil

import duckdb
import orjson
import pytest

from tests.conftest import FIXTURES

UNITS = FIXTURES / "units_small.jsonl"
QUERIES = [{"task": "my SQL query with a join is slow"}, {"query": "http timeout retry"},
           {"task": "the of and"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from xpkit.core.index import index

    path = str(tmp_path_factory.mktemp("cli") / "lib.duckdb")
    index([str(UNITS)], store=path)  # built in-process: the CLI of index has its own tests
    return path


@pytest.fixture
def store(built, tmp_path):
    path = tmp_path / "lib.duckdb"
    shutil.copy(built, path)
    return str(path)


def _queries(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_bytes(b"".join(orjson.dumps(q) + b"\n" for q in QUERIES))
    return p


def test_stdin_and_file_give_the_same_records_on_stdout(xpkit, store, tmp_path):
    q = _queries(tmp_path)
    a = xpkit("retrieve", str(q), "--store", store, "-k", "2", "--budget-tokens", "120")
    b = xpkit("retrieve", "--store", store, "-k", "2", "--budget-tokens", "120",
              input=q.read_bytes())
    assert a.returncode == 0 and b.returncode == 0, a.stderr.decode() + b.stderr.decode()
    assert a.stdout == b.stdout
    recs = [orjson.loads(x) for x in a.stdout.splitlines()]  # stdout is JSONL and nothing else
    assert len(recs) == 3
    assert all(r["context_tokens"] <= 120 and len(r["hits"]) <= 2 for r in recs)
    assert recs[1]["hits"][0]["unit_id"] == "u_retry"
    assert recs[2]["hits"] == [] and recs[2]["_retrieve"]["in_scope"] is False
    assert "retrieve: 3 queries (bm25): 2 with context, 1 empty, 0 rejected" in a.stderr.decode()
    with duckdb.connect(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE command = 'retrieve' "
                           "AND status = 'ok'").fetchone() == (2,)
    assert b"Error" not in a.stderr


def test_output_file_and_template(xpkit, store, tmp_path):
    out = tmp_path / "out.jsonl"
    r = xpkit("retrieve", str(_queries(tmp_path)), "--store", store, "-o", str(out),
              "--template", "chat", "--kind", "skill")
    assert r.returncode == 0 and r.stdout == b""
    recs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert recs[1]["context"][0]["role"] == "system" and recs[0]["context"] == []


def test_stale_index_exits_1_with_the_fix(xpkit, store, tmp_path):
    with duckdb.connect(store) as con:
        con.execute("DELETE FROM units WHERE unit_id = 'u_retry'")
    q = _queries(tmp_path)
    r = xpkit("retrieve", str(q), "--store", store)
    assert r.returncode == 1 and r.stdout == b""
    assert "the unit index is stale" in r.stderr.decode() and "--refresh" in r.stderr.decode()
    r = xpkit("retrieve", str(q), "--store", store, "--refresh")
    assert r.returncode == 0, r.stderr.decode()
    assert all(h["unit_id"] != "u_retry" for x in r.stdout.splitlines()
               for h in orjson.loads(x)["hits"])


def test_usage_errors_exit_2(xpkit, store, tmp_path):
    q = str(_queries(tmp_path))
    r = xpkit("retrieve", q, "--store", store, "--where", "kind = 'x'; DROP TABLE units")
    assert r.returncode == 2 and "Error: --where: cannot read" in r.stderr.decode()
    r = xpkit("retrieve", q, "--store", store, "--mode", "sparse")
    assert r.returncode == 2 and "--mode sparse" in r.stderr.decode()
    r = xpkit("retrieve", q, "--store", str(tmp_path / "none.duckdb"))
    assert r.returncode == 2 and "no such store" in r.stderr.decode()


def test_show(xpkit, store):
    r = xpkit("show", "u_sql_index", "--store", store)
    assert r.returncode == 0, r.stderr.decode()
    rec = orjson.loads(r.stdout)
    assert rec["type"] == "unit" and rec["unit"]["kind"] == "insight"
    assert rec["evidence"] == [{"episode_id": "ep_demo", "missing": True}]
    assert {"src": "u_sql_index", "dst": "u_sql_plan", "relation": "refines",
            "direction": "out"} in rec["links"]
    r = xpkit("show", "nope", "--store", store)
    assert r.returncode == 1 and "has no unit or episode 'nope'" in r.stderr.decode()
