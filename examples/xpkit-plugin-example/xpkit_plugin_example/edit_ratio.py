"""The ``edit-ratio`` scorer: partial credit by character edit distance.

``value = 1 - levenshtein(answer, reference) / max(len(answer), len(reference))`` after folding
case and whitespace (``--param normalize=false`` compares the texts as they are): 1.0 for
equal texts, 0.0 for texts with nothing in common. The item passes when the value reaches
``--param threshold=`` (default 0.9), which forgives a typo in a long answer but not a wrong
short one. With a list of references the best one counts. This is the normalized
Levenshtein similarity (Levenshtein 1966; Yujian & Bo 2007 discuss normalizations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from xpkit.core.scoring import Param, Score, ScoreItem, Scorer, ScorerContext


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions that turn ``a`` into ``b`` (two-row DP)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_ratio(answer: str, reference: str) -> tuple[float, int]:
    """(similarity in [0, 1], edit distance); two empty texts are equal."""
    longest = max(len(answer), len(reference))
    if longest == 0:
        return 1.0, 0
    distance = levenshtein(answer, reference)
    return 1.0 - distance / longest, distance


def _references(reference: Any) -> list[str]:
    items = reference if isinstance(reference, list | tuple) else [reference]
    return [str(r) for r in items if r is not None and str(r).strip()]


class EditRatioScorer(Scorer):
    name = "edit-ratio"
    description = ("normalized Levenshtein similarity to the reference as partial credit; "
                   "passed at >= threshold")
    params: ClassVar[dict[str, Param]] = {
        "threshold": Param(0.9, "similarity at or above which the answer passes"),
        "normalize": Param(True, "fold case and whitespace before comparing", bool),
    }

    def score(self, items: Sequence[ScoreItem], ctx: ScorerContext) -> list[Score]:
        threshold = float(ctx.params.get("threshold", self.params["threshold"].default))
        normalize = bool(ctx.params.get("normalize", self.params["normalize"].default))
        return [self._one(item, threshold, normalize) for item in items]

    def _one(self, item: ScoreItem, threshold: float, normalize: bool) -> Score:
        refs = _references(item.reference)
        if not refs:
            return Score(None, error="no reference to compare with")

        def fold(text: str) -> str:
            return " ".join(text.casefold().split()) if normalize else text

        answer = fold(item.answer or "")
        value, distance, ref = max(((*edit_ratio(answer, fold(ref)), ref) for ref in refs),
                                   key=lambda t: t[0])
        return Score(value, passed=value >= threshold, extracted=answer[:200],
                     detail=f"{distance} edit(s) from {ref[:60]!r}: similarity {value:.3f} "
                            f"(passes at {threshold:g})")
