"""Behaviors: a name and a one-line instruction for a recurring reasoning step.

Follows "Metacognitive Reuse: Turning Recurring LLM Reasoning Into Concise Behaviors"
(Didolkar et al., 2025): the model reads several successful solutions, names the reasoning
steps that recur, and stores each as ``behavior_name: instruction`` in a behavior handbook
that later prompts (or fine-tuning) reuse. Only successful episodes are read; they are
batched by task similarity so a behavior has to recur across several of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from xpkit.core.distill import (
    Distiller,
    DistillOptions,
    Job,
    group_by_task,
    label_episodes,
    render_episode,
)
from xpkit.core.hookspecs import hookimpl
from xpkit.core.units import make_unit


def behavior_schema(labels: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"behaviors": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,60}$",
                         "description": "snake_case name of the behavior"},
                "instruction": {"type": "string", "maxLength": 240,
                                "description": "one line: when and how to do it"},
                "evidence": {"type": "array", "minItems": 1, "maxItems": len(labels),
                             "items": {"enum": labels}},
            },
            "required": ["name", "instruction", "evidence"],
        }}},
        "required": ["behaviors"],
    }


class BehaviorDistiller(Distiller):
    name = "behavior"
    description = "name + instruction for recurring reasoning steps (Metacognitive Reuse)"
    template = "behavior.txt"
    kind = "behavior"

    def jobs(self, episodes: Sequence[dict[str, Any]], options: DistillOptions) -> Iterator[Job]:
        wins = [ep for ep in episodes if (ep.get("outcome") or {}).get("success") is True]
        flat = [ep for group in group_by_task(wins) for ep in group]
        size = max(2, options.batch_episodes)
        for start in range(0, len(flat), size):
            batch = flat[start:start + size]
            if len(batch) < 2 and start:
                continue  # a behavior must recur: a lone leftover episode cannot show it
            job = Job(self.name, batch)
            labels = label_episodes(job, batch)
            share = options.prompt_tokens // len(batch)
            text = "\n\n".join(render_episode(ep, lab, share)
                               for ep, lab in zip(batch, labels, strict=True))
            job.request = self.render(job, behavior_schema(labels), options, episodes=text)
            yield job

    def to_units(self, job: Job, data: Any, model: str | None) -> list[dict[str, Any]]:
        return [make_unit(kind="behavior", title=item["name"],
                          content=self.sentence(item["instruction"], "instruction", 20),
                          when=None, polarity="do",
                          evidence=self.evidence(job, item["evidence"]),
                          provenance=self.provenance(job, model))
                for item in data["behaviors"]]


@hookimpl
def register_distillers(register: Any) -> None:
    register(BehaviorDistiller())
