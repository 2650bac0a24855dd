"""Ingest throughput: xpkit against the plain DuckDB floor and pandas, on >= 1 GB of JSONL.

The input repeats the real FireAct chat records (OpenAI ``messages`` with ReAct turns, from
``../shared/data``) with a unique ``id`` field in front of each copy, so every copy has its
own content hash and nothing is deduplicated away. Each contender runs in its own process;
its peak RSS is the largest of the kernel's ``ru_maxrss`` for it and the summed RSS of its
process tree, sampled every 20 ms (so worker processes count too). A sum of RSS counts the
pages that forked workers share with their parent (libraries, the interpreter) once per
process, so the peak PSS of the tree (each shared page split among its sharers: the memory
the tree really takes) is reported beside it, sampled every 200 ms.

    python bench/ingest.py                    # 1 GiB input, in a temp dir that is removed
    python bench/ingest.py --size-mb 256 --keep --workdir /tmp/xb
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ comes first on sys.path, and its other benchmarks would shadow
# stdlib modules of the same name (bench/select.py breaks subprocess).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]

import argparse  # noqa: E402
import gzip  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
CHAT_GLOB = "fireact/data/finetune/gpt_format/*.jsonl.gz"
MB = 1_000_000  # rates are in MB/s of input (10^6 bytes); --size-mb is in MiB
PANDAS_RSS_LIMIT = 16 << 30  # pandas holds ~15x its input; beyond this it runs on a slice
CONTENDERS = ("xpkit-parquet", "xpkit-store", "duckdb", "pandas")


@dataclass
class Result:
    key: str  # one of CONTENDERS
    name: str
    input_bytes: int
    records: int
    seconds: float
    cpu: float  # user + system seconds of the process and its children
    peak_rss: int
    peak_pss: int
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.input_bytes / MB / self.seconds

    @property
    def rec_s(self) -> float:
        return self.records / self.seconds


# --------------------------------------------------------------------------- input


def load_bodies(data_dir: Path) -> list[bytes]:
    """The real chat records, each serialised without its opening brace."""
    files = sorted(data_dir.glob(CHAT_GLOB))
    if not files:
        sys.exit(f"bench: no chat records under {data_dir / CHAT_GLOB}; pass --data DIR.")
    bodies = []
    for f in files:
        with gzip.open(f, "rb") as fh:
            for line in fh:
                if line.strip():
                    bodies.append(orjson.dumps(orjson.loads(line))[1:])
    return bodies


def build_input(path: Path, size_bytes: int, data_dir: Path) -> int:
    """Write at least ``size_bytes`` of JSONL; return the number of records."""
    bodies = load_bodies(data_dir)
    n = written = 0
    with open(path, "wb", buffering=1 << 22) as f:
        while written < size_bytes:
            chunk = []
            for body in bodies:
                chunk.append(b'{"id":"bench-%09d",%s\n' % (n, body))
                n += 1
            data = b"".join(chunk)
            f.write(data)
            written += len(data)
    return n


def slice_input(src: Path, dst: Path, size_bytes: int) -> tuple[int, int]:
    """The first whole lines of ``src`` up to ``size_bytes``: (bytes, records)."""
    n = written = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            if written >= size_bytes:
                break
            fout.write(line)
            written += len(line)
            n += 1
    return written, n


# --------------------------------------------------------------------------- measuring


def _tree(pid: int) -> list[int]:
    """A process and its descendants (empty once it has gone)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *(p for c in children for p in _tree(int(c)))]


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("Pss:"))
    except (OSError, ValueError, StopIteration):
        return 0


@dataclass
class Run:
    seconds: float
    cpu: float
    peak_rss: int
    peak_pss: int
    code: int
    killed: bool  # for passing rss_limit


def run_measured(argv: list[str], log: Path, rss_limit: int | None = None) -> Run:
    """Run ``argv`` with stdout discarded and stderr to ``log``; time it, watch its memory."""
    t0 = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    peak = peak_pss = 0
    killed, done = False, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss, killed
        n = 0
        while not done.wait(0.02):
            pids = _tree(proc.pid)
            rss = sum(map(_rss, pids))
            peak = max(peak, rss)
            if n % 10 == 0:  # (reading smaps_rollup walks the page tables: not too often)
                peak_pss = max(peak_pss, sum(map(_pss, pids)))
            n += 1
            if rss_limit and rss > rss_limit and not killed:
                killed = True
                os.killpg(proc.pid, signal.SIGKILL)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    return Run(seconds, usage.ru_utime + usage.ru_stime, max(peak, usage.ru_maxrss * 1024),
               peak_pss or usage.ru_maxrss * 1024, proc.returncode, killed)


def _check(name: str, code: int, log: Path) -> None:
    if code != 0:
        tail = log.read_text(errors="replace")[-2000:]
        sys.exit(f"bench: {name} failed with exit status {code}:\n{tail}")


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


