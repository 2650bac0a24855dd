"""``xpkit distill``: episodes -> experience units."""

from __future__ import annotations

from typing import Annotated

import typer

from xpkit.cli.console import err
from xpkit.cli.model_options import (
    ConcurrencyOpt,
    CtxOpt,
    ModelOpt,
    NGpuLayersOpt,
    NoCacheOpt,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
    llm_progress,
)
from xpkit.cli.options import InputsArg, OutputOpt, RejectsOpt, StoreOpt, StrictOpt


def distill(
    inputs: InputsArg = None,
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="insight, behavior, contrast, exemplar, summary (or a plugin's); "
                         "repeatable or comma-separated. [default: insight]",
        show_default=False)] = None,
    store: StoreOpt = None,
    output: OutputOpt = None,
    granularity: Annotated[str, typer.Option(
        "--granularity", help="principle (general rules) or instance (task-specific "
                              "advice).")] = "principle",
    batch_episodes: Annotated[int, typer.Option(
        "--batch-episodes", min=1, help="Episodes of similar tasks shown in one call "
                                        "(insight, behavior).")] = 4,
    merge_threshold: Annotated[float, typer.Option(
        "--merge-threshold", min=0.0, max=1.0,
        help="Lexical similarity at which a new unit merges into an existing one.")] = 0.6,
    embed_threshold: Annotated[float | None, typer.Option(
        "--embed-threshold", min=-1.0, max=1.0, show_default=False,
        help="Also merge a new unit into an existing one whose embedding has at least this "
             "cosine similarity, using the vectors of the store's unit index (xpkit index "
             "--embed-model). Off by default: the right value depends on the embedding "
             "model.")] = None,
    max_units: Annotated[int | None, typer.Option(
        "--max-units", min=1, show_default=False,
        help="Cap the library; the least useful units are evicted (lowest posterior "
             "helpfulness, then least evidence).")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Inputs are unit files distilled in parallel: merge them into one "
                        "library (the result does not depend on their order).")] = False,
    rejects: RejectsOpt = None,
    strict: StrictOpt = False,
    model: ModelOpt = None,
    n_gpu_layers: NGpuLayersOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    seed: SeedOpt = None,
    temperature: TemperatureOpt = None,
    concurrency: ConcurrencyOpt = None,
    no_cache: NoCacheOpt = None,
) -> None:
    """Turn episodes into experience units and grow the library without rewriting it.

    Reads episodes (xpkit ingest output: files or stdin; or, with no inputs, the --store's
    episodes). New units that say what an existing unit says are merged into it (evidence
    and counters combined); the rest are added. Model output that fails its schema or cites
    evidence absent from the input is quarantined with the raw text.

    \b
    Example:
      xpkit ingest runs/*.jsonl | xpkit distill --method insight,contrast > units.jsonl
      xpkit distill --store lib.duckdb --method exemplar
      xpkit distill --merge shard-*.jsonl -o library.jsonl
    """
    from xpkit.core.distill import distill as core_distill
    from xpkit.core.distill import merge_shard_files
    from xpkit.core.io import RecordWriter

    methods = [m.strip() for item in (method or ["insight"]) for m in item.split(",")
               if m.strip()]
    if merge:
        if store:
            raise typer.BadParameter("--merge writes a merged unit file; load it into a "
                                     "store with 'xpkit distill --store' later.")
        units = merge_shard_files(inputs or [], threshold=merge_threshold)
        with RecordWriter(output) as writer:
            writer.write_many(units)
        err.print(f"distill: merged into {len(units):,} units")
        return
    writer = RecordWriter(output) if (output is not None or store is None) else None
    llm_options = {k: v for k, v in dict(n_gpu_layers=n_gpu_layers, ctx=ctx, threads=threads,
                                         seed=seed, temperature=temperature,
                                         concurrency=concurrency, no_cache=no_cache).items()
                   if v is not None}
    try:
        with llm_progress("distill") as on_progress:
            summary = core_distill(
                inputs or [], method=methods, store=store, model=model,
                granularity=granularity, batch_episodes=batch_episodes,
                merge_threshold=merge_threshold, embed_threshold=embed_threshold,
                max_units=max_units, output=output,
                rejects=rejects, strict=strict,
                sink=writer.write_many if writer else None, on_progress=on_progress,
                llm_options=llm_options,
                run_args={"inputs": inputs or [], "output": output, "model": model,
                          "granularity": granularity})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    retried = f", {summary.retries:,} retries" if summary.retries else ""
    err.print(f"distill: {summary.episodes:,} episodes read, {summary.calls:,} model calls "
              f"({summary.cached:,} cached{retried}); units: {summary.new:,} new, "
              f"{summary.merged:,} merged, {summary.rejected:,} rejected"
              + (f", {summary.evicted:,} evicted" if summary.evicted else ""))
    if summary.rejects_path:
        err.print(f"distill: rejected outputs are in {summary.rejects_path}")
