"""Settings of the model runtime, resolved in one place with a fixed precedence.

Precedence, highest first: explicit values (command-line flags, keyword arguments) >
environment (``XPKIT_<NAME>``, e.g. ``XPKIT_MODEL``, ``XPKIT_EMBED_MODEL``, ``XPKIT_CTX``) >
the project file ``./xpkit.toml`` > the user file ``$XPKIT_HOME/config.toml`` > defaults.
``XPKIT_HOME`` defaults to ``~/.xpkit``; the response cache lives there.

Config files hold top-level keys named like the settings (``model = "default"``,
``ctx = 4096``); tables (``[distill]`` ...) are left to the stages that own them. An unknown
top-level key or a value of the wrong type is an error that names the file and the key,
because a silently ignored typo would run a different model than the user asked for.

Every value carries its ``Origin`` (which of ``SOURCES`` it came from, and the flag, variable
or file), and ``explain_settings`` also lists the lower-precedence values it overrode: that
is what ``xpkit config show`` prints.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from xpkit.core.errors import UsageError

PROJECT_FILE = "xpkit.toml"
USER_FILE = "config.toml"
SOURCES = ("flag", "env", "project", "user", "default")
"""Where a setting's value can come from, highest precedence first."""
# XPKIT_* variables that are not settings (read elsewhere); any other is likely a typo.
OTHER_ENV = ("XPKIT_HOME", "XPKIT_STORE", "XPKIT_LOAD_PLUGINS", "XPKIT_DEBUG")


def xpkit_home() -> Path:
    """``$XPKIT_HOME``, else ``~/.xpkit`` (not created here)."""
    home = os.environ.get("XPKIT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".xpkit"


@dataclass(frozen=True)
class Origin:
    """Where one setting's value came from.

    ``source`` is one of ``SOURCES``; ``where`` names the flag (``--ctx``), the environment
    variable (``XPKIT_CTX``) or the config file's path, and is ``None`` for a default.
    """

    source: str
    where: str | None = None

    def label(self) -> str:
        """The one-line form kept in ``Settings.sources`` (``environment XPKIT_CTX``)."""
        if self.source == "flag":
            return "argument"
        prefix = {"env": "environment", "project": "project config", "user": "user config"}
        return f"{prefix[self.source]} {self.where}" if self.source in prefix else "default"

    def as_dict(self) -> dict[str, str | None]:
        return {"source": self.source, "from": self.where}


@dataclass(frozen=True)
class Settings:
    """Effective runtime settings; ``sources`` says where each value came from."""

    model: str = "default"
    """``--model``: a GGUF path, ``default``, a bundled model name, or an OpenAI-compatible
    base URL ``http://host:port/v1`` with an optional ``#model-name``."""
    embed_model: str = "default"
    """``--embed-model``: the same forms as ``model``, for embeddings."""
    default_model: str = "smollm2-135m-instruct"
    """What ``default`` means: a bundled model name (see ``xpkit models``) or any model spec."""
    n_gpu_layers: int = 0
    ctx: int = 4096
    """Context window (tokens) to allocate; clamped to the model's trained context."""
    threads: int = 0
    """CPU threads for llama.cpp; 0 means all cores."""
    seed: int = 0
    temperature: float = 0.0
    concurrency: int = 4
    """Requests in flight at once against an OpenAI-compatible server."""
    no_cache: bool = False
    retries: int = 2
    """Extra attempts for a structured call whose output fails schema validation."""
    timeout: float = 600.0
    """Seconds to wait for one HTTP response."""
    embed_ctx: int = 512
    """Token window per text for embeddings (longer texts: see ``core.embeddings``)."""
    embed_batch_tokens: int = 2048
    """Tokens decoded together in one embedding batch (several texts share a batch)."""
    cpu_extra_buffers: str = "auto"
    """llama.cpp's extra CPU weight buffers (AMX / repacking): ``on``, ``off`` or ``auto``
    (off on CPUs that advertise AMX: llama.cpp's AMX path dies with a general-protection
    fault on VMs that advertise AMX without enabling it)."""
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    origins: dict[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values, with the ``sources`` map under ``_sources``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _FIELDS}
        out["_sources"] = dict(self.sources)
        return out

    def with_values(self, **values: Any) -> Settings:
        """A copy with some values replaced (recorded as source ``argument``)."""
        given = {k: v for k, v in values.items() if v is not None}
        _check_names(given, "argument")
        origins = {k: Origin("flag", f"--{k.replace('_', '-')}") for k in given}
        return replace(self, **given,
                       sources={**self.sources, **dict.fromkeys(given, "argument")},
                       origins={**self.origins, **origins})


_META = ("sources", "origins")
_FIELDS = {f.name: f for f in fields(Settings) if f.name not in _META}
_CHOICES = {"cpu_extra_buffers": ("auto", "on", "off")}


def env_name(name: str) -> str:
    """The environment variable of a setting: ``embed_model`` -> ``XPKIT_EMBED_MODEL``."""
    return "XPKIT_" + name.upper()


def _check_names(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown setting {unknown[0]!r}; known settings: "
                         f"{', '.join(sorted(_FIELDS))}.")


def _coerce(name: str, value: Any, where: str) -> Any:
    """Convert ``value`` (from TOML or an environment string) to the setting's type."""
    kind = type(getattr(Settings, name))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out: Any = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            if not isinstance(value, str):
                raise ValueError
            out = value
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {name} = {str(value)[:60]!r} is not a valid "
                         f"{kind.__name__}.") from None
    if name in _CHOICES and out not in _CHOICES[name]:
        raise UsageError(f"{where}: {name} = {out!r}; choose one of "
                         f"{', '.join(_CHOICES[name])}.")
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc}).") from None
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    _check_names(values, str(path))
    return {k: _coerce(k, v, str(path)) for k, v in values.items()}


