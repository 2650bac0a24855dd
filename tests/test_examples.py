"""The examples run: the Makefile pipeline (incremental) and the cron script (lock, log,
exit codes, idempotent)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env_with_xpkit() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def count(store: Path, table: str) -> int:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


@pytest.mark.model
@pytest.mark.slow
def test_makefile_pipeline_runs_end_to_end_and_reruns_only_new_work(tmp_path):
    examples = tmp_path / "examples"
    shutil.copytree(REPO / "examples", examples,
                    ignore=shutil.ignore_patterns("xpkit-plugin-example", "out"))
    make = ["make", "-C", str(examples / "pipeline"), "EVAL_ARGS=--ab --max-tokens 32"]
    first = subprocess.run(make, capture_output=True, env=env_with_xpkit())
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    out = examples / "pipeline" / "out"
    rows = [json.loads(x) for x in (out / "evaluated.jsonl").read_text().splitlines()]
    tasks = (examples / "tasks.jsonl").read_text().splitlines()
    assert len(rows) == len(tasks) == 5
    assert all(set(r["_eval"]["arms"]) == {"none", "context"} for r in rows)
    report = json.loads((out / "report.json").read_text())
    assert report["arms"]["context"]["model_calls"] == 5
    episodes = count(out / "lib.duckdb", "episodes")

    again = subprocess.run(make, capture_output=True, env=env_with_xpkit())
    assert again.returncode == 0
    assert b"Nothing to be done" in again.stdout and b"xpkit " not in again.stdout

    # a changed input reruns every stage after it; the store adds nothing it already has,
    # and the model answers come from the response cache
    os.utime(examples / "data" / "tau_bench_airline_sample.jsonl")
    third = subprocess.run(make, capture_output=True, env=env_with_xpkit())
    assert third.returncode == 0, third.stderr.decode()[-2000:]
    assert b"xpkit ingest" in third.stdout and b"xpkit evaluate" in third.stdout
    assert count(out / "lib.duckdb", "episodes") == episodes
    report = json.loads((out / "report.json").read_text())
    assert report["arms"]["context"]["model_calls"] == 0
    assert report["arms"]["context"]["cached"] == 5


def run_cron(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**env_with_xpkit(), "XPKIT_STORE": str(tmp_path / "lib.duckdb"),
            "INBOX": str(tmp_path / "inbox"), "LOG_DIR": str(tmp_path / "log"), **env}
    return subprocess.run([str(REPO / "examples" / "cron" / "xpkit-nightly.sh")],
                          capture_output=True, env=full, timeout=600)


def log_text(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / "log").glob("*.log")))


def test_cron_script_is_idempotent_locked_logged_and_honest(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(REPO / "examples" / "data" / "gsm8k_model_solutions_sample.jsonl", inbox)
    first = run_cron(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"" and first.stderr == b""  # cron mails only failures
    assert not list(inbox.glob("*.jsonl")) and (inbox / "done").iterdir()
    store = tmp_path / "lib.duckdb"
    episodes, units = count(store, "episodes"), count(store, "units")
    assert episodes == 120 and units > 0
    assert "start: 1 new file(s)" in log_text(tmp_path) and "done" in log_text(tmp_path)

    # rerun: nothing new, nothing changes
    assert run_cron(tmp_path).returncode == 0
    assert (count(store, "episodes"), count(store, "units")) == (episodes, units)
    assert "start: 0 new file(s)" in log_text(tmp_path)

    # the same file arriving again (a retried upload) adds nothing
    shutil.copy(REPO / "examples" / "data" / "gsm8k_model_solutions_sample.jsonl",
                inbox / "again.jsonl")
    assert run_cron(tmp_path).returncode == 0
    assert count(store, "episodes") == episodes

    # a second run while one holds the lock: exit 75, nothing touched
    with open(f"{store}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        locked = run_cron(tmp_path)
    assert locked.returncode == 75
    assert "another run holds" in log_text(tmp_path)

    # a bad record: quarantined and counted, exit 0; with STRICT=1 exit 1 and the file stays
    (inbox / "bad.jsonl").write_text('{"question": "2+2?", "answer": "4", "ground_truth": '
                                     '"4"}\n{not json\n')
    ok = run_cron(tmp_path)
    assert ok.returncode == 0
    rejects = [json.loads(x) for x in (tmp_path / "lib.rejects.jsonl").read_text().splitlines()]
    assert rejects[-1]["line"] == 2 and rejects[-1]["file"].endswith("bad.jsonl")
    (inbox / "bad2.jsonl").write_text("{not json\n")
    strict = run_cron(tmp_path, STRICT="1")
    assert strict.returncode == 1
    assert b"ingest" in strict.stderr and (inbox / "bad2.jsonl").exists()
    assert "FAILED: ingest" in log_text(tmp_path)


def test_cron_script_without_configuration_says_what_is_missing(tmp_path):
    env = {k: v for k, v in env_with_xpkit().items() if k not in ("XPKIT_STORE", "INBOX")}
    res = subprocess.run([str(REPO / "examples" / "cron" / "xpkit-nightly.sh")],
                         capture_output=True, env=env)
    assert res.returncode == 2 and b"XPKIT_STORE" in res.stderr
