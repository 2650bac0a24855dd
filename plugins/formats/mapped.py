"""Any JSONL/Parquet/CSV, with ``--map FIELD=PATH`` saying where each episode field lives.

``PATH`` is a dotted path into the record (``meta.prompt``, ``turns.0.text``). Mappable
fields: ``task``, ``answer``, ``reference``, ``success``, ``reward``, ``score``, ``model``,
``system``, ``messages`` (a list of OpenAI-style messages, read as ``openai-chat`` reads
them), and ``transcript`` (a ``Human: ... Assistant: ...`` dialogue string, as in Anthropic
HH-RLHF, Bai et al., 2022). Without a mapped ``task`` the first user turn is the task;
without a mapped ``answer``, the last assistant message. Outcomes are read as in every other
format (``success`` from true/false, 1/0, yes/no...; a 0/1 ``reward`` also sets ``success``).
Top-level fields that no mapping path starts from are kept in ``meta``.
"""

from __future__ import annotations

import re
from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import OUTCOME_FIELDS, as_text, make_episode, make_step
from xpkit.plugins.formats.chat import message_steps
from xpkit.plugins.formats.fields import find_outcome, get_path

MAPPABLE_FIELDS = ("task", "answer", "reference", "success", "reward", "score", "model",
                   "system", "messages", "transcript")
_MISSING = object()
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|User|System):[ \t]?", re.IGNORECASE)
_SPEAKER = {"human": "user", "user": "user", "assistant": "assistant", "system": "system"}


def split_transcript(text: str) -> list[dict[str, Any]]:
    """Split ``\\n\\nHuman: ...\\n\\nAssistant: ...`` into message steps."""
    parts = _TURN.split(text)
    steps = []
    for i in range(1, len(parts) - 1, 2):
        steps.append(make_step(_SPEAKER[parts[i].lower()], "message", parts[i + 1].strip()))
    return steps


class MappedFormat(InputFormat):
    name = "map"
    description = "any records, with --map FIELD=PATH naming where episode fields are"
    explicit_only = True

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        mapping = options.mapping
        if not mapping:
            raise RecordError("--format map needs --map FIELD=PATH options", "task")
        values: dict[str, Any] = {}
        for key, path in mapping.items():
            value = get_path(record, path, _MISSING)
            if value is _MISSING:
                raise RecordError(f"missing (mapped by --map {key}={path})", path)
            values[key] = value
        steps: list[dict[str, Any]] = []
        if "system" in values:
            steps.append(make_step("system", "message",
                                   as_text(values["system"], mapping["system"])))
        if "messages" in values:
            msgs = values["messages"]
            if not isinstance(msgs, list):
                raise RecordError("expected a list of messages", mapping["messages"])
            steps.extend(message_steps(msgs, mapping["messages"])[1])
        if "transcript" in values:
            text = as_text(values["transcript"], mapping["transcript"], required=True)
            turns = split_transcript(text)
            if not turns:
                raise RecordError("no Human:/Assistant: turns found", mapping["transcript"])
            steps.extend(turns)
        task = values.get("task")
        if task is None:
            task = next((s["content"] for s in steps if s["role"] == "user"), None)
        elif not any(s["role"] == "user" for s in steps):
            steps.append(make_step("user", "message", as_text(task, mapping["task"])))
        answer = values.get("answer")
        if answer is not None and not any(s["role"] == "assistant" for s in steps):
            steps.append(make_step("assistant", "message", as_text(answer, mapping["answer"])))
        if answer is None:
            answer = next((s["content"] for s in reversed(steps)
                           if s["role"] == "assistant" and s["kind"] == "message"), None)
        used_roots = {p.split(".", 1)[0] for p in mapping.values()}
        meta = {k: v for k, v in record.items() if k not in used_roots}
        return make_episode(
            task=task, steps=steps, outcome=_outcome(values, mapping),
            answer=answer if not isinstance(answer, dict | list) else None,
            reference=values.get("reference"), model=values.get("model") or options.model,
            meta=meta)


def _outcome(values: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The mapped outcome, read like every other format's (a 0/1 reward implies success);
    a bad value is reported under the path the user mapped."""
    mapped = {k: values[k] for k in OUTCOME_FIELDS if k in values}
    try:
        return find_outcome(mapped)[0]
    except RecordError as exc:
        name = next((k for k in OUTCOME_FIELDS if exc.field and exc.field.endswith(k)), None)
        raise RecordError(exc.reason, mapping.get(name or "", exc.field)) from None


MAPPED = MappedFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(MAPPED)
