"""Insights: rules with an applicability condition, from successes and failures.

Follows ExpeL (Zhao et al., 2024, "ExpeL: LLM Agents Are Experiential Learners"), which
extracts insights by comparing successful and failed trajectories; ICAL (Sarch et al.,
2024), which abstracts trajectories into generalisable lessons; and AlphaOPT (2025), whose
library entries are {taxonomy, condition, explanation, example}. Episodes of the same and
of similar tasks are batched into one call (``--batch-episodes``) so that a rule is drawn
from several attempts rather than one.
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


def insight_schema(labels: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"insights": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 60,
                          "description": "a short name for the lesson"},
                "taxonomy": {"type": "string", "maxLength": 30,
                             "description": "the kind of lesson, in two or three words"},
                "when": {"type": "string", "maxLength": 160,
                         "description": "the situation in which the lesson applies"},
                "rule": {"type": "string", "maxLength": 200,
                         "description": "what to do or to avoid, as one instruction"},
                "polarity": {"enum": ["do", "avoid"]},
                "evidence": {"type": "array", "minItems": 1, "maxItems": len(labels),
                             "items": {"enum": labels}},
            },
            "required": ["title", "taxonomy", "when", "rule", "polarity", "evidence"],
        }}},
        "required": ["insights"],
    }


class InsightDistiller(Distiller):
    name = "insight"
    description = "rules with applicability conditions from successes and failures (ExpeL, ICAL)"
    template = "insight.txt"
    kind = "insight"
    max_tokens = 384

    def jobs(self, episodes: Sequence[dict[str, Any]], options: DistillOptions) -> Iterator[Job]:
        batch: list[dict[str, Any]] = []
        for group in group_by_task(episodes):
            for ep in group:
                batch.append(ep)
                if len(batch) >= options.batch_episodes:
                    yield self._job(batch, options)
                    batch = []
        if batch:
            yield self._job(batch, options)

    def _job(self, batch: list[dict[str, Any]], options: DistillOptions) -> Job:
        job = Job(self.name, list(batch))
        labels = label_episodes(job, batch)
        share = options.prompt_tokens // len(batch)
        text = "\n\n".join(render_episode(ep, lab, share) for ep, lab in zip(batch, labels,
                                                                             strict=True))
        job.request = self.render(job, insight_schema(labels), options, episodes=text)
        return job

    def to_units(self, job: Job, data: Any, model: str | None) -> list[dict[str, Any]]:
        return [make_unit(kind="insight", title=item["title"],
                          when=self.sentence(item["when"], "when"),
                          content=self.sentence(item["rule"], "rule", 20),
                          polarity=item["polarity"],
                          evidence=self.evidence(job, item["evidence"]),
                          tags=[f"taxonomy:{item['taxonomy'].strip().lower()}"],
                          provenance=self.provenance(job, model))
                for item in data["insights"]]


@hookimpl
def register_distillers(register: Any) -> None:
    register(InsightDistiller())
