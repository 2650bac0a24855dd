"""core/io.py: round trips that keep every field, streaming with bounded batches."""

from __future__ import annotations

import io
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpkit.core.errors import InputError, UsageError
from xpkit.core.io import RecordWriter, Source, read_records, read_rows, resolve_inputs

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
records = st.lists(st.dictionaries(st.sampled_from(["a", "b", "c", "id", "meta", "ü"]), values,
                                   max_size=5), min_size=1, max_size=12)


def write(path, recs):
    with RecordWriter(str(path)) as w:
        w.write_many(recs)


def read_all(path):
    out = []
    for batch in read_records([str(path)]):
        for row in batch:
            assert row.error is None, row.error
            out.append(row.value)
    return out


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records)
def test_jsonl_parquet_jsonl_keeps_every_field(tmp_path, recs):
    write(tmp_path / "a.jsonl", recs)
    first = read_all(tmp_path / "a.jsonl")
    write(tmp_path / "b.parquet", first)
    back = read_all(tmp_path / "b.parquet")
    # Same fields, values and JSON types (1 stays 1, not 1.0); key order is not kept by a
    # columnar format, so compare canonical (sorted-key) serialisations.
    canon = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in recs]
    assert [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in back] == canon


def test_parquet_keeps_native_types_where_consistent(tmp_path):
    import pyarrow.parquet as pq

    write(tmp_path / "t.parquet", [{"n": 1, "x": 1.5, "s": "a", "b": True, "nested": {"k": 1}},
                                   {"n": 2, "x": 2.5, "s": None, "b": False, "nested": {}}])
    schema = pq.read_schema(tmp_path / "t.parquet")
    assert [str(schema.field(c).type) for c in ("n", "x", "s", "b", "nested")] == [
        "int64", "double", "string", "bool", "string"]


def test_batches_stay_bounded(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(10_050)))
    sizes = [len(b) for b in read_records([str(path)], batch_size=1000)]
    assert max(sizes) == 1000 and sum(sizes) == 10_050


def test_stdin_is_sniffed_parquet(tmp_path, monkeypatch):
    write(tmp_path / "a.parquet", [{"a": 1}, {"a": 2}])
    fake = io.TextIOWrapper(io.BufferedReader(io.BytesIO((tmp_path / "a.parquet").read_bytes())))
    monkeypatch.setattr(sys, "stdin", fake)
    notices = []
    rows = [r for b in read_rows(Source(None, None, None), on_notice=notices.append) for r in b]
    assert [r.value for r in rows] == [{"a": 1}, {"a": 2}]
    assert notices == ["<stdin>: reading as parquet"]


def test_keyed_json_object_becomes_records(tmp_path):
    (tmp_path / "k.json").write_text('{"7": {"q": "a", "r": 1}, "9": {"q": "b", "r": 0}}')
    assert read_all(tmp_path / "k.json") == [{"_key": "7", "q": "a", "r": 1},
                                             {"_key": "9", "q": "b", "r": 0}]


def test_no_input_and_a_tty_is_a_usage_error():
    with pytest.raises(UsageError, match="No input"):
        resolve_inputs([], stdin_is_tty=True)


def test_unreadable_gzip_is_an_input_error(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match=r"broken.jsonl.gz: cannot be read"):
        list(read_records([str(path)]))


def test_failed_writer_leaves_no_file(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), RecordWriter(str(target)) as w:
        w.write({"a": 1})
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
