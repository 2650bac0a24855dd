"""Shell completions: the committed scripts are fresh, and completing is cheap."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from gen_completions import SHELLS, render


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_committed_completion_scripts_are_fresh(shell):
    committed = (REPO / "completions" / SHELLS[shell]).read_text()
    assert committed == render(shell), "stale: run `make completions` and commit the result"


def test_completion_lists_subcommands_without_heavy_imports():
    code = ("import sys\nsys.argv = ['xpkit']\nfrom xpkit.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('duckdb', 'polars', 'llama_cpp', 'pyarrow') if m in sys.modules],"
            " file=sys.stderr)\n")
    env = {**os.environ, "_XPKIT_COMPLETE": "complete_bash", "COMP_WORDS": "xpkit sel",
           "COMP_CWORD": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=REPO)
    assert res.stdout.decode().split() == ["select-data"]
    assert res.stderr.decode().strip().splitlines()[-1] == "[]"
