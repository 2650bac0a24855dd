"""``xpkit cache info|clear``: the response and embedding cache under $XPKIT_HOME."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="cache", no_args_is_help=True,
    help="Inspect or clear the model response and embedding cache ($XPKIT_HOME/cache).\n\n"
         "\b\nExample:\n  xpkit cache info | jq '.bytes'",
)


@app.command("info")
def info() -> None:
    """Print the cache's path, size and entry counts per model as JSON.

    \b
    Example:
      xpkit cache info
    """
    import orjson

    from xpkit.core.llm_cache import info as core_info

    typer.echo(orjson.dumps(core_info(), option=orjson.OPT_INDENT_2).decode())


@app.command("clear")
def clear(
    kind: Annotated[str, typer.Option(
        "--kind", help="What to delete: all, responses, embeddings.")] = "all",
) -> None:
    """Delete cached model responses and/or embeddings; the next run calls the model again.

    \b
    Example:
      xpkit cache clear --kind responses
    """
    from xpkit.cli.console import err
    from xpkit.core.llm_cache import clear as core_clear

    removed = core_clear(kind=kind)
    err.print("cache: removed " + ", ".join(f"{n:,} {k}" for k, n in removed.items()) + ".")
