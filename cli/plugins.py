"""``xpkit plugins``: print JSON of the loaded plugins."""

from __future__ import annotations

from typing import Annotated

import typer


def plugins(
    all: Annotated[bool, typer.Option("--all", help="Include the built-in plugins.")] = False,
) -> None:
    """List loaded plugins as JSON: name, version, hooks; errors of plugins that failed.

    Example:  XPKIT_LOAD_PLUGINS=myplugin xpkit plugins
    """
    import orjson

    from xpkit.core.plugins import loaded_plugins, plugin_errors

    rows = loaded_plugins(include_builtins=all)
    for e in plugin_errors():
        rows.append({"name": e.name, "error": e.error})
    typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
