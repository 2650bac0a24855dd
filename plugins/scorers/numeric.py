"""The ``numeric`` scorer: the answer's final number equals the reference's.

GSM8K-style grading (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"):
the reference is a worked solution ending in ``#### 72`` (or a bare number) and the model's
answer is right when its final number is the same. The final number of both sides is
found by ``answers.final_number`` (``####``, then ``\\boxed{}``, then "the answer is", then
the last number), which reads ``1,234``, ``-$5``, ``50%``, ``3/4``, ``\\frac{3}{4}`` and
``18 dollars`` as numbers, exactly (as fractions, so ``0.1`` is one tenth). Two whole
numbers must be equal; otherwise values compare within a relative ``tolerance`` (default
1e-6) or an absolute ``abs_tolerance`` (default 1e-9, for answers near zero), as
``math.isclose`` does. A percent sign is ignored (``50%`` equals 50, not 0.5), as GSM8K's
references write percentages as plain numbers.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, ClassVar

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
from xpkit.plugins.scorers.answers import final_number, format_number


def close(a: Fraction, b: Fraction, rel: float, abs_: float) -> bool:
    """``a`` equals ``b``: exactly when both are whole numbers (a relative tolerance would
    let 1,500,001 pass for 1,500,000), else within the tolerances."""
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    try:
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)
    except OverflowError:  # beyond float range: only exact equality counts
        return False


class NumericScorer(Scorer):
    """GSM8K final-number match (see the module docstring)."""

    name = "numeric"
    description = ("the final number (#### N, \\boxed{}, 'the answer is N', else the last "
                   "number) equals the reference's, within a tolerance (GSM8K)")
    params: ClassVar[dict[str, Param]] = {
        "tolerance": Param(1e-6, "relative tolerance of the comparison (whole numbers "
                                 "compare exactly)"),
        "abs_tolerance": Param(1e-9, "absolute tolerance (matters for answers near 0)"),
    }

    def score_one(self, item: ScoreItem, ctx: ScorerContext) -> Score:
        refs = references(item.reference)
        if not refs:
            return Score(None, error=NO_REFERENCE)
        rel, abs_ = float(self.param(ctx, "tolerance")), float(self.param(ctx, "abs_tolerance"))
        got = final_number(str(item.answer or ""))
        scores = []
        for ref in refs:
            want = final_number(ref)
            if want is None:
                scores.append(Score(None, error=f"the reference has no number: {ref[:80]!r}"))
                continue
            wanted = f"reference {format_number(want[0].value)} ({want[1]})"
            if got is None:
                scores.append(Score(0.0, detail=f"no number in the answer; {wanted}"))
                continue
            same = close(got[0].value, want[0].value, rel, abs_)
            scores.append(Score(1.0 if same else 0.0, extracted=format_number(got[0].value),
                                detail=f"answer {format_number(got[0].value)} ({got[1]}) "
                                       f"{'=' if same else '!='} {wanted}"))
        return best_score(scores)


@hookimpl
def register_scorers(register: Any) -> None:
    register(NumericScorer())
