"""``select-data``: choose the training data that matters from a pool, accounting for all of it.

The stages compose in one fixed order:

1. **read** every input record with the ``ingest`` format plugins (one item per episode;
   unreadable records go to the quarantine file);
2. **filter**: ``--filter empty|degenerate``, ``--min-tokens``/``--max-tokens`` and a
   ``--where`` condition in xpkit's filter language (the one ``retrieve`` uses), compiled
   to parameterised SQL and run by DuckDB over the items, never by Python ``eval``;
3. **dedup**: exact (normalised text hash), then near-duplicates (MinHash LSH over character
   trigrams and words, candidates verified on their true shingle sets and, for short texts,
   their word edits, ``xpkit.core.dedup``), keeping the best member of each group (a
   success over a failure, a higher reward, then the first seen);
4. **method**: a registered selector ranks the remaining candidates (random, top by a
   score, k-center, facility location, MoPPS, DRIVE, LEAD ...), within each stratum of
   ``--stratify``;
5. **budget**: ``--budget N`` records (pairs for DPO) or ``--budget-tokens N`` (tiktoken
   ``cl100k_base`` tokens of the exported messages), filled greedily in rank order,
   proportionally across strata, at most ``--per-task`` records per task;
6. **export**: the input records with ``_select`` = {score, reason, cluster, id}, or chat
   messages (``--export sft``), or preference pairs (``--export dpo``).

Filtering comes before dedup so that a group's kept member is one that passed the filters.
Every item ends in exactly one of selected, duplicate (with the id kept in its place),
filtered (with the reason) or not chosen (with the reason); ``SelectSummary.balanced``
checks that the counts add up, and ``report`` writes each item's fate.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpkit.core.errors import StrictModeError, UsageError, XpkitError
from xpkit.core.io import DEFAULT_BATCH_SIZE

SELECTED, DUPLICATE, FILTERED, NOT_CHOSEN = 0, 1, 2, 3
STATUS = ("selected", "duplicate", "filtered", "not_chosen")
DEDUP_CHOICES = ("none", "exact", "near")
FILTER_CHOICES = ("empty", "degenerate")
EXPORT_CHOICES = ("sft", "dpo")
ORDER_CHOICES = ("input", "rank", "curriculum")
FEATURE_CHOICES = ("tfidf", "minhash")
Sink = Callable[[list[dict[str, Any]]], None]


@dataclass
class SelectSummary:
    """What a run did. Items (episodes) = selected + duplicates + filtered + not chosen;
    records read = items' records + rejected."""

    records: int = 0
    rejected: int = 0
    items: int = 0
    selected: int = 0
    duplicates: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    filtered: int = 0
    not_chosen: int = 0
    written: int = 0  # output records (DPO: pairs)
    filtered_by: dict[str, int] = field(default_factory=dict)
    not_chosen_by: dict[str, int] = field(default_factory=dict)
    group_sizes: dict[int, int] = field(default_factory=dict)
    duplicate_examples: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    selected_tokens: int | None = None
    pool_tokens: int | None = None
    budget: str = ""
    method: str = ""
    score: str = ""
    strata: dict[str, tuple[int, int]] = field(default_factory=dict)
    clusters: int = 0
    near_candidates: int = 0
    near_verified: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rejects_path: str | None = None
    report_path: str | None = None
    run_id: str = ""

    @property
    def balanced(self) -> bool:
        return self.items == (self.selected + self.duplicates + self.filtered
                              + self.not_chosen)

    def counts(self) -> dict[str, Any]:
        return {"records": self.records, "rejected": self.rejected, "items": self.items,
                "selected": self.selected, "duplicates": self.duplicates,
                "exact_duplicates": self.exact_duplicates,
                "near_duplicates": self.near_duplicates, "filtered": self.filtered,
                "not_chosen": self.not_chosen, "written": self.written,
                "selected_tokens": self.selected_tokens}


# ====================================================================== views for selectors


