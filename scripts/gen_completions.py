"""Write the shell completion scripts for bash, zsh and fish into completions/.

Run by `make completions`; tests/test_completions.py fails when the files are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

SHELLS = {"bash": "xpkit.bash", "zsh": "xpkit.zsh", "fish": "xpkit.fish"}


def render(shell: str) -> str:
    return get_completion_script(prog_name="xpkit", complete_var="_XPKIT_COMPLETE",
                                 shell=shell).rstrip("\n") + "\n"


def main(out_dir: str = "completions") -> None:
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    for shell, name in SHELLS.items():
        (out / name).write_text(render(shell))


if __name__ == "__main__":
    main(*sys.argv[1:])
