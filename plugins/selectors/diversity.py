"""Diversity methods over text sketches: k-center greedy and facility location.

k-center greedy: Sener & Savarese 2018 (core-set active learning), farthest-first
traversal (Gonzalez 1985). Facility location: Nemhauser, Wolsey & Fisher 1978 greedy,
lazy evaluation (Minoux 1978), as used for data subsets by CRAIG (Mirzasoleiman et al.
2020). Sketches are hashed TF-IDF vectors or MinHash signatures (``--features``);
embedding vectors plug in with the model runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Param, Ranking, Selector
from xpkit.plugins.selectors.basic import tie_break


class KCenter(Selector):
    name = "k-center"
    description = "k-center greedy: each pick is the record farthest from all earlier picks"
    needs = frozenset({"sketches"})

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        from xpkit.core.diversity import k_center_greedy

        n = view.size
        score = np.full(n, np.nan)
        if n == 0:
            return Ranking(order=[], score=score, reason=str)
        sk = view.sketches()
        u = np.nan_to_num(np.asarray(view.utility(), np.float64), nan=-np.inf)
        first = int(np.lexsort((tie_break(view, ctx), -u))[0])
        picks: dict[int, int] = {}

        def order() -> Iterator[int]:
            for k, (i, d) in enumerate(k_center_greedy(sk, first)):
                score[i] = d
                picks[i] = k
                yield i

        return Ranking(order=order(), score=score, cluster=view.clusters(),
                       reason=lambda p: (f"k-center: pick {picks.get(p, 0) + 1}, distance "
                                         f"{score[p]:.3f} to the nearest earlier pick"))


class FacilityLocation(Selector):
    name = "facility-location"
    description = "facility location: greedy max coverage of the pool (lazy greedy)"
    needs = frozenset({"sketches"})
    params: ClassVar[dict[str, Param]] = {
        "demand": Param(2048, "demand points (a seeded sample when the pool is larger)", int),
    }

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        from xpkit.core.diversity import facility_location_greedy

        n = view.size
        score = np.full(n, np.nan)
        if n == 0:
            return Ranking(order=[], score=score, reason=str)
        sk = view.sketches()
        m = ctx.params["demand"]
        demand = (np.sort(ctx.rng(5).choice(n, size=m, replace=False)) if n > m
                  else np.arange(n))
        tb = np.argsort(np.argsort(tie_break(view, ctx)))
        picks: dict[int, int] = {}

        def order() -> Iterator[int]:
            for k, (i, g) in enumerate(facility_location_greedy(sk, demand, tb)):
                score[i] = g
                picks[i] = k
                yield i

        return Ranking(order=order(), score=score, cluster=view.clusters(),
                       reason=lambda p: (f"facility-location: pick {picks.get(p, 0) + 1}, "
                                         f"coverage gain {score[p]:.4f}"))


@hookimpl
def register_selectors(register: Any) -> None:
    for s in (KCenter(), FacilityLocation()):
        register(s)
