"""``xpkit index`` through the real CLI: files and stdin, summaries on stderr, exit codes."""

from __future__ import annotations

import duckdb
import pytest

from tests.conftest import FIXTURES

DOCS = FIXTURES / "docs_small.jsonl"
UNITS = FIXTURES / "units_small.jsonl"


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_index_documents_from_a_file_or_stdin(xpkit, tmp_path, via):
    store = str(tmp_path / "lib.duckdb")
    args = ["index", "--store", store, "--id", "doc_id", "--text", "body"]
    r = (xpkit(*args, str(DOCS)) if via == "file"
         else xpkit(*args, "-", input=DOCS.read_bytes()))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b""  # stdout carries data only, and index writes none
    err = r.stderr.decode()
    assert "index: 6 records read: 6 new units, 0 updated, 0 unchanged, 0 links, 0 rejected" in err
    assert "index: unit index has 6 entries (6 added, 0 removed)" in err
    with duckdb.connect(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM units WHERE kind = 'document'").fetchone() == (6,)


def test_index_units_from_a_pipe(xpkit, tmp_path):
    store = str(tmp_path / "lib.duckdb")
    r = xpkit("index", "--store", store, input=UNITS.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    assert "6 new units" in r.stderr.decode() and "2 links" in r.stderr.decode()


def test_index_usage_errors_exit_2(xpkit, tmp_path):
    store = str(tmp_path / "lib.duckdb")
    r = xpkit("index", str(DOCS), "--store", store, "--id", "doc_id")
    assert r.returncode == 2
    assert "Error: --id and --text go together" in r.stderr.decode()
    r = xpkit("index", str(DOCS))
    assert r.returncode == 2 and "--store" in r.stderr.decode()


def test_index_strict_rejection_exits_1_and_changes_nothing(xpkit, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(DOCS.read_bytes() + b'{"doc_id": "x"}\nnot json\n')
    store = str(tmp_path / "lib.duckdb")
    r = xpkit("index", str(bad), "--store", store, "--id", "doc_id", "--text", "body",
              "--strict")
    assert r.returncode == 1
    assert "2 record(s) rejected" in r.stderr.decode()
    with duckdb.connect(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM units").fetchone() == (0,)
