"""Difficulty methods from recorded outcomes: MoPPS and DRIVE (see core/difficulty.py).

MoPPS (Qu et al. 2025, "Model Predictive Prompt Selection"): a Beta posterior per task;
tasks whose next group of attempts is most likely mixed (neither always solved nor never)
come first. DRIVE (Zhu et al. 2025): a hard-focus curriculum that keeps the hardest tasks,
dropping those the model already solves; ``--order curriculum`` writes them easiest first
so training ends on the hardest.
"""

from __future__ import annotations

from typing import Any, ClassVar

from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Param, Ranking, Selector
from xpkit.plugins.selectors.basic import tie_break
from xpkit.plugins.selectors.scores import PRIOR


def _solved(view: Any, ctx: Any) -> tuple[Any, Any, Any, Any]:
    a, b, n = view.task_posteriors(ctx.params["alpha"], ctx.params["beta"])
    return a, b, n, a - ctx.params["alpha"]


def _order(view: Any, ctx: Any, key: Any, keep: Any = None) -> list[int]:
    """Positions by ``key`` descending; within a task, successes and higher rewards first."""
    import numpy as np

    out = np.nan_to_num(np.asarray(view.outcome, np.float64), nan=-1.0)
    order = np.lexsort((tie_break(view, ctx), -out, view.task, -key))
    if keep is not None:
        order = order[keep[order]]
    return order.tolist()


class MoPPS(Selector):
    name = "mopps"
    description = "MoPPS: tasks most likely informative (neither always solved nor never)"
    needs = frozenset({"outcomes"})
    params: ClassVar[dict[str, Param]] = {
        **PRIOR,
        "group": Param(8, "attempts per group (GRPO group size)", int),
        "sampling": Param("predictive", "predictive (closed form) or thompson (posterior "
                                        "sampling, seeded)", str),
        "target": Param(0.5, "success rate preferred by thompson sampling"),
    }

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        from xpkit.core.difficulty import informative_probability, thompson_scores
        from xpkit.core.errors import UsageError

        p = ctx.params
        a, b, n, s = _solved(view, ctx)
        if p["sampling"] == "predictive":
            score = informative_probability(a, b, p["group"])
            what = f"P(mixed group of {p['group']})"
        elif p["sampling"] == "thompson":
            tasks, first = np.unique(view.task, return_index=True)
            draw = thompson_scores(a[first], b[first], ctx.rng(13), p["target"])
            score = draw[np.searchsorted(tasks, view.task)]
            what = f"-|sampled rate - {p['target']}|"
        else:
            raise UsageError(f"--param sampling={p['sampling']}: choose predictive or "
                             "thompson.")
        if not np.any(n > 0):
            raise UsageError("--method mopps needs recorded outcomes (success or reward) of "
                             "several attempts per task; none of the candidates has one.")
        return Ranking(order=_order(view, ctx, score), score=score,
                       reason=lambda q: (f"mopps: task solved {s[q]:g}/{n[q]:g}, "
                                         f"{what} = {score[q]:.3f}"))


class Drive(Selector):
    name = "drive"
    description = "DRIVE hard-focus: hardest tasks first, tasks already solved left out"
    needs = frozenset({"outcomes"})
    params: ClassVar[dict[str, Param]] = {
        **PRIOR,
        "max_success": Param(0.75, "leave out tasks whose posterior mean success rate is "
                                   "above this"),
    }

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        from xpkit.core.difficulty import posterior_difficulty, posterior_mean
        from xpkit.core.errors import UsageError

        a, b, n, s = _solved(view, ctx)
        if not np.any(n > 0):
            raise UsageError("--method drive needs recorded outcomes (success or reward) of "
                             "attempts per task; none of the candidates has one.")
        diff = posterior_difficulty(a, b)
        keep = posterior_mean(a, b) <= ctx.params["max_success"]
        cap = ctx.params["max_success"]
        return Ranking(order=_order(view, ctx, diff, keep), score=diff,
                       reason=lambda q: (f"drive: task solved {s[q]:g}/{n[q]:g}, "
                                         f"difficulty {diff[q]:.3f}"),
                       excluded=lambda q: None if keep[q] else (
                           f"drive: task too easy (solved {s[q]:g}/{n[q]:g}, posterior mean "
                           f"success {1 - diff[q]:.2f} > max_success {cap:g})"))


@hookimpl
def register_selectors(register: Any) -> None:
    for s in (MoPPS(), Drive()):
        register(s)
