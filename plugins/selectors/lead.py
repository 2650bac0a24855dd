"""LEAD coarse-to-fine selection (Lin et al. 2025, "LEAD: Iterative Data Selection for
Efficient LLM Instruction Tuning"): cluster the pool, let a multi-armed bandit decide which
cluster the next record comes from (arms = clusters, reward = the utility of the record it
yields), and inside a cluster take records by utility.

The paper's utility is its model-aware Instance-Level Dynamic Uncertainty; until the model
runtime lands the utility is the ``--score`` in use (response length, outcome
informativeness, ...), rank-normalised to [0, 1]. The bandit is UCB1 (Auer, Cesa-Bianchi &
Fischer 2002); a cluster's reward falls as its best records are used, so the budget spreads
across clusters in proportion to how much utility each still offers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Param, Ranking, Selector
from xpkit.plugins.selectors.basic import tie_break


def rank_normalise(values: Any) -> Any:
    """Map values to (0, 1] by rank (ties share their mean rank); NaN counts lowest."""
    import numpy as np

    v = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
    n = v.size
    if n == 0:
        return v
    order = np.argsort(v, kind="stable")
    ranks = np.empty(n, np.float64)
    sv = v[order]
    brk = np.flatnonzero(np.diff(sv) != 0) + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [n]))
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return ranks / n


class Lead(Selector):
    name = "lead"
    description = "LEAD: bandit over clusters (coarse), then records by utility (fine)"
    needs = frozenset({"sketches"})
    params: ClassVar[dict[str, Param]] = {"explore": Param(0.5, "UCB exploration weight")}

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        n = view.size
        u = rank_normalise(view.utility())
        raw = np.asarray(view.utility(), np.float64)
        if n == 0:
            return Ranking(order=[], score=raw, reason=str)
        labels = view.clusters()
        k = int(labels.max()) + 1
        order = np.lexsort((tie_break(view, ctx), -u, labels))
        bounds = np.searchsorted(labels[order], np.arange(k + 1))
        queues = [order[bounds[c]:bounds[c + 1]] for c in range(k)]
        explore = float(ctx.params["explore"])
        pulls = np.zeros(k)
        total = np.zeros(k)
        info: dict[int, tuple[int, int, float]] = {}

        def gen() -> Iterator[int]:
            head = np.zeros(k, np.int64)
            left = np.array([q.size for q in queues], np.int64)
            t = 0
            while left.sum() > 0:
                t += 1
                live = left > 0
                fresh = live & (pulls == 0)
                if fresh.any():
                    # Unexplored clusters first, best first record first.
                    cand = np.flatnonzero(fresh)
                    c = int(cand[np.argmax([u[queues[c][0]] for c in cand])])
                else:
                    mean = np.where(pulls > 0, total / np.maximum(pulls, 1), 0.0)
                    ucb = mean + explore * np.sqrt(2.0 * math.log(t) / np.maximum(pulls, 1))
                    ucb[~live] = -np.inf
                    c = int(np.argmax(ucb))
                i = int(queues[c][head[c]])
                head[c] += 1
                left[c] -= 1
                pulls[c] += 1
                total[c] += u[i]
                info[i] = (c, int(pulls[c]), float(total[c] / pulls[c]))
                yield i

        def reason(p: int) -> str:
            c, pull, mean = info.get(p, (int(labels[p]), 0, 0.0))
            return (f"lead: cluster {c} (pull {pull}, mean utility {mean:.2f}), utility "
                    f"{u[p]:.2f} (score {raw[p]:.4g})")

        return Ranking(order=gen(), score=raw, cluster=labels, reason=reason)


@hookimpl
def register_selectors(register: Any) -> None:
    register(Lead())
