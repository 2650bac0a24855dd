"""The selector registry: what a ``select-data`` method or score plugin implements.

Two kinds of selector register through the ``register_selectors`` hook (built-ins in
``xpkit.plugins.selectors`` exactly like outside plugins):

- a **score** (``kind = "score"``) gives every candidate record a utility
  (``score(view, ctx) -> float array``, higher is better): response length, outcome reward,
  MoPPS informativeness, task difficulty, and later model-aware ones (LLM-judge rating,
  IFD, perplexity) that need the local model runtime;
- a **method** (``kind = "method"``) orders the candidates (``rank(view, ctx) -> Ranking``):
  the budget is then filled from that order. The order may be produced lazily (a generator),
  so greedy methods stop as soon as the budget is full.

A selector declares its parameters (``--param KEY=VALUE``), what it ``needs``
(``"sketches"``, ``"outcomes"``, ``"model"``) and may be listed while not yet usable
(``available = False`` with ``unavailable_reason``), which is how the model-aware methods are
announced in ``--help`` before the model runtime lands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from xpkit.core.errors import UsageError

KINDS = ("method", "score")


@dataclass(frozen=True)
class Param:
    """One ``--param`` of a selector: its default, type and help text."""

    default: Any
    help: str
    type: type = float

    def parse(self, raw: str, name: str, owner: str) -> Any:
        try:
            if self.type is bool:
                low = raw.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                return low in ("true", "1", "yes")
            return self.type(raw)
        except ValueError:
            raise UsageError(f"--param {name}={raw}: {owner} expects "
                             f"{self.type.__name__} for {name}.") from None


@dataclass
class Ranking:
    """What a method returns: candidate positions in preference order, and why.

    ``order`` yields positions of the view (0..size-1), best first; it may stop before
    covering every candidate (those are "not chosen", with ``excluded(pos)`` as the reason
    when the method rules a record out). ``score`` and ``cluster`` are per position;
    ``reason(pos)`` explains a chosen record in one line.
    """

    order: Iterable[int]
    score: Any
    reason: Callable[[int], str]
    cluster: Any = None
    excluded: Callable[[int], str | None] | None = None
    notes: list[str] = field(default_factory=list)


class Selector:
    """Base class of selectors (subclassing is optional; the attributes are the contract)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "method"
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    needs: ClassVar[frozenset[str]] = frozenset()
    available: ClassVar[bool] = True
    unavailable_reason: ClassVar[str] = ""

    def score(self, view: Any, ctx: Any) -> Any:
        """Utility of every candidate of ``view`` (kind ``score``)."""
        raise NotImplementedError

    def rank(self, view: Any, ctx: Any) -> Ranking:
        """Preference order over the candidates of ``view`` (kind ``method``)."""
        raise NotImplementedError


def available_selectors(kind: str | None = None) -> dict[str, Any]:
    """Registered selectors of ``kind`` (or all, keyed ``kind:name``), in registration order."""
    from xpkit.core.plugins import collect

    out: dict[str, Any] = {}
    for sel in collect("register_selectors"):
        k = getattr(sel, "kind", "method")
        if kind is None:
            out.setdefault(f"{k}:{sel.name}", sel)
        elif k == kind:
            out.setdefault(sel.name, sel)
    return out


def get_selector(name: str, kind: str) -> Any:
    """The selector ``name`` of ``kind``; a usage error names the choices or says why a
    listed selector cannot run yet."""
    found = available_selectors(kind)
    flag = "--method" if kind == "method" else "--score"
    if name not in found:
        raise UsageError(f"{flag} {name}: unknown; choose one of {', '.join(found)}.")
    sel = found[name]
    if not getattr(sel, "available", True):
        raise UsageError(f"{flag} {name}: {sel.unavailable_reason}")
    return sel


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """``--param KEY=VALUE`` items as a dict (values are parsed by the selector)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f"--param {item}: expected KEY=VALUE, e.g. --param group=8.")
        out[key] = value
    return out


def resolve_params(raw: dict[str, str], selectors: list[Any]) -> list[dict[str, Any]]:
    """Split ``--param`` values among ``selectors`` (each gets its declared keys, with
    defaults); a key that none declares is a usage error that lists the known ones."""
    resolved = []
    known: dict[str, str] = {}
    for sel in selectors:
        vals = {}
        for key, spec in (getattr(sel, "params", None) or {}).items():
            known.setdefault(key, sel.name)
            vals[key] = spec.parse(raw[key], key, sel.name) if key in raw else spec.default
        resolved.append(vals)
    for key in raw:
        if key not in known:
            names = ", ".join(f"{k} ({v})" for k, v in known.items()) or "none"
            raise UsageError(f"--param {key}: not a parameter of "
                             f"{' or '.join(s.name for s in selectors)}; known: {names}.")
    return resolved
