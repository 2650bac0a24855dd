"""``xpkit show``: a unit, episode or step with its full evidence (JSON on stdout)."""

from __future__ import annotations

from typing import Annotated

import typer


def show(
    ref: Annotated[str, typer.Argument(help="UNIT_ID, EPISODE_ID or EPISODE_ID#STEP.",
                                       show_default=False)],
    store: Annotated[str, typer.Option(
        "--store", "-s", help="The library (a .duckdb file).", envvar="XPKIT_STORE",
        show_default=False)] = ...,  # type: ignore[assignment]
    around: Annotated[int, typer.Option(
        "--around", min=0, help="Steps of context on each side of a cited step.")] = 1,
    no_links: Annotated[bool, typer.Option("--no-links", help="Leave out links.")] = False,
) -> None:
    """Dereference a unit to the episodes and steps it came from, or show an episode or step.

    \b
    Example:
      xpkit retrieve tasks.jsonl --store lib.duckdb | jq -r '.hits[0].unit_id' \\
        | xargs -n1 xpkit show --store lib.duckdb
    """
    import sys

    import orjson

    from xpkit.core.show import show as core_show

    record = core_show(store, ref, around=around, links=not no_links)
    sys.stdout.buffer.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE
                                         | orjson.OPT_NON_STR_KEYS))
    sys.stdout.flush()
