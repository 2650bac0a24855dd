"""The README's runnable examples run as written.

Convention: a ```` ```sh ```` block right after a line ``<!-- test: run -->`` is runnable. Each
such block runs in a fresh temporary directory that holds a copy of ``examples/`` (the README
shows commands from the repository's root), under ``bash -euo pipefail``, with the venv's
``xpkit`` first on ``PATH`` and stdin closed. It must exit 0, and every file it says it
writes (``-o``/``--output``, ``--store``, ``--report``, ``>``/``>>``) must exist and not be
empty. Only blocks that run offline in seconds on the bundled data are marked: no ``make``,
no model (checked below).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from tests.conftest import REPO

MARKER = "<!-- test: run -->"
BLOCK = re.compile(r"^<!-- test: run -->\n```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
OUTPUT_FLAGS = {"-o", "--output", "--store", "-s", "--report", ">", ">>"}
# What a runnable block must not do: build or test the project, install, or call a model.
FORBIDDEN = re.compile(r"\bmake\b|\bpip\b|--model\b|--embed-model\b|--judge-model\b|"
                       r"--method\s+(insight|behavior|contrast|summary)\b|xpkit models\b")


def runnable_blocks() -> list[tuple[int, str]]:
    """(line number, script) of every marked block of README.md."""
    text = (REPO / "README.md").read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def commands(script: str) -> list[str]:
    """The block's command lines: continuations joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line for line in joined.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def claimed_outputs(script: str) -> list[str]:
    """Files the block says it writes, in order, without duplicates."""
    out: list[str] = []
    for line in commands(script):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for flag, value in pairwise(tokens):
            if flag in OUTPUT_FLAGS and not value.startswith(("-", "/dev/")) \
                    and value not in out:
                out.append(value)
    return out


BLOCKS = runnable_blocks()


def test_readme_has_runnable_blocks_and_they_follow_the_convention():
    text = (REPO / "README.md").read_text()
    marked = sum(1 for line in text.splitlines() if line == MARKER)
    assert len(BLOCKS) >= 2 and marked == len(BLOCKS), (
        f"every '{MARKER}' line must be followed directly by a ```sh block")
    for line, script in BLOCKS:
        assert not FORBIDDEN.search(script), (
            f"README.md:{line}: a runnable block must run offline in seconds: no make, pip "
            f"or model ({FORBIDDEN.search(script).group(0)!r})")
        assert any(c.lstrip().startswith(("xpkit ", "XPKIT_")) or " xpkit " in c
                   for c in commands(script)), f"README.md:{line}: runs no xpkit command"


def test_claimed_outputs_are_parsed_from_flags_and_redirections():
    script = ("xpkit a x --store lib.duckdb -o out.jsonl 2>/dev/null  # -o not.this\n"
              "xpkit b --report r.md \\\n  > b.jsonl\n# xpkit c -o commented.jsonl\n")
    assert claimed_outputs(script) == ["lib.duckdb", "out.jsonl", "r.md", "b.jsonl"]


@pytest.fixture(scope="module")
def xpkit_bin() -> Path:
    bindir = Path(sys.executable).parent
    if not (bindir / "xpkit").exists():
        pytest.skip(f"no xpkit console script beside {sys.executable} (install the package)")
    return bindir


@pytest.mark.slow
@pytest.mark.parametrize("line,script", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line, script, tmp_path, xpkit_bin):
    shutil.copytree(REPO / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PATH": f"{xpkit_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    assert res.returncode == 0, (f"README.md:{line}: the block exited {res.returncode}:\n"
                                 f"{res.stderr.decode()[-3000:]}")
    for name in claimed_outputs(script):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 0, (
            f"README.md:{line}: the block says it writes {name}, but it is missing or empty")
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".jsonl"):
            assert all(json.loads(r) is not None for r in path.read_text().splitlines())
