"""Chat logs: OpenAI chat ``messages`` (with tool calls) and ShareGPT ``conversations``.

OpenAI chat (the Chat Completions message format): ``{"messages": [{"role", "content",
"tool_calls"?, "name"?, "tool_call_id"?}]}``, also with ``traj`` or ``conversation`` as the
list, as in tau-bench (Yao et al., 2024, "tau-bench: A Benchmark for Tool-Agent-User
Interaction in Real-World Domains"). Assistant ``tool_calls`` become action steps with
``name`` and parsed ``args``; ``tool`` turns become observations named after their tool.

ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|
"observation", "value"}]}`` as used by Vicuna and LLaMA-Factory (whose ``tools`` schema and
DPO ``chosen``/``rejected`` fields are kept in ``meta``). A ``function_call`` turn is an
action whose ``name`` and ``args`` come from its JSON value.

In both, assistant turns written in ReAct style (``Thought: ... Action: ...``) are split into
thought and action steps, and user turns that start ``Observation:`` become observations, as
in FireAct's chat sets. The task is an explicit task field when the record has one
(tau-bench's ``info.task.instruction``, the user goal shared by all trials of a task), else
the first user turn. The answer is an explicit ``answer``/``pred`` field, else the last
assistant message, else the argument of the last ``Finish[...]`` action.
"""

from __future__ import annotations

from typing import Any

import orjson

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import make_episode, make_step
from xpkit.plugins.formats.fields import (
    REACT_MARKER,
    content_text,
    find_outcome,
    finish_argument,
    first_present,
    get_path,
    parse_json_text,
    rest,
)
from xpkit.plugins.formats.react import _PLAIN_MARKERS, split_react_text

MESSAGE_KEYS = ("messages", "traj", "conversation")
# Where a chat record states its task explicitly (dotted paths; the first that is text wins).
TASK_PATHS = ("task", "question", "instruction", "info.task.instruction")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool",
                  "tool": "tool", "function": "tool"}


def _turn_steps(role: str, content: str) -> list[dict[str, Any]]:
    """One turn as steps: ReAct text is split, anything else is a single message."""
    if role == "assistant":
        head = content.lstrip()
        if head.startswith(_PLAIN_MARKERS) or REACT_MARKER.match(head):
            return split_react_text(content)
    # (Lower-casing 11 characters, not the whole turn, gives the same answer.)
    elif role == "user" and content.lstrip()[:11].lower().startswith("observation"):
        obs = split_react_text(content)
        for s in obs:
            s["role"] = "environment"
        return obs
    return [make_step(role, "message", content)]


def _action_step(name: str, args: Any, content: str | None = None) -> dict[str, Any]:
    """A tool call as an action step; its content is ``name(args-as-JSON)`` unless given."""
    if content is None:
        content = f"{name}({orjson.dumps(args).decode()})"
    return make_step("assistant", "action", content, name=name, args=args)


