"""Built-in scores: per-record utilities that need no model.

- ``length``: log of the response length, the "Long Is More for Alignment" baseline (Zhao
  et al. 2024: the longest responses make a strong instruction-tuning subset).
- ``reward``: the recorded outcome (success 1/0, else a reward in [0, 1]; unknown = 0).
- ``informative``: MoPPS (Qu et al. 2025), the posterior predictive probability that a
  group of new attempts at the record's task is mixed (neither all solved nor all failed).
- ``difficulty``: DRIVE-style hardness (Zhu et al. 2025), the posterior mean failure rate of
  the record's task.
- ``random``: a seeded uniform draw (a control).
"""

from __future__ import annotations

from typing import Any, ClassVar

from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Param, Selector

PRIOR = {"alpha": Param(1.0, "Beta prior successes (pseudo-count)"),
         "beta": Param(1.0, "Beta prior failures (pseudo-count)")}


class LengthScore(Selector):
    name = "length"
    kind = "score"
    description = "log response length (Long Is More, Zhao et al. 2024)"

    def score(self, view: Any, ctx: Any) -> Any:
        import numpy as np

        return np.log1p(np.asarray(view.response_chars, np.float64))


class RewardScore(Selector):
    name = "reward"
    kind = "score"
    description = "recorded outcome: success 1/0 or a reward in [0, 1]"
    needs = frozenset({"outcomes"})

    def score(self, view: Any, ctx: Any) -> Any:
        import numpy as np

        return np.nan_to_num(np.asarray(view.outcome, np.float64), nan=0.0)


class InformativeScore(Selector):
    name = "informative"
    kind = "score"
    description = "MoPPS: P(a group of new attempts at the task is mixed)"
    needs = frozenset({"outcomes"})
    params: ClassVar[dict[str, Param]] = {
        **PRIOR, "group": Param(8, "attempts per group (GRPO group size)", int)}

    def score(self, view: Any, ctx: Any) -> Any:
        from xpkit.core.difficulty import informative_probability

        p = ctx.params
        a, b, _ = view.task_posteriors(p["alpha"], p["beta"])
        return informative_probability(a, b, p["group"])


class DifficultyScore(Selector):
    name = "difficulty"
    kind = "score"
    description = "DRIVE: posterior mean failure rate of the task"
    needs = frozenset({"outcomes"})
    params: ClassVar[dict[str, Param]] = dict(PRIOR)

    def score(self, view: Any, ctx: Any) -> Any:
        from xpkit.core.difficulty import posterior_difficulty

        a, b, _ = view.task_posteriors(ctx.params["alpha"], ctx.params["beta"])
        return posterior_difficulty(a, b)


class RandomScore(Selector):
    name = "random"
    kind = "score"
    description = "seeded uniform random utility (a control)"

    def score(self, view: Any, ctx: Any) -> Any:
        return ctx.rng(7).random(view.size)


SCORES = (LengthScore(), RewardScore(), InformativeScore(), DifficultyScore(), RandomScore())


@hookimpl
def register_selectors(register: Any) -> None:
    for s in SCORES:
        register(s)
