"""Small helpers the format parsers share: dotted-path lookup and outcome discovery."""

from __future__ import annotations

from typing import Any

from xpkit.core.records import make_outcome

_MISSING = object()

# Where outcome fields are commonly found, in order of preference.
SUCCESS_KEYS = ("success", "correct", "is_correct", "solved", "is_solved", "passed", "em",
                "resolved")
REWARD_KEYS = ("reward",)
SCORE_KEYS = ("score", "f1", "accuracy")


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
    for k in keys:
        if k in record and record[k] is not None and record[k] != "":
            return k, record[k]
    return None, None


def find_outcome(record: dict[str, Any], *containers: str) -> tuple[dict[str, Any], set[str]]:
    """Collect success/reward/score from the record (and named sub-objects such as ``info``).

    Returns the outcome and the top-level keys it consumed, so the caller can keep the
    rest in ``meta``. A reward of exactly 0 or 1 with no success flag also sets success.
    """
    used: set[str] = set()
    found: dict[str, Any] = {}
    scopes = [(None, record)] + [(c, record[c]) for c in containers
                                 if isinstance(record.get(c), dict)]
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
