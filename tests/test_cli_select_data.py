"""``xpkit select-data`` through the real CLI: data on stdout, counts that add up, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import orjson
import pytest

SUMMARY = re.compile(r"select-data: ([\d,]+) records read: ([\d,]+) selected, ([\d,]+) "
                     r"duplicates, ([\d,]+) filtered, ([\d,]+) not chosen, ([\d,]+) rejected")
POOL = [
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
    {"instruction": "Name the three primary colours.", "input": "", "output": "Red, yellow, blue."},
    {"instruction": "Translate 'chat' to English.", "input": "French", "output": "cat"},
    {"instruction": "Write a haiku about rain.", "input": "",
     "output": "Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"},
    {"instruction": "Say nothing.", "input": "", "output": ""},
    {"instruction": "What is the boiling point of water at sea level in Celsius?", "input": "",
     "output": "100 degrees Celsius."},
]


def counts(stderr: bytes) -> tuple[int, ...]:
    m = SUMMARY.search(stderr.decode())
    assert m, stderr.decode()
    return tuple(int(g.replace(",", "")) for g in m.groups())


def jsonl(path: Path, records: list[dict], extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + extra)
    return path


def lines(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]  # stdout holds data only


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_same_selection_from_file_and_stdin(xpkit, tmp_path, via):
    src = jsonl(tmp_path / "pool.jsonl", POOL)
    args = ["select-data", "--dedup", "near", "--filter", "empty", "--budget", "3"]
    res = (xpkit(*args, str(src), cwd=tmp_path) if via == "file"
           else xpkit(*args, input=src.read_bytes(), cwd=tmp_path))
    assert res.returncode == 0, res.stderr
    out = lines(res.stdout)
    assert len(out) == 3 and all(set(r["_select"]) >= {"score", "reason", "cluster", "id"}
                                 for r in out)
    read, selected, dups, filtered, not_chosen, rejected = counts(res.stderr)
    assert (read, selected, dups, filtered, rejected) == (7, 3, 2, 1, 0)
    assert selected + dups + filtered + not_chosen + rejected == read
    assert "duplicate of" in res.stderr.decode()


def test_report_strict_quarantine_and_store(xpkit, tmp_path):
    src = jsonl(tmp_path / "pool.jsonl", POOL, extra=b'{"instruction": "broken"\n')
    store = tmp_path / "lib.duckdb"
    res = xpkit("select-data", str(src), "--dedup", "exact", "--report", "fates.jsonl",
                "--store", str(store), "-o", "out.jsonl", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b""  # -o: nothing on stdout
    fates = [json.loads(line) for line in (tmp_path / "fates.jsonl").read_text().splitlines()]
    assert len(fates) == 8
    assert {f["status"] for f in fates} == {"selected", "duplicate", "rejected"}
    dup = next(f for f in fates if f["status"] == "duplicate")
    assert dup["kept_at"].endswith(":1") and dup["line"] == 2
    rejects = (tmp_path / "out.rejects.jsonl").read_text().splitlines()
    assert json.loads(rejects[0])["line"] == 8
    with duckdb.connect(str(store), read_only=True) as con:
        command, run_counts = con.execute("SELECT command, counts FROM runs").fetchone()
    assert command == "select-data" and json.loads(run_counts)["duplicates"] == 1
    strict = xpkit("select-data", str(src), "--strict", "-o", "strict.jsonl", cwd=tmp_path)
    assert strict.returncode == 1 and b"--strict" in strict.stderr
    assert not (tmp_path / "strict.jsonl").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "3", "--budget-tokens", "100"], "--budget and --budget-tokens are exclusive"),
    (["--method", "nope", "--budget", "2"], "--method nope: unknown; choose one of all, random"),
    (["--method", "add-one-in", "--param", "batch=1", "--budget", "2"],
     "--param batch=1: add-one-in shows 2 to 10 candidates per call"),
    (["--score", "ifd", "--method", "top", "--model", "http://127.0.0.1:9/v1"],
     "--score ifd needs an in-process GGUF model"),
    (["--where", "nosuch = 1"], "unknown field 'nosuch'"),
    (["--where", "instruction = "], "--where"),
    (["--dedup", "fuzzy"], "--dedup fuzzy: choose one of none, exact, near"),
    (["--export", "dpo", "--stratify", "model"], "--stratify is not supported with --export"),
])
def test_usage_errors_exit_2_with_one_sentence(xpkit, tmp_path, args, message):
    src = jsonl(tmp_path / "pool.jsonl", POOL)
    res = xpkit("select-data", str(src), *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr.decode()
    assert b"Traceback" not in res.stderr and res.stdout == b""


def test_help_lists_methods_and_the_model_aware_ones(xpkit):
    res = xpkit("select-data", "--help", env={"COLUMNS": "200"})
    text = res.stdout.decode()
    for name in ("k-center", "facility-location", "mopps", "drive", "lead", "add-one-in",
                 "judge", "ifd", "perplexity", "--budget-tokens", "--export"):
        assert name in text
    assert "with --model: add-one-in" in text and "--model" in text
