"""``xpkit index``: units, documents, episodes or steps -> searchable entries in the store."""

from __future__ import annotations

from typing import Annotated

import typer

from xpkit.cli.console import err, notice, progress
from xpkit.cli.options import BatchSizeOpt, InputsArg, RejectsOpt, StrictOpt


def index(
    inputs: InputsArg = None,
    store: Annotated[str, typer.Option(
        "--store", "-s", help="The persistent library (a .duckdb file) to add to and index.",
        envvar="XPKIT_STORE", show_default=False)] = ...,  # type: ignore[assignment]
    level: Annotated[str, typer.Option(
        "--level", help="unit (units and documents), episode (by task) or step (one entry per "
                        "decision step, by the state it acted in).")] = "unit",
    id_field: Annotated[str | None, typer.Option(
        "--id", help="Plain documents: the field holding each document's id (kept as its "
                     "unit_id).", show_default=False)] = None,
    text_field: Annotated[str | None, typer.Option(
        "--text", help="Plain documents: the field holding the text.", show_default=False)] = None,
    title_field: Annotated[str | None, typer.Option(
        "--title", help="Plain documents: an optional title field.", show_default=False)] = None,
    kind: Annotated[str, typer.Option(
        "--kind", help="Unit kind given to plain documents.")] = "document",
    embed_model: Annotated[str | None, typer.Option(
        "--embed-model", help="Also embed entries with this model (GGUF path, 'default', a URL "
                              "or a plugin's kind:arg) for dense and hybrid retrieval.",
        show_default=False)] = None,
    stopwords: Annotated[str, typer.Option(
        "--stopwords", help="en (Lucene's 33 words, as bm25s), en_plus (NLTK's 179) or none."
    )] = "en",
    stemmer: Annotated[str, typer.Option(
        "--stemmer", help="english (Snowball), porter or none.")] = "english",
    k1: Annotated[float, typer.Option("--k1", help="BM25 term-frequency saturation.")] = 1.5,
    b: Annotated[float, typer.Option("--b", help="BM25 length normalisation.")] = 0.75,
    variant: Annotated[str, typer.Option(
        "--variant", help="BM25 variant: lucene, robertson or atire.")] = "lucene",
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Drop and rebuild this level's index instead of updating it.")] = False,
    rejects: RejectsOpt = None,
    strict: StrictOpt = False,
    batch_size: BatchSizeOpt = 2000,
) -> None:
    """Add units or documents to the library and bring its search index up to date.

    Incremental: entries already indexed are left alone; new and changed ones are added,
    vanished ones removed. Without inputs, only the index is synced with the store (use this
    after 'xpkit ingest --store' with --level episode or step). Records without the needed
    fields are quarantined with their file and line.

    \b
    Example:
      xpkit distill --method insight < episodes.jsonl | xpkit index --store lib.duckdb
      xpkit index docs.jsonl --store lib.duckdb --id doc_id --text body
      xpkit index --store lib.duckdb --level step
    """
    from xpkit.core.errors import UsageError
    from xpkit.core.index import index as core_index

    if not inputs and level == "unit":
        import sys

        if sys.stdin is not None and not sys.stdin.isatty():
            inputs = ["-"]
    if inputs is None:
        inputs = []
    if store is ...:  # pragma: no cover - typer enforces it
        raise UsageError("--store is required.")
    with progress("index", unit="entries") as advance:
        summary = core_index(
            inputs, store=store, level=level, id_field=id_field, text_field=text_field,
            title_field=title_field, kind=kind, embed_model=embed_model, stopwords=stopwords,
            stemmer=stemmer, k1=k1, b=b, variant=variant, rebuild=rebuild, rejects=rejects,
            strict=strict, batch_size=batch_size, on_notice=notice, on_progress=advance,
            run_args={"inputs": inputs or []})
    s = summary.sync
    if summary.records:
        err.print(f"index: {summary.records:,} records read: {summary.units_new:,} new units, "
                  f"{summary.units_updated:,} updated, {summary.units_same:,} unchanged, "
                  f"{summary.links:,} links, {summary.rejected:,} rejected")
    line = (f"index: {level} index has {s.n_docs:,} entries ({s.added:,} added, "
            f"{s.removed:,} removed)")
    if s.embedded:
        line += f"; {s.embedded:,} embedded"
    err.print(line)
    if s.rebuilt:
        err.print(f"index: rebuilt from scratch because {s.rebuilt}")
    if summary.rejects_path:
        err.print(f"index: rejected records are in {summary.rejects_path}")
