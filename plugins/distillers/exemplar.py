"""Exemplars: successful episodes as compact in-context examples, without a model.

Follows Synapse (Zheng et al., 2024, "Synapse: Trajectory-as-Exemplar Prompting with Memory
for Computer Control"): a trajectory is stored as an exemplar after *state abstraction*,
keeping of each observation only what the next action needed. Here the abstraction is
lexical and deterministic: an observation longer than ``max_observation_chars`` keeps the
lines that share content words with the following thought/action (in their original
order, up to the limit) and replaces the rest with a pointer back to the full evidence
(``xpkit show EPISODE_ID#STEP``), as in self-generated in-context examples (Wang et al.,
2024) that reuse an agent's own successful runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from xpkit.core.distill import Distiller, DistillOptions, Job
from xpkit.core.hookspecs import hookimpl
from xpkit.core.library import content_words
from xpkit.core.units import make_unit, provenance

MAX_OBSERVATION_CHARS = 400
MAX_STEP_CHARS = 600


def abstract_observation(text: str, next_text: str, pointer: str,
                         limit: int = MAX_OBSERVATION_CHARS) -> str:
    """Keep the lines of ``text`` relevant to ``next_text`` within ``limit`` characters."""
    if len(text) <= limit:
        return text
    wanted = content_words(next_text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    scored = sorted(range(len(lines)),
                    key=lambda i: (-len(content_words(lines[i]) & wanted), i))
    keep: set[int] = set()
    used = 0
    for i in scored:
        if used + len(lines[i]) > limit:
            continue
        if keep and not content_words(lines[i]) & wanted:
            break
        keep.add(i)
        used += len(lines[i])
    if not keep:  # one very long line: keep its head
        head = text[: limit].rsplit(" ", 1)[0]
        return f"{head} […{len(text) - len(head)} chars elided: xpkit show {pointer}]"
    kept = "\n".join(lines[i] for i in sorted(keep))
    return f"{kept}\n[…{len(text) - used} chars elided: xpkit show {pointer}]"


def render_exemplar(episode: dict[str, Any]) -> tuple[str, list[int]]:
    """The compact trajectory text and the step numbers it draws on."""
    steps = episode.get("steps") or []
    eid = episode["episode_id"]
    lines: list[str] = []
    used: list[int] = []
    task = episode.get("task") or ""
    for i, step in enumerate(steps):
        kind, content = step["kind"], step.get("content") or ""
        if step["role"] == "system":
            continue  # policies and tool specs are not part of the example
        if step["role"] == "user" and kind == "message" and content == task:
            continue  # the task is rendered separately
        if kind == "observation" and not content.strip():
            continue
        if kind == "observation":
            following = " ".join(s.get("content") or "" for s in steps[i + 1:i + 3])
            content = abstract_observation(content, following, f"{eid}#{i}")
        elif len(content) > MAX_STEP_CHARS:
            content = (content[:MAX_STEP_CHARS].rsplit(" ", 1)[0]
                       + f" […: xpkit show {eid}#{i}]")
        label = {"thought": "Thought", "action": "Action", "observation": "Observation"}.get(
            kind, step["role"].capitalize())
        if kind == "action" and step.get("name") and step.get("args") is not None:
            content = content or f"{step['name']}({step['args']})"
        lines.append(f"{label}: {content}")
        used.append(i)
    answer = (episode.get("answer") or "").strip()
    if answer and not any(answer in line for line in lines[-1:]):
        lines.append(f"Answer: {answer}")
    return "\n".join(lines), used


def exemplar_unit(episode: dict[str, Any]) -> dict[str, Any] | None:
    """One exemplar unit from a successful episode (``None`` if it did not succeed)."""
    if (episode.get("outcome") or {}).get("success") is not True:
        return None
    body, used = render_exemplar(episode)
    task = (episode.get("task") or "").strip()
    if not body or not task:
        return None
    title = task.splitlines()[0][:120]
    tools = sorted({s["name"] for s in episode.get("steps") or []
                    if s["kind"] == "action" and s.get("name")})
    tags = [f"tool:{t}" for t in tools]
    if episode.get("model"):
        tags.append(f"model:{episode['model']}")
    return make_unit(kind="exemplar", title=title, when=f"A task like: {title}",
                     content=f"Task: {task}\n{body}", polarity="do",
                     evidence=[{"episode_id": episode["episode_id"], "steps": used}],
                     tags=tags, provenance=provenance("exemplar", None, None))


class ExemplarDistiller(Distiller):
    name = "exemplar"
    description = "successful episodes as compact in-context examples (Synapse); no model"
    needs_model = False
    kind = "exemplar"

    def jobs(self, episodes: Sequence[dict[str, Any]], options: DistillOptions) -> Iterator[Job]:
        for ep in sorted(episodes, key=lambda e: e["episode_id"]):
            if (ep.get("outcome") or {}).get("success") is True:
                yield Job(self.name, [ep])

    def to_units(self, job: Job, data: Any, model: str | None) -> list[dict[str, Any]]:
        unit = exemplar_unit(job.episodes[0])
        return [unit] if unit else []


@hookimpl
def register_distillers(register: Any) -> None:
    register(ExemplarDistiller())
