"""``xpkit models``: what models are available, which one is used, and whether it loads."""

from __future__ import annotations

from typing import Annotated

import typer

from xpkit.cli.model_options import (
    CtxOpt,
    EmbedModelOpt,
    ModelOpt,
    NGpuLayersOpt,
    ThreadsOpt,
)


def models(
    model: ModelOpt = None,
    embed_model: EmbedModelOpt = None,
    check: Annotated[bool, typer.Option(
        "--check/--no-check",
        help="Load the model and generate a few tokens (about a second for the default).")
    ] = True,
    n_gpu_layers: NGpuLayersOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Show which models are available and check that the model loads.

    Prints JSON on stdout: the bundled models, the backends and embedders, the resolved
    --model and --embed-model, and the effective settings with where each came from. With
    --check (the default) the model is loaded and generates a few tokens; exits 1 if not.

    \b
    Example:
      xpkit models
      xpkit models -m http://127.0.0.1:8000/v1 --no-check
    """
    import orjson

    from xpkit.cli.console import err
    from xpkit.core.llm import models as core_models

    out = core_models(model=model, embed_model=embed_model, check=check,
                      n_gpu_layers=n_gpu_layers, ctx=ctx, threads=threads)
    typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    result = out.get("check")
    if result is not None and not result["ok"]:
        err.print(f"[bold red]Error:[/bold red] {result['error']}")
        raise typer.Exit(1)
    if result is not None:
        err.print(f"models: {out['model']['spec']} loads in {result['load_seconds']} s "
                  f"and generates ({result['completion_tokens']} tokens in "
                  f"{result['generate_seconds']} s).")
