"""Text-matching scorers: ``exact``, ``normalized``, ``f1``, ``regex`` and ``contains``.

``normalized``, ``f1`` and ``contains`` use the answer normalization of the SQuAD
evaluation script (Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine
Comprehension of Text", ``evaluate-v2.0.py``: ``normalize_answer``): lowercase, drop
punctuation, drop the articles a/an/the, collapse whitespace. Punctuation here is ASCII
punctuation plus every Unicode punctuation character (curly quotes, dashes), which the
original's ``string.punctuation`` misses. ``f1`` is SQuAD's token-overlap F1, a partial
credit. With a list of references, each scorer keeps the best score over them, as SQuAD's
evaluation takes the maximum over its ground truths.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any, ClassVar

from xpkit.core.errors import UsageError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.scoring import (
    NO_REFERENCE,
    Param,
    Score,
    ScoreItem,
    Scorer,
    ScorerContext,
    best_score,
    references,
)

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or (ord(ch) > 127 and unicodedata.category(ch)[0] == "P")


def normalize_answer(text: str) -> str:
    """SQuAD's ``normalize_answer``: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if not _punct(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, truth: str) -> float:
    """SQuAD's token F1 of two texts after ``normalize_answer`` (1.0 when both are empty)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


class _PerReference(Scorer):
    """A scorer that compares the answer with each reference and keeps the best."""

    def score_one(self, item: ScoreItem, ctx: ScorerContext) -> Score:
        refs = references(item.reference)
        if not refs:
            return Score(None, error=NO_REFERENCE)
        answer = str(item.answer or "")
        return best_score([self.compare(answer, ref, ctx) for ref in refs])

    def compare(self, answer: str, reference: str, ctx: ScorerContext) -> Score:
        raise NotImplementedError


class ExactScorer(_PerReference):
    """String equality after stripping surrounding whitespace (case and punctuation count)."""

    name = "exact"
    description = "the answer equals the reference after stripping surrounding whitespace"

    def compare(self, answer: str, reference: str, ctx: ScorerContext) -> Score:
        same = answer.strip() == reference.strip()
        return Score(1.0 if same else 0.0,
                     detail="equal" if same else f"differs from {_short(reference.strip(), 80)!r}")


class NormalizedScorer(_PerReference):
    """Exact match after SQuAD normalization (SQuAD's "EM")."""

    name = "normalized"
    description = ("equality after SQuAD normalization: lowercase, no punctuation, no "
                   "articles, single spaces (SQuAD exact match)")

    def compare(self, answer: str, reference: str, ctx: ScorerContext) -> Score:
        got, want = normalize_answer(answer), normalize_answer(reference)
        same = got == want
        return Score(1.0 if same else 0.0, extracted=_short(got),
                     detail="equal after normalization" if same
                     else f"normalized {_short(got, 60)!r} != {_short(want, 60)!r}")


class F1Scorer(_PerReference):
    """SQuAD token F1 as partial credit; passed when F1 >= ``threshold`` (default 0.5)."""

    name = "f1"
    description = ("SQuAD token-overlap F1 after normalization as partial credit; passed "
                   "when F1 >= threshold")
    params: ClassVar[dict[str, Param]] = {
        "threshold": Param(0.5, "F1 at or above which the answer counts as passed"),
    }

    def compare(self, answer: str, reference: str, ctx: ScorerContext) -> Score:
        value = token_f1(answer, reference)
        threshold = float(self.param(ctx, "threshold"))
        return Score(value, passed=value >= threshold, extracted=_short(normalize_answer(answer)),
                     detail=f"token F1 {value:.3f} (passes at {threshold:g})")


class ContainsScorer(_PerReference):
    """The normalized reference occurs in the normalized answer, on word boundaries (so the
    reference ``4`` is not found in ``14``)."""

    name = "contains"
    description = "the SQuAD-normalized reference occurs in the normalized answer, as whole words"

    def compare(self, answer: str, reference: str, ctx: ScorerContext) -> Score:
        want = normalize_answer(reference)
        if not want:
            return Score(None, error=f"the reference {_short(reference, 60)!r} is empty after "
                                     "normalization (only punctuation or articles)")
        found = f" {want} " in f" {normalize_answer(answer)} "
        return Score(1.0 if found else 0.0,
                     detail=f"{'contains' if found else 'does not contain'} "
                            f"{_short(want, 60)!r}")


class RegexScorer(Scorer):
    """Regular-expression matching (Python ``re`` syntax), in one of two modes.

    - Without ``pattern``: each reference *is* a regular expression (TREC-QA-style answer
      patterns) and the answer passes when the pattern is found in it (``re.search``; with
      ``full=true``, when it matches the whole stripped answer).
    - With ``pattern``: the pattern extracts the answer (its first group if it has groups,
      else the whole match; the first match in the text), which must equal a reference after
      stripping (like lm-evaluation-harness's regex filter followed by exact match). Without
      a reference, finding the pattern is enough.

    ``ignore_case`` makes both the matching and the comparison case-insensitive.
    """

    name = "regex"
    description = ("the reference is a regex searched for in the answer; or --param "
                   "pattern=RE extracts the answer, which must equal the reference")
    needs_reference = False
    params: ClassVar[dict[str, Param]] = {
        "pattern": Param("", "regex that extracts the answer (group 1 if any); empty: the "
                             "reference is the regex", str),
        "full": Param(False, "require the regex to match the whole stripped answer", bool),
        "ignore_case": Param(False, "case-insensitive matching and comparison", bool),
    }

    def score(self, items: Any, ctx: ScorerContext) -> list[Score]:
        pattern = str(self.param(ctx, "pattern") or "")
        flags = re.IGNORECASE if self.param(ctx, "ignore_case") else 0
        compiled = None
        if pattern:
            try:
                compiled = re.compile(pattern, flags)
            except re.error as exc:
                raise UsageError(f"--param pattern={pattern}: not a valid regular expression "
                                 f"({exc}).") from None
        return [self._one(item, compiled, flags, bool(self.param(ctx, "full")))
                for item in items]

    def _one(self, item: ScoreItem, compiled: re.Pattern[str] | None, flags: int,
             full: bool) -> Score:
        answer = str(item.answer or "")
        refs = references(item.reference)
        if compiled is None:
            if not refs:
                return Score(None, error=NO_REFERENCE + " (the reference is the regex; or "
                                                        "give --param pattern=...)")
            return best_score([self._reference_pattern(answer, ref, flags, full)
                               for ref in refs])
        m = compiled.fullmatch(answer.strip()) if full else compiled.search(answer)
        if m is None:
            return Score(0.0, detail="the pattern does not match the answer")
        got = m[1] if compiled.groups and m[1] is not None else m[0]
        if not refs:
            return Score(1.0, extracted=_short(got), detail="the pattern matches")
        fold = str.casefold if flags else str
        same = any(fold(got.strip()) == fold(ref.strip()) for ref in refs)
        return Score(1.0 if same else 0.0, extracted=_short(got),
                     detail=f"extracted {_short(got.strip(), 60)!r} "
                            f"{'equals' if same else 'differs from'} the reference")

    @staticmethod
    def _reference_pattern(answer: str, ref: str, flags: int, full: bool) -> Score:
        try:
            rx = re.compile(ref, flags)
        except re.error as exc:
            return Score(None, error=f"the reference {_short(ref, 60)!r} is not a valid "
                                     f"regular expression ({exc})")
        m = rx.fullmatch(answer.strip()) if full else rx.search(answer)
        if m is None:
            return Score(0.0, detail=f"no match for {_short(ref, 60)!r}")
        return Score(1.0, extracted=_short(m[0]), detail=f"matches {_short(ref, 60)!r}")


@hookimpl
def register_scorers(register: Any) -> None:
    for scorer in (ExactScorer(), NormalizedScorer(), F1Scorer(), RegexScorer(),
                   ContainsScorer()):
        register(scorer)
