"""``evaluate``: does this library, context or data make *this* model better, and by how much?

One run reads task records and evaluates them in **arms** — the same items answered under
different conditions — then scores every answer with the chosen scorers (plugins, see
``core.scoring``):

- no ``--model``: the records' own ``answer`` is scored (one arm, ``given``): scoring other
  systems' runs;
- ``--model``: the model answers each task, with the record's ``context`` (from
  ``retrieve``) when it has one (one arm, ``context`` or ``none``);
- ``--ab``: every task without and with its context on the same model (arms ``none`` and
  ``context``), the paired difference tested for significance — LLM-specific utility of
  context (the context that helps one model may hurt another);
- ``--compare NAME=LIB.duckdb``: arms ``none`` plus one per library, each task's context
  retrieved from that library, every arm tested against ``none``;
- ``--gate UNITS``: arms ``current`` (the ``--store`` as it is) and ``candidate`` (a copy
  with the new units indexed); the units are added to the store only if the held-out tasks
  do not score worse with them. Unchecked self-editing of a memory has been shown to
  collapse accuracy over repeated rounds (ACE, Zhang et al. 2025 "Agentic Context
  Engineering"); the gate is the check.

Per unit, the items it appeared in are credited (LLM-specific utility; the counters
CASCADE-style retrieval reads): ``uses`` for every appearance, ``helpful`` when the item
scored higher with the context than without, ``harmful`` when lower. ``--feedback`` writes
them into the store's units, per model, in one transaction.

Rows stream out batch by batch: each input record with ``_eval`` (score, verdict, scorer
detail, per-arm answers and tokens). The summary (means with bootstrap intervals, paired
tests, token costs, unit credits) is returned as ``EvaluateSummary``; ``core.report`` renders
it as JSON, Markdown, HTML or PNG.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from xpkit.core.errors import RecordError, StrictModeError, UsageError
from xpkit.core.io import read_records, resolve_inputs
from xpkit.core.quarantine import Quarantine, default_rejects_path
from xpkit.core.scoring import Score, ScoreItem, ScorerContext, get_scorer
from xpkit.core.significance import bootstrap_ci, paired_test

Sink = Callable[[list[dict[str, Any]]], None]

TASK_FIELDS = ("task", "question", "query", "prompt", "instruction", "input", "problem")
ID_FIELDS = ("id", "item_id", "task_id", "episode_id", "qid", "query_id", "question_id")
DEFAULT_SYSTEM = ("You are a careful assistant. Solve the task. Give the final answer on the "
                  "last line.")
CONTEXT_INTRO = "Experience from earlier tasks that may help:"
DEFAULT_BATCH = 64
AUTO = "auto"


# --------------------------------------------------------------------------- items and arms


@dataclass
class Item:
    """One task as read: where it came from, what to ask, what counts as right."""

    pos: int
    item_id: str
    record: dict[str, Any]
    task: str | None
    reference: Any
    answer: str | None


@dataclass
class Arm:
    """A condition the items are answered under: no context, the record's own context, or
    context retrieved from a library (``store``)."""

    name: str
    source: str  # none | record | store | given
    store: str | None = None


@dataclass
class ArmTotals:
    """Per-arm accumulators for the summary."""

    values: list[float | None] = field(default_factory=list)
    passed: int = 0
    unscorable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    context_tokens: int = 0
    with_context: int = 0
    model_calls: int = 0
    cached: int = 0
    rejected: int = 0


@dataclass
class EvaluateSummary:
    """What a run measured. ``records`` read = ``items`` + ``rejected``."""

    records: int = 0
    items: int = 0
    rejected: int = 0
    scorer: str = ""
    scorers: list[str] = field(default_factory=list)
    model: str | None = None
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    units: dict[str, dict[str, int]] = field(default_factory=dict)
    feedback: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    curve: dict[str, list[float]] | None = None
    subset: dict[str, Any] | None = None
    rejects_path: str | None = None
    run_id: str = ""
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {"records": self.records, "items": self.items, "rejected": self.rejected,
                "scorer": self.scorer, "model": self.model,
                "arms": {k: {m: v[m] for m in ("mean", "n", "passed") if m in v}
                         for k, v in self.arms.items()},
                **({"gate": self.gate["decision"]} if self.gate else {})}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "records": self.records, "items": self.items, "rejected": self.rejected,
            "scorer": self.scorer, "scorers": self.scorers, "model": self.model,
            "arms": self.arms, "comparisons": self.comparisons,
        }
        if self.units:
            out["units"] = self.units
        if self.feedback is not None:
            out["feedback"] = self.feedback
        if self.gate is not None:
            out["gate"] = self.gate
        if self.curve is not None:
            out["curve"] = self.curve
        if self.subset is not None:
            out["subset"] = self.subset
        if self.notes:
            out["notes"] = self.notes
        out["run_id"] = self.run_id
        return out


def parse_compare(values: Sequence[str]) -> list[Arm]:
    """``--compare NAME=LIB.duckdb`` values as arms (names unique, not ``none``)."""
    arms: list[Arm] = []
    for raw in values:
        name, sep, path = raw.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"--compare {raw}: expected NAME=LIBRARY.duckdb, e.g. "
                             "--compare insight=insight.duckdb.")
        if name in ("none", "context") or name in {a.name for a in arms}:
            raise UsageError(f"--compare {raw}: the arm name {name!r} is taken; choose "
                             "another.")
        if not os.path.exists(path):
            raise UsageError(f"--compare {raw}: no such store {path}.")
        arms.append(Arm(name, "store", path))
    return arms


def lookup(record: dict[str, Any], path: str) -> Any:
    """A dotted field path (``meta.answer``) in a record, or None."""
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def task_text(value: Any) -> str | None:
    """A task as text: a string, or the last user message of chat messages."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list):
        for m in reversed(value):
            if isinstance(m, dict) and m.get("role") in ("user", "human"):
                content = m.get("content", m.get("value"))
                if isinstance(content, str) and content.strip():
                    return content
    return None


