"""Summaries of long episodes with stable pointers to the full evidence.

Follows Memex (2025, indexed experience memory): a long trajectory is kept whole in the
store and represented in context by a compact summary whose pointers (episode id and step
numbers) dereference to the evidence with ``xpkit show EPISODE_ID#STEP``. Only episodes with
at least ``min_summary_steps`` steps are summarised; shorter ones are their own summary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from xpkit.core.distill import Distiller, DistillOptions, Job, render_episode
from xpkit.core.hookspecs import hookimpl
from xpkit.core.units import make_unit


def summary_schema(n_steps: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 80,
                      "description": "a short title of the attempt"},
            "summary": {"type": "string", "maxLength": 400,
                        "description": "what was done and how it ended"},
            "key_steps": {"type": "array", "minItems": 1, "maxItems": 5, "items": {
                "type": "object",
                "properties": {
                    "step": {"type": "integer", "minimum": 0, "maximum": max(n_steps - 1, 0),
                             "description": "a step number"},
                    "what": {"type": "string", "maxLength": 120,
                             "description": "what happened at that step"},
                },
                "required": ["step", "what"],
            }},
        },
        "required": ["title", "summary", "key_steps"],
    }


class SummaryDistiller(Distiller):
    name = "summary"
    description = "compact summaries of long episodes with pointers to their steps (Memex)"
    template = "summary.txt"
    kind = "summary"
    max_tokens = 384

    def jobs(self, episodes: Sequence[dict[str, Any]], options: DistillOptions) -> Iterator[Job]:
        for ep in sorted(episodes, key=lambda e: e["episode_id"]):
            if len(ep.get("steps") or []) < options.min_summary_steps:
                continue
            job = Job(self.name, [ep], labels={"A": ep["episode_id"]})
            text = render_episode(ep, "Attempt", options.prompt_tokens)
            job.request = self.render(job, summary_schema(len(ep["steps"])), options,
                                      episodes=text)
            yield job

    def to_units(self, job: Job, data: Any, model: str | None) -> list[dict[str, Any]]:
        ep = job.episodes[0]
        eid = ep["episode_id"]
        steps = sorted({k["step"] for k in data["key_steps"]})
        pointers = "\n".join(f"- step {k['step']}: {k['what']} (xpkit show {eid}#{k['step']})"
                             for k in sorted(data["key_steps"], key=lambda k: k["step"]))
        return [make_unit(kind="summary", title=data["title"],
                          when=f"A task like: {(ep.get('task') or '')[:120]}",
                          content=f"{self.sentence(data['summary'], 'summary', 20)}\n"
                                  f"Key steps:\n{pointers}",
                          evidence=[{"episode_id": eid, "steps": steps}],
                          provenance=self.provenance(job, model))]


@hookimpl
def register_distillers(register: Any) -> None:
    register(SummaryDistiller())
