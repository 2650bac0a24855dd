"""Stages listed in ``--help`` that are not built yet: they say so and exit 2."""

from __future__ import annotations

from collections.abc import Callable

import typer

from xpkit.cli.console import err

PENDING: dict[str, str] = {
    "evaluate": "Does the context help this model? Scorers, A/B, feedback. (not built yet)",
}
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def make(name: str) -> Callable[[typer.Context], None]:
    def command(ctx: typer.Context) -> None:
        err.print(f"[bold red]Error:[/bold red] xpkit {name} is not built yet in this version; "
                  "see the README's roadmap.")
        raise typer.Exit(2)

    command.__name__ = name.replace("-", "_")
    return command
