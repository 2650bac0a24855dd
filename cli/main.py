"""The ``xpkit`` application: assembles one module per subcommand.

Heavy libraries (duckdb, polars, pyarrow, llama_cpp) are imported inside command bodies, so
``xpkit --help`` and shell completion stay fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from xpkit.cli import cache as cache_cmd
from xpkit.cli import config as config_cmd
from xpkit.cli import distill as distill_cmd
from xpkit.cli import evaluate as evaluate_cmd
from xpkit.cli import index as index_cmd
from xpkit.cli import ingest as ingest_cmd
from xpkit.cli import models as models_cmd
from xpkit.cli import plugins as plugins_cmd
from xpkit.cli import retrieve as retrieve_cmd
from xpkit.cli import select_data as select_data_cmd
from xpkit.cli import show as show_cmd
from xpkit.cli.errors import report

app = typer.Typer(
    name="xpkit",
    help="Turn the experience of LLMs and agents into reusable knowledge and training data.\n\n"
         "  xpkit ingest runs/*.jsonl --store lib.duckdb",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from xpkit.core import __version__

        typer.echo(f"xpkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    if debug:
        os.environ["XPKIT_DEBUG"] = "1"


# Pipeline order in --help: ingest, distill, index, retrieve, select-data, evaluate.
app.command("ingest")(ingest_cmd.ingest)
app.command("distill")(distill_cmd.distill)
app.command("index")(index_cmd.index)
app.command("retrieve")(retrieve_cmd.retrieve)
app.command("select-data")(select_data_cmd.select_data)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("show")(show_cmd.show)
app.command("plugins")(plugins_cmd.plugins)
app.command("models")(models_cmd.models)
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    """Console entry point: usage errors exit 2 (Typer); library errors become one sentence."""
    try:
        app()
    except Exception as exc:
        sys.exit(report(exc))


if __name__ == "__main__":
    main()