PY = sys.executable
XPKIT = [str(Path(PY).with_name("xpkit"))]  # --xpkit replaces it (e.g. to compare versions)
# The floor: DuckDB's own JSON reader and Parquet writer, all in C++ on every core.
DUCKDB_SCRIPT = """
import sys, duckdb
duckdb.connect().execute(
    f"COPY (SELECT * FROM read_json('{sys.argv[1]}')) TO '{sys.argv[2]}' (FORMAT parquet)")
"""
PANDAS_SCRIPT = """
import sys, pandas as pd
pd.read_json(sys.argv[1], lines=True).to_parquet(sys.argv[2])
"""


def bench_xpkit_parquet(big: Path, work: Path, size: int, records: int) -> Result:
    out = work / "xpkit.parquet"
    out.unlink(missing_ok=True)
    log = work / "xpkit-parquet.log"
    run = run_measured([*XPKIT, "ingest", str(big), "-o", str(out)], log)
    _check("xpkit ingest -o", run.code, log)
    rows = _parquet_rows(out)
    note = "" if rows == records else f"wrote {rows} of {records} records"
    return Result("xpkit-parquet", "xpkit ingest -> Parquet", size, records, run.seconds,
                  run.cpu, run.peak_rss, run.peak_pss, note)


def bench_xpkit_store(big: Path, work: Path, size: int, records: int) -> Result:
    import duckdb

    db = work / "store.duckdb"
    log = work / "xpkit-store.log"
    for stale in (db, work / "store.duckdb.wal"):  # a kept workdir's store: all duplicates
        stale.unlink(missing_ok=True)
    run = run_measured([*XPKIT, "ingest", str(big), "--store", str(db)], log)
    _check("xpkit ingest --store", run.code, log)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM episodes").fetchone()[0]  # type: ignore[index]
    note = "" if rows == records else f"stored {rows} of {records} records"
    return Result("xpkit-store", "xpkit ingest -> store", size, records, run.seconds, run.cpu,
                  run.peak_rss, run.peak_pss, note)


def bench_duckdb(big: Path, work: Path, size: int, records: int) -> Result:
    out = work / "duckdb.parquet"
    out.unlink(missing_ok=True)
    log = work / "duckdb.log"
    run = run_measured([PY, "-c", DUCKDB_SCRIPT, str(big), str(out)], log)
    _check("duckdb", run.code, log)
    return Result("duckdb", "duckdb read_json -> Parquet", size, records, run.seconds, run.cpu,
                  run.peak_rss, run.peak_pss)


