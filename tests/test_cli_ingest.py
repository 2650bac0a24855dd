"""``xpkit ingest`` through the real CLI: bad input it must survive, counts that add up."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from tests.conftest import REPO

ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    {"instruction": "Translate 'chat' to English.", "input": "French", "output": "cat"},
]
SUMMARY = re.compile(r"ingest: ([\d,]+) records read: ([\d,]+) episodes accepted, ([\d,]+) "
                     r"duplicates, ([\d,]+) rejected")


def counts(stderr: bytes) -> tuple[int, int, int, int]:
    m = SUMMARY.search(stderr.decode())
    assert m, stderr.decode()
    read, accepted, dups, rejected = (int(g.replace(",", "")) for g in m.groups())
    return read, accepted, dups, rejected


def jsonl(path: Path, records: list[dict], extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + extra)
    return path


def episodes(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def rejects(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_same_episodes_from_file_and_stdin(xpkit, tmp_path, via):
    src = jsonl(tmp_path / "a.jsonl", ALPACA)
    if via == "file":
        res = xpkit("ingest", str(src), cwd=tmp_path)
    else:
        res = xpkit("ingest", "--format", "alpaca", input=src.read_bytes(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    eps = episodes(res.stdout)  # stdout holds records only: every line parses
    assert [e["task"] for e in eps] == ["Add 2 and 3.", "Name a colour.",
                                       "Translate 'chat' to English.\n\nFrench"]
    assert eps[2]["answer"] == "cat"
    assert eps[0]["steps"] == [{"role": "user", "kind": "message", "content": "Add 2 and 3."},
                               {"role": "assistant", "kind": "message", "content": "5"}]
    assert all(e["episode_id"].startswith("ep_") for e in eps)
    assert counts(res.stderr) == (3, 3, 0, 0)


def test_ids_are_stable_and_duplicates_counted(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", [*ALPACA, ALPACA[0], ALPACA[1]])
    first = xpkit("ingest", str(src), cwd=tmp_path)
    second = xpkit("ingest", str(src), cwd=tmp_path)
    assert counts(first.stderr) == (5, 3, 2, 0)
    assert first.stdout == second.stdout


def test_truncated_last_line_and_bad_utf8_are_quarantined(xpkit, tmp_path):
    good = b"".join(orjson.dumps(r) + b"\n" for r in ALPACA)
    bad_utf8 = b'{"instruction": "caf\xe9", "input": "", "output": "x"}\n'
    truncated = b'{"instruction": "cut", "output": "y'
    src = tmp_path / "bad.jsonl"
    src.write_bytes(good[: good.index(b"\n") + 1] + bad_utf8 + good[good.index(b"\n") + 1:]
                    + truncated)
    res = xpkit("ingest", str(src), "--rejects", str(tmp_path / "q.jsonl"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert counts(res.stderr) == (5, 3, 0, 2)
    q = rejects(tmp_path / "q.jsonl")
    assert [(r["line"], r["file"]) for r in q] == [(2, str(src)), (5, str(src))]
    assert q[0]["reason"].startswith("invalid UTF-8")
    # never silently replaced: the original bytes are kept exactly
    import base64

    assert base64.b64decode(q[0]["raw_base64"]) == bad_utf8.rstrip(b"\n")
    assert q[1]["reason"].startswith("truncated JSON")
    assert q[1]["raw"] == truncated.decode()
    assert "\ufffd" not in res.stdout.decode()


def test_strict_turns_rejections_into_exit_1(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", ALPACA, extra=b"not json\n")
    res = xpkit("ingest", str(src), "--strict", "--store", str(tmp_path / "s.duckdb"),
                cwd=tmp_path)
    assert res.returncode == 1
    assert "1 record(s) rejected" in res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM episodes").fetchone()[0] == 0
    assert con.execute("SELECT status FROM runs").fetchall() == [("failed",)]


def test_missing_required_field_and_wrong_types_name_the_field(xpkit, tmp_path):
    recs = [*ALPACA, {"instruction": "no output here"}, {"instruction": ["a", "list"],
                                                         "output": "x"}]
    src = jsonl(tmp_path / "a.jsonl", recs)
    res = xpkit("ingest", str(src), "--format", "alpaca", cwd=tmp_path)
    assert counts(res.stderr) == (5, 3, 0, 2)
    q = rejects(tmp_path / "xpkit.rejects.jsonl")
    assert [(r["line"], r["field"]) for r in q] == [(4, "output"), (5, "instruction")]
    assert "expected text, found list" in q[1]["reason"]
    assert q[0]["record"] == {"instruction": "no output here"}


def test_json_array_where_lines_were_expected(xpkit, tmp_path):
    src = tmp_path / "array.jsonl"
    src.write_text(json.dumps(ALPACA, indent=2))
    res = xpkit("ingest", str(src), cwd=tmp_path)
    assert res.returncode == 0
    assert "holds a JSON array, not JSON lines" in res.stderr.decode()
    assert counts(res.stderr) == (3, 3, 0, 0)


def test_non_object_lines_are_rejected(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", ALPACA, extra=b"[1, 2]\n42\n")
    res = xpkit("ingest", str(src), cwd=tmp_path)
    assert counts(res.stderr) == (5, 3, 0, 2)
    reasons = [r["reason"] for r in rejects(tmp_path / "xpkit.rejects.jsonl")]
    assert reasons == ["expected a JSON object, found an array",
                       "expected a JSON object, found a number"]


def test_empty_file(xpkit, tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    res = xpkit("ingest", str(tmp_path / "empty.jsonl"), "--format", "alpaca", cwd=tmp_path)
    assert res.returncode == 0
    assert res.stdout == b""
    assert counts(res.stderr) == (0, 0, 0, 0)


def test_fifty_megabyte_single_line(xpkit, tmp_path):
    big = {"instruction": "Summarise this.", "input": "word " * 10_000_000, "output": "ok"}
    src = jsonl(tmp_path / "big.jsonl", [big, ALPACA[0]])
    assert src.stat().st_size > 50_000_000
    out = tmp_path / "out.jsonl"
    res = xpkit("ingest", str(src), "-o", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert counts(res.stderr) == (2, 2, 0, 0)
    first = orjson.loads(out.read_bytes().split(b"\n", 1)[0])
    assert len(first["task"]) == len("Summarise this.\n\n") + 50_000_000


def test_missing_file_is_a_usage_error(xpkit, tmp_path):
    res = xpkit("ingest", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.decode().strip() == f"Error: Input {tmp_path / 'nope.jsonl'}: no such file."


def test_glob_that_matches_nothing(xpkit, tmp_path):
    res = xpkit("ingest", str(tmp_path / "*.jsonl"), cwd=tmp_path)
    assert res.returncode == 2
    assert "the glob matches no file" in res.stderr.decode()


def test_unknown_format_is_a_usage_error(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", ALPACA)
    res = xpkit("ingest", str(src), "--format", "nonsense", cwd=tmp_path)
    assert res.returncode == 2
    assert "--format nonsense: unknown format" in res.stderr.decode()


def test_undetectable_format_names_candidates_and_flag(xpkit, tmp_path):
    src = jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": "x"}, {"foo": 2, "bar": "y"}])
    res = xpkit("ingest", str(src), cwd=tmp_path)
    assert res.returncode == 2
    msg = res.stderr.decode()
    assert "cannot tell the format" in msg and "--format" in msg and "bar, foo" in msg


def test_parquet_with_unexpected_schema(xpkit, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "n": [1, 2]}), path)
    res = xpkit("ingest", str(path), "--format", "alpaca", cwd=tmp_path)
    assert res.returncode == 0
    assert counts(res.stderr) == (2, 0, 0, 2)
    q = rejects(tmp_path / "xpkit.rejects.jsonl")
    assert [(r["row"], r["field"], r["reason"]) for r in q] == [
        (1, "instruction", "alpaca: missing"), (2, "instruction", "alpaca: missing")]
    mapped = xpkit("ingest", str(path), "--map", "task=prompt", cwd=tmp_path)
    assert counts(mapped.stderr) == (2, 2, 0, 0)
    assert [e["meta"] for e in episodes(mapped.stdout)] == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".csv", ".parquet", ".json"])
def test_every_container_reads_the_same(xpkit, tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    path = tmp_path / f"a{suffix}"
    body = b"".join(orjson.dumps(r) + b"\n" for r in ALPACA)
    if suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(body))
    elif suffix == ".jsonl.zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(body))
    elif suffix == ".csv":
        path.write_text("instruction,input,output\n" + "".join(
            f'"{r["instruction"]}","{r["input"]}","{r["output"]}"\n' for r in ALPACA))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(ALPACA), path)
    else:
        path.write_text(json.dumps(ALPACA))
    res = xpkit("ingest", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    reference = xpkit("ingest", str(jsonl(tmp_path / "ref.jsonl", ALPACA)), cwd=tmp_path)
    strip = [{k: v for k, v in e.items() if k != "source"} for e in episodes(res.stdout)]
    assert strip == [{k: v for k, v in e.items() if k != "source"}
                     for e in episodes(reference.stdout)]


def test_output_formats_by_extension(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", ALPACA)
    base = episodes(xpkit("ingest", str(src), cwd=tmp_path).stdout)
    for ext in ("parquet", "jsonl.gz", "csv"):
        out = tmp_path / f"out.{ext}"
        res = xpkit("ingest", str(src), "-o", str(out), cwd=tmp_path)
        assert res.returncode == 0 and res.stdout == b"", res.stderr
        assert out.exists() and not list(tmp_path.glob(".xpkit-*.part"))
    back = xpkit("ingest", str(tmp_path / "out.parquet"), cwd=tmp_path)
    assert "detected format episode" in back.stderr.decode()
    again = episodes(back.stdout)
    assert [e["episode_id"] for e in again] == [e["episode_id"] for e in base]
    assert [e["steps"] for e in again] == [e["steps"] for e in base]


def test_store_is_idempotent_and_logs_runs(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", ALPACA)
    store = str(tmp_path / "lib.duckdb")
    first = xpkit("ingest", str(src), "--store", store, cwd=tmp_path)
    assert first.returncode == 0 and first.stdout == b""  # --store without -o: no stdout
    second = xpkit("ingest", str(src), "--store", store, cwd=tmp_path)
    assert counts(second.stderr) == (3, 0, 3, 0)
    con = duckdb.connect(store, read_only=True)
    assert con.execute("SELECT count(*) FROM episodes").fetchone()[0] == 3
    assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == 6
    runs = con.execute("SELECT command, status, counts FROM runs ORDER BY started_at").fetchall()
    assert [(c, s) for c, s, _ in runs] == [("ingest", "ok"), ("ingest", "ok")]
    assert json.loads(runs[1][2])["duplicates"] == 3
    versions = json.loads(con.execute("SELECT versions FROM runs LIMIT 1").fetchone()[0])
    assert versions["duckdb"] == duckdb.__version__


def test_second_writer_gets_store_is_locked(xpkit, tmp_path):
    src = jsonl(tmp_path / "a.jsonl", ALPACA)
    store = tmp_path / "lib.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(store)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        res = xpkit("ingest", str(src), "--store", str(store), cwd=tmp_path)
        assert res.returncode == 1
        msg = res.stderr.decode()
        assert f"Store {store} is locked by another process" in msg
        assert "Traceback" not in msg
    finally:
        holder.kill()
        holder.wait()
    ok = xpkit("ingest", str(src), "--store", str(store), cwd=tmp_path)
    assert ok.returncode == 0 and counts(ok.stderr) == (3, 3, 0, 0)


def test_sigkill_mid_ingest_leaves_store_before_or_after(tmp_path):
    n = 400_000
    src = tmp_path / "big.jsonl"
    with src.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"instruction": f"Task number {i}", "input": "",
                                  "output": f"answer {i}"}) + b"\n")
    store = tmp_path / "lib.duckdb"
    seed = jsonl(tmp_path / "seed.jsonl", ALPACA)
    subprocess.run([sys.executable, "-m", "xpkit.cli.main", "ingest", str(seed), "--store",
                    str(store)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "-m", "xpkit.cli.main", "ingest", str(src),
                             "--store", str(store)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2.5)
    assert proc.poll() is None, "ingest finished before it could be killed; enlarge the input"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = duckdb.connect(str(store))
    count = con.execute("SELECT count(*) FROM episodes").fetchone()[0]
    steps = con.execute("SELECT count(*) FROM steps").fetchone()[0]
    con.close()
    assert count in (3, 3 + n) and steps == 2 * count
    rerun = subprocess.run([sys.executable, "-m", "xpkit.cli.main", "ingest", str(src),
                            "--store", str(store)], capture_output=True,
                           stdin=subprocess.DEVNULL)
    assert rerun.returncode == 0, rerun.stderr
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT count(*) FROM episodes").fetchone()[0] == 3 + n


def test_help_lists_the_six_stages_in_pipeline_order(xpkit):
    res = xpkit("--help")
    out = res.stdout.decode()
    where = [re.search(rf"\b{name}\b", out) for name in
             ("ingest", "distill", "index", "retrieve", "select-data", "evaluate")]
    assert all(where)
    assert [m.start() for m in where] == sorted(m.start() for m in where)


def test_help_does_not_import_heavy_modules():
    code = ("import sys; sys.argv = ['xpkit', '--help']\n"
            "from xpkit.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('duckdb', 'polars', 'llama_cpp', 'pyarrow')\n"
            "         if m in sys.modules]\n"
            "print(heavy, file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO)
    assert res.stderr.decode().strip().splitlines()[-1] == "[]"
