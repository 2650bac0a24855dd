"""``xpkit plugins``: print JSON of the loaded plugins."""

from __future__ import annotations

from typing import Annotated

import typer


def plugins(
    all: Annotated[bool, typer.Option("--all", help="Include the built-in plugins.")] = False,
) -> None:
    """List loaded plugins as JSON: name, version, hooks; errors of plugins that failed.

    \b
    Example:
      xpkit plugins --all | jq -r '.[].name'
      XPKIT_LOAD_PLUGINS=myplugin xpkit plugins
    """
    import orjson

    from xpkit.core.plugins import loaded_plugins, plugin_errors, probe_hooks

    rows = loaded_plugins(include_builtins=all)
    probe_hooks()
    for e in plugin_errors():
        rows.append({"name": e.name, "error": e.error})
    typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
