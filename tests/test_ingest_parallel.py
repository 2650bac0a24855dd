"""Large inputs are parsed by worker processes: the results must equal one process's, byte for
byte, including line numbers in the quarantine, duplicate counts and output order."""

from __future__ import annotations

import random

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import xpkit.core.ingest as ingest_mod
from xpkit.core.io import RecordWriter, read_jsonl_range, read_rows, resolve_inputs
from xpkit.core.records import (
    episode_arrow_schema,
    episode_for_arrow,
    episodes_to_arrow,
    make_episode,
    make_step,
)


def chat_record(i: int, rnd: random.Random) -> dict:
    turns = [{"role": "user", "content": f"Question {i % 37}: what is {rnd.randint(0, 9)}?"}]
    for k in range(rnd.randint(1, 4)):
        turns.append({"role": "assistant",
                      "content": f"Thought: step {k}\nAction: search[item {i % 11}]"})
        turns.append({"role": "user", "content": f"Observation: result {k}\nmore text"})
    turns.append({"role": "assistant", "content": "Thought: done\nAction: finish[yes]"})
    return {"id": f"r{i % 900}", "messages": turns}  # ids repeat: some exact duplicates


def messy_jsonl(path, n: int = 1500, seed: int = 7):
    """Chat records mixed with every kind of bad line, a BOM, CRLF and no final newline."""
    rnd = random.Random(seed)
    lines = [b"\xef\xbb\xbf" + orjson.dumps(chat_record(0, rnd))]
    for i in range(1, n):
        r = rnd.random()
        if r < 0.03:
            lines.append(b'{"messages": [truncated')
        elif r < 0.05:
            lines.append(b"   " if r < 0.04 else b"")
        elif r < 0.06:
            lines.append(b"[1, 2]")
        elif r < 0.07:
            lines.append(b'{"messages": "not a list"}')
        elif r < 0.08:
            lines.append(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')
        elif r < 0.09:
            lines.append(orjson.dumps(chat_record(i, rnd)) + b"\r")
        elif r < 0.10:
            lines.append(orjson.dumps({"messages": [{"role": "user", "content": "x" * 20000}]}))
        else:
            lines.append(orjson.dumps(chat_record(i, rnd)))
    path.write_bytes(b"\n".join(lines))
    return path


def run_ingest(tmp_path, src, tag: str, workers: int):
    out = tmp_path / f"{tag}.parquet"
    store = tmp_path / f"{tag}.duckdb"
    rejects = tmp_path / f"{tag}.rejects.jsonl"
    writer = RecordWriter(str(out), arrow_schema=episode_arrow_schema(),
                          arrow_transform=episode_for_arrow)
    summary = ingest_mod.ingest([str(src)], store=str(store), rejects=str(rejects),
                                arrow_sink=writer.write_arrow, workers=workers)
    writer.close()
    con = duckdb.connect(str(store), read_only=True)
    rows = (con.execute("SELECT * EXCLUDE (run_id) FROM episodes ORDER BY source_line").fetchall(),
            con.execute("SELECT * FROM steps ORDER BY episode_id, step").fetchall())
    con.close()
    entries = ([{k: v for k, v in orjson.loads(line).items() if k != "run_id"}
                for line in rejects.read_bytes().splitlines()] if rejects.exists() else [])
    return summary.counts(), pq.read_table(out), rows, entries


@pytest.mark.parametrize("chunk", [997, 64 << 10])
def test_workers_give_the_same_results_as_one_process(tmp_path, monkeypatch, chunk):
    src = messy_jsonl(tmp_path / "in.jsonl")
    monkeypatch.setattr(ingest_mod, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(ingest_mod, "CHUNK_BYTES", chunk)
    one = run_ingest(tmp_path, src, "one", workers=1)
    two = run_ingest(tmp_path, src, "two", workers=2)
    assert one[0] == two[0]
    assert one[0]["duplicates"] > 0 and one[0]["rejected"] > 0
    assert one[1].equals(two[1], check_metadata=True)
    assert one[2] == two[2]
    assert one[3] == two[3]
    lines = src.read_bytes().split(b"\n")  # each quarantined entry names its own line
    for entry in two[3]:
        line = lines[entry["line"] - 1]
        if "record" in entry:
            assert orjson.loads(line) == entry["record"]
        elif "raw" in entry:
            assert line.decode() == entry["raw"]


def test_byte_ranges_read_every_line_once_with_its_number(tmp_path):
    src = messy_jsonl(tmp_path / "in.jsonl", n=400)
    (source,) = resolve_inputs([str(src)])
    whole = [row for batch in read_rows(source) for row in batch]
    size = src.stat().st_size
    for step in (1, 50, 4096, size):
        rows, before = [], 0
        for start in range(0, size, step):
            part, lines = read_jsonl_range(str(src), str(src), start, start + step)
            rows += [(r.line + before, r.value, r.error, r.raw) for batch in part for r in batch]
            before += lines
        assert rows == [(r.line, r.value, r.error, r.raw) for r in whole]


def test_columnar_arrow_equals_the_general_conversion():
    steps = [make_step("user", "message", "hi"),
             make_step("assistant", "action", "search[x]", name="search", args={"q": [1, 2]}),
             make_step("tool", "observation", "", name="t", args=None)]
    eps = [make_episode(task="t", steps=steps, meta={"k": "v"}),
           make_episode(task=None, steps=steps[:1], model="m", answer=3),
           {**make_episode(task="u", steps=[]), "source": None, "outcome": None}]
    eps[0]["source"] = {"format": "f", "file": "a.jsonl", "line": 3}
    general = pa.Table.from_pylist([episode_for_arrow(e) for e in eps],
                                   schema=episode_arrow_schema())
    assert episodes_to_arrow(eps).equals(general, check_metadata=True)
