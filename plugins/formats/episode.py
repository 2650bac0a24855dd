"""xpkit's own episode records (the output of ``xpkit ingest``), read back in.

Re-ingesting ingest's output is idempotent: the content hash gives the same ``episode_id``.
"""

from __future__ import annotations

from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import make_episode, make_outcome, make_step


class EpisodeFormat(InputFormat):
    name = "episode"
    description = "xpkit episode records (episode_id, task, steps, outcome, ...)"

    def sniff(self, record: dict[str, Any]) -> float:
        steps = record.get("steps")
        if "episode_id" in record and isinstance(steps, list):
            return 1.0
        return 0.0

    def parse(self, record: dict[str, Any], options: FormatOptions) -> dict[str, Any]:
        steps_in = record.get("steps")
        if not isinstance(steps_in, list):
            raise RecordError("expected a list of steps", "steps")
        steps = []
        for i, s in enumerate(steps_in):
            if not isinstance(s, dict):
                raise RecordError("expected an object", f"steps.{i}")
            steps.append(make_step(str(s.get("role")), str(s.get("kind")), s.get("content"),
                                   name=s.get("name"), args=s.get("args"), field=f"steps.{i}"))
        out = record.get("outcome") or {}
        if not isinstance(out, dict):
            raise RecordError("expected an object", "outcome")
        meta = record.get("meta") or {}
        if not isinstance(meta, dict):
            raise RecordError("expected an object", "meta")
        return make_episode(task=record.get("task"), steps=steps,
                            outcome=make_outcome(out.get("success"), out.get("reward"),
                                                 out.get("score")),
                            answer=record.get("answer"), reference=record.get("reference"),
                            model=record.get("model") or options.model, meta=meta)


EPISODE = EpisodeFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(EPISODE)
