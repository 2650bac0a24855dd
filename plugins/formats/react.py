"""ReAct-style trajectories: Thought / Action / Observation text, or ``> action`` lines.

Follows the trajectory layout of ReAct (Yao et al., 2023, "ReAct: Synergizing Reasoning and
Acting in Language Models"), as logged by Reflexion (Shinn et al., 2023) and FireAct
(Chen et al., 2023), and ALFWorld's ``> action`` transcripts (Shridhar et al., 2021).

Records: a task field (``question``, ``task``, ``instruction``, ``goal``) plus either a
text trajectory (``trajectory``, ``traj``, ``scratchpad``, ``log``, ``text``) or a list of
chat messages whose assistant turns hold ``Thought: ... Action: ...`` and whose user turns
hold ``Observation: ...`` (FireAct's ``trajs/*.json``). Outcome from ``reward``, ``em``,
``correct``, ``success``, ``f1``/``score``; answer from ``pred``/``answer``; reference from
``gt``/``reference``/``correct_answer``.

Files: the Reflexion HotpotQA text logs (``*.txt``, ``*.txt.gz``: ``BEGIN TRIAL k``, then
CORRECT / INCORRECT / HALTED blocks that each start with ``Question:``) are read by
``read_file``; each block becomes one record with its trial number and status.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.io import SourceRow
from xpkit.core.records import make_episode, make_step
from xpkit.plugins.formats.fields import find_outcome, first_present, rest

TASK_KEYS = ("question", "task", "instruction", "goal", "query")
TRAJ_KEYS = ("trajectory", "traj", "scratchpad", "log", "text")
ANSWER_KEYS = ("pred", "answer", "prediction", "final_answer")
REFERENCE_KEYS = ("gt", "reference", "correct_answer", "gold", "label")

_MARKER = re.compile(r"^(Thought|Action|Observation|Act|Obs)(?:\s*\d+)?\s*:\s?", re.IGNORECASE)
_KIND = {"thought": "thought", "action": "action", "act": "action",
         "observation": "observation", "obs": "observation"}
_ROLE = {"thought": "assistant", "action": "assistant", "observation": "environment"}
_TOOL_CALL = re.compile(r"^\s*([A-Za-z_][\w-]*)\[(.*)\]\s*$", re.DOTALL)


def split_react_text(text: str) -> list[dict[str, Any]]:
    """Split a ReAct transcript into thought / action / observation steps.

    Lines starting ``Thought k:``, ``Action k:`` or ``Observation k:`` open a step; other lines
    continue it. ALFWorld-style ``> action`` lines are actions and the lines after them the
    observation; ``> think: ...`` is a thought. Text before the first marker is returned as a
    leading observation (the environment's opening description).
    """
    steps: list[dict[str, Any]] = []
    kind: str | None = None
    buf: list[str] = []

    def flush() -> None:
        if kind is None:
            content = "\n".join(buf).strip()
            if content:
                steps.append(make_step("environment", "observation", content))
            return
        content = "\n".join(buf).strip()
        name, args = None, None
        if kind == "action":
            m = _TOOL_CALL.match(content)
            if m:
                name, args = m.group(1), {"input": m.group(2)}
        steps.append(make_step(_ROLE[kind], kind, content, name=name, args=args))

    for line in text.splitlines():
        m = _MARKER.match(line)
        if m:
            flush()
            kind, buf = _KIND[m.group(1).lower()], [line[m.end():]]
            continue
        if line.startswith("> "):
            flush()
            body = line[2:].strip()
            if body.lower().startswith("think:"):
                kind, buf = "thought", [body[6:].strip()]
            else:
                steps.append(make_step("assistant", "action", body))
                kind, buf = "observation", []
            continue
        buf.append(line)
    flush()
    return [s for s in steps if s["content"] or s["kind"] == "action"]


def steps_from_messages(messages: list[Any], field: str) -> tuple[str | None, list[dict]]:
    """Steps from chat messages whose turns carry ReAct text; the first user turn is the task."""
    task = None
    steps: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "content" not in msg:
            raise RecordError("expected messages with role and content", f"{field}.{i}")
        role = str(msg.get("role", "user"))
        content = msg.get("content") or ""
        if not isinstance(content, str):
            raise RecordError("expected text content", f"{field}.{i}.content")
        if role == "system":
            steps.append(make_step("system", "message", content))
        elif role in ("user", "human") and task is None:
            task = content
            steps.append(make_step("user", "message", content))
        elif _MARKER.match(content) or content.lstrip().startswith("> "):
            for step in split_react_text(content):
                if role in ("user", "human", "tool") and step["kind"] == "observation":
                    step["role"] = "environment"
                steps.append(step)
        else:
            steps.append(make_step("assistant" if role == "assistant" else "user", "message",
                                   content))
    return task, steps


class ReactFormat(InputFormat):
    name = "react"
    description = "ReAct/Reflexion/ALFWorld trajectories (Thought/Action/Observation text)"
    file_suffixes = (".txt", ".log")

    def sniff(self, record: dict[str, Any]) -> float:
        _, traj = first_present(record, TRAJ_KEYS)
        if isinstance(traj, str):
            return 1.0 if _MARKER.search(traj) or "\n> " in traj else 0.3
        if isinstance(traj, list) and traj and isinstance(traj[0], dict):
            text = " ".join(str(m.get("content", "")) for m in traj[:4] if isinstance(m, dict))
            return 0.95 if re.search(r"(Thought|Action)\s*\d*:", text) else 0.2
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        used: set[str] = set()
        tkey, traj = first_present(record, TRAJ_KEYS)
        if tkey is None:
            raise RecordError(f"missing a trajectory ({' / '.join(TRAJ_KEYS)})", TRAJ_KEYS[0])
        used.add(tkey)
        qkey, task = first_present(record, TASK_KEYS)
        if qkey:
            used.add(qkey)
        if isinstance(traj, str):
            steps = split_react_text(traj)
            if task is not None:
                steps.insert(0, make_step("user", "message", str(task)))
        elif isinstance(traj, list):
            first_user, steps = steps_from_messages(traj, tkey)
            task = task if task is not None else first_user
        else:
            raise RecordError(f"expected text or a list of messages, found "
                              f"{type(traj).__name__}", tkey)
        if not any(s["kind"] in ("action", "thought") for s in steps):
            raise RecordError("no Thought/Action steps found", tkey)
        akey, answer = first_present(record, ANSWER_KEYS)
        rkey, reference = first_present(record, REFERENCE_KEYS)
        outcome, oused = find_outcome(record, "info")
        status = record.get("status")
        if isinstance(status, str) and status.upper() in ("CORRECT", "INCORRECT", "HALTED"):
            outcome["success"] = status.upper() == "CORRECT"
            used.add("status")
            record_meta = {"status": status.upper()}
        else:
            record_meta = {}
        if answer is None:
            answer = _finish_argument(steps)
        used |= {k for k in (akey, rkey) if k} | oused
        model_key, model = first_present(record, ("model", "model_name"))
        if model_key:
            used.add(model_key)
        return make_episode(task=task, steps=steps, outcome=outcome, answer=answer,
                            reference=reference, model=model or options.model,
                            meta={**rest(record, used), **record_meta})

    def read_file(self, name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
        yield from read_reflexion_log(name, stream)


def _finish_argument(steps: list[dict[str, Any]]) -> str | None:
    for step in reversed(steps):
        if step["kind"] == "action" and step.get("name", "").lower() == "finish":
            return step["args"]["input"]
    return None


_TRIAL = re.compile(r"^BEGIN TRIAL (\d+)")
_SECTION = re.compile(r"^-+ BEGIN (CORRECT|INCORRECT|HALTED) AGENTS -+")
_CORRECT_ANSWER = re.compile(r"^Correct answer:\s?(.*)$")


def read_reflexion_log(name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
    """Split a Reflexion HotpotQA text log into one record per ``Question:`` block.

    A line that is not valid UTF-8 makes its block a rejected row (never silently replaced).
    """
    trial: int | None = None
    status: str | None = None
    block: list[str] = []
    start = 0
    bad: str | None = None

    def emit() -> SourceRow | None:
        if not block:
            return None
        if bad:
            return SourceRow(name, start, None, bad, "\n".join(block).encode("utf-8", "replace"))
        question = block[0][len("Question:"):].strip()
        reflections: list[str] = []
        body_lines = []
        reference = None
        in_reflections = False
        for line in block[1:]:
            m = _CORRECT_ANSWER.match(line)
            if m:
                reference = m.group(1).strip()
                continue
            if line.startswith("Reflections:") or line.startswith("Reflection:"):
                in_reflections = True
                continue
            if in_reflections and (line.startswith("- ") or not _MARKER.match(line)):
                if line.strip():
                    reflections.append(line.lstrip("- ").strip())
                continue
            in_reflections = False
            body_lines.append(line)
        rec: dict[str, Any] = {"question": question, "trajectory": "\n".join(body_lines)}
        if status:
            rec["status"] = status
        if reference is not None:
            rec["correct_answer"] = reference
        if trial is not None:
            rec["trial"] = trial
        if reflections:
            rec["reflections"] = reflections
        return SourceRow(name, start, rec)

    for lineno, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            bad = bad or f"invalid UTF-8 at byte {exc.start} of line {lineno}"
        m = _TRIAL.match(line)
        s = _SECTION.match(line)
        if m or s or line.startswith("Question:"):
            row = emit()
            if row:
                yield row
            block, bad = [], None
            if m:
                trial = int(m.group(1))
                continue
            if s:
                status = s.group(1)
                continue
            start = lineno
            block = [line]
            continue
        if block:
            if line.startswith("#####"):
                continue
            block.append(line)
    row = emit()
    if row:
        yield row


@hookimpl
def register_formats(register: Any) -> None:
    register(ReactFormat())
