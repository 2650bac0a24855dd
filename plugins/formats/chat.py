"""Chat logs: OpenAI chat ``messages`` (with tool calls) and ShareGPT ``conversations``.

OpenAI chat: ``{"messages": [{"role", "content", "tool_calls"?, "name"?, "tool_call_id"?}]}``
(also ``traj`` or ``conversation`` as the list, as in tau-bench). Assistant ``tool_calls``
become action steps with ``name`` and parsed ``args``; ``tool`` turns become observations.
ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|
"observation", "value"}]}`` (LLaMA-Factory, Vicuna). In both, assistant turns written in
ReAct style (``Thought: ... Action: ...``) are split into thought and action steps, and user
turns that start ``Observation:`` become observations, as in FireAct's chat sets. The task
is the first user turn; the answer is the last assistant message.
"""

from __future__ import annotations

from typing import Any

import orjson

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import make_episode, make_step
from xpkit.plugins.formats.fields import find_outcome, first_present, rest
from xpkit.plugins.formats.react import _MARKER, split_react_text

MESSAGE_KEYS = ("messages", "traj", "conversation")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool",
                  "tool": "tool", "function": "tool"}


def _parse_args(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def _turn_steps(role: str, content: str) -> list[dict[str, Any]]:
    """One turn as steps: ReAct text is split, anything else is a single message."""
    if role == "assistant" and _MARKER.match(content.lstrip()):
        return split_react_text(content)
    if role == "user" and content.lstrip().lower().startswith("observation"):
        obs = split_react_text(content)
        for s in obs:
            s["role"] = "environment"
        return obs
    return [make_step(role, "message", content)]


def _finish(steps: list[dict[str, Any]], record: dict[str, Any], used: set[str],
            options: FormatOptions, task: str | None) -> dict[str, Any]:
    outcome, oused = find_outcome(record, "info", "metadata")
    used |= oused
    answer = next((s["content"] for s in reversed(steps)
                   if s["role"] == "assistant" and s["kind"] == "message" and s["content"]),
                  None)
    akey, explicit = first_present(record, ("answer", "pred"))
    rkey, reference = first_present(record, ("reference", "gt", "ground_truth"))
    mkey, model = first_present(record, ("model",))
    used |= {k for k in (akey, rkey, mkey) if k}
    return make_episode(task=task, steps=steps, outcome=outcome,
                        answer=explicit if explicit is not None else answer,
                        reference=reference, model=model or options.model,
                        meta=rest(record, used))


class OpenAIChatFormat(InputFormat):
    name = "openai-chat"
    description = "OpenAI chat messages (role/content/tool_calls), e.g. tau-bench, FireAct chat sets"

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
        steps: list[dict[str, Any]] = []
        task = None
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise RecordError("expected an object with a role", f"{key}.{i}")
            role, content = m["role"], m.get("content")
            if content is not None and not isinstance(content, str):
                if isinstance(content, list):  # content parts: keep the text parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                else:
                    raise RecordError("expected text content", f"{key}.{i}.content")
            if role == "tool" or role == "function":
                steps.append(make_step("tool", "observation", content or "",
                                       name=m.get("name") or m.get("tool_call_id")))
                continue
            if role not in ("system", "user", "assistant"):
                raise RecordError(f"unknown role {role!r}", f"{key}.{i}.role")
            if role == "user" and task is None:
                task = content
                steps.append(make_step("user", "message", content or ""))
            elif content:
                steps.extend(_turn_steps(role, content))
            for call in m.get("tool_calls") or []:
                fn = call.get("function", call) if isinstance(call, dict) else {}
                if not isinstance(fn, dict) or "name" not in fn:
                    raise RecordError("tool call without a function name",
                                      f"{key}.{i}.tool_calls")
                args = _parse_args(fn.get("arguments"))
                steps.append(make_step("assistant", "action",
                                       f"{fn['name']}({orjson.dumps(args).decode()})",
                                       name=fn["name"], args=args))
        if not steps:
            raise RecordError("has no messages", key)
        return _finish(steps, record, {key}, options, task)


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
        task = None
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
                call = _parse_args(value)
                name = call.get("name") if isinstance(call, dict) else None
                args = call.get("arguments") if isinstance(call, dict) else call
                steps.append(make_step("assistant", "action", value, name=name, args=args))
            elif role == "tool":
                steps.append(make_step("tool", "observation", value))
            elif role == "user" and task is None:
                task = value
                steps.append(make_step("user", "message", value))
            else:
                steps.extend(_turn_steps(role, value))
        return _finish(steps, record, used, options, task)


@hookimpl
def register_formats(register: Any) -> None:
    register(OpenAIChatFormat())
    register(ShareGPTFormat())
