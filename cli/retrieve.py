"""``xpkit retrieve``: queries -> queries with ranked hits and a packed, budgeted context."""

from __future__ import annotations

from typing import Annotated

import typer

from xpkit.cli.console import err, notice, progress
from xpkit.cli.options import BatchSizeOpt, InputsArg, OutputOpt, RejectsOpt, StrictOpt


def retrieve(
    inputs: InputsArg = None,
    store: Annotated[str, typer.Option(
        "--store", "-s", help="The library to search (a .duckdb file).", envvar="XPKIT_STORE",
        show_default=False)] = ...,  # type: ignore[assignment]
    level: Annotated[str, typer.Option(
        "--level", help="unit, episode or step (queries are current observations).")] = "unit",
    mode: Annotated[str | None, typer.Option(
        "--mode", help="bm25, dense or hybrid (reciprocal rank fusion). Default: hybrid when "
                       "the index has vectors, else bm25.", show_default=False)] = None,
    k: Annotated[int | None, typer.Option(
        "-k", "--k", help="Most hits per query. Default 5, or 50 with --budget-tokens.",
        show_default=False)] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help="Only units of this kind (repeatable).", show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Only units with this tag (repeatable: any of them).",
        show_default=False)] = None,
    where: Annotated[str | None, typer.Option(
        "--where", help="Filter on fields, e.g. \"kind = 'insight' and meta.topic = 'sql'\" "
                        "(and/or/not, = != < <= > >=, in (...), contains, like, is null).",
        show_default=False)] = None,
    mmr: Annotated[float | None, typer.Option(
        "--mmr", help="Diversify with maximal marginal relevance, λ in [0, 1] (1 = relevance "
                      "only; 0.7 is a common choice).", show_default=False)] = None,
    budget_tokens: Annotated[int | None, typer.Option(
        "--budget-tokens", help="Pack as many hits as fit in N tiktoken tokens of context.",
        show_default=False)] = None,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="In-scope threshold: normalised BM25 (share of the query's weight "
                            "matched, 0-1) or cosine; below it a hit is dropped, and a query "
                            "with none gets an empty context.", show_default=False)] = None,
    no_utility: Annotated[bool, typer.Option(
        "--no-utility", help="Ignore measured helpful/harmful counters when ranking.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Use this model's helpful/harmful counters (stats.per_model).",
        show_default=False)] = None,
    template: Annotated[str, typer.Option(
        "--template", help="How the context is rendered: plain, markdown or chat (messages)."
    )] = "plain",
    text: Annotated[str | None, typer.Option(
        "--text", help="The query field (dotted path). Default: task, then query, then text "
                       "(observation, then state, first for --level step).",
        show_default=False)] = None,
    follow: Annotated[list[str] | None, typer.Option(
        "--follow", help="Add units linked to a hit by this relation (repeatable): refines, "
                         "contradicts, derived-from.", show_default=False)] = None,
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="Bring a stale index up to date first (takes the store's write "
                          "lock).")] = False,
    hnsw_threshold: Annotated[int | None, typer.Option(
        "--hnsw-threshold", help="Use an HNSW graph for dense search at this many entries or "
                                 "more (default 100000); below it search is exact.",
        show_default=False)] = None,
    output: OutputOpt = None,
    rejects: RejectsOpt = None,
    strict: StrictOpt = False,
    batch_size: BatchSizeOpt = 1000,
) -> None:
    """Find the experience that fits each query and pack it into a context.

    Each output record is the query with hits (unit_id, score, components, content, tokens),
    context, context_tokens, and _retrieve (mode, in_scope, and why a context is empty).
    Refuses a stale index (the library changed since 'xpkit index') unless --refresh.

    \b
    Example:
      xpkit retrieve tasks.jsonl --store lib.duckdb --budget-tokens 800 --mmr 0.7 \\
        | xpkit evaluate --model default
      echo '{"observation": "You see a locked door."}' \\
        | xpkit retrieve --store lib.duckdb --level step
    """
    from xpkit.core.io import RecordWriter
    from xpkit.core.retrieve import retrieve as core_retrieve

    writer = RecordWriter(output)
    try:
        with progress("retrieve", unit="queries") as advance:
            summary = core_retrieve(
                inputs or [], store=store, level=level, mode=mode, k=k, kind=kind, tag=tag,
                where=where, mmr=mmr, budget_tokens=budget_tokens, min_score=min_score,
                utility=not no_utility, model=model, template=template, text_field=text,
                follow=follow, refresh=refresh, hnsw_threshold=hnsw_threshold,
                rejects=rejects, strict=strict, batch_size=batch_size,
                sink=writer.write_many, on_notice=notice, on_progress=advance,
                run_args={"inputs": inputs or ["-"], "output": output})
    except BaseException:
        writer.abort()
        raise
    writer.close()
    err.print(f"retrieve: {summary.queries:,} queries ({summary.mode}): {summary.answered:,} "
              f"with context, {summary.empty:,} empty, {summary.rejected:,} rejected; "
              f"{summary.hits:,} hits, {summary.context_tokens:,} context tokens")
    if summary.rejects_path:
        err.print(f"retrieve: rejected queries are in {summary.rejects_path}")