def config_files(cwd: str | Path | None = None) -> list[tuple[str, Path]]:
    """The config files consulted, lowest precedence first: (source, path)."""
    return [("user", xpkit_home() / USER_FILE),
            ("project", Path(cwd or os.getcwd()) / PROJECT_FILE)]


def _candidates(cwd: str | Path | None, env: dict[str, str] | None,
                given: dict[str, Any]) -> dict[str, list[tuple[Any, Origin]]]:
    """Every value each setting is given, with its origin, highest precedence first.

    The last candidate of every setting is its default; ``given`` holds flags (``None``
    means not given).
    """
    environ = os.environ if env is None else env
    found: dict[str, list[tuple[Any, Origin]]] = {
        name: [(getattr(Settings, name), Origin("default"))] for name in _FIELDS}
    for source, path in config_files(cwd):
        for k, v in _read_toml(path).items():
            found[k].insert(0, (v, Origin(source, str(path))))
    for name in _FIELDS:
        var = env_name(name)
        if var in environ and environ[var] != "":
            found[name].insert(0, (_coerce(name, environ[var], f"environment {var}"),
                                   Origin("env", var)))
    explicit = {k: v for k, v in given.items() if v is not None}
    _check_names(explicit, "argument")
    for k, v in explicit.items():
        flag = f"--{k.replace('_', '-')}"
        value = _coerce(k, v, flag)
        # A CLI option declared with envvar= hands the environment's value over as if it
        # were a flag: that value is already the env candidate, so it is not a flag.
        if environ.get(env_name(k)) == str(v):
            continue
        found[k].insert(0, (value, Origin("flag", flag)))
    return found


def _settings(found: dict[str, list[tuple[Any, Origin]]]) -> Settings:
    origins = {k: c[0][1] for k, c in found.items()}
    settings = Settings(**{k: c[0][0] for k, c in found.items()},
                        sources={k: o.label() for k, o in origins.items()}, origins=origins)
    _validate(settings)
    return settings


def load_settings(*, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                  **given: Any) -> Settings:
    """Resolve settings: ``given`` (flags; ``None`` means not given) > env > files > defaults.

    Example: ``load_settings(model=None, ctx=2048)`` takes ``ctx`` from the argument and
    ``model`` from ``XPKIT_MODEL``, ``./xpkit.toml``, ``$XPKIT_HOME/config.toml`` or the
    default, in that order.
    """
    return _settings(_candidates(cwd, env, given))


def explain_settings(*, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                     **given: Any) -> dict[str, Any]:
    """The effective settings and where each came from (what ``xpkit config show`` prints).

    Each setting maps to ``{value, source, from, overrides}``: ``source`` is one of
    ``SOURCES``, ``from`` the flag, variable or file, and ``overrides`` the lower-precedence
    values it won over (the default last). Also: the precedence, both config files (and
    whether they exist), ``XPKIT_HOME``, and ``unknown_env`` — ``XPKIT_*`` variables that
    are neither a setting nor one of ``OTHER_ENV``, most likely typos. Invalid values raise
    the same ``UsageError`` as ``load_settings``.
    """
    environ = os.environ if env is None else env
    found = _candidates(cwd, env, given)
    settings = _settings(found)
    known = {env_name(n) for n in _FIELDS} | set(OTHER_ENV)
    return {
        "precedence": list(SOURCES),
        "settings": {
            name: {"value": getattr(settings, name), **origin.as_dict(),
                   "overrides": [{"value": v, **o.as_dict()} for v, o in found[name][1:]]}
            for name, origin in settings.origins.items()},
        "files": {source: {"path": str(path), "exists": path.is_file()}
                  for source, path in reversed(config_files(cwd))},
        "home": str(xpkit_home()),
        "unknown_env": sorted(k for k in environ if k.startswith("XPKIT_") and k not in known),
    }


def _validate(s: Settings) -> None:
    for name, low in (("ctx", 16), ("concurrency", 1), ("retries", 0), ("threads", 0),
                      ("embed_ctx", 8), ("embed_batch_tokens", 8)):
        if getattr(s, name) < low:
            raise UsageError(f"{name} = {getattr(s, name)} ({s.sources.get(name)}) must be at "
                             f"least {low}; set --{name.replace('_', '-')} or "
                             f"{env_name(name)}.")
    if s.temperature < 0:
        raise UsageError(f"temperature = {s.temperature} ({s.sources.get('temperature')}) "
                         "must be >= 0; set --temperature.")
