"""Translate library errors into one sentence on stderr and an exit code, in one place."""

from __future__ import annotations

import os
import sys
import traceback

from xpkit.cli.console import err


def debug_enabled() -> bool:
    return os.environ.get("XPKIT_DEBUG", "") not in ("", "0")


def report(exc: BaseException) -> int:
    """Print ``Error: ...`` for ``exc`` and return the exit code to use."""
    from xpkit.core.errors import XpkitError

    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, XpkitError):
        err.print(f"[bold red]Error:[/bold red] {exc.message}", markup=True, highlight=False)
        return exc.exit_code
    if isinstance(exc, MemoryError):
        err.print("[bold red]Error:[/bold red] out of memory; lower --batch-size.")
        return 1
    if isinstance(exc, OSError) and exc.filename:
        err.print(f"[bold red]Error:[/bold red] {exc.filename}: {exc.strerror}.")
        return 1
    err.print(f"[bold red]Error:[/bold red] internal error ({type(exc).__name__}: {exc}); "
              "rerun with --debug for the traceback and report it.")
    return 1
