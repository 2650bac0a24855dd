"""A plain (non-editable) ``pip install`` of the package works in a fresh venv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(REPO)], check=True, capture_output=True)
    wheel = next(dist.glob("xpkit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Dependencies come from the test environment (no network needed); the package itself
    # comes only from the wheel: the editable finder of the dev install is not activated.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    where = subprocess.run([str(py), "-c", "import xpkit.core, xpkit.cli, xpkit.plugins.formats;"
                            " print(xpkit.core.__file__)"], check=True, capture_output=True,
                           text=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv))
    src = tmp_path / "a.jsonl"
    src.write_text('{"instruction": "Say hi", "input": "", "output": "hi"}\n')
    res = subprocess.run([str(venv / "bin" / "xpkit"), "ingest", str(src)], capture_output=True,
                         cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert b'"task":"Say hi"' in res.stdout
