"""``distill``: episodes -> experience units, grown into a library by delta updates.

Each method is a distiller plugin (hook ``register_distillers``) that plans *jobs* over the
episodes — one model call each (or none, for ``exemplar``) — and turns a job's validated
output into units. This module runs the jobs through the model runtime in batches, rejects
output that cites evidence absent from the job, grows the library (``core.library.grow``:
near-duplicates merge, the rest is added, nothing is regenerated) and hands each batch's
delta to the sink as soon as the batch finishes.

Output is a delta log: a unit that absorbs a later near-duplicate is written again with the
combined evidence and counters; the last record of a ``unit_id`` is current (``index`` and
``--store`` upsert by id). With ``--store`` the library there is the starting point and all
writes of the run are one transaction; the response cache makes a rerun after a crash cost
no model calls.

Long episodes: the prompt shows each episode as numbered steps, each cut to a character
limit with an explicit ``[…]`` marker; an episode whose rendering still exceeds its share
of the context window is shown as a *step window* — its first steps and its last steps,
with the elided range named (``[steps 4-37 elided]``), since the outcome is decided at the
end. A prompt that still does not fit is rejected by the runtime with the reason, never cut
silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any, ClassVar

from xpkit.core.errors import RecordError, StrictModeError, UsageError
from xpkit.core.index import indexed_unit_vectors, unit_index_text
from xpkit.core.library import (
    DEFAULT_EMBED_THRESHOLD,
    DEFAULT_THRESHOLD,
    content_words,
    evict,
    grow,
    merge_shards,
)
from xpkit.core.llm import (
    OutputCheck,
    Request,
    find_copied_example,
    find_degenerate_text,
    form_example,
)
from xpkit.core.quarantine import Quarantine, default_rejects_path
from xpkit.core.store import RunLog, Store
from xpkit.core.units import provenance

GRANULARITIES = ("principle", "instance")
STEP_CHARS = 300
BATCH_JOBS = 8


@dataclass
class DistillOptions:
    """Settings every distiller sees."""

    granularity: str = "principle"
    batch_episodes: int = 4
    min_summary_steps: int = 8
    prompt_tokens: int = 2400
    """Token budget for the episodes shown in one prompt (the rest of the window is for the
    instructions and the answer)."""
    model_name: str | None = None


@dataclass
class Job:
    """One unit of distillation work: the episodes it sees and the request (if any)."""

    distiller: str
    episodes: list[dict[str, Any]]
    labels: dict[str, str] = field(default_factory=dict)  # E1 -> episode_id
    request: Any = None  # core.llm.Request, or None for no-model distillers
    prompt: str = ""


class Distiller:
    """Base of distillers: a name, a prompt template, a schema, ``jobs`` and ``to_units``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True
    template: ClassVar[str] = ""  # file name in xpkit/plugins/distillers/prompts/
    max_tokens: ClassVar[int] = 320
    kind: ClassVar[str] = "insight"

    def jobs(self, episodes: Sequence[dict[str, Any]], options: DistillOptions) -> Iterator[Job]:
        """The work for ``episodes``: ``Job``s holding the episodes each sees and, for a
        distiller with a model, its request (built with ``render``). Every distiller
        implements this and ``to_units``."""
        raise NotImplementedError

    def to_units(self, job: Job, data: Any, model: str | None) -> list[dict[str, Any]]:
        """The experience units of a job: from the model's validated output ``data``, or
        from ``job.episodes`` alone (``data`` is None) for a distiller without a model."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------
    def render(self, job: Job, schema: dict[str, Any], options: DistillOptions,
               **values: str) -> Any:
        """Fill this distiller's template and build the runtime request."""
        system, user = load_template(self.template)
        form = form_example(schema)
        fill = {"form": form, "granularity": GRANULARITY_TEXT[options.granularity], **values}
        job.prompt = Template(user).substitute(fill)
        return Request(job.prompt, system=Template(system).substitute(fill), schema=schema,
                       max_tokens=self.max_tokens, check=output_check(form, job.prompt))

    def evidence(self, job: Job, labels: Iterable[str]) -> list[dict[str, Any]]:
        """Map episode labels cited by the model to episode ids; unknown labels reject."""
        out = []
        for label in labels:
            if label not in job.labels:
                raise RecordError(f"cites {label!r}, which is not an episode of this call "
                                  f"({', '.join(job.labels) or 'none'})", "evidence")
            out.append({"episode_id": job.labels[label]})
        if not out:
            raise RecordError("cites no episode", "evidence")
        return out

    @staticmethod
    def sentence(value: str, field: str, min_chars: int = 12) -> str:
        """Model text with whitespace folded; degenerate text (too short to say anything)
        rejects the output instead of being stored. Checked here rather than in the schema:
        a minimum length in the grammar makes constrained decoding far slower."""
        text = " ".join(value.split())
        if len(text) < min_chars:
            raise RecordError(f"too short to be useful: {text!r}", field)
        return text

    def provenance(self, job: Job, model: str | None) -> dict[str, Any]:
        return provenance(self.name, model if self.needs_model else None, job.prompt or None)


