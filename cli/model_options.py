"""Options shared by every model-using command, and the progress display for model calls.

A command takes these as parameters with the same names and passes them on to the core
(``xpkit.core.llm.get_llm(model, n_gpu_layers=..., ctx=..., ...)``). Every option defaults to
``None`` = not given, so the setting comes from the environment, ``./xpkit.toml``,
``$XPKIT_HOME/config.toml`` or the built-in default (``xpkit.core.config``), in that order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", envvar="XPKIT_MODEL", show_default=False,
                 help="A GGUF file, 'default' (the bundled SmolLM2-135M-Instruct), or an "
                      "OpenAI-compatible URL http://host:port/v1 with an optional #model-name. "
                      "[default: default]"),
]
EmbedModelOpt = Annotated[
    str | None,
    typer.Option("--embed-model", envvar="XPKIT_EMBED_MODEL", show_default=False,
                 help="Embedding model: the same forms as --model. Default: default."),
]
NGpuLayersOpt = Annotated[
    int | None,
    typer.Option("--n-gpu-layers", show_default=False,
                 help="Layers to offload to a GPU (-1: all) where llama.cpp has one. "
                      "[default: 0]"),
]
CtxOpt = Annotated[
    int | None,
    typer.Option("--ctx", min=16, show_default=False,
                 help="Context window in tokens; prompts that do not fit are rejected. "
                      "[default: 4096]"),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=0, show_default=False,
                 help="CPU threads for llama.cpp (0: all cores). Default: 0."),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", show_default=False, help="Sampling seed. Default: 0."),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option("--temperature", min=0.0, show_default=False,
                 help="Sampling temperature; 0 is greedy and reproducible. Default: 0."),
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--concurrency", min=1, show_default=False,
                 help="Requests in flight against a model server. Default: 4."),
]
NoCacheOpt = Annotated[
    bool | None,
    typer.Option("--no-cache", show_default=False,
                 help="Neither read nor write the response cache (see 'xpkit cache')."),
]


@contextmanager
def llm_progress(description: str, total: int | None = None) -> Iterator[Callable[[Any], None]]:
    """A stderr progress bar fed by the core's ``on_progress`` events (items/s, tokens/s).

    Yields the callback to pass as ``on_progress``; a no-op when stderr is not a terminal.
    """
    if not sys.stderr.isatty():
        yield lambda _event: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from xpkit.cli.console import err

    cols = [TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*cols, console=err.get(), transient=True) as bar:
        task = bar.add_task(description, total=total, rate="")

        def update(event: Any) -> None:
            secs = max(event.elapsed, 1e-9)
            fresh = event.done - event.cached
            rate = (f"{fresh / secs:.2f} items/s, {event.completion_tokens / secs:.1f} tok/s"
                    f" ({event.cached} cached)")
            bar.update(task, completed=event.done, total=event.total, rate=rate)

        yield update

