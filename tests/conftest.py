"""Shared fixtures: an isolated XPKIT_HOME, the CLI runner, the real-data root, and stores
as older versions of xpkit left them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test touches the user's files or picks up their plugins or config."""
    home = tmp_path_factory.mktemp("xpkit-home")
    monkeypatch.setenv("XPKIT_HOME", str(home))
    monkeypatch.delenv("XPKIT_STORE", raising=False)
    monkeypatch.delenv("XPKIT_MODEL", raising=False)
    monkeypatch.delenv("XPKIT_DEBUG", raising=False)
    # Model-runtime settings (XPKIT_EMBED_MODEL, XPKIT_CTX, ...: see xpkit.core.config).
    from xpkit.core.config import Settings, env_name

    for name in Settings.__dataclass_fields__:
        monkeypatch.delenv(env_name(name), raising=False)


@contextlib.contextmanager
def store_made_before(path: str, migration: str) -> Iterator[Any]:
    """A new store file at ``path`` as the xpkit whose last migration came before
    ``migration`` left it; yields its open DuckDB connection to add rows with."""
    import duckdb

    from xpkit.core.store import MIGRATIONS

    names = [m.__name__ for m in MIGRATIONS]
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
        for m in MIGRATIONS[:names.index(migration)]:
            m(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [m.__name__])
        yield con


@pytest.fixture
def shared_data() -> Path:
    """../shared/data from the repo root; tests that need it skip (with the reason) without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATA} is absent (a plain clone has "
                    "no ../shared; CI provides it)")
    return SHARED_DATA


def run_xpkit(*args: str, input: bytes | None = None, cwd: str | Path | None = None,
              env: dict[str, str] | None = None, timeout: float = 600
              ) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``xpkit`` console entry point in a subprocess (stdin closed unless given)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "xpkit.cli.main", *args],
        input=input if input is not None else b"",
        capture_output=True, cwd=cwd, env=full_env, timeout=timeout,
    )


@pytest.fixture
def xpkit():
    return run_xpkit
