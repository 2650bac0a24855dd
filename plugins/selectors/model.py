"""Model-aware selectors announced before the model runtime lands (they cannot run yet).

They register now so that ``--help``, ``xpkit plugins`` and the error messages name them,
and so that the later implementations slot in under the same names:

- ``judge`` (score): an LLM rates each record, AlpaGasus-style (Chen et al. 2024,
  "AlpaGasus: Training a Better Alpaca with Fewer Data"), through the local runtime;
- ``ifd`` (score): instruction-following difficulty, the loss of the answer with vs without
  its instruction (Li et al. 2024, "From Quantity to Quality", Cherry LLM);
- ``perplexity`` (score): the answer's perplexity under the local model;
- ``add-one-in`` (method): grow the subset greedily by asking the model which candidate adds
  most to what is already chosen (batched choices, bounded calls).
"""

from __future__ import annotations

from typing import Any

from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Selector

LATER = ("needs the local model runtime; it is coming in a later version of select-data "
         "(available now: {choices}).")


class _Later(Selector):
    available = False
    needs = frozenset({"model"})


class Judge(_Later):
    name = "judge"
    kind = "score"
    description = "LLM-judge rating, AlpaGasus-style (coming: needs the model runtime)"
    unavailable_reason = LATER.format(choices="length, reward, informative, difficulty, "
                                              "random")


class IFD(_Later):
    name = "ifd"
    kind = "score"
    description = "instruction-following difficulty from token losses (coming)"
    unavailable_reason = Judge.unavailable_reason


class Perplexity(_Later):
    name = "perplexity"
    kind = "score"
    description = "answer perplexity under the local model (coming)"
    unavailable_reason = Judge.unavailable_reason


class AddOneIn(_Later):
    name = "add-one-in"
    kind = "method"
    description = "LLM choice-based greedy growth (coming: needs the model runtime)"
    unavailable_reason = LATER.format(choices="all, random, top, k-center, "
                                              "facility-location, mopps, drive, lead")


@hookimpl
def register_selectors(register: Any) -> None:
    for s in (Judge(), IFD(), Perplexity(), AddOneIn()):
        register(s)