def bench_pandas(big: Path, work: Path, size: int, records: int, slice_mb: int | None,
                 why: str = "--pandas-mb") -> Result:
    out = work / "pandas.parquet"
    out.unlink(missing_ok=True)
    log = work / "pandas.log"
    src, note = big, ""
    if slice_mb is not None:
        src = work / "slice.jsonl"
        size, records = slice_input(big, src, slice_mb << 20)
        note = f"on the first {size / MB:,.0f} MB only: {why}"
    run = run_measured([PY, "-c", PANDAS_SCRIPT, str(src), str(out)], log, PANDAS_RSS_LIMIT)
    if run.killed:
        print(f"  pandas passed {PANDAS_RSS_LIMIT >> 30} GiB RSS on {size / MB:,.0f} MB; "
              "retrying on a quarter of that", file=sys.stderr)
        return bench_pandas(big, work, size, records, max(1, (size // 4) >> 20),
                            f"{size / MB:,.0f} MB took pandas past "
                            f"{PANDAS_RSS_LIMIT >> 30} GiB RSS")
    _check("pandas", run.code, log)
    return Result("pandas", "pandas read_json -> Parquet", size, records, run.seconds, run.cpu,
                  run.peak_rss, run.peak_pss, note)


def stage_costs(big: Path, n: int) -> dict[str, float]:
    """CPU microseconds per record of each stage of xpkit's pipeline, in this process (one
    core), on the first ``n`` records of ``big``: the budget a faster parser must fit in."""
    import io

    import pyarrow.parquet as pq

    from xpkit.core.formats import FormatOptions, available_formats
    from xpkit.core.records import episodes_to_arrow

    with open(big, "rb") as f:
        lines = [line for _, line in zip(range(n), f, strict=False)]
    parse = available_formats()["openai-chat"].parse
    options = FormatOptions()
    episodes_to_arrow([])  # (imports pyarrow before the clock starts)
    cost: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t = time.process_time()
        result = fn()
        cost[name] = (time.process_time() - t) / len(lines) * 1e6
        return result

    records = timed("JSON decode (orjson)", lambda: [orjson.loads(line) for line in lines])
    episodes = timed("format parse + id", lambda: [parse(r, options) for r in records])
    table = timed("Arrow columns", lambda: episodes_to_arrow(episodes))
    timed("Parquet write", lambda: pq.write_table(table, io.BytesIO()))
    return cost


def report_stages(cost: dict[str, float], n: int, size: int, records: int,
                  floor: Result | None) -> None:
    per_record = size / records
    total = sum(cost.values())
    cores = len(os.sched_getaffinity(0))
    print(f"xpkit's stages, CPU per record on one core ({n:,} records of "
          f"{per_record:,.0f} bytes):")
    for name, us in cost.items():
        print(f"  {name:<24}{us:>8.1f} us  ({per_record / us:>6.1f} MB/s)")
    print(f"  {'all':<24}{total:>8.1f} us; on {cores} cores at most "
          f"{cores * per_record / total:.1f} MB/s")
    if floor is not None:
        budget = cores * per_record / (floor.mb_s / 2)
        print(f"  within 2x of the DuckDB floor ({floor.mb_s / 2:.1f} MB/s) leaves "
              f"{budget:.1f} us per record per core for all of them")


# --------------------------------------------------------------------------- report


def report(results: list[Result]) -> None:
    print(f"{'contender':<30}{'MB/s':>8}{'records/s':>11}{'seconds':>9}{'CPU s':>8}"
          f"{'peak RSS':>11}{'peak PSS':>11}")
    for r in results:
        print(f"{r.name:<30}{r.mb_s:>8.1f}{r.rec_s:>11,.0f}{r.seconds:>9.1f}{r.cpu:>8.1f}"
              f"{r.peak_rss / MB:>8,.0f} MB{r.peak_pss / MB:>8,.0f} MB"
              + (f"   ({r.note})" if r.note else ""))
    by = {r.key: r for r in results}
    for xk in ("xpkit-parquet", "xpkit-store"):
        for ok in ("duckdb", "pandas"):
            x, o = by.get(xk), by.get(ok)
            if x is not None and o is not None:
                print(f"{xk} / {ok}: throughput x{x.mb_s / o.mb_s:.2f}, "
                      f"peak RSS x{x.peak_rss / o.peak_rss:.2f}, "
                      f"peak PSS x{x.peak_pss / o.peak_pss:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1024)")
    ap.add_argument("--workdir", help="where to build the input (default: a temp dir in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"the shared data directory (default {DEFAULT_DATA})")
    ap.add_argument("--only", default=",".join(CONTENDERS),
                    help=f"comma-separated subset of {', '.join(CONTENDERS)}")
    ap.add_argument("--pandas-mb", type=int,
                    help="run pandas on the first N MiB only (default: the whole input, "
                         f"falling back to a quarter when it passes {PANDAS_RSS_LIMIT >> 30} GiB)")
    ap.add_argument("--xpkit", help="the command that runs xpkit (default: the venv's xpkit), "
                    "e.g. 'env PYTHONPATH=/tmp/old python -m xpkit.cli.main' for another version")
    ap.add_argument("--stages", type=int, default=20_000, metavar="N",
                    help="also time each stage of xpkit's pipeline in one process on the "
                         "first N records (default 20000; 0 skips it)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each contender N times and keep the fastest (pandas runs once)")
    args = ap.parse_args()
    if args.xpkit:
        XPKIT[:] = shlex.split(args.xpkit)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(CONTENDERS)
    if unknown:
        ap.error(f"--only: unknown contender(s) {', '.join(sorted(unknown))}")

    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="xpkit-bench-", dir="/tmp"))
    try:
        big = work / "big.jsonl"
        t0 = time.perf_counter()
        records = build_input(big, args.size_mb << 20, args.data)
        size = big.stat().st_size
        print(f"input: {big} {size / MB:,.0f} MB, {records:,} records "
              f"(FireAct chat records with unique ids; built in "
              f"{time.perf_counter() - t0:.1f}s); {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f} (other work on the machine slows every contender)",
              flush=True)
        runners = {
            "xpkit-parquet": lambda: bench_xpkit_parquet(big, work, size, records),
            "xpkit-store": lambda: bench_xpkit_store(big, work, size, records),
            "duckdb": lambda: bench_duckdb(big, work, size, records),
            "pandas": lambda: bench_pandas(big, work, size, records, args.pandas_mb),
        }
        results = []
        for name in only:
            runs = []
            for i in range(1 if name == "pandas" else args.repeat):
                print(f"  running {name} ({i + 1}) ...", file=sys.stderr, flush=True)
                runs.append(runners[name]())
            results.append(min(runs, key=lambda r: r.seconds))
        report(results)
        if args.stages:
            cost = stage_costs(big, args.stages)
            floor = next((r for r in results if r.key == "duckdb"), None)
            report_stages(cost, min(args.stages, records), size, records, floor)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
