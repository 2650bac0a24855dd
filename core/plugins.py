"""The plugin manager: built-ins and outside plugins register through the same pluggy hooks.

Loading is lazy and happens once. ``XPKIT_LOAD_PLUGINS=a,b`` loads only the named outside
plugins (entry-point names or distribution names); an empty value loads none. Built-ins are
always loaded. A plugin that fails to import or raises in a hook is recorded in
``plugin_errors`` with its name and skipped, so the others keep working.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from xpkit.core import hookspecs

ENTRY_POINT_GROUP = "xpkit"

# Built-in plugin modules. They are ordinary plugins: the same hookimpls an outside
# package would publish through the entry-point group.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "xpkit.plugins.formats.chat",
    "xpkit.plugins.formats.alpaca",
    "xpkit.plugins.formats.react",
    "xpkit.plugins.formats.swe_agent",
    "xpkit.plugins.formats.graded_qa",
    "xpkit.plugins.formats.episode",
    "xpkit.plugins.formats.mapped",
    "xpkit.plugins.selectors.basic",
    "xpkit.plugins.selectors.scores",
    "xpkit.plugins.selectors.diversity",
    "xpkit.plugins.selectors.difficulty",
    "xpkit.plugins.selectors.lead",
    "xpkit.plugins.selectors.model",
    "xpkit.plugins.backends.llama_cpp",
    "xpkit.plugins.backends.openai_http",
    "xpkit.plugins.distillers.insight",
    "xpkit.plugins.distillers.behavior",
    "xpkit.plugins.distillers.contrast",
    "xpkit.plugins.distillers.exemplar",
    "xpkit.plugins.distillers.summary",
    "xpkit.plugins.scorers.text",
    "xpkit.plugins.scorers.numeric",
    "xpkit.plugins.scorers.math_equiv",
    "xpkit.plugins.scorers.verifier",
    "xpkit.plugins.scorers.judge",
)


@dataclass
class PluginError:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    error: str


@dataclass
class _State:
    manager: pluggy.PluginManager | None = None
    errors: list[PluginError] = field(default_factory=list)
    dists: dict[str, str] = field(default_factory=dict)  # plugin name -> "dist version"


_state = _State()


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading built-ins and outside plugins once."""
    if _state.manager is not None:
        return _state.manager
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    _load_entry_points(pm)
    _state.manager = pm
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    wanted = os.environ.get("XPKIT_LOAD_PLUGINS")
    allow = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        if allow is not None and ep.name not in allow and dist not in allow:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the tool down
            _state.errors.append(PluginError(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        if ep.dist is not None:
            _state.dists[ep.name] = f"{ep.dist.name} {ep.dist.version}"


def collect(hook_name: str) -> list[Any]:
    """Call ``register_<kind>`` on every plugin and return what they registered, in order.

    Each plugin's hook is called separately so that one that raises is recorded and skipped.
    """
    pm = get_plugin_manager()
    found: list[Any] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        register: Callable[[Any], None] = found.append
        try:
            impl.function(register)
        except Exception as exc:
            err = PluginError(impl.plugin_name, f"{hook_name}: {type(exc).__name__}: {exc}")
            if err not in _state.errors:
                _state.errors.append(err)
    return found


def probe_hooks() -> None:
    """Call every ``register_*`` hook once, so that plugins that raise in one are recorded.

    Commands only call the hooks they need; ``xpkit plugins`` probes them all to report
    every broken plugin, not only those a command happened to consult.
    """
    pm = get_plugin_manager()
    for name in sorted(pm.hook.__dict__):
        # register_commands takes the Typer app, not a register callback
        if name.startswith("register_") and name != "register_commands":
            collect(name)


def plugin_errors() -> list[PluginError]:
    """Plugins that failed to load or raised in a hook, so far in this process."""
    get_plugin_manager()
    return list(_state.errors)


def loaded_plugins(include_builtins: bool = False) -> list[dict[str, Any]]:
    """Describe loaded plugins: name, version (outside plugins) and the hooks they implement."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        builtin = name in BUILTIN_PLUGINS
        if builtin and not include_builtins:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        row: dict[str, Any] = {"name": name, "hooks": hooks, "builtin": builtin}
        if name in _state.dists:
            row["version"] = _state.dists[name].split(" ", 1)[1]
        rows.append(row)
    return rows


def reset() -> None:
    """Forget the loaded manager (tests use this after changing XPKIT_LOAD_PLUGINS)."""
    _state.manager = None
    _state.errors.clear()
    _state.dists.clear()