def output_check(form: str, source: str) -> OutputCheck:
    """The content test every model distiller's output passes before it becomes units: it
    copies nothing from the prompt's ``form`` example (a placeholder, or a placeholder's
    description as the answer; quoting ``source``, the episodes, is fine) and no text is
    caught in a repetition loop. A failure is retried with sampling, then rejected with the
    raw text (small models fill in the form's placeholders rather than answer)."""
    def test(data: Any) -> str | None:
        copied = find_copied_example(data, form, source=source)
        if copied:
            return f"copies the prompt's form instead of answering: {copied[0]!r}"
        loops = find_degenerate_text(data)
        if loops:
            return f"text caught in a repetition loop: {loops[0][:80]!r}"
        return None

    return OutputCheck("distill-output/1", test)


GRANULARITY_TEXT = {
    "principle": "Write general principles that transfer to other tasks of this kind; leave "
                 "out names, numbers and details specific to one task.",
    "instance": "Write specific advice for tasks like these, keeping the concrete details "
                "(names of tools, values, steps) that made the difference.",
}


def load_template(name: str) -> tuple[str, str]:
    """A prompt template file: a ``## system`` section and a ``## user`` section."""
    text = resources.files("xpkit.plugins.distillers").joinpath("prompts", name).read_text()
    parts = re.split(r"^## (system|user)\s*$", text, flags=re.MULTILINE)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    return sections["system"], sections["user"]


# --------------------------------------------------------------------------------------
# Rendering episodes for prompts
# --------------------------------------------------------------------------------------
def outcome_label(episode: dict[str, Any]) -> str:
    out = episode.get("outcome") or {}
    if out.get("success") is True:
        return "succeeded"
    if out.get("success") is False:
        return "failed"
    if out.get("reward") is not None:
        return f"reward {out['reward']:g}"
    return "outcome unknown"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " […]"


def render_episode(episode: dict[str, Any], label: str, budget_tokens: int,
                   step_chars: int = STEP_CHARS) -> str:
    """Numbered steps, each clipped; a step window when the whole does not fit the budget."""
    from xpkit.core.tokens import count_tokens

    steps = episode.get("steps") or []
    task = episode.get("task") or ""
    lines = [f"{step['kind']}" + (f" {step['name']}" if step.get("name") else "")
             + f": {_clip(step.get('content') or '', step_chars)}" for step in steps]
    numbered = [f"  step {i}: {line}" for i, line in enumerate(lines)
                if steps[i]["role"] != "system"]
    head = [f"{label} ({outcome_label(episode)}): task: {_clip(task, 600)}"]
    if episode.get("answer"):
        head.append(f"  final answer: {_clip(episode['answer'], 200)}")
    if episode.get("reference"):
        head.append(f"  reference answer: {_clip(episode['reference'], 200)}")
    text = "\n".join(head + numbered)
    if count_tokens(text) <= budget_tokens or len(numbered) < 4:
        return text
    # Step window: the first two steps, then as many of the last steps as fit; the elided
    # range is named so the reader (and the model) knows what is missing.
    first = numbered[:2]
    for n_tail in range(len(numbered) - 3, 0, -1):
        tail = numbered[-n_tail:]
        marker = (f"  [steps {_step_no(numbered[2])}-{_step_no(numbered[-n_tail - 1])} "
                  "elided]")
        text = "\n".join([*head, *first, marker, *tail])
        if count_tokens(text) <= budget_tokens:
            return text
    return text  # even the shortest window is too long: the runtime rejects it, visibly


def _step_no(line: str) -> str:
    return line.split(":", 1)[0].replace("step", "").strip()


def label_episodes(job: Job, episodes: Sequence[dict[str, Any]], prefix: str = "E") -> list[str]:
    labels = []
    for i, ep in enumerate(episodes, 1):
        label = f"{prefix}{i}"
        job.labels[label] = ep["episode_id"]
        labels.append(label)
    return labels