class _State:
    """Shared, lazily computed data about the candidates (features, clusters, scores)."""

    def __init__(self, pool: Any, candidates: Any, *, features: str, clusters: int | None,
                 seed: int, scorer: Any, scorer_params: dict[str, Any],
                 notice: Callable[[str], None], sketch_dim: int,
                 mapping: dict[str, str] | None = None,
                 llm_factory: Callable[[], Any] | None = None) -> None:
        import numpy as np

        self.pool = pool
        self.candidates = candidates
        self.row_of = np.full(pool.size, -1, np.int64)
        self.row_of[candidates] = np.arange(candidates.size)
        self.features = features
        self.n_clusters = clusters
        self.seed = seed
        self.scorer = scorer
        self.scorer_params = scorer_params
        self.notice = notice
        self.sketch_dim = sketch_dim
        self.mapping = mapping or {}
        self.llm_factory = llm_factory
        self._sketch: Any = None
        self._labels: Any = None
        self._utility: Any = None
        self.outcome = _outcome_values(pool)

    def sketch_rows(self) -> Any:
        import numpy as np

        if self._sketch is None:
            t = time.monotonic()
            if self.features == "minhash":
                sigs = self.pool.signatures()
                if sigs is None:
                    from xpkit.core.dedup import NearDupParams, signatures_for

                    params = NearDupParams()
                    parts = []
                    for lo in range(0, self.candidates.size, 4096):
                        parts.append(signatures_for(
                            self.pool.text_of(self.candidates[lo:lo + 4096]), params))
                    self._sketch = (np.concatenate(parts) if parts
                                    else np.zeros((0, params.num_perm), np.uint32))
                else:
                    self._sketch = np.asarray(sigs[self.candidates])
            else:
                from xpkit.core.diversity import tfidf_sketches

                self._sketch = tfidf_sketches(self.pool.text_of, self.candidates,
                                              dim=self.sketch_dim)
            self.notice(f"sketches: {self.features} for {self.candidates.size:,} candidates "
                        f"in {time.monotonic() - t:.1f}s")
        return self._sketch

    def labels(self) -> Any:
        if self._labels is None:
            import numpy as np

            n = self.candidates.size
            k = self.n_clusters or max(2, min(128, int(math.sqrt(n / 2)) or 1))
            data = self.sketch_rows()
            if self.features == "minhash":
                from itertools import islice

                from xpkit.core.diversity import Sketches, k_center_greedy

                # Gonzalez clustering: the first k farthest-first centers, nearest wins.
                sk = Sketches(data, "minhash")
                centers = np.asarray([i for i, _ in islice(k_center_greedy(sk, 0), k)],
                                     np.int64)
                self._labels = (sk.sim_matrix(np.arange(n), centers).argmax(axis=1)
                                .astype(np.int64) if n else np.zeros(0, np.int64))
            else:
                from xpkit.core.diversity import kmeans

                self._labels = kmeans(data, k, seed=self.seed)
            self.n_clusters = int(k)
        return self._labels

    def utility(self, view: PoolView) -> Any:
        import numpy as np

        if self._utility is None:
            full = PoolView(self, self.candidates)
            ctx = SelectContext(params=self.scorer_params, seed=self.seed,
                                notice=self.notice, llm_factory=self.llm_factory)
            self._utility = np.asarray(self.scorer.score(full, ctx), np.float64)
        return self._utility[self.row_of[view.index]]

    def messages(self, items: Any) -> list[list[dict[str, Any]]]:
        """The chat messages of pool items, as ``--export sft`` writes them: the payload
        itself with ``--export``, else the input record parsed again with its format."""
        from xpkit.core.errors import RecordError
        from xpkit.core.export import sft_messages
        from xpkit.core.formats import FormatOptions, get_format

        pool = self.pool
        out: list[list[dict[str, Any]]] = []
        for i in [int(x) for x in items]:
            payload = pool.payload(i)
            if pool.options.payload == "messages":
                out.append(payload if isinstance(payload, list) else [])
                continue
            fmt = pool.formats.get(pool.sources[pool.file_idx[i]])
            ep = None
            if isinstance(payload, dict) and "episode_id" in payload and "steps" in payload:
                ep = payload  # a record that gave several episodes keeps the episode
            elif fmt is not None and isinstance(payload, dict):
                try:
                    got = get_format(fmt).parse(payload, FormatOptions(mapping=self.mapping))
                except RecordError:
                    got = None
                ep = got[0] if isinstance(got, list) and got else got
            out.append(sft_messages(ep, payload, fmt) if isinstance(ep, dict) else [])
        return out


class PoolView:
    """The candidates a selector sees (a stratum of them, or all), as aligned arrays.

    Positions ``0..size-1`` index every array; ``index`` maps them to pool items.
    """

    def __init__(self, state: _State, index: Any) -> None:
        self._s = state
        self.index = index

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def task(self) -> Any:
        return self._s.pool.task[self.index]

    @property
    def success(self) -> Any:
        return self._s.pool.success[self.index]

    @property
    def reward(self) -> Any:
        return self._s.pool.reward[self.index]

    @property
    def outcome(self) -> Any:
        """Per record: 1/0 success, else a reward within [0, 1], else NaN."""
        return self._s.outcome[self.index]

    @property
    def tokens(self) -> Any:
        return self._s.pool.tokens[self.index]

    @property
    def chars(self) -> Any:
        return self._s.pool.chars[self.index]

    @property
    def response_chars(self) -> Any:
        return self._s.pool.response_chars[self.index]

    def texts(self, positions: Any = None) -> list[str]:
        """The compared text of each position (``--text``, normalised: case-folded,
        whitespace collapsed). A model-aware selector reads ``records`` instead."""
        idx = self.index if positions is None else self.index[positions]
        return self._s.pool.text_of(idx)

    def records(self, positions: Any) -> list[Any]:
        """The output payloads (input records, or messages with --export) of positions."""
        return [self._s.pool.payload(int(i)) for i in self.index[positions]]

    def messages(self, positions: Any = None) -> list[list[dict[str, Any]]]:
        """The chat messages of positions (as ``--export sft`` writes them): what a
        model-aware selector shows its model."""
        return self._s.messages(self.index if positions is None else self.index[positions])

    def ids(self, positions: Any) -> list[str]:
        return [self._s.pool.id_of(int(i)) for i in self.index[positions]]

    def sketches(self) -> Any:
        from xpkit.core.diversity import Sketches

        data = self._s.sketch_rows()[self._s.row_of[self.index]]
        return Sketches(data, "minhash" if self._s.features == "minhash" else "dense")

    def clusters(self) -> Any:
        return self._s.labels()[self._s.row_of[self.index]]

    def utility(self) -> Any:
        """The ``--score`` utility of every position (higher is better)."""
        return self._s.utility(self)

    def task_posteriors(self, alpha: float = 1.0, beta: float = 1.0) -> tuple[Any, Any, Any]:
        """Beta posterior ``(alpha_t, beta_t, attempts_t)`` of each position's task, from
        the outcomes of every candidate of the pool (not only this view)."""
        from xpkit.core.difficulty import task_outcomes

        s = self._s
        tasks = s.pool.task[s.candidates]
        to = task_outcomes(tasks, s.outcome[s.candidates], n_tasks=len(s.pool.tasks))
        a, b = to.posterior(alpha, beta)
        t = self.task
        return a[t], b[t], to.attempts[t]


@dataclass
class SelectContext:
    """What a selector gets besides the view: its parameters, the seed, the budget share."""

    params: dict[str, Any]
    seed: int = 0
    quota_records: int | None = None
    quota_tokens: int | None = None
    notice: Callable[[str], None] = lambda _m: None
    stratum: str | None = None
    llm_factory: Callable[[], Any] | None = None

    def rng(self, salt: int = 0) -> Any:
        import numpy as np

        return np.random.default_rng([self.seed, salt])

    def llm(self) -> Any:
        """The ``--model`` runtime (``xpkit.core.llm.LLM``), made on first use; the model
        itself loads only when a call misses the cache."""
        if self.llm_factory is None:
            self.llm_factory = model_factory(None, None)
        return self.llm_factory()


