"""Any JSONL/Parquet/CSV, with ``--map FIELD=PATH`` saying where each episode field lives.

``PATH`` is a dotted path into the record (``meta.prompt``, ``turns.0.text``). Mappable
fields: ``task``, ``answer``, ``reference``, ``success``, ``reward``, ``score``, ``model``,
``system``, ``messages`` (a list of OpenAI-style messages), and ``transcript`` (a
``Human: ... Assistant: ...`` dialogue string, as in Anthropic HH-RLHF). Fields that are not
mapped are kept in ``meta``.
"""

from __future__ import annotations

import re
from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import as_text, make_episode, make_outcome, make_step
from xpkit.plugins.formats.fields import get_path

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
                raise RecordError("missing (mapped by --map "
                                  f"{key}={path})", path)
            values[key] = value
        steps: list[dict[str, Any]] = []
        if "system" in values:
            steps.append(make_step("system", "message", as_text(values["system"], mapping["system"])))
        task = values.get("task")
        if "messages" in values:
            msgs = values["messages"]
            if not isinstance(msgs, list):
                raise RecordError("expected a list of messages", mapping["messages"])
            for i, m in enumerate(msgs):
                if not isinstance(m, dict):
                    raise RecordError("expected an object", f"{mapping['messages']}.{i}")
                role = _SPEAKER.get(str(m.get("role", "user")).lower(), "user")
                steps.append(make_step(role, "message", m.get("content")))
        if "transcript" in values:
            text = as_text(values["transcript"], mapping["transcript"], required=True)
            turns = split_transcript(text)
            if not turns:
                raise RecordError("no Human:/Assistant: turns found", mapping["transcript"])
            steps.extend(turns)
        if task is None:
            task = next((s["content"] for s in steps if s["role"] == "user"), None)
        elif not any(s["role"] == "user" for s in steps):
            steps.append(make_step("user", "message", as_text(task, mapping["task"])))
        answer = values.get("answer")
        if answer is not None and not any(s["role"] == "assistant" for s in steps):
            steps.append(make_step("assistant", "message", as_text(answer, mapping["answer"])))
        if answer is None:
            answer = next((s["content"] for s in reversed(steps) if s["role"] == "assistant"),
                          None)
        used_roots = {p.split(".", 1)[0] for p in mapping.values()}
        meta = {k: v for k, v in record.items() if k not in used_roots}
        return make_episode(
            task=task, steps=steps,
            outcome=make_outcome(values.get("success"), values.get("reward"),
                                 values.get("score")),
            answer=answer if not isinstance(answer, dict | list) else None,
            reference=values.get("reference"), model=values.get("model") or options.model,
            meta=meta)


@hookimpl
def register_formats(register: Any) -> None:
    register(MappedFormat())
