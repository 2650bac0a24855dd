"""Contrasts: where a failed attempt diverged from a successful one on the same task.

Follows Meta-Experience Learning (2025): pairing a correct and an incorrect trajectory of
the same task isolates the *bifurcation step* — the first step where the failed attempt
went another way — and the lesson attached to it is more precise than one drawn from either
trajectory alone. Pairs are found automatically: by task identity first (normalised task
text), then, for a failure with no success on the same task, the successful episode whose
task has the highest content-word Jaccard similarity (at least ``MIN_SIMILARITY``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from xpkit.core.distill import Distiller, DistillOptions, Job, render_episode
from xpkit.core.hookspecs import hookimpl
from xpkit.core.library import content_words, jaccard
from xpkit.core.units import make_unit

MIN_SIMILARITY = 0.5


def _task_key(ep: dict[str, Any]) -> str:
    return " ".join((ep.get("task") or "").lower().split())


def find_pairs(episodes: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(success, failure) pairs: same task first, then the most similar task; deterministic."""
    wins: dict[str, list[dict[str, Any]]] = {}
    losses: dict[str, list[dict[str, Any]]] = {}
    for ep in sorted(episodes, key=lambda e: e["episode_id"]):
        success = (ep.get("outcome") or {}).get("success")
        if success is True:
            wins.setdefault(_task_key(ep), []).append(ep)
        elif success is False:
            losses.setdefault(_task_key(ep), []).append(ep)
    pairs = []
    unmatched = []
    for task in sorted(losses):
        if task in wins:
            pairs.append((wins[task][0], losses[task][0]))
        else:
            unmatched.append(losses[task][0])
    win_words = {task: content_words(task) for task in wins}
    for loss in unmatched:
        words = content_words(_task_key(loss))
        best = max(((jaccard(words, w), t) for t, w in win_words.items()),
                   key=lambda st: (st[0], [-ord(c) for c in st[1]]), default=(0.0, ""))
        if best[0] >= MIN_SIMILARITY:
            pairs.append((wins[best[1]][0], loss))
    return pairs


def contrast_schema(n_success: int, n_failed: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "failed_step": {"type": "integer", "minimum": 0, "maximum": max(n_failed - 1, 0),
                            "description": "number of the step where F went wrong"},
            "success_step": {"type": "integer", "minimum": 0, "maximum": max(n_success - 1, 0),
                             "description": "number of the matching step in S"},
            "what_went_wrong": {"type": "string", "maxLength": 240,
                                "description": "what F did at that step and why it was wrong"},
            "when": {"type": "string", "maxLength": 200,
                     "description": "the situation in which the lesson applies"},
            "lesson": {"type": "string", "maxLength": 240,
                       "description": "what to do instead, as one instruction"},
        },
        "required": ["failed_step", "success_step", "what_went_wrong", "when", "lesson"],
    }


class ContrastDistiller(Distiller):
    name = "contrast"
    description = "the step where a failure diverged from a success on the same task (MEL)"
    template = "contrast.txt"
    kind = "contrast"

    def jobs(self, episodes: Sequence[dict[str, Any]], options: DistillOptions) -> Iterator[Job]:
        share = options.prompt_tokens // 2
        for win, loss in find_pairs(episodes):
            job = Job(self.name, [win, loss], labels={"S": win["episode_id"],
                                                      "F": loss["episode_id"]})
            text = render_episode(win, "S", share) + "\n\n" + render_episode(loss, "F", share)
            schema = contrast_schema(len(win["steps"]), len(loss["steps"]))
            job.request = self.render(job, schema, options, episodes=text)
            yield job

    def to_units(self, job: Job, data: Any, model: str | None) -> list[dict[str, Any]]:
        win, loss = job.episodes
        example = (f"At step {data['failed_step']} the failed attempt went wrong: "
                   f"{data['what_went_wrong']}")
        lesson = self.sentence(data["lesson"], "lesson", 20)
        return [make_unit(kind="contrast", title=lesson[:80], when=data["when"],
                          content=lesson, example=example, polarity="avoid",
                          evidence=[{"episode_id": win["episode_id"],
                                     "steps": [data["success_step"]]},
                                    {"episode_id": loss["episode_id"],
                                     "steps": [data["failed_step"]]}],
                          provenance=self.provenance(job, model))]


@hookimpl
def register_distillers(register: Any) -> None:
    register(ContrastDistiller())