def group_by_task(episodes: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Episodes of the same task together, then groups ordered by task similarity.

    Deterministic: groups are keyed by normalised task text and sorted by their content
    words, so similar tasks sit next to each other and batch into the same call.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for ep in episodes:
        key = " ".join((ep.get("task") or "").lower().split())
        groups.setdefault(key, []).append(ep)
    ordered = sorted(groups.items(), key=lambda kv: (sorted(content_words(kv[0]))[:6], kv[0]))
    return [sorted(g, key=lambda e: e["episode_id"]) for _, g in ordered]


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
@dataclass
class DistillSummary:
    episodes: int = 0
    jobs: int = 0
    calls: int = 0
    cached: int = 0
    retries: int = 0  # extra attempts after invalid output (not counted in calls)
    new: int = 0
    merged: int = 0
    rejected: int = 0
    evicted: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    rejects_path: str | None = None
    run_id: str = ""

    def counts(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("episodes", "jobs", "calls", "cached", "retries",
                                              "new", "merged", "rejected", "evicted",
                                              "by_method")}


def available_distillers() -> dict[str, Distiller]:
    from xpkit.core.plugins import collect

    return {d.name: d for d in collect("register_distillers")}


def load_episodes(inputs: Sequence[str], store: Store | None) -> list[dict[str, Any]]:
    """Episodes from files or stdin (xpkit episode records); with no inputs, from the store."""
    from xpkit.core.io import iter_values

    if inputs or store is None:
        out = []
        for rec in iter_values(inputs):
            if not isinstance(rec.get("episode_id"), str) or not isinstance(rec.get("steps"),
                                                                           list):
                raise UsageError("distill reads episodes (the output of xpkit ingest); a "
                                 "record without episode_id and steps was found.")
            out.append(rec)
        return out
    return store.episodes()


def distill(
    inputs: Sequence[str],
    *,
    method: Sequence[str] = ("insight",),
    store: str | None = None,
    model: str | None = None,
    granularity: str = "principle",
    batch_episodes: int = 4,
    merge_threshold: float = DEFAULT_THRESHOLD,
    embed_threshold: float | None = None,
    max_units: int | None = None,
    output: str | None = None,
    rejects: str | None = None,
    strict: bool = False,
    sink: Callable[[list[dict[str, Any]]], None] | None = None,
    on_progress: Callable[[Any], None] | None = None,
    llm_options: dict[str, Any] | None = None,
    run_args: dict[str, Any] | None = None,
) -> DistillSummary:
    """Distill episodes with each ``method`` and grow the library (see the module doc)."""
    distillers = available_distillers()
    for m in method:
        if m not in distillers:
            raise UsageError(f"--method {m}: unknown distiller; choose from "
                             f"{', '.join(sorted(distillers))}.")
    if granularity not in GRANULARITIES:
        raise UsageError(f"--granularity {granularity}: choose principle or instance.")
    options = DistillOptions(granularity=granularity, batch_episodes=batch_episodes)
    run = RunLog("distill", {**(run_args or {}), "method": list(method), "store": store})
    summary = DistillSummary(run_id=run.run_id)
    quarantine = Quarantine(rejects or default_rejects_path(output, store), run.run_id,
                            "distill")
    db = Store.open(store) if store else None
    llm = None
    try:
        episodes = load_episodes(inputs, db)
        summary.episodes = len(episodes)
        if any(distillers[m].needs_model for m in method):
            from xpkit.core.llm import get_llm

            llm = get_llm(model, **(llm_options or {}))
            options.model_name = llm.name
        library = {u["unit_id"]: u for u in (db.units() if db else [])}
        vectors = _LibraryVectors.of(db) if embed_threshold is not None else None
        if db is not None:
            db.con.execute("BEGIN TRANSACTION")
        changed: dict[str, dict[str, Any]] = {}
        for m in method:
            d = distillers[m]
            jobs = list(d.jobs(episodes, options))
            summary.jobs += len(jobs)
            for start in range(0, len(jobs), BATCH_JOBS):
                batch = jobs[start:start + BATCH_JOBS]
                units = _run_batch(d, batch, llm, summary, quarantine, on_progress)
                if vectors is not None:
                    vectors.add(units)
                delta = grow(library.values(), units, threshold=merge_threshold,
                             vectors=vectors.by_id if vectors else None,
                             embed_threshold=DEFAULT_EMBED_THRESHOLD if embed_threshold is None
                             else embed_threshold)
                summary.new += len(delta.added)
                summary.merged += len(delta.merged)
                summary.by_method[m] = summary.by_method.get(m, 0) + len(delta.added)
                for u in [*delta.added, *delta.updated.values()]:
                    library[u["unit_id"]] = u
                    changed[u["unit_id"]] = u
                out = delta.added + list(delta.updated.values())
                if sink is not None and out:
                    sink(out)
        if max_units is not None and len(library) > max_units:
            _, evicted = evict(list(library.values()), max_units)
            summary.evicted = len(evicted)
            for u in evicted:
                library.pop(u["unit_id"])
                changed.pop(u["unit_id"], None)
            if db is not None:
                db.delete_units([u["unit_id"] for u in evicted])
        run.counts = summary.counts()
        if strict and summary.rejected:
            raise StrictModeError(f"{summary.rejected} output(s) rejected (see "
                                  f"{quarantine.path}); --strict makes this a failure.")
        if db is not None:
            db.upsert_units(list(changed.values()))
            db.record_run(run)
            db.con.execute("COMMIT")
    except BaseException as exc:
        if db is not None:
            from contextlib import suppress

            with suppress(Exception):
                db.con.execute("ROLLBACK")
            run.status, run.error = "failed", str(exc) or type(exc).__name__
            run.counts = summary.counts()
            with suppress(Exception), db.transaction():
                db.record_run(run)
        raise
    finally:
        quarantine.close()
        if db is not None:
            db.close()
    summary.rejects_path = quarantine.path if quarantine.count else None
    return summary


class _LibraryVectors:
    """Embeddings of the library's units, when the store's unit index has them: the indexed
    vectors of existing units, and new units embedded with the index's own model (cached)
    so that ``grow`` can merge paraphrases that share few words."""

    def __init__(self, embedder: Any, by_id: dict[str, Any]) -> None:
        self.embedder = embedder
        self.by_id = by_id

    @classmethod
    def of(cls, db: Store | None) -> _LibraryVectors | None:
        found = indexed_unit_vectors(db.con) if db is not None else None
        if found is None:
            return None
        from xpkit.core.vectors import get_embedder

        model, by_id = found
        return cls(get_embedder(model), by_id)

    def add(self, units: list[dict[str, Any]]) -> None:
        from xpkit.core.vectors import embed

        todo = [u for u in units if u["unit_id"] not in self.by_id]
        if todo:
            vecs = embed(self.embedder, [unit_index_text(u) for u in todo])
            self.by_id.update(zip((u["unit_id"] for u in todo), vecs, strict=True))


def _run_batch(d: Distiller, jobs: list[Job], llm: Any, summary: DistillSummary,
               quarantine: Quarantine, on_progress: Callable[[Any], None] | None
               ) -> list[dict[str, Any]]:
    units: list[dict[str, Any]] = []
    if not d.needs_model:
        for job in jobs:
            units.extend(_checked(d, job, None, None, quarantine, summary))
        return units
    completions = llm.run([j.request for j in jobs], on_progress=on_progress)
    for job, c in zip(jobs, completions, strict=True):
        summary.calls += 1
        summary.cached += c.cached
        summary.retries += max(c.attempts - 1, 0) if not c.cached else 0
        if not c.ok:
            summary.rejected += 1
            quarantine.reject(file=d.name, line=0, unit="job", reason=c.rejection.reason,
                              raw=c.rejection.raw.encode(),
                              field=None)
            continue
        units.extend(_checked(d, job, c.data, c.text, quarantine, summary, llm.name))
    return units


def _checked(d: Distiller, job: Job, data: Any, raw: str | None, quarantine: Quarantine,
             summary: DistillSummary, model: str | None = None) -> list[dict[str, Any]]:
    """Units from one job's output, each checked against the job's episodes."""
    try:
        units = d.to_units(job, data, model)
    except RecordError as exc:
        summary.rejected += 1
        quarantine.reject(file=d.name, line=0, unit="job", reason=str(exc), field=exc.field,
                          raw=(raw or "").encode())
        return []
    known = {ep["episode_id"]: len(ep.get("steps") or []) for ep in job.episodes}
    good = []
    for u in units:
        bad = [ev for ev in u["evidence"] if ev["episode_id"] not in known
               or any(s >= known[ev["episode_id"]] or s < 0 for s in ev.get("steps", []))]
        if bad:
            summary.rejected += 1
            quarantine.reject(file=d.name, line=0, unit="job", field="evidence",
                              reason=f"evidence points outside the input: {bad}",
                              raw=(raw or "").encode())
            continue
        good.append(u)
    return good


def merge_shard_files(inputs: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD
                      ) -> list[dict[str, Any]]:
    """Merge unit files distilled in parallel into one library, independent of order."""
    from xpkit.core.io import iter_values

    units = []
    for rec in iter_values(inputs):
        if not isinstance(rec.get("unit_id"), str):
            raise UsageError("--merge reads units (the output of xpkit distill); a record "
                             "without unit_id was found.")
        units.append(rec)
    return merge_shards(units, threshold=threshold)
