"""Hook specifications: every extension point of xpkit.

A plugin is a module (or object) with functions marked ``@xpkit.core.hookspecs.hookimpl``,
published under the entry-point group ``xpkit``. Each ``register_*`` hook receives a
``register`` callback; the plugin calls it once per thing it provides. Built-ins in
``xpkit.plugins`` register through exactly these hooks.

Example (``pyproject.toml`` of an outside package)::

    [project.entry-points.xpkit]
    myformat = "xpkit_myformat"

and in ``xpkit_myformat.py``::

    from xpkit.core.hookspecs import hookimpl

    @hookimpl
    def register_formats(register):
        register(MyFormat())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "xpkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_formats(register: Callable[[Any], None]) -> None:
    """Register input formats for ``xpkit ingest``.

    Each object passed to ``register`` follows ``xpkit.core.formats.InputFormat``: a ``name``,
    a ``description``, ``sniff(record) -> float`` for ``--format auto`` and
    ``parse(record, options) -> episode | list[episode]``. Formats whose files are not one
    record per line or per array element (text logs, single-document files) also implement
    ``read_file(path, opener) -> iterator of SourceRow``.
    """


@hookspec
def register_distillers(register: Callable[[Any], None]) -> None:
    """Register distillers for ``xpkit distill --method NAME``."""


@hookspec
def register_selectors(register: Callable[[Any], None]) -> None:
    """Register selection methods for ``xpkit select-data --method NAME``."""


@hookspec
def register_scorers(register: Callable[[Any], None]) -> None:
    """Register scorers for ``xpkit evaluate --scorer NAME``."""


@hookspec
def register_backends(register: Callable[[Any], None]) -> None:
    """Register model backends (how a ``--model`` value is turned into a loaded model)."""


@hookspec
def register_embedders(register: Callable[[Any], None]) -> None:
    """Register embedders (how an ``--embed-model`` value is turned into vectors)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``xpkit`` Typer application passed as ``cli``."""
