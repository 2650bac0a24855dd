"""``xpkit config show``: the effective settings and where each came from."""

from __future__ import annotations

import typer

from xpkit.cli.model_options import (
    ConcurrencyOpt,
    CtxOpt,
    EmbedModelOpt,
    ModelOpt,
    NGpuLayersOpt,
    NoCacheOpt,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
)

app = typer.Typer(
    name="config", no_args_is_help=True,
    help="Show the effective settings: flags > XPKIT_* environment > ./xpkit.toml > "
         "$XPKIT_HOME/config.toml > defaults.\n\n"
         "\b\nExample:\n  xpkit config show | jq '.settings.model'",
)


@app.command("show")
def show(
    model: ModelOpt = None,
    embed_model: EmbedModelOpt = None,
    n_gpu_layers: NGpuLayersOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    seed: SeedOpt = None,
    temperature: TemperatureOpt = None,
    concurrency: ConcurrencyOpt = None,
    no_cache: NoCacheOpt = None,
) -> None:
    """Print the effective settings as one JSON object, with where each value came from.

    Precedence, highest first: a flag (the model options every model-using command takes,
    given here too to see what a command would use), the environment (XPKIT_<NAME>, e.g.
    XPKIT_CTX), the project file ./xpkit.toml, the user file $XPKIT_HOME/config.toml, the
    default. Each setting shows its value, source (flag, env, project, user, default), from
    (the flag, variable or file) and the lower-precedence values it overrides. XPKIT_*
    variables that are not settings are listed under unknown_env and warned about.

    \b
    Example:
      xpkit config show --ctx 2048 | jq -c '.settings.ctx | {value, source, from}'
      XPKIT_MODEL=http://127.0.0.1:8000/v1 xpkit config show | jq -r '.settings.model.source'
    """
    import orjson

    from xpkit.cli.console import err
    from xpkit.core.config import explain_settings

    out = explain_settings(model=model, embed_model=embed_model, n_gpu_layers=n_gpu_layers,
                           ctx=ctx, threads=threads, seed=seed, temperature=temperature,
                           concurrency=concurrency, no_cache=no_cache)
    for var in out["unknown_env"]:
        err.print(f"config: warning: {var} is set but is not an xpkit setting (a typo?).")
    typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
