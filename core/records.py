"""Canonical record shapes (DESIGN.md "Records") and the stable content hash behind ids.

An *episode* is one attempt at one task: ``episode_id``, ``source``, ``task``, ``steps``
(``{role, kind, content, name?, args?}``), ``outcome`` (``{success, reward, score}``),
``answer``, ``reference``, ``model``, ``meta``. Its id is a hash of its content (everything
but ``episode_id`` and ``source``), so ingesting the same content twice, from any file,
yields the same id and the second copy is counted as a duplicate.
"""

from __future__ import annotations

import functools
import hashlib
import math
from itertools import accumulate, chain
from typing import Any

import orjson

from xpkit.core.errors import RecordError

STEP_KINDS = ("message", "thought", "action", "observation")
STEP_ROLES = ("system", "user", "assistant", "tool", "environment")
EPISODE_FIELDS = ("episode_id", "source", "task", "steps", "outcome", "answer", "reference",
                  "model", "meta")
OUTCOME_FIELDS = ("success", "reward", "score")
_HASHED_FIELDS = ("task", "steps", "outcome", "answer", "reference", "model", "meta")


_HASH_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps
_blake2b = hashlib.blake2b


def content_hash(obj: Any, digest_size: int = 12) -> str:
    """Hex digest of the canonical JSON (sorted keys) of ``obj``; stable across runs."""
    return _blake2b(_dumps(obj, option=_HASH_OPTIONS), digest_size=digest_size).hexdigest()


def episode_id_for(episode: dict[str, Any]) -> str:
    """The stable id of an episode: ``ep_`` + hash of its content fields."""
    return "ep_" + content_hash({k: episode.get(k) for k in _HASHED_FIELDS})


def as_text(value: Any, field: str, *, required: bool = False) -> str | None:
    """Coerce a scalar to text (numbers become their decimal form); reject containers."""
    if value is None or value == "":
        if required:
            raise RecordError("is missing or empty", field)
        return None if value is None else ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    raise RecordError(f"expected text, found {type(value).__name__}", field)


def as_bool(value: Any, field: str) -> bool | None:
    """Read a success flag: booleans, 0/1, and the usual words (true/false, yes/no, pass/fail)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes", "y", "correct", "pass", "passed", "success", "solved"):
            return True
        if low in ("false", "0", "no", "n", "incorrect", "fail", "failed", "failure", "wrong"):
            return False
    raise RecordError(f"expected a boolean, found {_show(value)}", field)


def as_number(value: Any, field: str) -> float | None:
    """Read a reward or score as a finite float (bools count as 0/1)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            raise RecordError(f"expected a number, found {_show(value)}", field) from None
    else:
        raise RecordError(f"expected a number, found {type(value).__name__}", field)
    if not math.isfinite(f):
        raise RecordError(f"expected a finite number, found {_show(value)}", field)
    return f


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def make_step(role: str, kind: str, content: Any, *, name: str | None = None,
              args: Any = None, field: str = "steps") -> dict[str, Any]:
    """One canonical step; ``content`` that is not text is kept as its JSON text."""
    if role not in STEP_ROLES:
        raise RecordError(f"unknown role {role!r} (expected one of {', '.join(STEP_ROLES)})",
                          f"{field}.role")
    if kind not in STEP_KINDS:
        raise RecordError(f"unknown kind {kind!r}", f"{field}.kind")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        content = (orjson.dumps(content).decode() if isinstance(content, dict | list)
                   else str(content))
    step: dict[str, Any] = {"role": role, "kind": kind, "content": content}
    if name is not None:
        step["name"] = str(name)
    if args is not None:
        step["args"] = args
    return step


def make_outcome(success: Any = None, reward: Any = None, score: Any = None,
                 field: str = "outcome") -> dict[str, Any]:
    """A canonical outcome; when only one of success/reward is known the other stays null."""
    return {
        "success": as_bool(success, f"{field}.success"),
        "reward": as_number(reward, f"{field}.reward"),
        "score": as_number(score, f"{field}.score"),
    }


