"""Built-in methods that need neither sketches nor outcomes: all, random, top."""

from __future__ import annotations

from typing import Any

from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Ranking, Selector


def tie_break(view: Any, ctx: Any) -> Any:
    """A seeded random key per position: deterministic order among equal scores."""
    return ctx.rng(11).random(view.size)


class KeepAll(Selector):
    name = "all"
    description = "keep every candidate (the default without a budget)"

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        return Ranking(order=range(view.size), score=np.full(view.size, np.nan),
                       reason=lambda _p: "kept: passed the filters and dedup")


class RandomSample(Selector):
    name = "random"
    description = "a seeded uniform random sample (the default with a budget)"

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        order = ctx.rng(3).permutation(view.size)
        rank = np.empty(view.size, np.int64)
        rank[order] = np.arange(view.size)
        return Ranking(order=order.tolist(), score=np.full(view.size, np.nan),
                       reason=lambda p: f"random: rank {int(rank[p]) + 1} under --seed "
                                        f"{ctx.seed}")


class Top(Selector):
    name = "top"
    description = "highest --score first (e.g. --score length: Long Is More)"

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        u = np.asarray(view.utility(), np.float64)
        order = np.lexsort((tie_break(view, ctx), -np.nan_to_num(u, nan=-np.inf)))
        rank = np.empty(view.size, np.int64)
        rank[order] = np.arange(view.size)
        return Ranking(order=order.tolist(), score=u,
                       reason=lambda p: f"top: score {u[p]:.4g} (rank {int(rank[p]) + 1})")


@hookimpl
def register_selectors(register: Any) -> None:
    for s in (KeepAll(), RandomSample(), Top()):
        register(s)
