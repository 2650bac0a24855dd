"""SWE-agent trajectories (``.traj`` files, Yang et al., 2024, "SWE-agent: Agent-Computer
Interfaces Enable Automated Software Engineering").

A ``.traj`` file is one JSON document: ``trajectory`` (a list of ``{thought, action,
observation, response, state}``), ``history`` (the chat messages; the first user message
holds the issue), and ``info`` (``exit_status``, ``submission`` patch, ``model_stats``).
Each trajectory entry becomes a thought, an action (``name`` = the command) and an
observation. SWE-agent records no pass/fail verdict itself, so ``outcome.success`` stays
null unless the record carries one (e.g. ``resolved``); ``exit_status`` is kept in ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import orjson

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.io import SourceRow
from xpkit.core.records import make_episode, make_step
from xpkit.plugins.formats.fields import find_outcome, rest


def _task_from_history(history: Any) -> str | None:
    if not isinstance(history, list):
        return None
    for msg in history:
        if isinstance(msg, dict) and msg.get("role") == "user" and msg.get("content"):
            content = msg["content"]
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if "<issue>" in content and "</issue>" in content:
                return content.split("<issue>", 1)[1].split("</issue>", 1)[0].strip()
            return str(content)
    return None


class SWEAgentFormat(InputFormat):
    name = "swe-agent"
    description = "SWE-agent .traj files (trajectory of thought/action/observation + info)"
    file_suffixes = (".traj",)

    def sniff(self, record: dict[str, Any]) -> float:
        traj = record.get("trajectory")
        if isinstance(traj, list) and traj and isinstance(traj[0], dict) \
                and "action" in traj[0] and "observation" in traj[0]:
            return 1.0
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        traj = record.get("trajectory")
        if not isinstance(traj, list):
            raise RecordError("missing or not a list", "trajectory")
        steps: list[dict[str, Any]] = []
        task = record.get("problem_statement") or _task_from_history(record.get("history"))
        if task:
            steps.append(make_step("user", "message", task))
        for i, entry in enumerate(traj):
            if not isinstance(entry, dict) or "action" not in entry:
                raise RecordError("expected an object with an action", f"trajectory.{i}")
            thought = entry.get("thought") or ""
            if thought.strip():
                steps.append(make_step("assistant", "thought", thought.strip()))
            action = str(entry.get("action") or "").strip()
            name = action.split(None, 1)[0] if action else None
            steps.append(make_step("assistant", "action", action, name=name,
                                   args={"command": action}))
            steps.append(make_step("environment", "observation", entry.get("observation")))
        info = record.get("info") if isinstance(record.get("info"), dict) else {}
        outcome, oused = find_outcome(record, "info")
        meta = rest(record, {"trajectory", "history", "info", "problem_statement"} | oused)
        meta.update({k: v for k, v in info.items() if k not in ("submission",)})
        return make_episode(task=task, steps=steps, outcome=outcome,
                            answer=info.get("submission"),
                            model=record.get("model") or options.model, meta=meta)

    def read_file(self, name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
        data = stream.read()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            line = data.count(b"\n", 0, exc.pos) + 1
            yield SourceRow(name, line, None, f"invalid JSON ({exc})", data[:4096])
            return
        if not isinstance(doc, dict):
            yield SourceRow(name, 1, None, "expected a JSON object", data[:4096])
            return
        yield SourceRow(name, 1, doc, unit="item")


@hookimpl
def register_formats(register: Any) -> None:
    register(SWEAgentFormat())
