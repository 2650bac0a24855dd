"""SWE-agent trajectories (``.traj`` files, Yang et al., 2024, "SWE-agent: Agent-Computer
Interfaces Enable Automated Software Engineering").

A ``.traj`` file is one JSON document: ``trajectory`` (a list of ``{thought, action,
observation, response, state}``), ``history`` (the chat messages: system prompt, optional
demonstrations marked ``is_demo``, the instance prompt holding the issue, then the agent's
turns), and ``info`` (``exit_status``, ``submission`` patch, ``model_stats``). Demonstration
files may hold only ``history``: its assistant turns carry ``thought`` and ``action`` (and
``tool_calls`` with function calling), and the observations are ``tool`` turns or user turns
with ``message_type: observation``.

Each step becomes a thought, an action (``name`` = the command's first word, ``args`` =
``{"command": ...}``) and an observation; the system prompt is the first step. The task is
the issue text of the first non-demonstration user message (between ``ISSUE:`` and
``INSTRUCTIONS:``, or inside ``<issue>`` tags; for CTF challenges the text before
``INSTRUCTIONS:``). The answer is ``info.submission``, or the output of the final ``submit``.
SWE-agent records no pass/fail verdict, so ``outcome`` stays null unless the record carries
one (e.g. ``resolved``); ``exit_status`` and the other ``info`` fields are kept in ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import IO, Any

import orjson

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.io import SourceRow
from xpkit.core.records import make_episode, make_step
from xpkit.plugins.formats.fields import content_text, find_outcome, parse_json_text, rest


def issue_text(prompt: str) -> str:
    """The issue (or challenge) inside SWE-agent's instance prompt template."""
    if "<issue>" in prompt and "</issue>" in prompt:
        return prompt.split("<issue>", 1)[1].split("</issue>", 1)[0].strip()
    head = prompt.split("\nINSTRUCTIONS:", 1)[0]
    if "ISSUE:\n" in head:
        head = head.split("ISSUE:\n", 1)[1]
    return head.strip()


def _instance_prompt(history: list[Any]) -> tuple[int | None, str | None]:
    """(index, text) of the first user message that is not a demonstration."""
    for i, msg in enumerate(history):
        if isinstance(msg, dict) and msg.get("role") == "user" and not msg.get("is_demo"):
            text = content_text(msg.get("content"), f"history.{i}.content")
            if text:
                return i, text
    return None, None


def _system_prompt(history: list[Any]) -> str | None:
    for i, msg in enumerate(history):
        if isinstance(msg, dict) and msg.get("role") == "system":
            return content_text(msg.get("content"), f"history.{i}.content")
    return None


def _command_steps(thought: Any, action: Any, observation: Any,
                   field: str) -> list[dict[str, Any]]:
    """One agent turn: its thought (when any), the command, and what the command printed."""
    steps = []
    if thought is not None and not isinstance(thought, str):
        raise RecordError("expected text", f"{field}.thought")
    if thought and thought.strip():
        steps.append(make_step("assistant", "thought", thought.strip()))
    command = str(action or "").strip()
    steps.append(make_step("assistant", "action", command,
                           name=command.split(None, 1)[0] if command else None,
                           args={"command": command}))
    if observation is not None:
        steps.append(make_step("environment", "observation", observation))
    return steps


def _steps_from_trajectory(traj: list[Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for i, entry in enumerate(traj):
        if not isinstance(entry, dict) or "action" not in entry:
            raise RecordError("expected an object with an action", f"trajectory.{i}")
        steps += _command_steps(entry.get("thought"), entry["action"],
                                entry.get("observation") or "", f"trajectory.{i}")
    return steps


def _steps_from_history(history: list[Any], after: int) -> list[dict[str, Any]]:
    """Steps from the agent turns of ``history`` that follow the instance prompt."""
    steps: list[dict[str, Any]] = []
    for i in range(after + 1, len(history)):
        msg = history[i]
        if not isinstance(msg, dict) or msg.get("is_demo"):
            continue
        role, field = msg.get("role"), f"history.{i}"
        text = content_text(msg.get("content"), f"{field}.content") or ""
        if role == "assistant":
            action = msg.get("action")
            calls = msg.get("tool_calls") or []
            if action is None and calls and isinstance(calls[0], dict):
                fn = calls[0].get("function") or {}
                action = " ".join([str(fn.get("name", "")),
                                   orjson.dumps(parse_json_text(fn.get("arguments"))).decode()])
            if action is None:
                steps.append(make_step("assistant", "message", text))
            else:
                steps += _command_steps(msg.get("thought", text), action, None, field)
        elif role == "tool" or msg.get("message_type") == "observation":
            steps.append(make_step("environment", "observation", text))
        elif role in ("user", "system"):
            steps.append(make_step(role, "message", text))
    return steps


def _submission(steps: list[dict[str, Any]]) -> str | None:
    """The output of a final ``submit`` command (SWE-agent prints the patch)."""
    for a, b in pairwise(steps):
        if a["kind"] == "action" and a.get("name") == "submit" and b["kind"] == "observation":
            return b["content"]
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
        history = record.get("history")
        if traj is None and isinstance(history, list) and any(
                isinstance(m, dict) and m.get("role") == "assistant" and "action" in m
                for m in history[:10]):
            return 0.9
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        traj, history = record.get("trajectory"), record.get("history")
        if traj is not None and not isinstance(traj, list):
            raise RecordError(f"expected a list, found {type(traj).__name__}", "trajectory")
        if history is not None and not isinstance(history, list):
            raise RecordError(f"expected a list, found {type(history).__name__}", "history")
        if not traj and not history:
            raise RecordError("has neither a trajectory nor a history", "trajectory")
        index, prompt = _instance_prompt(history or [])
        task = record.get("problem_statement") or (issue_text(prompt) if prompt else None)
        steps: list[dict[str, Any]] = []
        system = _system_prompt(history or [])
        if system:
            steps.append(make_step("system", "message", system))
        if prompt:
            steps.append(make_step("user", "message", prompt))
        if traj:
            steps += _steps_from_trajectory(traj)
        elif index is not None:
            steps += _steps_from_history(history, index)  # type: ignore[arg-type]
        if not any(s["kind"] == "action" for s in steps):
            raise RecordError("has no agent actions", "trajectory" if traj else "history")
        info = record.get("info") if isinstance(record.get("info"), dict) else {}
        outcome, oused = find_outcome(record, "info")
        meta = rest(record, {"trajectory", "history", "info", "problem_statement"} | oused)
        meta.update({k: v for k, v in info.items() if k != "submission"})
        return make_episode(task=task, steps=steps, outcome=outcome,
                            answer=info.get("submission") or _submission(steps),
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


SWE_AGENT = SWEAgentFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(SWE_AGENT)
