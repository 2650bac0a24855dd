"""The fast paths of large ingests give what the plain paths give, byte for byte.

Oracles: the straightforward implementations the fast code replaced (store rows built from
episode dicts, Arrow columns built row by row), and the one-process path against worker
processes on real data.
"""

from __future__ import annotations

import gzip
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xpkit.core.ingest as ingest_mod
from tests.test_ingest_parallel import run_ingest
from xpkit.core.records import (
    episode_arrow_schema,
    episode_for_arrow,
    episodes_to_arrow,
    make_episode,
    make_step,
)

# --------------------------------------------------------------------------- columns


def sample_episodes() -> list[dict[str, Any]]:
    steps = [make_step("user", "message", "hi"),
             make_step("assistant", "action", "search[x]", name="search", args={"q": [1, 2]}),
             make_step("tool", "observation", "", name="t")]
    eps = [make_episode(task="t", steps=steps, meta={"k": "v", "n": [1.5, None]}),
           make_episode(task=None, steps=steps[:1], model="m", answer=3,
                        outcome={"success": True, "reward": 1.0, "score": None}),
           make_episode(task="u", steps=[], reference="r")]
    for i, ep in enumerate(eps):
        ep["source"] = {"format": "f", "file": "a.jsonl", "line": 3 + i}
    return eps


def test_an_episode_of_unexpected_shape_takes_the_general_route():
    odd = [{**ep, "steps": [{k: v for k, v in s.items() if k != "content"} for s in ep["steps"]]}
           for ep in sample_episodes()]
    general = pa.Table.from_pylist([episode_for_arrow(e) for e in odd],
                                   schema=episode_arrow_schema())
    assert episodes_to_arrow(odd).equals(general, check_metadata=True)


def reference_store_rows(eps: list[dict[str, Any]], run_id: str) -> tuple[list, list]:
    episodes = [(ep["episode_id"], ep["source"]["format"], ep["source"]["file"],
                 ep["source"]["line"], ep["task"], ep["outcome"]["success"],
                 ep["outcome"]["reward"], ep["outcome"]["score"], ep["answer"],
                 ep["reference"], ep["model"], orjson.dumps(ep["meta"]).decode(),
                 len(ep["steps"]), run_id) for ep in eps]
    steps = [(ep["episode_id"], i, s["role"], s["kind"], s["content"], s.get("name"),
              orjson.dumps(s["args"]).decode() if "args" in s else None)
             for ep in eps for i, s in enumerate(ep["steps"])]
    return episodes, steps


@pytest.mark.parametrize(("start", "stop"), [(0, 3), (1, 3), (1, 2), (2, 3)])
def test_store_rows_from_the_arrow_table(start, stop):
    eps = sample_episodes()
    ep_table, st_table = ingest_mod._store_tables(
        episodes_to_arrow(eps).slice(start, stop - start), "run_1")
    want = reference_store_rows(eps[start:stop], "run_1")
    rows = [tuple(r.values()) for r in ep_table.to_pylist()]
    assert rows == want[0]
    assert [tuple(r.values()) for r in st_table.to_pylist()] == want[1]


def test_seen_keys_are_compact_and_never_merge_distinct_ids():
    eid = make_episode(task="t", steps=[])["episode_id"]
    assert isinstance(ingest_mod._seen_key(eid), int)
    others = [eid.upper().replace("EP_", "ep_"), "ep_0x" + eid[5:], "ep_" + eid[3:-1],
              "ep_" + eid[3:7] + "_" + eid[8:], "ep_+" + eid[4:], "xx_" + eid[3:], "ep_ " + eid[4:]]
    keys = {ingest_mod._seen_key(e) for e in [eid, *others]}
    assert len(keys) == 1 + len(others)
    assert all(ingest_mod._seen_key(e) == e for e in others if e != eid)
    assert all(ingest_mod._id_of(ingest_mod._seen_key(e)) == e for e in [eid, *others])


