"""Settings of the model runtime, resolved in one place with a fixed precedence.

Precedence, highest first: explicit values (command-line flags, keyword arguments) >
environment (``XPKIT_<NAME>``, e.g. ``XPKIT_MODEL``, ``XPKIT_EMBED_MODEL``, ``XPKIT_CTX``) >
the project file ``./xpkit.toml`` > the user file ``$XPKIT_HOME/config.toml`` > defaults.
``XPKIT_HOME`` defaults to ``~/.xpkit``; the response cache lives there.

Config files hold top-level keys named like the settings (``model = "default"``,
``ctx = 4096``); tables (``[distill]`` ...) are left to the stages that own them. An unknown
top-level key or a value of the wrong type is an error that names the file and the key,
because a silently ignored typo would run a different model than the user asked for.
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


def xpkit_home() -> Path:
    """``$XPKIT_HOME``, else ``~/.xpkit`` (not created here)."""
    home = os.environ.get("XPKIT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".xpkit"


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

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values, with the ``sources`` map under ``_sources``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        out["_sources"] = dict(self.sources)
        return out

    def with_values(self, **values: Any) -> Settings:
        """A copy with some values replaced (recorded as source ``argument``)."""
        given = {k: v for k, v in values.items() if v is not None}
        _check_names(given, "argument")
        return replace(self, **given, sources={**self.sources, **dict.fromkeys(given,
                                                                             "argument")})


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "sources"}
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
    """The config files consulted, lowest precedence first: (source name, path)."""
    return [("user config", xpkit_home() / USER_FILE),
            ("project config", Path(cwd or os.getcwd()) / PROJECT_FILE)]


def load_settings(*, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                  **given: Any) -> Settings:
    """Resolve settings: ``given`` (flags; ``None`` means not given) > env > files > defaults.

    Example: ``load_settings(model=None, ctx=2048)`` takes ``ctx`` from the argument and
    ``model`` from ``XPKIT_MODEL``, ``./xpkit.toml``, ``$XPKIT_HOME/config.toml`` or the
    default, in that order.
    """
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = dict.fromkeys(_FIELDS, "default")
    for source, path in config_files(cwd):
        for k, v in _read_toml(path).items():
            values[k], sources[k] = v, f"{source} {path}"
    for name in _FIELDS:
        var = env_name(name)
        if var in environ and environ[var] != "":
            values[name] = _coerce(name, environ[var], f"environment {var}")
            sources[name] = f"environment {var}"
    explicit = {k: v for k, v in given.items() if v is not None}
    _check_names(explicit, "argument")
    for k, v in explicit.items():
        values[k] = _coerce(k, v, f"--{k.replace('_', '-')}")
        # A CLI option declared with envvar= hands the environment's value over as if it
        # were a flag; name the real source.
        from_env = environ.get(env_name(k)) == str(v)
        sources[k] = f"environment {env_name(k)}" if from_env else "argument"
    settings = Settings(**values, sources=sources)
    _validate(settings)
    return settings


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
