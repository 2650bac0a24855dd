"""ReAct-style trajectories: Thought / Action / Observation text, or ``> action`` lines.

Follows the trajectory layout of ReAct (Yao et al., 2023, "ReAct: Synergizing Reasoning and
Acting in Language Models"), as logged by Reflexion (Shinn et al., 2023, "Reflexion: Language
Agents with Verbal Reinforcement Learning") and FireAct (Chen et al., 2023, "FireAct: Toward
Language Agent Fine-tuning"), and ALFWorld's ``> action`` transcripts (Shridhar et al., 2021).

Records: a task field (``question``, ``task``, ``instruction``, ``goal``) plus either a
text trajectory (``trajectory``, ``traj``, ``scratchpad``, ``log``, ``text``) or a list of
chat messages whose assistant turns hold ``Thought: ... Action: ...`` and whose user turns
hold ``Observation: ...`` (FireAct's ``trajs/*.json`` for gpt-3.5). Without a task field,
the text before the first marker is the prompt and the task is read from it (an Alpaca
``### Instruction:`` block, as in FireAct's Llama trajectories, ALFWorld's ``Your task is
to:``, or a ``Question:`` line). FireAct's ``traj_by_line`` repeats ``traj`` split into lines
and is dropped. Outcome from ``reward``, ``em``, ``correct``, ``success``, ``f1``/``score``;
answer from ``pred``/``answer`` or the last ``Finish[...]``; reference from
``gt``/``reference``/``correct_answer``.

Files: the Reflexion HotpotQA text logs (``*.txt``, ``*.txt.gz``) are read by ``read_file``;
see ``read_reflexion_log`` for their layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.io import SourceRow
from xpkit.core.records import make_episode, make_step
from xpkit.plugins.formats.fields import (
    REACT_MARKER,
    TOOL_CALL,
    content_text,
    find_outcome,
    finish_argument,
    first_present,
    has_react_lines,
    rest,
)

TASK_KEYS = ("question", "task", "instruction", "goal", "query")
TRAJ_KEYS = ("trajectory", "traj", "scratchpad", "log", "text")
ANSWER_KEYS = ("pred", "answer", "prediction", "final_answer")
REFERENCE_KEYS = ("gt", "reference", "correct_answer", "gold", "label")
# Reflexion's per-agent status in its logs; CORRECT is a success, the others are failures.
STATUSES = ("CORRECT", "INCORRECT", "HALTED")
# Fields that only repeat another field (FireAct's ``traj_by_line`` = ``traj`` split in lines).
REDUNDANT_KEYS = ("traj_by_line",)

_KIND = {"thought": "thought", "action": "action", "act": "action",
         "observation": "observation", "obs": "observation"}
_ROLE = {"thought": "assistant", "action": "assistant", "observation": "environment"}
_PROMPT_TASK = (
    re.compile(r"### Instruction:\s*\n(.*?)\n\s*###", re.DOTALL),  # Alpaca prompt template
    re.compile(r"^Your task is to:\s*(.+)$", re.MULTILINE),  # ALFWorld
    re.compile(r"^Question:\s*(.+)$", re.MULTILINE),
)


def split_react_text(text: str) -> list[dict[str, Any]]:
    """Split a ReAct transcript into thought / action / observation steps.

    Lines starting ``Thought k:``, ``Action k:`` or ``Observation k:`` open a step; other lines
    continue it. ALFWorld-style ``> action`` lines are actions and the lines after them the
    observation; ``> think: ...`` is a thought. Text before the first marker is returned as a
    leading observation (the environment's opening description, or the prompt). An action
    written ``tool[argument]`` gets ``name`` = tool and ``args`` = ``{"input": argument}``.
    """
    # This runs on every turn of every chat record, so it builds the step dicts itself
    # (``make_step`` would only re-check them) and skips the regex where it can.
    steps: list[dict[str, Any]] = []
    # Text before the first marker is an environment observation, like an Observation step.
    role, kind = "environment", "observation"
    buf: list[str] = []
    match = REACT_MARKER.match
    for line in text.splitlines():
        if line.startswith(_PLAIN_MARKERS):  # what the regex would match, found faster
            if buf:
                _close_step(steps, role, kind, buf)
            end, role, kind = _PLAIN_MARKER[line[0]]
            buf = [line[end:]]
            continue
        m = match(line) if line[:1] in _MARKER_INITIALS else None
        if m:
            if buf:
                _close_step(steps, role, kind, buf)
            role, kind = _ROLE_KIND[m.group(1).lower()]
            buf = [line[m.end():]]
            continue
        if line.startswith("> "):
            if buf:
                _close_step(steps, role, kind, buf)
            body = line[2:].strip()
            if body.lower().startswith("think:"):
                role, kind, buf = "assistant", "thought", [body[6:].strip()]
            else:
                steps.append({"role": "assistant", "kind": "action", "content": body})
                role, kind, buf = "environment", "observation", []
            continue
        buf.append(line)
    if buf:
        _close_step(steps, role, kind, buf)
    return steps


# Marker word (lower case) -> (role, kind) of the step it opens.
_ROLE_KIND = {word: (_ROLE[kind], kind) for word, kind in _KIND.items()}
# The usual spellings, which REACT_MARKER matches exactly: first letter -> (length, role, kind).
_PLAIN_MARKERS = ("Thought: ", "Action: ", "Observation: ")
_PLAIN_MARKER = {p[0]: (len(p), *_ROLE_KIND[p[:-2].lower()]) for p in _PLAIN_MARKERS}
# Every character REACT_MARKER can start with: no other code point matches t, a or o when
# case is ignored (checked over all of Unicode).
_MARKER_INITIALS = frozenset("TtAaOo")


def _close_step(steps: list[dict[str, Any]], role: str, kind: str, buf: list[str]) -> None:
    """Append the step whose lines are ``buf`` (``split_react_text``). An action is always
    kept; another step only when it has content."""
    content = (buf[0] if len(buf) == 1 else "\n".join(buf)).strip()
    if kind == "action":
        m = TOOL_CALL.match(content)
        if m:
            steps.append({"role": role, "kind": kind, "content": content,
                          "name": m.group(1), "args": {"input": m.group(2)}})
        else:
            steps.append({"role": role, "kind": kind, "content": content})
    elif content:
        steps.append({"role": role, "kind": kind, "content": content})


def steps_from_messages(messages: list[Any], field: str) -> tuple[str | None, list[dict]]:
    """Steps from chat messages whose turns carry ReAct text; the first user turn is the task."""
    task = None
    steps: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "content" not in msg:
            raise RecordError("expected messages with role and content", f"{field}.{i}")
        role = str(msg.get("role", "user"))
        content = content_text(msg.get("content"), f"{field}.{i}.content") or ""
        if role == "system":
            steps.append(make_step("system", "message", content))
        elif role in ("user", "human") and task is None:
            task = content
            steps.append(make_step("user", "message", content))
        elif REACT_MARKER.match(content) or content.lstrip().startswith("> "):
            for step in split_react_text(content):
                if role in ("user", "human", "tool") and step["kind"] == "observation":
                    step["role"] = "environment"
                steps.append(step)
        else:
            steps.append(make_step("assistant" if role == "assistant" else "user", "message",
                                   content))
    return task, steps


def task_from_prompt(prompt: str) -> str:
    """The task inside a prompt: an Alpaca ``### Instruction:`` block, ALFWorld's ``Your task
    is to:`` line, or a ``Question:`` line; else the whole prompt."""
    for pattern in _PROMPT_TASK:
        m = pattern.search(prompt)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return prompt.strip()


class ReactFormat(InputFormat):
    name = "react"
    description = "ReAct/Reflexion/ALFWorld trajectories (Thought/Action/Observation text)"
    file_suffixes = (".txt", ".log")

    def sniff(self, record: dict[str, Any]) -> float:
        _, traj = first_present(record, TRAJ_KEYS)
        if isinstance(traj, str):
            return 1.0 if has_react_lines(traj) or "\n> " in traj else 0.3
        if isinstance(traj, list) and traj and isinstance(traj[0], dict):
            text = " ".join(str(m.get("content", "")) for m in traj[:4] if isinstance(m, dict))
            return 0.95 if re.search(r"(Thought|Action)\s*\d*:", text) else 0.2
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        tkey, traj = first_present(record, TRAJ_KEYS)
        carried_over = record.get("carried_over") is True
        if tkey is None and carried_over:
            tkey, traj = "trajectory", ""
        if tkey is None:
            raise RecordError(f"missing a trajectory ({' / '.join(TRAJ_KEYS)})", TRAJ_KEYS[0])
        used = {tkey, *REDUNDANT_KEYS}
        qkey, task = first_present(record, TASK_KEYS)
        if qkey:
            used.add(qkey)
        if isinstance(traj, str):
            steps = split_react_text(traj)
            if task is None and steps and steps[0]["kind"] == "observation":
                # The text before the first marker is the prompt: it holds the task.
                task = task_from_prompt(steps[0]["content"])
                steps[0] = make_step("user", "message", steps[0]["content"])
            elif task is not None:
                steps.insert(0, make_step("user", "message", str(task)))
        elif isinstance(traj, list):
            first_user, steps = steps_from_messages(traj, tkey)
            task = task if task is not None else first_user
        else:
            raise RecordError(f"expected text or a list of messages, found "
                              f"{type(traj).__name__}", tkey)
        if not carried_over and not any(s["kind"] in ("action", "thought") for s in steps):
            raise RecordError("no Thought/Action steps found", tkey)
        akey, answer = first_present(record, ANSWER_KEYS)
        rkey, reference = first_present(record, REFERENCE_KEYS)
        outcome, oused = find_outcome(record, "info")
        status = record.get("status")
        if isinstance(status, str) and status.upper() in STATUSES:
            outcome["success"] = status.upper() == "CORRECT"
            used.add("status")
            status_meta = {"status": status.upper()}
        else:
            status_meta = {}
        if answer is None:
            answer = finish_argument(steps)
        used |= {k for k in (akey, rkey) if k} | oused
        model_key, model = first_present(record, ("model", "model_name"))
        if model_key:
            used.add(model_key)
        return make_episode(task=task, steps=steps, outcome=outcome, answer=answer,
                            reference=reference, model=model or options.model,
                            meta={**rest(record, used), **status_meta})

    def read_file(self, name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
        yield from read_reflexion_log(name, stream)


# --------------------------------------------------------------------------- Reflexion logs

_TRIAL = re.compile(r"^BEGIN TRIAL (\d+)")
_SECTION = re.compile(r"^-+ BEGIN (CORRECT|INCORRECT|HALTED) AGENTS -+")
_VERDICT = re.compile(r"^Observation(?:\s*\d+)?:\s*Answer is (CORRECT|INCORRECT)\b")
_REFLECTIONS = re.compile(r"^Reflections?:\s*(.*)$")
_CORRECT_ANSWER = "Correct answer:"
# Lines that open a new agent block once the current one holds a finished attempt.
_BLOCK_OPENERS = ("Question:", "Context:", "Previous Trial:", "Solve a question answering task")
_END_PREVIOUS = "(END PREVIOUS TRIAL)"  # what follows is a retry of the same question
_RETRY_NOTE = "You have attempted to answer"  # Reflexion's note appended to retried questions


@dataclass
class _Block:
    """The lines of one agent's entry in a Reflexion log, as they are read."""

    start: int = 0
    lines: list[str] = field(default_factory=list)
    last_marker: int = -1
    last_retry: int = -1
    bad: str | None = None

    def add(self, lineno: int, line: str) -> None:
        if not self.lines:
            self.start = lineno
        if REACT_MARKER.match(line):
            self.last_marker = len(self.lines)
        elif line.startswith(_END_PREVIOUS):
            self.last_retry = len(self.lines)
        self.lines.append(line)

    @property
    def attempted(self) -> bool:
        """True once the block holds Thought/Action lines that are not a replayed earlier
        trial (CoT "last trial" prompts replay one before ``(END PREVIOUS TRIAL)``)."""
        return self.last_marker > self.last_retry


def read_reflexion_log(name: str, stream: IO[bytes]) -> Iterator[SourceRow]:
    """Split a Reflexion HotpotQA text log into one record per agent block.

    Layout (``hotpotqa_runs/root/**.txt`` in noahshinn/reflexion): ``BEGIN TRIAL k`` and a
    ``Trial summary``, then ``BEGIN CORRECT|INCORRECT|HALTED AGENTS`` sections of blocks.
    A block is one agent's attempt: an optional preamble (CoT ``Context:`` paragraphs, the
    CoT instruction, a replayed previous trial, ``Reflections:``), ``Question: ...``, the
    Thought/Action/Observation lines, and ``Correct answer: ...``, which ends it. Files
    without ``Correct answer`` lines (thought logs, paper appendices) start a block at the
    next ``Question:``/``Context:`` once the current one holds an attempt.

    Each record has ``question``, ``trajectory`` (text), ``status``, ``correct_answer``,
    ``trial``, and when present ``reflections`` (list) and ``context`` (preamble text). The
    status is the attempt's own verdict (``Answer is CORRECT|INCORRECT``) when it has one, else
    the section: Reflexion lists an agent that finished on its last allowed step under both
    INCORRECT and HALTED, and the two copies then become one episode plus one duplicate. A
    CORRECT block with no Thought/Action lines (trials 6-7 of the ReAct+Reflexion run list
    agents solved in an earlier trial without their scratchpad; Reflexion does not re-run
    them) is kept with ``carried_over: true`` and no trajectory.

    A line that is not valid UTF-8 makes its block a rejected row (never silently replaced).
    """
    trial: int | None = None
    section: str | None = None
    block = _Block()

    def emit() -> SourceRow | None:
        nonlocal block
        done, block = block, _Block()
        if not done.lines:
            return None
        if done.bad:
            raw = "\n".join(done.lines).encode("utf-8", "replace")
            return SourceRow(name, done.start, None, done.bad, raw)
        return SourceRow(name, done.start, _block_record(done.lines, trial, section))

    for lineno, raw_line in enumerate(stream, 1):
        try:
            line = raw_line.decode("utf-8").rstrip("\r\n")
            bad = None
        except UnicodeDecodeError as exc:
            line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
            bad = f"invalid UTF-8 at byte {exc.start} of line {lineno}"
        trial_m, section_m = _TRIAL.match(line), _SECTION.match(line)
        if trial_m or section_m or line.startswith(("Trial summary:", "#####")):
            row = emit()
            if row:
                yield row
            if trial_m:
                trial, section = int(trial_m.group(1)), None
            elif section_m:
                section = section_m.group(1)
            continue
        if block.attempted and line.startswith(_BLOCK_OPENERS):
            row = emit()
            if row:
                yield row
        if not block.lines and not line.strip():
            continue
        block.add(lineno, line)
        if bad and not block.bad:
            block.bad = bad
        if line.startswith(_CORRECT_ANSWER):
            row = emit()
            if row:
                yield row
    row = emit()
    if row:
        yield row


def _block_record(lines: list[str], trial: int | None, section: str | None) -> dict[str, Any]:
    """One agent block of a Reflexion log as a ``react`` record (see ``read_reflexion_log``)."""
    reference = None
    if lines[-1].startswith(_CORRECT_ANSWER):
        reference = lines[-1][len(_CORRECT_ANSWER):].strip()
        lines = lines[:-1]
    preamble, question, body = _split_question(lines)
    context, reflections = _take_reflections(preamble)
    body, more = _take_reflections(body)
    reflections += more
    verdict = next((m.group(1) for m in map(_VERDICT.match, reversed(body)) if m), None)
    status = verdict or section
    rec: dict[str, Any] = {"question": question, "trajectory": "\n".join(body).strip()}
    if status:
        rec["status"] = status
    if reference is not None:
        rec["correct_answer"] = reference
    if trial is not None:
        rec["trial"] = trial
    if reflections:
        rec["reflections"] = reflections
    if "\n".join(context).strip():
        rec["context"] = "\n".join(context).strip()
    if status == "CORRECT" and not any(REACT_MARKER.match(line) for line in body):
        rec["carried_over"] = True
    return rec


def _split_question(lines: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(preamble lines, question, lines after the question) of a block.

    The question is the last line starting ``Question:``; CoT-with-context logs instead end
    the last context paragraph with `` Question: ...`` on the same line.
    """
    starts = [i for i, line in enumerate(lines) if line.startswith("Question:")]
    if starts:
        i = starts[-1]
        return lines[:i], _clean_question(lines[i][len("Question:"):]), lines[i + 1:]
    first_marker = next((i for i, line in enumerate(lines) if REACT_MARKER.match(line)),
                        len(lines))
    for i in range(first_marker - 1, -1, -1):
        head, sep, question = lines[i].rpartition(" Question: ")
        if sep:
            return [*lines[:i], head], _clean_question(question), lines[i + 1:]
    return lines[:first_marker], None, lines[first_marker:]


def _clean_question(text: str) -> str:
    """The question without Reflexion's retry note (``You have attempted to answer ...``)."""
    return text.split(_RETRY_NOTE, 1)[0].strip()


def _take_reflections(lines: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``Reflections:`` / ``Reflection:`` entries from the other lines.

    Before an attempt (ReAct+Reflexion, CoT retry prompts), the entries are the header's own
    text and the ``- ...`` lines after it, up to a blank, marker or ``Question:`` line. After
    an attempt, the rest of the block is one entry: a lesson written after the attempt, or
    in CoT "last trial" runs the replayed previous attempt, which is not part of this one.
    """
    kept: list[str] = []
    reflections: list[str] = []
    active = attempted = False
    for i, line in enumerate(lines):
        m = _REFLECTIONS.match(line)
        if m and attempted:
            text = "\n".join([m.group(1), *lines[i + 1:]]).strip()
            if text:
                reflections.append(text)
            break
        if m:
            active = True
            if m.group(1).strip():
                reflections.append(m.group(1).strip())
            continue
        if active and line.strip() and not REACT_MARKER.match(line) \
                and not line.startswith("Question:"):
            reflections.append(line[2:].strip() if line.startswith("- ") else line.strip())
            continue
        active = False
        if REACT_MARKER.match(line):
            attempted = True
        elif line.startswith(_END_PREVIOUS):
            attempted = False
        kept.append(line)
    return kept, reflections


REACT = ReactFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(REACT)
