"""Startup cost of the CLI: ``xpkit --help`` and shell completion, as a user's shell sees it.

Each case runs the installed ``xpkit`` console script (beside this interpreter; else
``python -m xpkit.cli.main``) as a fresh process ``--runs`` times and reports the median and
the fastest wall time and the median CPU time (user + system: steadier than wall time on
a loaded machine), next to a bare ``python -c pass`` (the interpreter's own floor, site
and the editable-install finder included). Then one ``python -X importtime`` run per case
says where the time goes: modules imported, self time summed per top-level package, the
slowest xpkit modules (cumulative), and whether a heavy library (duckdb, polars, pyarrow,
llama_cpp) was imported at all — it must not be.

    python bench/import_time.py               # 7 runs per case
    python bench/import_time.py --runs 15 --top 15

Completion is measured the way Typer's bash script calls it: ``_XPKIT_COMPLETE=complete_bash``
with ``COMP_WORDS`` / ``COMP_CWORD`` in the environment. Timings on a loaded machine move by
tens of percent; compare within one run.
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ comes first on sys.path and a benchmark named like a stdlib module
# would shadow it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

HEAVY = ("duckdb", "polars", "pyarrow", "llama_cpp")
TARGET_S = 0.5


@dataclass
class Case:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def xpkit_command() -> list[str]:
    """The console script installed beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "xpkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "xpkit.cli.main"]


def cases() -> list[Case]:
    complete = {"_XPKIT_COMPLETE": "complete_bash", "COMP_WORDS": "xpkit sel",
                "COMP_CWORD": "1"}
    complete_opt = {"_XPKIT_COMPLETE": "complete_bash", "COMP_WORDS": "xpkit ingest --fo",
                    "COMP_CWORD": "2"}
    return [
        Case("python -c pass", ["-c", "pass"]),
        Case("xpkit --help", ["--help"]),
        Case("xpkit ingest --help", ["ingest", "--help"]),
        Case("complete 'xpkit sel'", [], complete),
        Case("complete 'xpkit ingest --fo'", [], complete_opt),
    ]


def command(case: Case) -> list[str]:
    if case.name.startswith("python"):
        return [sys.executable, *case.args]
    return [*xpkit_command(), *case.args]


def run_once(case: Case) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh process."""
    env = {**os.environ, **case.env}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(command(case), env=env, stdin=subprocess.DEVNULL,
                         capture_output=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{case.name}: exit {res.returncode}: {res.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


@dataclass
class ImportProfile:
    modules: int
    total_s: float
    by_package: list[tuple[str, float]]
    xpkit_modules: list[tuple[str, float]]
    heavy: list[str]


def import_profile(case: Case, top: int) -> ImportProfile:
    """One ``-X importtime`` run: self time per top-level package, slowest xpkit modules."""
    cmd = command(case)
    if cmd[0] != sys.executable:  # the console script is a Python file: run it under -X
        cmd = [sys.executable, *cmd]
    cmd = [cmd[0], "-X", "importtime", *cmd[1:]]
    env = {**os.environ, **case.env}
    res = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    by_package: Counter[str] = Counter()
    xpkit_cum: dict[str, int] = {}
    names: set[str] = set()
    for line in res.stderr.decode().splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        mod = name.strip()
        names.add(mod)
        by_package[mod.split(".")[0]] += int(self_us)
        if mod.startswith("xpkit."):
            xpkit_cum[mod] = int(cum_us)
    return ImportProfile(
        modules=len(names),
        total_s=sum(by_package.values()) / 1e6,
        by_package=[(k, v / 1e6) for k, v in by_package.most_common(top)],
        xpkit_modules=[(k, v / 1e6) for k, v in sorted(xpkit_cum.items(),
                                                        key=lambda kv: -kv[1])[:top]],
        heavy=sorted(m for m in HEAVY if m in names),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per case (median reported)")
    ap.add_argument("--top", type=int, default=10, help="packages / modules listed")
    args = ap.parse_args()

    print(f"# xpkit startup: {' '.join(xpkit_command())}  ({args.runs} runs per case; "
          f"load average {os.getloadavg()[0]:.2f})")
    print(f"{'case':32s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s}  target "
          f"{TARGET_S} s (wall median)")
    for case in cases():
        run_once(case)  # warm the page cache and the .pyc files
        runs = [run_once(case) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        flag = "" if case.name.startswith("python") else (
            "ok" if wall < TARGET_S else "over")
        print(f"{case.name:32s} {wall:9.3f} {min(r[0] for r in runs):7.3f} {cpu:7.3f}  {flag}")

    for case in cases()[1:]:
        prof = import_profile(case, args.top)
        print(f"\n## {case.name}: {prof.modules} modules imported, {prof.total_s:.3f} s of "
              f"import time; heavy libraries imported: {', '.join(prof.heavy) or 'none'}")
        print("self time by top-level package:")
        for name, secs in prof.by_package:
            print(f"  {name:34s} {secs * 1000:7.1f} ms")
        print("slowest xpkit modules (cumulative):")
        for name, secs in prof.xpkit_modules:
            print(f"  {name:34s} {secs * 1000:7.1f} ms")
        if prof.heavy:
            sys.exit(f"{case.name} imports {', '.join(prof.heavy)}: keep them inside "
                     "command bodies")


if __name__ == "__main__":
    main()
