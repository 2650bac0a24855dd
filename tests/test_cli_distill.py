"""``xpkit distill`` through the real CLI (exemplar needs no model)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO


@pytest.fixture
def episodes_file(xpkit, tmp_path):
    out = tmp_path / "ep.jsonl"
    res = xpkit("ingest", str(REPO / "examples/data/tau_bench_airline_sample.jsonl"),
                "-o", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_exemplars_from_file_and_stdin(xpkit, tmp_path, episodes_file, via):
    if via == "file":
        res = xpkit("distill", str(episodes_file), "--method", "exemplar", cwd=tmp_path)
    else:
        res = xpkit("distill", "--method", "exemplar", input=episodes_file.read_bytes(),
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    units = [json.loads(line) for line in res.stdout.splitlines()]  # stdout: records only
    wins = {json.loads(line)["episode_id"] for line in episodes_file.read_text().splitlines()
            if json.loads(line)["outcome"]["success"]}
    assert units and all(u["kind"] == "exemplar" for u in units)
    cited = {e["episode_id"] for u in units for e in u["evidence"]}
    assert cited == wins
    assert "distill: 40 episodes read, 0 model calls" in res.stderr.decode()


def test_store_round_trip_and_shard_merge(xpkit, tmp_path, episodes_file):
    store = str(tmp_path / "lib.duckdb")
    first = xpkit("distill", str(episodes_file), "--method", "exemplar", "--store", store,
                  cwd=tmp_path)
    assert first.returncode == 0 and first.stdout == b""
    again = xpkit("distill", str(episodes_file), "--method", "exemplar", "--store", store,
                  cwd=tmp_path)
    assert "units: 0 new" in again.stderr.decode()
    shard = tmp_path / "shard.jsonl"
    xpkit("distill", str(episodes_file), "--method", "exemplar", "-o", str(shard), cwd=tmp_path)
    merged = xpkit("distill", "--merge", str(shard), str(shard), cwd=tmp_path)
    assert merged.returncode == 0
    assert len(merged.stdout.splitlines()) == len(shard.read_text().splitlines())


def test_usage_errors_exit_2(xpkit, tmp_path, episodes_file):
    res = xpkit("distill", str(episodes_file), "--method", "nonsense", cwd=tmp_path)
    assert res.returncode == 2 and "--method nonsense: unknown distiller" in res.stderr.decode()
    res = xpkit("distill", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert res.returncode == 2 and "missing.jsonl: no such file" in res.stderr.decode()
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"instruction": "x", "output": "y"}\n')
    res = xpkit("distill", str(raw), "--method", "exemplar", cwd=tmp_path)
    assert res.returncode == 2 and "distill reads episodes" in res.stderr.decode()