# --------------------------------------------------------------------------- end to end


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["hotpotqa", "multitask_multimethod"])
def test_workers_equal_one_process_on_real_chat_logs(shared_data, tmp_path, monkeypatch, name):
    raw = gzip.decompress(
        (shared_data / f"fireact/data/finetune/gpt_format/{name}.jsonl.gz").read_bytes())
    # a few bad lines and a repeated one among the real ones, so that the quarantine and
    # the duplicate count are compared too
    lines = raw.splitlines()
    lines[3:3] = [b'{"messages": [trunc', b"", b'{"messages": 5}']
    lines.append(lines[10])
    src = tmp_path / f"{name}.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr(ingest_mod, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(ingest_mod, "CHUNK_BYTES", 256 << 10)
    one = run_ingest(tmp_path, src, "one", workers=1)
    two = run_ingest(tmp_path, src, "two", workers=2)
    assert one[0] == two[0] and one[0]["rejected"] == 2 and one[0]["duplicates"] > 0
    assert one[1].equals(two[1], check_metadata=True)
    assert one[2] == two[2]
    assert one[3] == two[3]
    # and the episodes are those the plain dict path gives
    eps: list[dict[str, Any]] = []
    ingest_mod.ingest([str(src)], sink=eps.extend, rejects=str(tmp_path / "r.jsonl"))
    assert episodes_to_arrow(eps).equals(two[1])


# --------------------------------------------------------------------------- the store


def test_store_memory_limit_follows_the_index(tmp_path):
    from xpkit.core.store import Store

    def limit(db: Store) -> float:
        value = db.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        number, unit = value.split()
        return float(number) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]

    with Store.open(str(tmp_path / "s.duckdb")) as db:
        db.con.execute("BEGIN TRANSACTION")
        out = ingest_mod._Outputs(db, "run_1", None, None)
        first = limit(db)
        assert first <= (ingest_mod.STORE_MEMORY_HEADROOM >> 20) + 2  # not 80% of RAM
        eps = []
        for i in range(20000):
            ep = make_episode(task=f"t{i}", steps=[make_step("user", "message", "x")])
            ep["source"] = {"format": "f", "file": "a", "line": i}
            eps.append(ep)
        out.episodes(eps)
        assert limit(db) >= first  # never lowered; raised as the index grows
        db.con.execute("ROLLBACK")


def test_a_failed_commit_reports_its_own_error(tmp_path, monkeypatch):
    from xpkit.core.store import Store

    class FailingCommit:
        def __init__(self, con: Any) -> None:
            self._con = con
            self.failed = False

        def execute(self, query: str, *args: Any) -> Any:
            if query == "COMMIT" and not self.failed:  # (the failed run's row commits)
                self.failed = True
                self._con.execute("ROLLBACK")
                raise duckdb.TransactionException("Failed to commit: out of memory")
            return self._con.execute(query, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._con, name)

    store = tmp_path / "s.duckdb"
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}) + b"\n")
    real_open = Store.open

    def failing_open(*args: Any, **kwargs: Any) -> Store:
        db = real_open(*args, **kwargs)
        db.con = FailingCommit(db.con)
        return db

    monkeypatch.setattr(Store, "open", failing_open)
    with pytest.raises(duckdb.TransactionException, match="out of memory"):
        ingest_mod.ingest([str(src)], store=str(store), rejects=str(tmp_path / "r.jsonl"))
    monkeypatch.setattr(Store, "open", real_open)
    with Store.open(str(store)) as db:
        assert db.con.execute("SELECT count(*) FROM episodes").fetchone()[0] == 0
        assert db.con.execute("SELECT status FROM runs").fetchall() == [("failed",)]


meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3) | st.integers(0, 9), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(meta=st.dictionaries(st.text(max_size=4) | st.integers(0, 9), meta_values, max_size=4))
def test_episode_ids_hash_the_canonical_json(meta):
    from xpkit.core.records import episode_id_for

    ep = make_episode(task="t", steps=[make_step("user", "message", "x")], meta=meta)
    assert ep["episode_id"] == episode_id_for(ep)