def model_factory(model: str | None, llm_options: dict[str, Any] | None
                  ) -> Callable[[], Any]:
    """A function that makes the run's ``LLM`` once (``--model``, resolved lazily: a run
    whose selectors use no model never resolves or loads one)."""
    import functools

    @functools.cache
    def make() -> Any:
        from xpkit.core.llm import get_llm

        return get_llm(model, **(llm_options or {}))

    return make


def _outcome_values(pool: Any) -> Any:
    from xpkit.core.difficulty import outcome_value

    return outcome_value(pool.success, pool.reward)


# ====================================================================== the stages


class _AnyField(dict):
    """Accepts every field name: checks the syntax of --where before the pool is read."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        from xpkit.core.filters import Field

        return Field('"x"', "text")


def _parse_where(where: str) -> str:
    """Check the syntax of ``--where`` early (field names are checked once the pool is read)."""
    from xpkit.core.filters import compile_where

    compile_where(where, _AnyField(), set())
    return where


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


_DUCK_TYPES = {"BOOLEAN": "bool", "BIGINT": "number", "DOUBLE": "number", "INTEGER": "number",
               "HUGEINT": "number", "UBIGINT": "number", "FLOAT": "number"}


def _where_mask(pool: Any, expr: str, active: Any) -> Any:
    """Evaluate ``--where`` over the items with DuckDB; True where it holds.

    The expression is xpkit's filter language (``xpkit.core.filters``, shared with
    ``retrieve``): parsed, never evaluated as Python, and compiled to parameterised SQL over
    a table of the items. Columns: the item's ``id, file, line, format, task, answer, model,
    success, reward, score, n_steps, chars, response_chars, tokens``, the input record's
    top-level scalar fields by name, and ``meta.KEY`` / ``record.PATH`` inside the episode's
    meta and the input record. DuckDB runs the query with file access disabled.
    """
    import duckdb
    import numpy as np

    from xpkit.core.filters import Field, compile_where

    mask = np.zeros(pool.size, bool)
    if pool.size == 0:
        return mask
    path = os.path.join(pool.workdir, "where.jsonl")
    with open(path, "wb") as f:
        for blob in pool.wheres:
            f.write(blob + b"\n")
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    try:
        con.execute("CREATE TABLE pool AS SELECT * FROM read_json(?, "
                    "format='newline_delimited', sample_size=-1, union_by_name=true, "
                    "maximum_object_size=1073741824)", [path])
        fields: dict[str, Any] = {}
        for name, typ, *_ in con.execute("DESCRIBE pool").fetchall():
            if name == "_idx":
                continue
            q = '"' + name.replace('"', '""') + '"'
            if name in ("meta", "record"):
                con.execute(f"ALTER TABLE pool ALTER {q} TYPE JSON USING {q}::JSON")
                fields[name] = Field(q, "json")
                continue
            if typ == "JSON" or typ.startswith(("STRUCT", "MAP")) or typ.endswith("[]"):
                # Mixed or nested types: compare as text.
                con.execute(f"ALTER TABLE pool ALTER {q} TYPE VARCHAR "
                            f"USING json_extract_string(to_json({q}), '$')")
                typ = "VARCHAR"
            fields[name] = Field(q, _DUCK_TYPES.get(typ, "text"))
        sql, params = compile_where(expr, fields, {"meta", "record"})
        # Defence in depth: the compiled query cannot reach files or settings anyway.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            rows = con.execute(f"SELECT _idx FROM pool WHERE {sql}", params).fetchall()
        except duckdb.Error as exc:
            raise UsageError(f"--where {expr!r}: {_first_line(exc)}.") from None
    finally:
        con.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    idx = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    mask[idx] = True
    return mask & active


def _priority(pool: Any) -> Any:
    """Rank of each item as the member to keep in a duplicate group (0 = best): a success
    over a failure over unknown, then the higher reward, then the earlier record."""
    import numpy as np

    succ = np.nan_to_num(pool.success, nan=-1.0)
    rew = np.nan_to_num(pool.reward, nan=-np.inf)
    order = np.lexsort((np.arange(pool.size), -rew, -succ))
    prio = np.empty(pool.size, np.int64)
    prio[order] = np.arange(pool.size)
    return prio


# ====================================================================== budget filling


@dataclass
class _Unit:
    members: tuple[int, ...]
    cost: int  # what the budget counts: 1, or tokens with --budget-tokens
    task: int
    score: float | None
    reason: str
    cluster: int | None
    pair: dict[str, Any] | None = None
    tokens: int = -1


class _Stream:
    """A stratum's units in rank order, with the smallest cost not yet seen (token budgets
    stop as soon as nothing left could fit)."""

    def __init__(self, units: Iterator[_Unit], costs: Any | None) -> None:
        import numpy as np

        self.units = units
        self.buffer: list[_Unit] = []
        self.done = False
        self._costs = costs
        if costs is not None:
            self._order = np.argsort(costs, kind="stable")
            self._seen = np.zeros(costs.size, bool)
            self._ptr = 0

    def seen(self, pos: int | None) -> None:
        if self._costs is not None and pos is not None:
            self._seen[pos] = True

    def min_unseen(self) -> int:
        if self._costs is None:
            return 0
        while self._ptr < self._order.size and self._seen[self._order[self._ptr]]:
            self._ptr += 1
        return int(self._costs[self._order[self._ptr]]) if self._ptr < self._order.size \
            else 1 << 62

    def next(self) -> _Unit | None:
        if self.done:
            return None
        try:
            return next(self.units)
        except StopIteration:
            self.done = True
            return None


def _fill(streams: list[_Stream], quotas: list[int], total: int, tokens: bool,
          per_task: int | None, skipped: dict[int, str]) -> list[_Unit]:
    """Greedy budget fill in rank order: each stratum up to its quota, then the room left
    (from quotas a stratum could not use) round-robin over all strata."""
    taken: list[_Unit] = []
    used = 0
    per: Counter[int] = Counter()

    def try_take(u: _Unit, room: int) -> bool:
        nonlocal used
        if u.cost > room or used + u.cost > total:
            return False
        taken.append(u)
        used += u.cost
        per[u.task] += 1
        return True

    def capped(u: _Unit) -> bool:
        if per_task is not None and per[u.task] >= per_task:
            for m in u.members:
                skipped.setdefault(m, f"--per-task {per_task} reached for its task")
            return True
        return False

    for st, quota in zip(streams, quotas, strict=True):
        mine = 0
        while mine < quota and used < total:
            if tokens and quota - mine < st.min_unseen():
                break
            u = st.next()
            if u is None:
                break
            if capped(u):
                continue
            if try_take(u, quota - mine):
                mine += u.cost
            else:
                st.buffer.append(u)
                if not tokens:
                    break
    # Room left (a stratum smaller than its share, or token slack): round-robin.
    active = [st for st in streams if st.buffer or not st.done]
    while used < total and active:
        progressed = False
        for st in list(active):
            room = total - used
            u = st.buffer.pop(0) if st.buffer else st.next()
            if u is None:
                active.remove(st)
                continue
            progressed = True
            if capped(u):
                continue
            if not try_take(u, room) and tokens and room < min(
                    (s.min_unseen() for s in active), default=0):
                active.clear()
                break
            if not st.buffer and st.done:
                active.remove(st)
        if not progressed:
            break
    return taken


def _quotas(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` proportionally to ``sizes`` (largest remainder, deterministic)."""
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    raw = [total * s / whole for s in sizes]
    base = [min(int(r), s) for r, s in zip(raw, sizes, strict=True)]
    rest = total - sum(base)
    order = sorted(range(len(sizes)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    for i in order:
        if rest <= 0:
            break
        if base[i] < sizes[i]:
            base[i] += 1
            rest -= 1
    return base


# ====================================================================== select_data


def select_data(
    inputs: Sequence[str],
    *,
    format: str = "auto",
    mapping: dict[str, str] | None = None,
    text: str = "all",
    dedup: str = "exact",
    near_dup_threshold: float = 0.85,
    shingle: int = 3,
    num_perm: int = 128,
    near_dup_diff: int = 13,
    numbers_must_match: bool = True,
    filters: Sequence[str] = (),
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    where: str | None = None,
    method: str | None = None,
    score: str = "auto",
    params: dict[str, str] | None = None,
    features: str = "tfidf",
    clusters: int | None = None,
    budget: int | None = None,
    budget_tokens: int | None = None,
    stratify: str | None = None,
    per_task: int | None = None,
    task_field: str | None = None,
    seed: int = 0,
    order: str = "input",
    export: str | None = None,
    pairs_per_task: int = 1,
    store: str | None = None,
    output: str | None = None,
    rejects: str | None = None,
    report: str | None = None,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model: str | None = None,
    llm_options: dict[str, Any] | None = None,
    sink: Sink | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    run_args: dict[str, Any] | None = None,
) -> SelectSummary:
    """Choose records from the pool ``inputs`` and hand them to ``sink`` in batches.

    The parameters mirror the CLI options (see the module docstring for the stage order).
    ``model`` and ``llm_options`` (``ctx=``, ``threads=``, ``no_cache=`` ...) reach the
    model-aware selectors (judge, ifd, perplexity, add-one-in) through ``SelectContext.llm``.
    ``output`` only decides where the quarantine file goes by default. Returns the summary;
    every item is accounted for (``SelectSummary.balanced``).
    """
    from xpkit.core.dedup import NearDupParams
    from xpkit.core.quarantine import Quarantine, default_rejects_path
    from xpkit.core.selectors import get_selector, resolve_params
    from xpkit.core.store import RunLog

    notice = on_notice or (lambda _m: None)
    _check_options(dedup=dedup, filters=filters, export=export, order=order,
                   features=features, budget=budget, budget_tokens=budget_tokens,
                   min_tokens=min_tokens, max_tokens=max_tokens, per_task=per_task,
                   near_dup_threshold=near_dup_threshold, shingle=shingle, num_perm=num_perm,
                   near_dup_diff=near_dup_diff, stratify=stratify,
                   pairs_per_task=pairs_per_task, clusters=clusters)
    where_expr = _parse_where(where) if where is not None else None
    has_budget = budget is not None or budget_tokens is not None
    method_name = method or ("random" if has_budget else "all")
    method_sel = get_selector(method_name, "method")
    score_name = score
    raw_params = dict(params or {})
    run = RunLog("select-data", {**(run_args or {}), "method": method_name, "dedup": dedup,
                                 **({"model": model} if model is not None else {})})
    summary = SelectSummary(run_id=run.run_id, method=method_name)
    count_tok = bool(budget_tokens is not None or min_tokens is not None
                     or max_tokens is not None
                     or (where_expr is not None and "tokens" in where_expr))
    need_texts = dedup == "near" or "sketches" in method_sel.needs or method_name != "all"
    near = NearDupParams(threshold=near_dup_threshold, max_diff=near_dup_diff,
                         shingle=shingle, num_perm=num_perm, seed=1,
                         same_numbers=numbers_must_match) if dedup == "near" else None

    from xpkit.core.pool import Pool, PoolOptions, validate_text_spec

    validate_text_spec(text)
    popts = PoolOptions(text=text, payload="messages" if export else "record",
                        count_tokens=count_tok or export == "dpo", keep_texts=need_texts,
                        signatures=near, task_field=task_field, stratify=stratify,
                        where=where_expr is not None,
                        want_messages_tokens=export == "dpo",
                        degenerate="degenerate" in filters)
    workdir = tempfile.mkdtemp(prefix="xpkit-select-")
    pool = Pool(popts, workdir)
    rejects_path = rejects or default_rejects_path(output, store)
    quarantine = Quarantine(rejects_path, run.run_id, "select-data")
    rejected_rows: list[tuple[str, int, str, str]] = []
    db = None
    try:
        t0 = time.monotonic()
        _read_pool(pool, inputs, format, mapping, batch_size, quarantine, rejected_rows,
                   summary, notice, on_progress)
        pool.finish()
        summary.timings["read"] = time.monotonic() - t0
        summary.items = pool.size
        if pool.tokens.size and count_tok:
            summary.pool_tokens = int(pool.tokens.sum())
        fate = _select(pool, summary, notice=notice, filters=filters, min_tokens=min_tokens,
                       max_tokens=max_tokens, where_expr=where_expr, dedup=dedup, near=near,
                       method_sel=method_sel, score_name=score_name, raw_params=raw_params,
                       resolve_params=resolve_params, get_selector=get_selector,
                       features=features, clusters=clusters, budget=budget,
                       budget_tokens=budget_tokens, stratify=stratify, per_task=per_task,
                       seed=seed, order=order, export=export, pairs_per_task=pairs_per_task,
                       sink=sink, mapping=mapping,
                       llm_factory=model_factory(model, llm_options))
        if report:
            _write_report(report, pool, fate, rejected_rows)
            summary.report_path = report
        run.counts = summary.counts()
        if strict and summary.rejected:
            raise StrictModeError(f"{summary.rejected} record(s) rejected (see {rejects_path});"
                                  " --strict makes this a failure.")
        if store:
            from xpkit.core.store import Store

            db = Store.open(store)
            with db.transaction():
                db.record_run(run)
    except BaseException as exc:
        if store and isinstance(exc, XpkitError):
            _record_failed(store, run, exc, summary)
        raise
    finally:
        quarantine.close()
        pool.close()
        if db is not None:
            db.close()
        with contextlib.suppress(OSError):
            os.rmdir(workdir)
    summary.rejects_path = rejects_path if quarantine.count else None
    return summary


def _record_failed(store: str, run: Any, exc: BaseException, summary: SelectSummary) -> None:
    from xpkit.core.store import Store

    with contextlib.suppress(Exception):
        run.status, run.error = "failed", str(exc) or type(exc).__name__
        run.counts = summary.counts()
        with Store.open(store) as db, db.transaction():
            db.record_run(run)


def _check_options(**o: Any) -> None:
    if o["dedup"] not in DEDUP_CHOICES:
        raise UsageError(f"--dedup {o['dedup']}: choose one of {', '.join(DEDUP_CHOICES)}.")
    for f in o["filters"]:
        if f not in FILTER_CHOICES:
            raise UsageError(f"--filter {f}: choose one of {', '.join(FILTER_CHOICES)}.")
    if o["export"] is not None and o["export"] not in EXPORT_CHOICES:
        raise UsageError(f"--export {o['export']}: choose one of {', '.join(EXPORT_CHOICES)}.")
    if o["order"] not in ORDER_CHOICES:
        raise UsageError(f"--order {o['order']}: choose one of {', '.join(ORDER_CHOICES)}.")
    if o["features"] not in FEATURE_CHOICES:
        raise UsageError(f"--features {o['features']}: choose one of "
                         f"{', '.join(FEATURE_CHOICES)} (embeddings come with the model "
                         "runtime).")
    if o["budget"] is not None and o["budget_tokens"] is not None:
        raise UsageError("--budget and --budget-tokens are exclusive; give one.")
    for name in ("budget", "budget_tokens", "min_tokens", "max_tokens", "per_task",
                 "pairs_per_task", "clusters"):
        v = o[name]
        if v is not None and v < (0 if name in ("budget", "budget_tokens", "min_tokens",
                                                "max_tokens") else 1):
            flag = "--" + name.replace("_", "-")
            low = 0 if "budget" in name or "tokens" in name else 1
            raise UsageError(f"{flag} {v}: must be >= {low}.")
    if (o["min_tokens"] is not None and o["max_tokens"] is not None
            and o["min_tokens"] > o["max_tokens"]):
        raise UsageError(f"--min-tokens {o['min_tokens']} is above --max-tokens "
                         f"{o['max_tokens']}.")
    if not 0.0 < o["near_dup_threshold"] <= 1.0:
        raise UsageError(f"--near-dup-threshold {o['near_dup_threshold']}: must be in (0, 1].")
    if o["near_dup_diff"] < 0:
        raise UsageError(f"--near-dup-diff {o['near_dup_diff']}: must be >= 0 (0 turns it "
                         "off).")
    if not 1 <= o["shingle"] <= 8:
        raise UsageError(f"--shingle {o['shingle']}: must be between 1 and 8 characters.")
    if not 8 <= o["num_perm"] <= 1024:
        raise UsageError(f"--num-perm {o['num_perm']}: must be between 8 and 1024.")
    if o["export"] == "dpo" and o["stratify"]:
        raise UsageError("--stratify is not supported with --export dpo (pairs span the "
                         "records of a task); stratify the pool first.")


def _read_pool(pool: Any, inputs: Sequence[str], format: str,
               mapping: dict[str, str] | None, batch_size: int, quarantine: Any,
               rejected_rows: list[tuple[str, int, str, str]], summary: SelectSummary,
               notice: Callable[[str], None], on_progress: Callable[[int], None] | None
               ) -> None:
    """Pass 1: every input record into the pool (or the quarantine)."""
    from xpkit.core.formats import FormatOptions, available_formats, get_format
    from xpkit.core.ingest import _source_batches
    from xpkit.core.io import resolve_inputs
    from xpkit.core.pool import parse_rows

    formats = available_formats()
    if format != "auto":
        get_format(format)
    if format == "map" and not mapping:
        raise UsageError("--format map needs at least one --map FIELD=PATH.")
    if mapping and format == "auto":
        format = "map"
    options = FormatOptions(mapping=mapping or {})
    sources = resolve_inputs(inputs, allow_other=True)

    def reject(row: Any, reason: str, fld: str | None) -> None:
        summary.rejected += 1
        quarantine.reject(file=row.file, line=row.line, unit=row.unit, reason=reason,
                          field=fld, record=row.value if row.value is not None else None,
                          raw=row.raw)
        rejected_rows.append((row.file, row.line, row.unit, reason))

    for source in sources:
        fmt, detection, batches = _source_batches(source, format, formats, batch_size, notice)
        pool.formats[source.name] = fmt.name
        if detection is not None:
            notice(detection.describe(source.name))
        for batch in batches:
            summary.records += len(batch)
            items = parse_rows(batch, fmt, options, reject)
            pool.add_batch(items)
            if on_progress is not None:
                on_progress(len(batch))


def _select(pool: Any, summary: SelectSummary, *, notice: Callable[[str], None],
            filters: Sequence[str], min_tokens: int | None, max_tokens: int | None,
            where_expr: str | None, dedup: str, near: Any, method_sel: Any, score_name: str,
            raw_params: dict[str, str], resolve_params: Any, get_selector: Any,
            features: str, clusters: int | None, budget: int | None,
            budget_tokens: int | None, stratify: str | None, per_task: int | None,
            seed: int, order: str, export: str | None, pairs_per_task: int,
            sink: Sink | None, mapping: dict[str, str] | None = None,
            llm_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Stages 2-6 on a finished pool; returns each item's fate for the report."""
    import numpy as np

    n = pool.size
    status = np.full(n, SELECTED, np.int8)
    reason: dict[int, str] = {}
    kept_of = np.full(n, -1, np.int64)
    sim = np.zeros(n, np.float32)
    active = np.ones(n, bool)

    # ---- 2. filters
    t = time.monotonic()
    checks: list[tuple[Any, Callable[[int], str]]] = []
    if "empty" in filters:
        checks.append((pool.empty, lambda _i: "empty response"))
    if "degenerate" in filters:
        deg = np.zeros(n, bool)
        deg[list(pool.degenerate)] = True
        checks.append((deg, lambda i: pool.degenerate[i]))
    if min_tokens is not None:
        checks.append((pool.tokens < min_tokens,
                       lambda i: f"{pool.tokens[i]} tokens < --min-tokens {min_tokens}"))
    if max_tokens is not None:
        checks.append((pool.tokens > max_tokens,
                       lambda i: f"{pool.tokens[i]} tokens > --max-tokens {max_tokens}"))
    for mask, why in checks:
        hit = np.flatnonzero(mask & active)
        for i in hit.tolist():
            reason[i] = why(i)
        status[hit] = FILTERED
        active[hit] = False
    if where_expr is not None:
        ok = _where_mask(pool, where_expr, active)
        hit = np.flatnonzero(active & ~ok)
        for i in hit.tolist():
            reason[i] = "--where is not true"
        status[hit] = FILTERED
        active[hit] = False
    summary.timings["filter"] = time.monotonic() - t

    # ---- 3. dedup
    t = time.monotonic()
    if dedup != "none" and n:
        from xpkit.core.dedup import exact_duplicates, group_sizes, near_duplicates

        prio = _priority(pool)
        ko = exact_duplicates(pool.text_hash, prio, active)
        hit = np.flatnonzero(ko >= 0)
        kept_of[hit] = ko[hit]
        sim[hit] = 1.0
        status[hit] = DUPLICATE
        active[hit] = False
        summary.exact_duplicates = int(hit.size)
        if dedup == "near":
            ko, s, stats = near_duplicates(pool.signatures(), pool.text_of, prio, active, near,
                                           on_progress=notice)
            hit = np.flatnonzero(ko >= 0)
            kept_of[hit] = ko[hit]
            sim[hit] = s[hit]
            status[hit] = DUPLICATE
            active[hit] = False
            summary.near_duplicates = int(hit.size)
            summary.near_candidates = stats.candidates
            summary.near_verified = stats.verified
        # Chains through exact then near: point every duplicate at its final keeper.
        for i in np.flatnonzero(kept_of >= 0).tolist():
            k = int(kept_of[i])
            while kept_of[k] >= 0:
                k = int(kept_of[k])
            kept_of[i] = k
        summary.group_sizes = group_sizes(kept_of)
        for i in np.flatnonzero(kept_of >= 0)[:5].tolist():
            k = int(kept_of[i])
            summary.duplicate_examples.append((pool.id_of(i), pool.where_of(i), pool.id_of(k),
                                               pool.where_of(k), float(sim[i])))
        for i in np.flatnonzero(kept_of >= 0).tolist():
            reason[i] = f"duplicate of {pool.id_of(int(kept_of[i]))}"
    summary.duplicates = int((status == DUPLICATE).sum())
    summary.timings["dedup"] = time.monotonic() - t

    # ---- 4-5. method and budget
    t = time.monotonic()
    candidates = np.flatnonzero(active)
    scorer_name = score_name
    if scorer_name == "auto":
        scorer_name = _auto_score(pool, candidates)
    scorer = get_selector(scorer_name, "score")
    summary.score = scorer_name
    mparams, sparams = resolve_params(raw_params, [method_sel, scorer])
    state = _State(pool, candidates, features=features, clusters=clusters, seed=seed,
                   scorer=scorer, scorer_params=sparams, notice=notice,
                   sketch_dim=256, mapping=mapping, llm_factory=llm_factory)
    tokens_mode = budget_tokens is not None
    total = budget_tokens if tokens_mode else budget
    units_by_member: dict[int, _Unit] = {}
    skipped: dict[int, str] = {}
    excluded: dict[int, str] = {}
    # Strata of the candidates (one stratum when --stratify is not given).
    if stratify:
        labels = {v: k for k, v in pool.strata.items()}
        codes = pool.stratum[candidates]
        groups = [(labels[c], candidates[codes == c]) for c in sorted(set(codes.tolist()),
                                                                      key=lambda c: labels[c])]
    else:
        groups = [(None, candidates)]
    if tokens_mode:
        sizes = [int(pool.tokens[idx].sum()) for _, idx in groups]
    else:
        sizes = [int(idx.size) for _, idx in groups]
    unlimited = 1 << 62
    quotas = _quotas(sizes, total) if total is not None else [unlimited] * len(groups)
    streams = []
    rankings = []
    for (label, idx), quota in zip(groups, quotas, strict=True):
        view = PoolView(state, idx)
        ctx = SelectContext(params=mparams, seed=seed, notice=notice, stratum=label,
                            llm_factory=llm_factory,
                            quota_records=None if tokens_mode else quota,
                            quota_tokens=quota if tokens_mode else None)
        ranking = method_sel.rank(view, ctx)
        rankings.append((view, ranking))
        if export == "dpo":
            units = _pair_units(pool, view, ranking, pairs_per_task, tokens_mode)
            costs = None
        else:
            units = _record_units(pool, view, ranking, tokens_mode)
            costs = pool.tokens[idx] if tokens_mode else None
        stream = _Stream(units, costs)
        if costs is not None:
            units = _watch(units, stream, view)
            stream.units = units
        streams.append(stream)
    taken = _fill(streams, quotas, unlimited if total is None else total, tokens_mode,
                  per_task if export != "dpo" else None, skipped)
    for _, ranking in rankings:
        summary.notes.extend(n for n in ranking.notes if n not in summary.notes)
    if stratify:
        for (label, _idx), quota in zip(groups, quotas, strict=True):
            got = sum(1 for u in taken if pool.stratum[u.members[0]] == pool.strata[label])
            summary.strata[str(label)] = (got, quota)
    if state._labels is not None:
        summary.clusters = int(state.n_clusters or 0)
    summary.budget = (f"{budget_tokens:,} tokens" if tokens_mode else
                      f"{budget:,} {'pairs' if export == 'dpo' else 'records'}"
                      if budget is not None else "")
    chosen: set[int] = set()
    for u in taken:
        chosen.update(u.members)
        for m in u.members:
            units_by_member.setdefault(m, u)
    for view, ranking in rankings:
        if ranking.excluded is not None:
            for pos, g in enumerate(view.index.tolist()):
                if g not in chosen:
                    why = ranking.excluded(pos)
                    if why:
                        excluded.setdefault(g, why)
    if export == "dpo":
        _pair_exclusions(pool, candidates, chosen, excluded, pairs_per_task,
                         all(st.done for st in streams))
    for i in candidates.tolist():
        if i not in chosen:
            status[i] = NOT_CHOSEN
            reason[i] = skipped.get(i) or excluded.get(i) or (
                "budget" if total is not None else "not ranked by the method")
    summary.timings["select"] = time.monotonic() - t

    # ---- 6. export
    t = time.monotonic()
    merged = Counter(kept_of[kept_of >= 0].tolist())
    if order == "input":
        taken_out = sorted(taken, key=lambda u: min(u.members))
    elif order == "curriculum":
        from xpkit.core.difficulty import posterior_difficulty, task_outcomes

        to = task_outcomes(pool.task, state.outcome, n_tasks=len(pool.tasks))
        a, b = to.posterior(1.0, 1.0)
        diff = posterior_difficulty(a, b)
        rank = {id(u): k for k, u in enumerate(taken)}
        taken_out = sorted(taken, key=lambda u: (float(diff[u.task]), rank[id(u)]))
    else:
        taken_out = taken
    batch: list[dict[str, Any]] = []
    sel_tokens = 0
    for u in taken_out:
        rec = _output_record(pool, u, export, merged)
        if rec is None:
            continue
        sel_tokens += u.tokens if export == "dpo" else u.cost if tokens_mode else max(
            int(pool.tokens[u.members[0]]), 0)
        batch.append(rec)
        if len(batch) >= 1000:
            if sink is not None:
                sink(batch)
            summary.written += len(batch)
            batch = []
    if batch:
        if sink is not None:
            sink(batch)
        summary.written += len(batch)
    if tokens_mode or export == "dpo" or (pool.tokens.size and pool.tokens.min() >= 0):
        summary.selected_tokens = sel_tokens
    summary.timings["export"] = time.monotonic() - t

    summary.selected = int((status == SELECTED).sum())
    summary.filtered = int((status == FILTERED).sum())
    summary.not_chosen = int((status == NOT_CHOSEN).sum())
    summary.filtered_by = dict(Counter(_reason_class(reason[i]) for i in
                                       np.flatnonzero(status == FILTERED).tolist()))
    summary.not_chosen_by = dict(Counter(reason[i] for i in
                                         np.flatnonzero(status == NOT_CHOSEN).tolist()))
    return {"status": status, "reason": reason, "kept_of": kept_of, "similarity": sim,
            "units": units_by_member}


def _reason_class(text: str) -> str:
    """The summary line a filter reason counts under (its text before any detail)."""
    if "tokens <" in text:
        return "below --min-tokens"
    if "tokens >" in text:
        return "above --max-tokens"
    return text.split(" (", 1)[0].split(":", 1)[0]


def _watch(units: Iterator[_Unit], stream: _Stream, view: PoolView) -> Iterator[_Unit]:
    """Tell the stream which positions have been seen (for ``min_unseen``)."""
    import numpy as np

    pos_of = {int(g): p for p, g in enumerate(np.asarray(view.index).tolist())}
    for u in units:
        stream.seen(pos_of.get(u.members[0]))
        yield u


def _auto_score(pool: Any, candidates: Any) -> str:
    """``informative`` when some task has two or more recorded outcomes, else ``length``."""
    import numpy as np

    if candidates.size == 0:
        return "length"
    known = ~np.isnan(_outcome_values(pool)[candidates])
    if known.any():
        counts = np.bincount(pool.task[candidates][known])
        if counts.max() >= 2:
            return "informative"
    return "length"


def _record_units(pool: Any, view: PoolView, ranking: Any,
                  tokens_mode: bool) -> Iterator[_Unit]:
    import numpy as np

    idx = view.index
    score = np.asarray(ranking.score, np.float64) if ranking.score is not None else None
    cl = ranking.cluster
    for pos in ranking.order:
        pos = int(pos)
        g = int(idx[pos])
        s = None if score is None or math.isnan(score[pos]) else float(score[pos])
        c = None if cl is None or int(cl[pos]) < 0 else int(cl[pos])
        yield _Unit((g,), int(pool.tokens[g]) if tokens_mode else 1, int(pool.task[g]), s,
                    ranking.reason(pos), c)


def _pair_exclusions(pool: Any, candidates: Any, chosen: set[int], excluded: dict[int, str],
                     pairs_per_task: int, exhausted: bool) -> None:
    """Why a record is in no DPO pair, when the reason is not the budget."""
    import numpy as np

    succ = pool.success[candidates]
    tasks = pool.task[candidates]
    has_win = set(tasks[succ == 1.0].tolist())
    has_loss = set(tasks[succ == 0.0].tolist())
    paired = {int(pool.task[g]) for g in chosen}
    for g, s, t in zip(candidates.tolist(), succ.tolist(), tasks.tolist(), strict=True):
        if g in chosen or g in excluded:
            continue
        if np.isnan(s):
            excluded[g] = "no success flag (DPO pairs a success with a failure)"
        elif t not in has_win or t not in has_loss:
            excluded[g] = "no success/failure counterpart for its task"
        elif t in paired:
            excluded[g] = f"--pairs-per-task {pairs_per_task} reached for its task"
        elif exhausted:
            excluded[g] = ("no same-task counterpart shares its prompt (the conversations "
                           "differ from the first message)")


def _pair_units(pool: Any, view: PoolView, ranking: Any, pairs_per_task: int,
                tokens_mode: bool) -> Iterator[_Unit]:
    """DPO pairs in rank order: a pair is emitted as soon as its task has a success and a
    failure among the records ranked so far (up to ``pairs_per_task`` per task)."""
    import numpy as np

    from xpkit.core.export import dpo_pair, prefix_length

    idx = view.index
    score = np.asarray(ranking.score, np.float64) if ranking.score is not None else None
    cl = ranking.cluster
    wins: dict[int, list[int]] = {}
    losses: dict[int, list[int]] = {}
    made: Counter[int] = Counter()
    used_pairs: set[tuple[int, int]] = set()
    for pos in ranking.order:
        pos = int(pos)
        g = int(idx[pos])
        s = pool.success[g]
        if math.isnan(s):
            continue
        t = int(pool.task[g])
        mine, other = (wins, losses) if s == 1.0 else (losses, wins)
        mine.setdefault(t, []).append(g)
        for o in other.get(t, []):
            if made[t] >= pairs_per_task:
                break
            c, r = (g, o) if s == 1.0 else (o, g)
            if (c, r) in used_pairs:
                continue
            cm, rm = pool.payload(c), pool.payload(r)
            pair = dpo_pair(cm, rm)
            if pair is None:
                continue
            k = prefix_length(cm, rm)
            ct, rt = pool.message_tokens(c), pool.message_tokens(r)
            tokens = int(sum(ct)) + int(sum(rt[k:]))
            used_pairs.add((c, r))
            made[t] += 1
            sc = None if score is None or math.isnan(score[pos]) else float(score[pos])
            cc = None if cl is None or int(cl[pos]) < 0 else int(cl[pos])
            yield _Unit((c, r), tokens if tokens_mode else 1, t, sc, ranking.reason(pos), cc,
                        pair, tokens)


def _output_record(pool: Any, u: _Unit, export: str | None,
                   merged: Counter[int]) -> dict[str, Any] | None:
    sel: dict[str, Any] = {"score": u.score, "reason": u.reason, "cluster": u.cluster}
    if export == "dpo":
        c, r = u.members
        sel.update({"chosen_id": pool.id_of(c), "rejected_id": pool.id_of(r),
                    "tokens": u.tokens})
        return {**(u.pair or {}), "_select": sel}
    g = u.members[0]
    sel["id"] = pool.id_of(g)
    if merged.get(g):
        sel["duplicates"] = merged[g]
    payload = pool.payload(g)
    if export == "sft":
        return {"messages": payload, "_select": sel}
    if not isinstance(payload, dict):
        payload = {"value": payload}
    payload = dict(payload)
    payload["_select"] = sel
    return payload


def _write_report(path: str, pool: Any, fate: dict[str, Any],
                  rejected_rows: list[tuple[str, int, str, str]]) -> None:
    """One line per pool item (and per rejected record): its fate and why."""
    from xpkit.core.io import RecordWriter

    status, reason, kept_of, sim = (fate["status"], fate["reason"], fate["kept_of"],
                                    fate["similarity"])
    units = fate["units"]
    with RecordWriter(path) as w:
        rows = []
        for file, line, unit, why in rejected_rows:
            rows.append({"status": "rejected", "file": file, unit: line, "reason": why})
        w.write_many(rows)
        rows = []
        for i in range(pool.size):
            st = int(status[i])
            row: dict[str, Any] = {"id": pool.id_of(i), "status": STATUS[st],
                                   "file": pool.sources[pool.file_idx[i]],
                                   pool.unit[pool.file_idx[i]]: int(pool.line[i])}
            if st == DUPLICATE:
                k = int(kept_of[i])
                row.update({"kept": pool.id_of(k), "kept_at": pool.where_of(k),
                            "similarity": round(float(sim[i]), 4)})
            elif st == SELECTED:
                u = units.get(i)
                if u is not None:
                    row.update({"score": u.score, "reason": u.reason, "cluster": u.cluster})
            if st in (DUPLICATE, FILTERED, NOT_CHOSEN):
                row["reason"] = reason.get(i, "")
            rows.append(row)
            if len(rows) >= 5000:
                w.write_many(rows)
                rows = []
        w.write_many(rows)
