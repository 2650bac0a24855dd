"""Startup stays light: no --help and no shell completion imports a heavy library.

duckdb, polars, pyarrow and llama_cpp are imported inside command bodies only, so ``xpkit
--help``, every ``xpkit CMD --help`` and every Tab press (Typer's ``_XPKIT_COMPLETE``
callback) stay fast. ``bench/import_time.py`` measures the time itself.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from tests.conftest import REPO

# One interpreter runs every case (the union of what they import must hold no heavy module).
PROBE = """
import contextlib, io, json, os, sys
HEAVY = ("duckdb", "polars", "pyarrow", "llama_cpp")
from xpkit.cli.main import app, main
import typer

root = typer.main.get_command(app)
helps = [[]]
def walk(cmd, path):
    for name, sub in getattr(cmd, "commands", {}).items():
        helps.append(path + [name])
        walk(sub, path + [name])
walk(root, [])
completions = [("xpkit sel", 1), ("xpkit ingest --fo", 2), ("xpkit config ", 2),
               ("xpkit select-data --method ", 3)]
out = {"helps": [], "completions": []}
for args in helps:
    sys.argv = ["xpkit", *args, "--help"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main()
    out["helps"].append(" ".join(args))
for words, cword in completions:
    os.environ.update(_XPKIT_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword))
    sys.argv = ["xpkit"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main()
    out["completions"].append([words, buf.getvalue().split()])
out["heavy"] = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps(out))
"""


def test_help_of_every_command_and_completion_import_no_heavy_library():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, cwd=REPO,
                         stdin=subprocess.DEVNULL, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    out = json.loads(res.stdout.decode().strip().splitlines()[-1])
    assert {"", "ingest", "select-data", "config", "config show"} <= set(out["helps"])
    completed = dict((w, c) for w, c in out["completions"])
    assert completed["xpkit sel"] == ["select-data"]
    assert completed["xpkit ingest --fo"] == ["--format"]
    assert completed["xpkit config "] == ["show"]
    assert out["heavy"] == [], f"imported during --help/completion: {out['heavy']}"


def test_import_time_bench_profiles_a_case():
    spec = importlib.util.spec_from_file_location("import_time", REPO / "bench" / "import_time.py")
    import_time = importlib.util.module_from_spec(spec)
    sys.modules["import_time"] = import_time  # dataclasses look their module up there
    spec.loader.exec_module(import_time)
    case = next(c for c in import_time.cases() if c.name == "complete 'xpkit sel'")
    prof = import_time.import_profile(case, top=5)
    assert prof.modules > 50 and prof.heavy == []
    assert any(name.startswith("xpkit.cli") for name, _ in prof.xpkit_modules)