def _explicit_task(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(root field, text) of the record's own task statement, if it has one."""
    for path in TASK_PATHS:
        value = get_path(record, path) if "." in path else record.get(path)
        if isinstance(value, str) and value.strip():
            return path.split(".", 1)[0], value
    return None, None


def _finish(steps: list[dict[str, Any]], record: dict[str, Any], used: set[str],
            options: FormatOptions, first_user: str | None) -> dict[str, Any]:
    """Outcome, task, answer, reference and model of a chat record, then the episode."""
    outcome, oused = find_outcome(record, "info", "metadata")
    used |= oused
    tkey, task = _explicit_task(record)
    if tkey is not None and tkey != "info":  # info keeps its other fields in meta
        used.add(tkey)
    answer = next((s["content"] for s in reversed(steps)
                   if s["role"] == "assistant" and s["kind"] == "message" and s["content"]),
                  None) or finish_argument(steps)
    akey, explicit = first_present(record, ("answer", "pred"))
    rkey, reference = first_present(record, ("reference", "gt", "ground_truth"))
    mkey, model = first_present(record, ("model",))
    used |= {k for k in (akey, rkey, mkey) if k}
    return make_episode(task=task if task is not None else first_user, steps=steps,
                        outcome=outcome, answer=explicit if explicit is not None else answer,
                        reference=reference, model=model or options.model,
                        meta=rest(record, used))


def message_steps(msgs: list[Any], key: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Steps from OpenAI chat messages, and the first user turn; ``key`` names the list in
    error messages. Tool calls become actions, ``tool`` turns observations."""
    steps: list[dict[str, Any]] = []
    first_user = None
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RecordError("expected an object with a role", f"{key}.{i}")
        role = m["role"]
        content = m.get("content")
        if content is not None and type(content) is not str:
            content = content_text(content, f"{key}.{i}.content")
        if role in ("tool", "function"):
            steps.append(make_step("tool", "observation", content or "",
                                   name=m.get("name") or m.get("tool_call_id")))
            continue
        if role not in ("system", "user", "assistant"):
            raise RecordError(f"unknown role {role!r}", f"{key}.{i}.role")
        if role == "user" and first_user is None:
            first_user = content
            steps.append(make_step("user", "message", content or ""))
        elif content:
            steps.extend(_turn_steps(role, content))
        calls = m.get("tool_calls")
        for j, call in enumerate(calls) if calls else ():
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise RecordError("tool call without a function name",
                                  f"{key}.{i}.tool_calls.{j}")
            steps.append(_action_step(fn["name"], parse_json_text(fn.get("arguments"))))
    return first_user, steps


class OpenAIChatFormat(InputFormat):
    name = "openai-chat"
    description = ("OpenAI chat messages (role/content/tool_calls), e.g. tau-bench, "
                   "FireAct chat sets")

    def sniff(self, record: dict[str, Any]) -> float:
        key, msgs = first_present(record, MESSAGE_KEYS)
        if not isinstance(msgs, list) or not msgs or not isinstance(msgs[0], dict):
            return 0.0
        if "role" in msgs[0] and ("content" in msgs[0] or "tool_calls" in msgs[0]):
            return 0.9 if key == "messages" else 0.7
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        key, msgs = first_present(record, MESSAGE_KEYS)
        if key is None:
            raise RecordError("missing the message list", "messages")
        if not isinstance(msgs, list):
            raise RecordError(f"expected a list, found {type(msgs).__name__}", key)
        first_user, steps = message_steps(msgs, key)
        if not steps:
            raise RecordError("has no messages", key)
        return _finish(steps, record, {key}, options, first_user)


class ShareGPTFormat(InputFormat):
    name = "sharegpt"
    description = "ShareGPT conversations (from/value), e.g. LLaMA-Factory, Vicuna"

    def sniff(self, record: dict[str, Any]) -> float:
        conv = record.get("conversations")
        if isinstance(conv, list) and conv and isinstance(conv[0], dict) and "from" in conv[0]:
            return 0.95
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        conv = record.get("conversations")
        if conv is None:
            raise RecordError("missing", "conversations")
        if not isinstance(conv, list) or not conv:
            raise RecordError("expected a non-empty list", "conversations")
        steps: list[dict[str, Any]] = []
        first_user = None
        system = record.get("system")
        used = {"conversations"}
        if isinstance(system, str) and system:
            steps.append(make_step("system", "message", system))
            used.add("system")
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict) or "from" not in turn:
                raise RecordError("expected an object with 'from' and 'value'",
                                  f"conversations.{i}")
            src = str(turn["from"]).lower()
            value = turn.get("value")
            if not isinstance(value, str):
                raise RecordError("expected text", f"conversations.{i}.value")
            role = SHAREGPT_ROLES.get(src)
            if role is None:
                raise RecordError(f"unknown speaker {turn['from']!r}", f"conversations.{i}.from")
            if src == "function_call":
                call = parse_json_text(value)
                if isinstance(call, dict) and call.get("name"):
                    steps.append(_action_step(str(call["name"]),
                                              parse_json_text(call.get("arguments")), value))
                else:
                    steps.append(make_step("assistant", "action", value))
            elif role == "tool":
                steps.append(make_step("tool", "observation", value))
            elif role == "user" and first_user is None:
                first_user = value
                steps.append(make_step("user", "message", value))
            else:
                steps.extend(_turn_steps(role, value))
        return _finish(steps, record, used, options, first_user)


OPENAI_CHAT = OpenAIChatFormat()
SHAREGPT = ShareGPTFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(OPENAI_CHAT)
    register(SHAREGPT)
