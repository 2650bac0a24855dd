"""The scorer registry: how ``xpkit evaluate`` decides whether an answer is right.

Scorers register through the ``register_scorers`` hook (built-ins in ``xpkit.plugins.scorers``
exactly like outside plugins). A scorer receives a batch of items (so model-backed scorers
such as the LLM judge can batch their calls) and returns one ``Score`` per item, in order.

A ``Score`` has a ``value`` in [0, 1] (1 = fully right; token F1 gives partial credit), a
``passed`` verdict (``value >= threshold`` unless the scorer decides otherwise), the answer
as the scorer ``extracted`` it (the last number, the ``\\boxed{}`` content, ...) and a one-line
``detail`` saying why, which ends up in the per-item result row. An item the scorer cannot
judge (no reference where one is needed, a verifier that crashed) gets ``value = None`` and
an ``error``; evaluate counts those apart instead of calling them wrong. A missing or empty
answer is not such a case: it is wrong (value 0).

The reference may be a string, a number, or a list of acceptable answers; the built-in
reference-based scorers take the best score over the list (as SQuAD's evaluation takes the
maximum over its ground truths). ``references`` turns any of these into strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from xpkit.core.errors import UsageError
from xpkit.core.selectors import Param

__all__ = ["NO_REFERENCE", "Param", "Score", "ScoreItem", "Scorer", "ScorerContext",
           "available_scorers", "best_score", "get_scorer", "references",
           "resolve_scorer_params"]

NO_REFERENCE = "no reference to compare with"


@dataclass
class ScoreItem:
    """One thing to score: the model's ``answer``, the ``reference`` and the whole record."""

    answer: str | None
    reference: Any
    record: dict[str, Any]
    task: str | None = None


@dataclass
class Score:
    """A scorer's verdict on one item."""

    value: float | None
    passed: bool | None = None
    extracted: str | None = None
    detail: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.passed is None and self.value is not None:
            self.passed = self.value >= 1.0 - 1e-9


@dataclass
class ScorerContext:
    """What a scorer may use besides the items: its parameters, the settings and, for
    model-backed scorers, a lazily loaded LLM (``llm()``)."""

    params: dict[str, Any] = field(default_factory=dict)
    settings: Any = None
    model: str | None = None
    _llm: Any = None
    on_progress: Callable[[int, int], None] | None = None
    """Called as ``on_progress(done, total)`` by scorers that take time per item (the judge,
    the verifier) after each finished item."""

    def llm(self) -> Any:
        """The runtime's ``LLM`` for ``--judge-model`` (or ``--model``), loaded on first use."""
        if self._llm is None:
            from xpkit.core.llm import get_llm

            if self.model is None:
                raise UsageError("this scorer needs a model: pass --judge-model (or --model).")
            self._llm = get_llm(self.model, settings=self.settings)
        return self._llm


class Scorer:
    """Base class of scorers (subclassing is optional; the attributes are the contract)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    needs_reference: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False

    def score(self, items: Sequence[ScoreItem], ctx: ScorerContext) -> list[Score]:
        """One ``Score`` per item, in order."""
        return [self.score_one(item, ctx) for item in items]

    def score_one(self, item: ScoreItem, ctx: ScorerContext) -> Score:
        raise NotImplementedError

    def param(self, ctx: ScorerContext, key: str) -> Any:
        """The value of parameter ``key``: from ``ctx.params``, else its declared default."""
        return ctx.params[key] if key in ctx.params else self.params[key].default


def references(reference: Any) -> list[str]:
    """The acceptable answers in ``reference`` as strings: ``None`` and blank strings give
    none, a list gives each of its items, a number its usual text (``72``, ``0.5``)."""
    items = reference if isinstance(reference, list | tuple) else [reference]
    out = []
    for ref in items:
        if ref is None or isinstance(ref, list | tuple | dict):
            continue
        text = ref if isinstance(ref, str) else (
            str(int(ref)) if isinstance(ref, float) and ref.is_integer() else str(ref))
        if text.strip():
            out.append(text)
    return out


def best_score(scores: Sequence[Score]) -> Score:
    """The best of one item's scores against several references (errors count last)."""
    return max(scores, key=lambda s: -1.0 if s.value is None else s.value)


def available_scorers() -> dict[str, Any]:
    """Registered scorers by name, in registration order (the first registration wins)."""
    from xpkit.core.plugins import collect

    out: dict[str, Any] = {}
    for scorer in collect("register_scorers"):
        out.setdefault(scorer.name, scorer)
    return out


def get_scorer(name: str) -> Any:
    """The scorer ``name``; a usage error lists the choices."""
    found = available_scorers()
    if name not in found:
        raise UsageError(f"--scorer {name}: unknown; choose one of {', '.join(found)}.")
    return found[name]


def resolve_scorer_params(raw: dict[str, str], scorer: Any) -> dict[str, Any]:
    """``--param`` values for ``scorer`` with its defaults; an unknown key is a usage error."""
    from xpkit.core.selectors import resolve_params

    return resolve_params(raw, [scorer])[0]
