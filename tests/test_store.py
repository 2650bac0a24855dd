"""core/store.py: migrations, offline extensions, transactions."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, store_made_before
from xpkit.core.errors import UsageError
from xpkit.core.store import MIGRATIONS, Store


def test_new_store_is_migrated_once(tmp_path):
    path = str(tmp_path / "s.duckdb")
    with Store.open(path) as s:
        applied = s.con.execute("SELECT name FROM _migrations").fetchall()
        tables = {r[0] for r in s.con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}
    assert [a[0] for a in applied] == [m.__name__ for m in MIGRATIONS]
    assert {"episodes", "steps", "units", "runs"} <= tables
    with Store.open(path) as s:
        assert s.migrate() == []


def test_steps_of_an_older_store_survive_the_migration_that_drops_their_key(tmp_path):
    """m005 rebuilds ``steps`` without its primary key: every step stays, in order."""
    from xpkit.core.ingest import ingest

    current, old = str(tmp_path / "current.duckdb"), str(tmp_path / "old.duckdb")
    ingest([str(REPO / "examples/data/tau_bench_airline_sample.jsonl")], store=current)
    with store_made_before(old, "m005_steps_without_key") as con:  # holding the same rows
        con.execute(f"ATTACH '{current}' AS cur (READ_ONLY)")
        con.execute("INSERT INTO episodes SELECT * FROM cur.episodes")
        con.execute("INSERT INTO steps SELECT * FROM cur.steps ORDER BY random()")
        keys = "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'steps' " \
               "AND constraint_type = 'PRIMARY KEY'"
        assert con.execute(keys).fetchone() == (1,)
    with Store.open(current, read_only=True) as db:
        expected = db.episodes()
    with Store.open(old) as db:
        assert db.con.execute(keys).fetchone() == (0,)
        assert db.episodes() == expected
    assert sum(len(e["steps"]) for e in expected) > len(expected) > 0


@pytest.mark.parametrize("ext", ["fts", "vss"])
def test_extensions_load_offline_from_pip_packages(tmp_path, ext):
    with Store.open(str(tmp_path / "s.duckdb")) as s:
        s.load_extension(ext)
        loaded = s.con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?",
                               [ext]).fetchone()
    assert loaded == (True,)


def test_fts_works_after_offline_load(tmp_path):
    with Store.open(str(tmp_path / "s.duckdb")) as s:
        s.load_extension("fts")
        s.con.execute("CREATE TABLE docs (id VARCHAR, body VARCHAR)")
        s.con.execute("INSERT INTO docs VALUES ('a', 'book a flight'), ('b', 'cancel a hotel')")
        s.con.execute("PRAGMA create_fts_index('docs', 'id', 'body')")
        hit = s.con.execute("SELECT id FROM (SELECT id, fts_main_docs.match_bm25(id, 'flight') "
                            "AS score FROM docs) WHERE score IS NOT NULL").fetchall()
    assert hit == [("a",)]


def test_transaction_rolls_back_on_error(tmp_path):
    with Store.open(str(tmp_path / "s.duckdb")) as s:
        with pytest.raises(RuntimeError), s.transaction():
            s.con.execute("INSERT INTO units (unit_id, kind) VALUES ('u1', 'insight')")
            raise RuntimeError("boom")
        assert s.con.execute("SELECT count(*) FROM units").fetchone() == (0,)


def test_read_only_open_of_missing_store_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such store"):
        Store.open(str(tmp_path / "nope.duckdb"), read_only=True)


def test_store_must_be_a_duckdb_file(tmp_path):
    with pytest.raises(UsageError, match=r"expected a \.duckdb file"):
        Store.open(str(tmp_path / "lib.sqlite"))
