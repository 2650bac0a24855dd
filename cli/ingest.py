"""``xpkit ingest``: raw logs -> canonical episodes."""

from __future__ import annotations

from typing import Annotated

import typer

from xpkit.cli.console import err, notice, progress
from xpkit.cli.options import BatchSizeOpt, InputsArg, OutputOpt, RejectsOpt, StoreOpt, StrictOpt


def ingest(
    inputs: InputsArg = None,
    format: Annotated[str, typer.Option(
        "--format", "-f",
        help="auto, openai-chat, sharegpt, alpaca, react, swe-agent, graded-qa, episode, map "
             "(or a plugin's format).")] = "auto",
    map: Annotated[list[str] | None, typer.Option(
        "--map", help="FIELD=PATH: where an episode field lives in your records (dotted path); "
                      "repeatable. Implies --format map.", show_default=False)] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="Model name to record on episodes that do not carry one.",
        show_default=False)] = None,
    store: StoreOpt = None,
    output: OutputOpt = None,
    rejects: RejectsOpt = None,
    strict: StrictOpt = False,
    batch_size: BatchSizeOpt = 2000,
) -> None:
    """Turn raw logs into canonical episodes (JSONL on stdout, a file, or the store).

    Every record is accepted, counted as a duplicate (same content, same episode_id), or
    quarantined with its file, line and reason; the summary on stderr adds up. With --store
    and no -o, nothing is written to stdout.

    \b
    Example:
      xpkit ingest runs/*.jsonl.gz --store lib.duckdb
      xpkit ingest data.csv --map task=prompt --map answer=completion -o episodes.parquet
      xpkit ingest runs/*.jsonl --format react | xpkit distill --method insight \\
        | xpkit index --store lib.duckdb
    """
    from xpkit.core.formats import parse_mapping
    from xpkit.core.ingest import ingest as core_ingest
    from xpkit.core.io import RecordWriter
    from xpkit.core.records import episode_arrow_schema, episode_for_arrow

    mapping = parse_mapping(map or [])
    want_records = output is not None or store is None
    writer = None
    parquet = False
    if want_records:
        parquet = output is not None and output.lower().endswith((".parquet", ".pq"))
        writer = RecordWriter(output, arrow_schema=episode_arrow_schema() if parquet else None,
                              arrow_transform=episode_for_arrow if parquet else None)
    try:
        with progress("ingest") as advance:
            summary = core_ingest(
                inputs or [], format=format, mapping=mapping, model_name=model_name,
                store=store, output=output, rejects=rejects, strict=strict,
                batch_size=batch_size,
                # Parquet takes Arrow tables, which lets large inputs be parsed in parallel.
                sink=writer.write_many if writer and not parquet else None,
                arrow_sink=writer.write_arrow if writer and parquet else None,
                on_notice=notice, on_progress=advance,
                run_args={"inputs": inputs or ["-"], "output": output, "map": map or []})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    line = (f"ingest: {summary.records:,} records read: {summary.accepted:,} episodes "
            f"accepted, {summary.duplicates:,} duplicates, {summary.rejected:,} rejected")
    if summary.episodes != summary.parsed:
        line += f" ({summary.parsed:,} records gave {summary.episodes:,} episodes)"
    err.print(line)
    if summary.rejects_path:
        err.print(f"ingest: rejected records are in {summary.rejects_path}")
