"""Training exports: SFT chat messages and DPO preference pairs.

``--export sft`` writes ``{"messages": [{"role", "content", ...}]}``: the conversational
format that TRL's ``SFTTrainer``, LLaMA-Factory (``formatting: openai``) and the OpenAI
fine-tuning API read. Records that already hold OpenAI chat messages keep them as they are
(tool calls and ids included); every other episode is rendered from its steps: consecutive
assistant steps become one assistant message (ReAct thoughts and text actions as
``Thought: ...`` / ``Action: ...`` lines, structured tool calls as ``tool_calls``), tool
results become ``tool`` messages and environment observations ``Observation: ...`` user
turns.

``--export dpo`` writes ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` (TRL's
conversational preference format) from a successful and a failed episode of the same task:
the prompt is the longest common prefix of the two conversations, the completions are what
follows it in each.
"""

from __future__ import annotations

from typing import Any

import orjson

# Keys of an OpenAI chat message that a trainer reads; anything else is dropped on export.
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
_CHAT_LIST_KEYS = ("messages", "traj", "conversation")


def sft_messages(episode: dict[str, Any], record: dict[str, Any] | None = None,
                 fmt: str | None = None) -> list[dict[str, Any]]:
    """The chat messages of one pool item, as a trainer reads them."""
    if fmt == "openai-chat" and record is not None:
        for key in _CHAT_LIST_KEYS:
            msgs = record.get(key)
            if isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
                return [{k: m[k] for k in _MESSAGE_KEYS if k in m and m[k] is not None}
                        for m in msgs]
    return render_steps(episode)


def render_steps(episode: dict[str, Any]) -> list[dict[str, Any]]:
    """Render canonical steps as chat messages (see the module docstring)."""
    steps = episode.get("steps") or []
    out: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    last_call: str | None = None
    calls = 0

    def flush() -> None:
        nonlocal last_call, calls
        if not group:
            return
        text: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        react = any(s["kind"] == "thought" for s in group)
        for s in group:
            content = s.get("content") or ""
            if s["kind"] == "message":
                text.append(content)
            elif s["kind"] == "thought":
                text.append(f"Thought: {content}")
            elif _structured_call(s) and not react:
                calls += 1
                last_call = f"call_{calls}"
                tool_calls.append({"id": last_call, "type": "function", "function": {
                    "name": s["name"], "arguments": orjson.dumps(s["args"]).decode()}})
            else:
                text.append(f"Action: {content}")
        msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(text)}
        if tool_calls:
            msg["tool_calls"] = tool_calls
        out.append(msg)
        group.clear()

    for s in steps:
        role, kind = s.get("role"), s.get("kind")
        if role == "assistant":
            group.append(s)
            continue
        flush()
        content = s.get("content") or ""
        if role == "tool":
            msg = {"role": "tool", "content": content}
            if last_call is not None:
                msg["tool_call_id"] = last_call
            elif s.get("name"):
                msg["name"] = s["name"]
            out.append(msg)
        elif role == "environment" or kind == "observation":
            out.append({"role": "user", "content": f"Observation: {content}"})
        else:
            out.append({"role": role, "content": content})
    flush()
    task, answer = episode.get("task"), episode.get("answer")
    if not any(m["role"] == "user" for m in out) and task:
        out.insert(next((i for i, m in enumerate(out) if m["role"] != "system"), len(out)),
                   {"role": "user", "content": task})
    if answer and not any(m["role"] == "assistant" for m in out):
        out.append({"role": "assistant", "content": answer})
    return out


def _structured_call(step: dict[str, Any]) -> bool:
    """A tool call with a name and arguments, not a ReAct ``tool[argument]`` text action."""
    name, content = step.get("name"), step.get("content") or ""
    return bool(name) and step.get("args") is not None and not content.startswith(f"{name}[")


def message_text(messages: list[dict[str, Any]]) -> list[str]:
    """The texts whose tokens count towards a budget: each message's content, and the
    name and arguments of its tool calls."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif content is not None:
            out.append(orjson.dumps(content).decode())
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call) if isinstance(call, dict) else {}
            out.append(f"{fn.get('name', '')}{fn.get('arguments', '')}")
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("role") == b.get("role") and a.get("content") == b.get("content")


def dpo_pair(chosen: list[dict[str, Any]],
             rejected: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``{prompt, chosen, rejected}`` from two conversations of the same task, or ``None``
    when they share no prompt or one continues nothing beyond it."""
    k = 0
    while k < min(len(chosen), len(rejected)) and _same(chosen[k], rejected[k]):
        k += 1
    if k == 0 or k == len(chosen) or k == len(rejected):
        return None
    return {"prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]}


def prefix_length(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> int:
    k = 0
    while k < min(len(chosen), len(rejected)) and _same(chosen[k], rejected[k]):
        k += 1
    return k