def make_episode(*, task: Any, steps: list[dict[str, Any]], outcome: dict[str, Any] | None = None,
                 answer: Any = None, reference: Any = None, model: Any = None,
                 meta: dict[str, Any] | None = None,
                 source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble and validate a canonical episode and give it its content-hash id.

    An episode needs a task or at least one step; the format parsers raise ``RecordError``
    with the offending input field before this point when a required field is missing.
    """
    # (as_text only for values that are not already text or null: this runs per record)
    task_text = task if task is None or type(task) is str else as_text(task, "task")
    if not task_text and not steps:
        raise RecordError("has neither a task nor any steps", "task")
    # The hashed fields in episode order; hashing them here is episode_id_for() without
    # building a second dict.
    content: dict[str, Any] = {
        "task": task_text,
        "steps": steps,
        "outcome": outcome or make_outcome(),
        "answer": answer if answer is None or type(answer) is str else as_text(answer, "answer"),
        "reference": reference if reference is None or type(reference) is str
        else as_text(reference, "reference"),
        "model": model if model is None or type(model) is str else as_text(model, "model"),
        "meta": meta or {},
    }
    try:
        # The same bytes as with _HASH_OPTIONS while every key is text (~20% faster)
        canonical = _dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a key that is not text, in meta: orjson wants OPT_NON_STR_KEYS
        canonical = _dumps(content, option=_HASH_OPTIONS)
    digest = _blake2b(canonical, digest_size=12).hexdigest()
    return {"episode_id": "ep_" + digest, "source": source or {}, **content}


@functools.cache
def episode_arrow_schema() -> Any:
    """The Parquet/Arrow schema of episodes: native structs, JSON text for free-form values."""
    import pyarrow as pa

    step = pa.struct([("role", pa.string()), ("kind", pa.string()), ("content", pa.string()),
                      ("name", pa.string()), ("args", pa.string())])
    return pa.schema(
        [
            ("episode_id", pa.string()),
            ("source", pa.struct([("format", pa.string()), ("file", pa.string()),
                                  ("line", pa.int64())])),
            ("task", pa.string()),
            ("steps", pa.list_(step)),
            ("outcome", pa.struct([("success", pa.bool_()), ("reward", pa.float64()),
                                   ("score", pa.float64())])),
            ("answer", pa.string()),
            ("reference", pa.string()),
            ("model", pa.string()),
            ("meta", pa.string()),
        ],
        metadata={b"xpkit:json_columns": orjson.dumps(["meta", "steps[].args"]),
                  b"xpkit:record": b"episode"},
    )


def episode_for_arrow(ep: dict[str, Any]) -> dict[str, Any]:
    """Encode the free-form parts of an episode (meta, step args) as JSON text for Parquet."""
    out = dict(ep)
    out["meta"] = orjson.dumps(ep.get("meta") or {}).decode()
    out["steps"] = [
        {**s, "args": orjson.dumps(s["args"]).decode()} if "args" in s else s
        for s in ep.get("steps") or []
    ]
    return out


def episodes_to_arrow(episodes: list[dict[str, Any]]) -> Any:
    """The episodes as an Arrow table in ``episode_arrow_schema()``.

    The same table as ``pa.Table.from_pylist([episode_for_arrow(e) for e in episodes],
    schema)``, built a column at a time, which is several times faster. Episodes of an
    unexpected shape (a plugin's) take that general route, with its errors.
    """
    import pyarrow as pa

    schema = episode_arrow_schema()
    try:
        return _episode_columns(episodes, schema)
    except (AttributeError, KeyError, TypeError, ValueError, pa.ArrowException):
        return pa.Table.from_pylist([episode_for_arrow(e) for e in episodes], schema=schema)


def _struct(values: list[Any], fields: Any, names: tuple[str, ...]) -> Any:
    """A struct array from dicts (``None`` = a null struct, a missing key = a null field)."""
    import pyarrow as pa

    children = [pa.array([v.get(k) if v is not None else None for v in values],
                         type=fields.field(k).type) for k in names]
    mask = pa.array([v is None for v in values]) if None in values else None
    return pa.StructArray.from_arrays(children, fields=list(fields), mask=mask)


def _episode_columns(episodes: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    dumps = orjson.dumps
    string = pa.string()
    steps_lists = [ep.get("steps") or [] for ep in episodes]
    steps = list(chain.from_iterable(steps_lists))
    offsets = pa.array(list(accumulate(map(len, steps_lists), initial=0)), pa.int32())
    step_type = schema.field("steps").type.value_type
    # A step without role, kind or content raises KeyError: the general route gives nulls.
    step_columns = [
        pa.array([s["role"] for s in steps], string),
        pa.array([s["kind"] for s in steps], string),
        pa.array([s["content"] for s in steps], string),
        pa.array([s.get("name") for s in steps], string),
        pa.array([dumps(s["args"]).decode() if "args" in s else None for s in steps], string),
    ]
    step_array = pa.ListArray.from_arrays(
        offsets, pa.StructArray.from_arrays(step_columns, fields=list(step_type)))
    source_type = schema.field("source").type
    outcome_type = schema.field("outcome").type
    columns = [
        pa.array([ep.get("episode_id") for ep in episodes], string),
        _struct([ep.get("source") for ep in episodes], source_type, ("format", "file", "line")),
        pa.array([ep.get("task") for ep in episodes], string),
        step_array,
        _struct([ep.get("outcome") for ep in episodes], outcome_type,
                ("success", "reward", "score")),
        pa.array([ep.get("answer") for ep in episodes], string),
        pa.array([ep.get("reference") for ep in episodes], string),
        pa.array([ep.get("model") for ep in episodes], string),
        pa.array([dumps(ep.get("meta") or {}).decode() for ep in episodes], string),
    ]
    return pa.Table.from_arrays(columns, schema=schema)