def _as_answer(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    return orjson.dumps(value).decode()


@dataclass
class Fields:
    """Where an item's parts are found in a record (``None``: the first default present)."""

    task: str | None = None
    reference: str = "reference"
    answer: str = "answer"
    id: str | None = None
    context: str = "context"

    def make_item(self, pos: int, rec: dict[str, Any], where: str, *, need_task: bool,
                  need_answer: bool, need_reference: bool) -> Item:
        task_field = self.task
        task = None
        if task_field:
            task = task_text(lookup(rec, task_field))
        else:
            for name in TASK_FIELDS:
                task = task_text(rec.get(name))
                if task is not None:
                    task_field = name
                    break
            if task is None:
                task = task_text(rec.get("messages"))
        if need_task and task is None:
            raise RecordError("no task text: expected one of " + ", ".join(TASK_FIELDS)
                              + " (or chat messages); name it with --task-field",
                              task_field or "task")
        answer = _as_answer(lookup(rec, self.answer))
        if need_answer and answer is None:
            raise RecordError("no answer to score; pass --model to generate answers, or name "
                              "the field with --answer-field", self.answer)
        reference = lookup(rec, self.reference)
        if need_reference and reference is None:
            raise RecordError("no reference to score against; name the field with "
                              "--reference-field", self.reference)
        item_id = None
        for name in ([self.id] if self.id else ID_FIELDS):
            v = lookup(rec, name) if name else None
            if isinstance(v, str | int) and not isinstance(v, bool):
                item_id = str(v)
                break
        if self.id and item_id is None:
            raise RecordError("no item id", self.id)
        return Item(pos, item_id or where, rec, task, reference, answer)


# --------------------------------------------------------------------------- prompting


def load_prompt_template(path: str | None) -> str | None:
    """A user prompt template with ``{task}`` and ``{context}`` placeholders, or None."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--prompt-template {path}: cannot read it "
                         f"({exc.strerror or exc}).") from exc
    if "{task}" not in text:
        raise UsageError(f"--prompt-template {path}: the template has no {{task}} "
                         "placeholder.")
    return text


def answer_messages(task: str, context: Any, *, system: str | None = DEFAULT_SYSTEM,
                    template: str | None = None) -> list[dict[str, Any]]:
    """The chat messages that ask the model to answer ``task`` with ``context``.

    ``context`` is rendered text (retrieve's plain/markdown templates) or chat messages
    (retrieve's chat template), which go before the task as given.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    text_ctx = context if isinstance(context, str) and context.strip() else None
    if isinstance(context, list) and context:
        messages.extend(m for m in context if isinstance(m, dict) and "role" in m)
    if template is not None:
        user = template.replace("{context}", text_ctx or "").replace("{task}", task)
    elif text_ctx:
        user = f"{CONTEXT_INTRO}\n{text_ctx.strip()}\n\nTask: {task}"
    else:
        user = task
    messages.append({"role": "user", "content": user})
    return messages


def hit_ids(record: dict[str, Any]) -> list[str]:
    """Unit ids of a retrieval record's hits, in rank order."""
    hits = record.get("hits")
    if not isinstance(hits, list):
        return []
    return [h["unit_id"] for h in hits if isinstance(h, dict) and isinstance(h.get("unit_id"), str)]


# --------------------------------------------------------------------------- scoring


def choose_scorer(name: str, items: Sequence[Item]) -> tuple[str, str | None]:
    """Resolve ``auto`` from the first record's reference: math for ``\\boxed{}`` or short
    LaTeX answers; numeric for GSM8K-style (``####``), numeric, or worked solutions ending in
    a number; else normalized exact match. Returns (name, note)."""
    if name != AUTO:
        return name, None
    refs = [_as_answer(it.reference) or "" for it in items if it.reference is not None][:50]
    if not refs:
        return "normalized", "--scorer auto: no references seen; using normalized"
    if all("\\boxed" in r for r in refs) or (
            any("\\" in r for r in refs) and all(len(r) <= 60 for r in refs)):
        pick = "math"  # boxed solutions, or bare LaTeX answers as in MATH-500
    elif all("####" in r or _is_number(r) or _ends_in_number(r) for r in refs):
        pick = "numeric"
    else:
        pick = "normalized"
    return pick, f"--scorer auto chose {pick}"


def _ends_in_number(text: str) -> bool:
    """A worked solution whose last line ends with its number ("A: 18", "= $1,200.")."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return bool(lines) and re.search(r"-?\d[\d,]*(\.\d+)?\W{0,3}$", lines[-1].strip()) is not None


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").strip().lstrip("$").rstrip("%"))
        return True
    except ValueError:
        return False


def score_answers(scorers: Sequence[tuple[Any, ScorerContext]], items: Sequence[Item],
                  answers: Sequence[str | None]) -> list[list[Score]]:
    """Scores per scorer (outer) per item (inner). A missing answer scores 0 (the model said
    nothing, which is wrong), never None."""
    out = []
    for scorer, ctx in scorers:
        todo = [i for i, a in enumerate(answers) if a is not None]
        scored = scorer.score([ScoreItem(answers[i], items[i].reference, items[i].record,
                                         items[i].task) for i in todo], ctx) if todo else []
        if len(scored) != len(todo):
            raise UsageError(f"scorer {scorer.name} returned {len(scored)} scores for "
                             f"{len(todo)} items.")
        row: list[Score] = [Score(0.0, False, None, "no answer") for _ in answers]
        for i, s in zip(todo, scored, strict=True):
            row[i] = s
        out.append(row)
    return out


# --------------------------------------------------------------------------- library context


def retrieve_contexts(store: str, items: Sequence[Item], options: dict[str, Any]
                      ) -> list[dict[str, Any]]:
    """Each item's retrieval record (``context``, ``hits``) from the library ``store``."""
    from xpkit.core.retrieve import retrieve

    with tempfile.TemporaryDirectory(prefix="xpkit-eval-") as tmp:
        path = os.path.join(tmp, "queries.jsonl")
        with open(path, "wb") as f:
            for it in items:
                f.write(orjson.dumps({"_eval_pos": it.pos, "task": it.task or ""},
                                     option=orjson.OPT_APPEND_NEWLINE))
        got: dict[int, dict[str, Any]] = {}

        def sink(batch: list[dict[str, Any]]) -> None:
            for r in batch:
                got[int(r["_eval_pos"])] = r

        retrieve([path], store=store, text_field="task", sink=sink,
                 rejects=os.path.join(tmp, "rejects.jsonl"), **options)
    return [got.get(it.pos, {"context": "", "hits": [], "context_tokens": 0}) for it in items]


def add_units_to_copy(store: str, units: str, workdir: str) -> str:
    """A copy of ``store`` with the units of the file ``units`` added and indexed."""
    from xpkit.core.index import IndexInfo, index
    from xpkit.core.store import Store

    copy = os.path.join(workdir, "candidate.duckdb")
    shutil.copyfile(store, copy)
    with Store.open(copy) as db:
        info = IndexInfo.read(db.con, "unit")
    index([units], store=copy, embed_model=info.embed_model if info else None,
          rejects=os.path.join(workdir, "rejects.jsonl"), strict=True)
    return copy


# --------------------------------------------------------------------------- streaming memory


def _empty_library(path: str) -> None:
    from xpkit.core.index import index

    index([], store=path)


def learning_curve(values: Sequence[float | None]) -> list[float]:
    """Cumulative mean score after each task (an unscorable task counts as 0)."""
    out, total = [], 0.0
    for i, v in enumerate(values, 1):
        total += v or 0.0
        out.append(round(total / i, 6))
    return out


def remember(row: dict[str, Any], item: Item, store: str, *, method: str, model: str | None,
             llm_options: dict[str, Any] | None, workdir: str) -> None:
    """Evo-Memory's step (Wei et al. 2025, "Evo-Memory: Benchmarking LLM Agent Test-time
    Learning with Self-Evolving Memory"): the task just answered becomes an episode in the
    library, is distilled with ``method`` and indexed, so the next task can retrieve it."""
    from xpkit.core.distill import distill
    from xpkit.core.index import index
    from xpkit.core.ingest import ingest
    from xpkit.core.records import make_episode, make_outcome

    arm = row["_eval"]["arms"]["memory"]
    answer = arm.get("answer") or ""
    episode = make_episode(
        task=item.task, answer=answer, reference=_as_answer(item.reference),
        steps=[{"role": "user", "kind": "message", "content": item.task or ""},
               {"role": "assistant", "kind": "message", "content": answer}],
        outcome=make_outcome(success=bool(arm.get("passed")), score=arm.get("score")),
        model=model, meta={"evaluate_item": item.item_id})
    path = os.path.join(workdir, "episode.jsonl")
    with open(path, "wb") as f:
        f.write(orjson.dumps(episode, option=orjson.OPT_APPEND_NEWLINE))
    quiet = os.path.join(workdir, "stream.rejects.jsonl")
    ingest([path], format="episode", store=store, rejects=quiet)
    distill([path], method=[method], store=store, model=model, rejects=quiet,
            llm_options=llm_options)
    index([], store=store, rejects=quiet)


# --------------------------------------------------------------------------- feedback


def credit_units(credits: dict[str, dict[str, int]], unit_ids: Sequence[str], diff: float | None
                 ) -> None:
    """Credit each unit an item's context showed: uses, and helpful/harmful by the paired
    difference of the item's score with vs without the context."""
    for uid in dict.fromkeys(unit_ids):
        c = credits.setdefault(uid, {"helpful": 0, "harmful": 0, "uses": 0})
        c["uses"] += 1
        if diff is not None and diff > 0:
            c["helpful"] += 1
        elif diff is not None and diff < 0:
            c["harmful"] += 1


def write_feedback(db: Any, credits: dict[str, dict[str, int]], model_key: str
                   ) -> dict[str, Any]:
    """Add ``credits`` to the units' counters, in total and under ``per_model[model_key]``
    (inside the caller's transaction). Units not in the store are counted, not created."""
    from xpkit.core.units import merge_stats

    ids = sorted(credits)
    if not ids:
        return {"model": model_key, "units_updated": 0, "units_missing": 0}
    rows = db.con.execute("SELECT unit_id, stats FROM units WHERE unit_id IN "
                          "(SELECT unnest(?))", [ids]).fetchall()
    found = {uid: orjson.loads(stats) if stats else {} for uid, stats in rows}
    updates = []
    for uid in ids:
        if uid not in found:
            continue
        c = credits[uid]
        merged = merge_stats(found[uid] or {}, {**c, "per_model": {model_key: c}})
        updates.append([orjson.dumps(merged).decode(), uid])
    if updates:
        db.con.executemany("UPDATE units SET stats = ? WHERE unit_id = ?", updates)
    return {"model": model_key, "units_updated": len(updates),
            "units_missing": len(ids) - len(updates),
            "helpful": sum(c["helpful"] for c in credits.values()),
            "harmful": sum(c["harmful"] for c in credits.values()),
            "uses": sum(c["uses"] for c in credits.values())}


# --------------------------------------------------------------------------- the stage


def evaluate(
    inputs: Sequence[str],
    *,
    scorer: Sequence[str] = (AUTO,),
    param: dict[str, str] | None = None,
    model: str | None = None,
    judge_model: str | None = None,
    ab: bool = False,
    compare: Sequence[str] = (),
    gate: str | None = None,
    gate_tolerance: float = 0.0,
    feedback: bool = False,
    stream: bool = False,
    stream_method: str = "exemplar",
    qrels: str | None = None,
    at: Sequence[int] = (10, 100),
    subset: int | None = None,
    subset_options: dict[str, Any] | None = None,
    store: str | None = None,
    task_field: str | None = None,
    reference_field: str = "reference",
    answer_field: str = "answer",
    id_field: str | None = None,
    context_field: str = "context",
    system: str | None = DEFAULT_SYSTEM,
    prompt_template: str | None = None,
    max_tokens: int = 256,
    k: int | None = None,
    budget_tokens: int | None = None,
    retrieve_template: str = "plain",
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    rejects: str | None = None,
    output: str | None = None,
    strict: bool = False,
    sink: Sink | None = None,
    on_progress: Callable[[Any], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    llm_options: dict[str, Any] | None = None,
    run_args: dict[str, Any] | None = None,
) -> EvaluateSummary:
    """Evaluate the records of ``inputs`` in their arms and score them (see the module doc).

    With ``qrels``, the inputs are retrieval records instead, scored against the judgments
    (recall@k, MRR, nDCG@k for every k of ``at``; see ``evaluate_retrieval``). With
    ``subset``, they are a matrix of per-item results of many models, from which a small
    representative item set is chosen (see ``evaluate_subset``).
    """
    from xpkit.core.store import RunLog, append_run

    if subset is not None:
        if model is not None or ab or compare or gate or feedback or qrels or stream:
            raise UsageError("--subset chooses evaluation items from a correctness matrix; "
                             "it does not run a model or combine with other modes.")
        return evaluate_subset(inputs, n=subset, seed=seed, sink=sink,
                               options=subset_options, run_args=run_args, store=store,
                               on_notice=on_notice)
    if qrels is not None:
        if model is not None or ab or compare or gate or feedback:
            raise UsageError("--qrels scores retrieval records against judgments; it does not "
                             "run a model (drop --model/--ab/--compare/--gate/--feedback).")
        return evaluate_retrieval(inputs, qrels=qrels, at=at, id_field=id_field,
                                  rejects=rejects, output=output, strict=strict, sink=sink,
                                  on_notice=on_notice, run_args=run_args, store=store)

    arms = _plan_arms(model=model, ab=ab, compare=compare, gate=gate, feedback=feedback,
                      store=store, stream=stream)
    if max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1.")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1.")
    template = load_prompt_template(prompt_template)
    raw_params = dict(param or {})
    chosen = [get_scorer(s) for s in scorer if s != AUTO]
    if model is None and any(getattr(s, "needs_model", False) for s in chosen) \
            and judge_model is None:
        raise UsageError(f"--scorer {chosen[0].name} needs a model: pass --judge-model.")
    fields = Fields(task_field, reference_field, answer_field, id_field, context_field)
    notice = on_notice or (lambda _m: None)
    sources = resolve_inputs(inputs)
    run = RunLog("evaluate", {**(run_args or {}), "store": store, "model": model,
                              "arms": [a.name for a in arms]})
    summary = EvaluateSummary(run_id=run.run_id)
    rejects_path = rejects or default_rejects_path(output, store)
    quarantine = Quarantine(rejects_path, run.run_id, "evaluate")
    totals = {a.name: ArmTotals() for a in arms}
    credits: dict[str, dict[str, int]] = {}
    llm = None
    scorers: list[tuple[Any, ScorerContext]] | None = None
    settings = None
    workdir = tempfile.mkdtemp(prefix="xpkit-evaluate-") if gate or stream else None
    retrieval_options = {"k": k, "budget_tokens": budget_tokens, "template": retrieve_template}
    try:
        if gate:
            arms[1].store = add_units_to_copy(store, gate, workdir)  # type: ignore[arg-type]
        if stream:
            from xpkit.core.distill import available_distillers

            if stream_method not in available_distillers():
                raise UsageError(f"--stream-method {stream_method}: unknown distiller; choose "
                                 f"from {', '.join(sorted(available_distillers()))}.")
            memory = arms[1]
            if memory.store is None:  # learn from scratch in a library that lives for the run
                memory.store = os.path.join(workdir, "memory.duckdb")  # type: ignore[arg-type]
                _empty_library(memory.store)
        if model is not None:
            from xpkit.core.llm import get_llm

            llm = get_llm(model, **(llm_options or {}))
            settings = llm.settings
            summary.model = llm.name
        pos = 0
        for batch in read_records(sources, batch_size, notice):
            items: list[Item] = []
            for row in batch:
                summary.records += 1
                if row.error is not None:
                    summary.rejected += 1
                    quarantine.reject_row(row)
                    continue
                rec = row.value or {}
                try:
                    if scorers is None:
                        # scorers are resolved on the first good record (auto looks at it)
                        probe = fields.make_item(0, rec, "", need_task=False,
                                                 need_answer=False, need_reference=False)
                        scorers = _scorers(scorer, [probe], raw_params, judge_model or model,
                                           settings, summary)
                    need_ref = any(getattr(s, "needs_reference", True) for s, _ in scorers)
                    item = fields.make_item(pos, rec, f"{row.file}:{row.line}",
                                            need_task=model is not None,
                                            need_answer=model is None,
                                            need_reference=need_ref)
                except RecordError as exc:
                    summary.rejected += 1
                    quarantine.reject(file=row.file, line=row.line, unit=row.unit,
                                      reason=exc.reason, field=exc.field, record=rec)
                    continue
                items.append(item)
                pos += 1
            # a stream answers one task at a time, remembering it before the next
            groups = [[it] for it in items] if stream else [items]
            for group in groups:
                if not group or scorers is None:
                    continue
                rows = _evaluate_batch(group, arms, llm, scorers, fields, totals, credits,
                                       system=system, template=template,
                                       max_tokens=max_tokens,
                                       retrieval_options=retrieval_options,
                                       on_progress=on_progress)
                if stream:
                    remember(rows[0], group[0], arms[1].store, method=stream_method,  # type: ignore[arg-type]
                             model=model, llm_options=llm_options, workdir=workdir)  # type: ignore[arg-type]
                summary.items += len(group)
                if sink is not None:
                    sink(rows)
        summary.rejects_path = rejects_path if quarantine.count else None
        _summarise(summary, arms, totals, credits, seed)
        if stream:
            summary.curve = {a.name: learning_curve(totals[a.name].values) for a in arms}
        if gate:
            summary.gate = _gate_decision(summary, gate, gate_tolerance)
        if strict and summary.rejected:
            raise StrictModeError(f"{summary.rejected} record(s) rejected (see {rejects_path}); "
                                  "--strict makes this a failure.")
        run.counts = summary.counts()
        if store is not None and (feedback or gate):
            _commit(store, summary, credits if feedback else None, gate, run)
        elif store is not None:
            append_run(store, run, notice)
    except BaseException as exc:
        run.status, run.error = "failed", str(exc) or type(exc).__name__
        if store is not None and (feedback or gate):
            append_run(store, run, notice)
        raise
    finally:
        quarantine.close()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _plan_arms(*, model: str | None, ab: bool, compare: Sequence[str], gate: str | None,
               feedback: bool, store: str | None, stream: bool = False) -> list[Arm]:
    modes = [name for name, on in (("--ab", ab), ("--compare", bool(compare)),
                                   ("--gate", bool(gate)), ("--stream", stream)) if on]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)} cannot be combined; run them separately.")
    if modes and model is None:
        raise UsageError(f"{modes[0]} answers every task under several conditions, so it "
                         "needs --model (e.g. --model default).")
    if feedback and not ab:
        raise UsageError("--feedback needs --ab: a unit is credited by comparing the same "
                         "task with and without its context.")
    if (feedback or gate) and store is None:
        raise UsageError(f"{'--feedback' if feedback else '--gate'} writes to the library: "
                         "pass --store LIB.duckdb.")
    if gate:
        if not os.path.exists(store):  # type: ignore[arg-type]
            raise UsageError(f"--store {store}: no such store to gate.")
        if not os.path.exists(gate):
            raise UsageError(f"--gate {gate}: no such units file.")
        return [Arm("current", "store", store), Arm("candidate", "store", None)]
    if stream:
        return [Arm("none", "none"), Arm("memory", "store", store)]
    if compare:
        return [Arm("none", "none"), *parse_compare(compare)]
    if ab:
        return [Arm("none", "none"), Arm("context", "record")]
    if model is None:
        return [Arm("given", "given")]
    return [Arm("context", "record")]


def _scorers(names: Sequence[str], probe: Sequence[Item], raw: dict[str, str],
             model: str | None, settings: Any, summary: EvaluateSummary
             ) -> list[tuple[Any, ScorerContext]]:
    resolved: list[str] = []
    for name in names:
        pick, note = choose_scorer(name, probe)
        if note:
            summary.notes.append(note)
        resolved.append(pick)
    objs = [get_scorer(n) for n in dict.fromkeys(resolved)]
    from xpkit.core.selectors import resolve_params

    params = resolve_params(raw, objs)
    summary.scorer = objs[0].name
    summary.scorers = [s.name for s in objs]
    return [(s, ScorerContext(params=p, settings=settings, model=model))
            for s, p in zip(objs, params, strict=True)]


def _evaluate_batch(items: list[Item], arms: list[Arm], llm: Any,
                    scorers: list[tuple[Any, ScorerContext]], fields: Fields,
                    totals: dict[str, ArmTotals], credits: dict[str, dict[str, int]], *,
                    system: str | None, template: str | None, max_tokens: int,
                    retrieval_options: dict[str, Any],
                    on_progress: Callable[[Any], None] | None) -> list[dict[str, Any]]:
    from xpkit.core.llm import Request

    per_arm: dict[str, dict[str, Any]] = {}
    for arm in arms:
        t = totals[arm.name]
        contexts: list[Any] = [None] * len(items)
        units: list[list[str]] = [[] for _ in items]
        ctx_tokens = [0] * len(items)
        if arm.source == "record":
            for i, it in enumerate(items):
                contexts[i] = lookup(it.record, fields.context)
                units[i] = hit_ids(it.record)
                ctx_tokens[i] = int(it.record.get("context_tokens") or 0)
        elif arm.source == "store":
            got = retrieve_contexts(arm.store, items, retrieval_options)  # type: ignore[arg-type]
            for i, r in enumerate(got):
                contexts[i], units[i] = r.get("context"), hit_ids(r)
                ctx_tokens[i] = int(r.get("context_tokens") or 0)
        completions: list[Any] = [None] * len(items)
        if arm.source == "given":
            answers = [it.answer for it in items]
        else:
            requests = [Request(answer_messages(it.task or "", contexts[i], system=system,
                                                template=template),
                                max_tokens=max_tokens, overflow="truncate")
                        for i, it in enumerate(items)]
            completions = llm.run(requests, on_progress=on_progress)
            answers = [c.text.strip() if c.ok else None for c in completions]
        scores = score_answers(scorers, items, answers)
        for i in range(len(items)):
            primary = scores[0][i]
            t.values.append(primary.value)
            t.passed += bool(primary.passed) if primary.value is not None else 0
            t.unscorable += primary.value is None
            t.context_tokens += ctx_tokens[i]
            t.with_context += bool(units[i]) or bool(contexts[i])
            c = completions[i]
            if c is not None:
                t.prompt_tokens += c.prompt_tokens
                t.completion_tokens += c.completion_tokens
                t.model_calls += not c.cached
                t.cached += c.cached
                t.rejected += not c.ok
        per_arm[arm.name] = {"answers": answers, "scores": scores, "completions": completions,
                             "units": units, "ctx_tokens": ctx_tokens}
    rows = []
    base = arms[0].name
    for i, it in enumerate(items):
        arm_rows = {name: _arm_row(a, i, scorers) for name, a in per_arm.items()}
        last = arms[-1].name
        ev: dict[str, Any] = {"item_id": it.item_id, **arm_rows[last]}
        if len(arms) > 1:
            ev["arms"] = arm_rows
            v0, v1 = per_arm[base]["scores"][0][i].value, per_arm[last]["scores"][0][i].value
            ev["diff"] = None if v0 is None or v1 is None else round(v1 - v0, 6)
            for arm in arms[1:]:
                v = per_arm[arm.name]["scores"][0][i].value
                diff = None if v0 is None or v is None else v - v0
                credit_units(credits, per_arm[arm.name]["units"][i], diff)
        rec = dict(it.record)
        if llm is not None:
            rec["answer"] = per_arm[last]["answers"][i]
        rec["_eval"] = ev
        rows.append(rec)
    return rows


def _arm_row(a: dict[str, Any], i: int, scorers: list[tuple[Any, ScorerContext]]
             ) -> dict[str, Any]:
    s: Score = a["scores"][0][i]
    row: dict[str, Any] = {"score": s.value, "passed": s.passed}
    if s.extracted is not None:
        row["extracted"] = s.extracted
    if s.detail:
        row["detail"] = s.detail
    if s.error:
        row["error"] = s.error
    if len(scorers) > 1:
        row["scores"] = {sc.name: a["scores"][j][i].value for j, (sc, _) in enumerate(scorers)}
    c = a["completions"][i]
    if c is not None:
        row["answer"] = a["answers"][i]
        row["tokens"] = {"prompt": c.prompt_tokens, "completion": c.completion_tokens}
        if not c.ok:
            row["rejection"] = c.rejection.reason
    if a["units"][i]:
        row["units"] = a["units"][i]
    if a["ctx_tokens"][i]:
        row["context_tokens"] = a["ctx_tokens"][i]
    return row


def _summarise(summary: EvaluateSummary, arms: list[Arm], totals: dict[str, ArmTotals],
               credits: dict[str, dict[str, int]], seed: int) -> None:
    for arm in arms:
        t = totals[arm.name]
        vals = [v for v in t.values if v is not None]
        ci = bootstrap_ci(vals, seed=seed)
        summary.arms[arm.name] = {
            "mean": _r(ci.mean), "ci_low": _r(ci.low), "ci_high": _r(ci.high),
            "n": ci.n, "passed": t.passed, "unscorable": t.unscorable,
            "items_with_context": t.with_context, "context_tokens": t.context_tokens,
            "tokens": {"prompt": t.prompt_tokens, "completion": t.completion_tokens},
            "model_calls": t.model_calls, "cached": t.cached, "rejected": t.rejected,
            **({"store": arm.store} if arm.source == "store" and arm.name != "candidate"
               else {}),
        }
    base = totals[arms[0].name].values
    for arm in arms[1:]:
        other = totals[arm.name].values
        pairs = [(a, b) for a, b in zip(base, other, strict=True)
                 if a is not None and b is not None]
        res = paired_test([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
        d = res.to_dict()
        d["diff"] = {k: _r(v) if isinstance(v, float) else v for k, v in d["diff"].items()}
        summary.comparisons.append({"a": arms[0].name, "b": arm.name,
                                    **{k: _r(v) if isinstance(v, float) else v
                                       for k, v in d.items()}})
    summary.units = dict(sorted(credits.items()))


def _r(x: float) -> float | None:
    return None if x != x else round(x, 6)  # NaN -> None (JSON has no NaN)


def _gate_decision(summary: EvaluateSummary, units: str, tolerance: float) -> dict[str, Any]:
    cur, cand = summary.arms["current"], summary.arms["candidate"]
    comp = summary.comparisons[0]
    ok = (cand["mean"] is not None and cur["mean"] is not None
          and cand["mean"] >= cur["mean"] - tolerance)
    return {"units_file": units, "decision": "kept" if ok else "rejected",
            "score_without": cur["mean"], "score_with": cand["mean"],
            "tolerance": tolerance, "p_value": comp["p_value"], "n": comp["n"]}


def _commit(store: str, summary: EvaluateSummary, credits: dict[str, dict[str, int]] | None,
            gate: str | None, run: Any) -> None:
    """Feedback counters, or the gated units and the gate's decision, in one transaction."""
    from xpkit.core.store import Store

    if gate and summary.gate and summary.gate["decision"] == "kept":
        from xpkit.core.index import index

        index([gate], store=store, strict=True, run_args={"gated_by": run.run_id})
    with Store.open(store) as db, db.transaction():
        if credits is not None:
            summary.feedback = write_feedback(db, credits, summary.model or "default")
            run.counts = {**summary.counts(), "feedback": summary.feedback}
        if summary.gate is not None:
            db.con.execute(
                "INSERT INTO gates (run_id, units_file, decision, score_without, score_with, "
                "p_value, n, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [run.run_id, summary.gate["units_file"], summary.gate["decision"],
                 summary.gate["score_without"], summary.gate["score_with"],
                 summary.gate["p_value"], summary.gate["n"],
                 orjson.dumps(summary.to_dict()).decode()])
        db.record_run(run)


def evaluate_retrieval(inputs: Sequence[str], *, qrels: str, at: Sequence[int] = (10, 100),
                       id_field: str | None = None, rejects: str | None = None,
                       output: str | None = None, strict: bool = False,
                       sink: Sink | None = None, on_notice: Callable[[str], None] | None = None,
                       run_args: dict[str, Any] | None = None, store: str | None = None
                       ) -> EvaluateSummary:
    """Retrieval metrics of ``retrieve`` output against ``qrels`` (``core.ir_metrics``).

    Each retrieval record gets ``_eval`` with its query id and its own nDCG@k, recall@k and
    reciprocal rank; the summary has their means over the judged queries, where a judged
    query that is missing from the input counts as 0.
    """
    from xpkit.core.ir_metrics import (
        ndcg_at_k,
        read_qrels,
        recall_at_k,
        reciprocal_rank,
        retrieval_metrics,
    )
    from xpkit.core.store import RunLog, append_run

    ks = sorted(set(at))
    if not ks or ks[0] < 1:
        raise UsageError("--at must be at least 1.")
    if not os.path.exists(qrels):
        raise UsageError(f"--qrels {qrels}: no such file.")
    judgments = read_qrels(qrels)
    run = RunLog("evaluate", {**(run_args or {}), "qrels": qrels, "at": ks})
    summary = EvaluateSummary(run_id=run.run_id, scorer="retrieval")
    rejects_path = rejects or default_rejects_path(output, store)
    quarantine = Quarantine(rejects_path, run.run_id, "evaluate")
    ranked: dict[str, list[str]] = {}
    try:
        for batch in read_records(resolve_inputs(inputs), 1000, on_notice):
            rows = []
            for row in batch:
                summary.records += 1
                rec = row.value or {}
                qid = None
                if row.error is None:
                    for name in ([id_field] if id_field else ID_FIELDS):
                        v = lookup(rec, name)
                        if isinstance(v, str | int) and not isinstance(v, bool):
                            qid = str(v)
                            break
                reason = row.error or (
                    None if qid is not None else
                    f"no query id ({id_field or ', '.join(ID_FIELDS)}); name it with --id-field")
                if reason is None and not isinstance(rec.get("hits"), list):
                    reason = "no hits list: expected the output of xpkit retrieve"
                if reason is not None:
                    summary.rejected += 1
                    quarantine.reject(file=row.file, line=row.line, unit=row.unit,
                                      reason=reason, field=row.field or id_field or "hits",
                                      raw=row.raw if row.error else None,
                                      record=None if row.error else rec)
                    continue
                docs = hit_ids(rec)
                ranked[qid] = docs
                rel = judgments.get(qid, {})
                ev: dict[str, Any] = {"item_id": qid, "judged": len(rel)}
                for k in ks:
                    ev[f"ndcg@{k}"] = round(ndcg_at_k(docs, rel, k), 6)
                    ev[f"recall@{k}"] = round(recall_at_k(docs, rel, k), 6)
                ev["rr"] = round(reciprocal_rank(docs, rel), 6)
                rows.append({**rec, "_eval": ev})
                summary.items += 1
            if sink is not None and rows:
                sink(rows)
        metrics = retrieval_metrics(ranked, judgments, ks)
        summary.arms["retrieval"] = {k: _r(v) if isinstance(v, float) else v
                                     for k, v in metrics.items()}
        unjudged = sum(1 for q in ranked if q not in judgments)
        if unjudged:
            summary.notes.append(f"{unjudged} quer(y/ies) have no judgments and are not "
                                 "averaged")
        summary.rejects_path = rejects_path if quarantine.count else None
        if strict and summary.rejected:
            raise StrictModeError(f"{summary.rejected} record(s) rejected (see {rejects_path}); "
                                  "--strict makes this a failure.")
    except BaseException as exc:
        run.status, run.error = "failed", str(exc) or type(exc).__name__
        raise
    finally:
        quarantine.close()
        run.counts = summary.counts()
        if store is not None:
            append_run(store, run, on_notice)
    return summary


def evaluate_subset(inputs: Sequence[str], *, n: int, seed: int = 0, sink: Sink | None = None,
                    options: dict[str, Any] | None = None, run_args: dict[str, Any] | None = None,
                    store: str | None = None, on_notice: Callable[[str], None] | None = None
                    ) -> EvaluateSummary:
    """Evaluation-subset selection (tinyBenchmarks; ``core.eval_subset``): choose ``n`` items
    that predict a model's full-benchmark score, and measure the prediction error on held-out
    models against random subsets of the same size.

    ``options``: ``method``, ``estimator``, ``held_out``, ``repeats``, ``cluster_cap`` for
    ``eval_subset``; ``layout``, ``model_field``, ``item_field``, ``value_field``,
    ``value_range``, ``missing_values`` for ``load_matrix``. The rows handed to ``sink`` are
    the chosen items (``item, weight, members, rank``); the summary's ``subset`` holds the
    errors and each held-out model's predicted and true score.
    """
    from xpkit.core.eval_subset import eval_subset, load_matrix
    from xpkit.core.store import RunLog, append_run

    opts = dict(options or {})
    load_keys = ("layout", "model_field", "item_field", "value_field", "value_range",
                 "missing_values")
    matrix = load_matrix(inputs, **{k: opts.pop(k) for k in load_keys if k in opts})
    run = RunLog("evaluate", {**(run_args or {}), "subset": n})
    summary = EvaluateSummary(run_id=run.run_id, scorer="subset")
    try:
        result = eval_subset(matrix, n=n, seed=seed, **opts)
        summary.subset = result.to_summary()
        summary.items = len(result.items)
        summary.records = summary.items
        if sink is not None:
            sink(result.to_rows())
    except BaseException as exc:
        run.status, run.error = "failed", str(exc) or type(exc).__name__
        raise
    finally:
        run.counts = summary.counts()
        if store is not None:
            append_run(store, run, on_notice)
    return summary
