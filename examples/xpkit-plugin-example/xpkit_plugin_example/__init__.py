"""An example xpkit plugin: one input format and one scorer, registered through pluggy hooks.

xpkit imports this module (the ``example`` entry point of group ``xpkit``) the first time it
needs its plugins, and calls each ``@hookimpl`` function with a ``register`` callback. Keep
this module cheap to import: heavy work belongs in the methods xpkit calls later.
"""

from __future__ import annotations

from typing import Any

from xpkit.core.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_formats(register: Any) -> None:
    from xpkit_plugin_example.qa_tsv import QaTsvFormat

    register(QaTsvFormat())


@hookimpl
def register_scorers(register: Any) -> None:
    from xpkit_plugin_example.edit_ratio import EditRatioScorer

    register(EditRatioScorer())
