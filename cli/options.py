"""Options shared by subcommands, so a flag means the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

InputsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Input files or globs (.jsonl .json .parquet .csv, optionally .gz/.zst);"
                        " '-' or a pipe for stdin.", show_default=False),
]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Write records here; the format follows the extension "
                                        "(.jsonl, .jsonl.gz, .parquet, .csv). Default: stdout.",
                 show_default=False),
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", "-s", help="The persistent library (a .duckdb file).",
                 envvar="XPKIT_STORE", show_default=False),
]
RejectsOpt = Annotated[
    str | None,
    typer.Option("--rejects", help="Quarantine file for rejected records (JSONL, appended). "
                                   "Default: beside the output or store.", show_default=False),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Exit 1 if any record is rejected (the store is left "
                                        "unchanged).")
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Records per batch (bounds memory).")
]
