"""Small helpers the format parsers share: path lookup, outcome discovery, message text.

Every parser keeps the fields it did not consume in ``meta`` (DESIGN.md "Records"), finds
success / reward / score the same way (``find_outcome``), and reads chat-message content
the same way (``content_text``), so that a field means the same thing in every format.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from xpkit.core.errors import RecordError
from xpkit.core.records import make_outcome

_MISSING = object()

# Where outcome fields are commonly found, in order of preference.
SUCCESS_KEYS = ("success", "correct", "is_correct", "solved", "is_solved", "passed", "em",
                "resolved", "is_success")
REWARD_KEYS = ("reward",)
SCORE_KEYS = ("score", "f1", "accuracy")
_OUTCOME_KEYS = frozenset(SUCCESS_KEYS + REWARD_KEYS + SCORE_KEYS)

# Fields that hold a whole trajectory or conversation: a record that has one is an agent or
# chat log, never a single graded answer (see ``carries_trajectory``).
# (Not ``steps``: Dynamic Cheatsheet and Tree-of-Thoughts results use it for search rounds.)
TRAJECTORY_KEYS = ("trajectory", "traj", "scratchpad", "messages", "conversations",
                   "conversation", "history")

# ``Thought 3:``, ``Action:``, ``Observation 2:`` (ReAct, Yao et al., 2023).
REACT_MARKER = re.compile(r"^(Thought|Action|Observation|Act|Obs)(?:\s*\d+)?\s*:\s?",
                          re.IGNORECASE)
_REACT_LINE = re.compile(REACT_MARKER.pattern, re.IGNORECASE | re.MULTILINE)
# ``Finish[answer]``, ``search[query]``: a ReAct tool call written as text.
TOOL_CALL = re.compile(r"^\s*([A-Za-z_][\w-]*)\[(.*)\]\s*$", re.DOTALL)


def get_path(record: Any, path: str, default: Any = None) -> Any:
    """Look up ``a.b.0.c`` in nested dicts and lists; ``default`` when any part is missing."""
    cur = record
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part, _MISSING)
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            idx = int(part)
            cur = cur[idx] if -len(cur) <= idx < len(cur) else _MISSING
        else:
            cur = _MISSING
        if cur is _MISSING:
            return default
    return cur


def first_present(record: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first of ``keys`` whose value is neither missing, null nor empty text."""
    for k in keys:
        if k in record and record[k] is not None and record[k] != "":
            return k, record[k]
    return None, None


def find_outcome(record: dict[str, Any], *containers: str) -> tuple[dict[str, Any], set[str]]:
    """Collect success/reward/score from the record (and named sub-objects such as ``info``).

    Returns the outcome and the top-level keys it consumed, so the caller can keep the
    rest in ``meta``. A reward of exactly 0 or 1 with no success flag also sets success
    (tau-bench, FireAct); rewards given as text (``"0.0"``) are read as numbers.
    """
    used: set[str] = set()
    found: dict[str, Any] = {}
    scopes = [(None, record)] + [(c, record[c]) for c in containers
                                 if isinstance(record.get(c), dict)]
    if all(_OUTCOME_KEYS.isdisjoint(scope) for _, scope in scopes):
        return {"success": None, "reward": None, "score": None}, used  # the common case
    for name, keys in (("success", SUCCESS_KEYS), ("reward", REWARD_KEYS),
                       ("score", SCORE_KEYS)):
        for scope_name, scope in scopes:
            key, value = first_present(scope, keys)
            if key is not None:
                found[name] = value
                if scope_name is None:
                    used.add(key)
                break
    outcome = make_outcome(found.get("success"), found.get("reward"), found.get("score"))
    if outcome["success"] is None and outcome["reward"] in (0.0, 1.0):
        outcome["success"] = outcome["reward"] == 1.0
    return outcome, used


def rest(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """The fields a parser did not consume: they are kept in ``meta``."""
    return {k: v for k, v in record.items() if k not in used}


def carries_trajectory(record: dict[str, Any]) -> bool:
    """True when the record holds a conversation or an agent trajectory (a list of turns or
    steps, or a text transcript with ReAct markers), so it is a log, not one graded answer."""
    for key in TRAJECTORY_KEYS:
        value = record.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return True
        if isinstance(value, str) and has_react_lines(value):
            return True
    return False


def has_react_lines(text: str) -> bool:
    """True when some line of ``text`` starts with a ReAct marker (``Thought 1:``, ...)."""
    return _REACT_LINE.search(text) is not None


def parse_json_text(raw: Any) -> Any:
    """Decode tool-call arguments given as JSON text; anything else is returned unchanged."""
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def content_text(content: Any, field: str) -> str | None:
    """The text of a chat message's ``content``: a string, or OpenAI content parts
    (``[{"type": "text", "text": ...}]``, whose text parts are joined)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    raise RecordError(f"expected text content, found {type(content).__name__}", field)


def finish_argument(steps: list[dict[str, Any]]) -> str | None:
    """The argument of the last ``Finish[...]`` action: a ReAct agent's final answer."""
    for step in reversed(steps):
        if step["kind"] == "action" and str(step.get("name", "")).lower() == "finish":
            args = step.get("args")
            return args.get("input") if isinstance(args, dict) else None
    return None
