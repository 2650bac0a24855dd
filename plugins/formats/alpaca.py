"""Alpaca instruction data: ``instruction``, optional ``input``, ``output``.

Stanford Alpaca (Taori et al., 2023) and its derivatives (AlpaGasus, Cherry, LLaMA-Factory
demos). The task is the instruction, followed by the input when there is one; the output is
both the assistant message and the answer. ``system`` and ``history`` are honoured.
"""

from __future__ import annotations

from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import as_text, make_episode, make_step
from xpkit.plugins.formats.fields import find_outcome, rest


class AlpacaFormat(InputFormat):
    name = "alpaca"
    description = "Alpaca instruction/input/output records"

    def sniff(self, record: dict[str, Any]) -> float:
        if "instruction" in record and "output" in record:
            return 1.0 if "input" in record else 0.85
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        for key in ("instruction", "output"):
            if key not in record:
                raise RecordError("missing", key)
        instruction = as_text(record["instruction"], "instruction", required=True)
        inp = as_text(record.get("input"), "input") or ""
        output = as_text(record["output"], "output")
        if output is None:
            raise RecordError("is null", "output")
        task = f"{instruction}\n\n{inp}" if inp else instruction
        steps: list[dict[str, Any]] = []
        used = {"instruction", "input", "output"}
        system = record.get("system")
        if isinstance(system, str) and system:
            steps.append(make_step("system", "message", system))
            used.add("system")
        history = record.get("history")
        if isinstance(history, list) and history:
            used.add("history")
            for i, pair in enumerate(history):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise RecordError("expected [user, assistant] pairs", f"history.{i}")
                steps.append(make_step("user", "message", as_text(pair[0], f"history.{i}.0")))
                steps.append(make_step("assistant", "message",
                                       as_text(pair[1], f"history.{i}.1")))
        steps.append(make_step("user", "message", task))
        steps.append(make_step("assistant", "message", output))
        outcome, oused = find_outcome(record)
        return make_episode(task=task, steps=steps, outcome=outcome, answer=output,
                            model=options.model, meta=rest(record, used | oused))


ALPACA = AlpacaFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(ALPACA)
