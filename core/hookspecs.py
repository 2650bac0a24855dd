"""Hook specifications: every extension point of xpkit.

A plugin is a module (or object) with functions marked ``@xpkit.core.hookspecs.hookimpl``,
published under the entry-point group ``xpkit``. Each ``register_*`` hook receives a
``register`` callback; the plugin calls it once per thing it provides. Built-ins in
``xpkit.plugins`` register through exactly these hooks.

Example (``pyproject.toml`` of an outside package)::

    [project.entry-points.xpkit]
    myformat = "xpkit_myformat"

and in ``xpkit_myformat.py``::

    from xpkit.core.hookspecs import hookimpl

    @hookimpl
    def register_formats(register):
        register(MyFormat())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "xpkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_formats(register: Callable[[Any], None]) -> None:
    """Register input formats for ``xpkit ingest --format NAME`` (and ``select-data``).

    Each object follows ``xpkit.core.formats.InputFormat`` (subclassing is optional):

    - ``name``, ``description``: the ``--format`` value and its one-line help;
    - ``sniff(record) -> float``: how well one input record (a dict) fits, 0..1, for
      ``--format auto`` (the best mean over a file's first records wins when it is clear);
    - ``parse(record, options) -> episode`` (or a list of episodes): build them with
      ``xpkit.core.records.make_episode``/``make_step``; ``options`` is a ``FormatOptions``
      (``mapping`` from ``--map``, ``model`` from ``--model-name``). Raise
      ``xpkit.core.errors.RecordError(reason, field)`` for a bad record: ingest quarantines it
      with its file and line and carries on;
    - optional ``explicit_only = True`` keeps the format out of ``--format auto``;
    - optional ``file_suffixes`` (e.g. ``(".traj",)``) with ``read_file(name, stream) ->
      iterator of xpkit.core.io.SourceRow`` for files that are not one record per line or
      array element: ingest hands the open binary stream (decompressed) and the format yields
      one ``SourceRow(file, line, value)`` per record, or one with ``error`` for a part it
      cannot read.

    Built-ins: ``xpkit.plugins.formats``; a complete outside example is
    ``examples/xpkit-plugin-example``.
    """


@hookspec
def register_distillers(register: Callable[[Any], None]) -> None:
    """Register distillers for ``xpkit distill --method NAME``.

    Each object follows ``xpkit.core.distill.Distiller`` (subclassing it gives the prompt and
    evidence helpers): ``name``, ``description``, ``kind`` (the unit kind it makes: insight,
    behavior, contrast, exemplar, summary, skill), ``needs_model``, and

    - ``jobs(episodes, options) -> iterator of Job``: plan the work; each ``Job`` holds the
      episodes it sees, ``labels`` (``E1`` -> episode id, for citations) and, for a model
      distiller, a ``request`` (``xpkit.core.llm.Request`` with prompt, JSON schema and
      ``max_tokens``; ``Distiller.render`` fills a template from ``template``);
    - ``to_units(job, data, model) -> list of units``: turn the job's schema-validated model
      output (``data``; ``None`` without a model) into units built with
      ``xpkit.core.units.make_unit``, citing evidence only from the job's episodes (anything
      else is rejected). Raise ``RecordError`` to quarantine the output.

    Model calls are batched, cached and validated by the runtime; the library grows by merge,
    never by rewrite (``xpkit.core.library``). Built-ins: ``xpkit.plugins.distillers``.
    """


@hookspec
def register_selectors(register: Callable[[Any], None]) -> None:
    """Register selectors for ``xpkit select-data --method NAME`` and ``--score NAME``.

    Each object follows ``xpkit.core.selectors.Selector``: ``name``, ``description``,
    ``kind`` (``"method"`` or ``"score"``), ``params`` (``{key: Param(default, help, type)}``:
    what ``--param KEY=VALUE`` accepts), ``needs`` (``"sketches"``, ``"outcomes"``,
    ``"model"``) and optionally ``available = False`` with ``unavailable_reason``. A *score*
    implements ``score(view, ctx) -> float array`` (one utility per candidate, higher is
    better); a *method* implements ``rank(view, ctx) -> Ranking`` (candidate positions in
    preference order, possibly a lazy generator, with per-position scores and reasons).
    ``view`` is an ``xpkit.core.select.PoolView`` (aligned arrays over the candidates: task,
    success, reward, texts, token counts ...); ``ctx`` a ``SelectContext`` (resolved params,
    seed, the budget share, ``llm()``). Built-ins: ``xpkit.plugins.selectors``.
    """


@hookspec
def register_scorers(register: Callable[[Any], None]) -> None:
    """Register scorers for ``xpkit evaluate --scorer NAME``.

    Each object follows ``xpkit.core.scoring.Scorer``: ``name``, ``description``,
    ``params`` (``{key: Param(default, help, type)}``, set with ``--param KEY=VALUE``),
    ``needs_reference``, ``needs_model``, and ``score(items, ctx) -> list of Score``: one
    ``Score(value, passed, extracted, detail)`` per ``ScoreItem(answer, reference, record,
    task)``, in order, with ``value`` in [0, 1]. An item the scorer cannot judge gets
    ``Score(None, error=...)``, counted apart from wrong answers. ``ctx`` is a
    ``ScorerContext`` (resolved ``params``, settings, and ``llm()`` for model-backed
    scorers such as an LLM judge). Items come in batches so such scorers can batch their
    calls. Built-ins: ``xpkit.plugins.scorers``; an outside example (``edit-ratio``) is in
    ``examples/xpkit-plugin-example``.
    """


@hookspec
def register_backends(register: Callable[[Any], None]) -> None:
    """Register model backends: how a ``--model`` value becomes a loaded model.

    Each object has ``name``, ``kinds`` (the spec kinds it loads: ``"gguf"`` for files and
    bundled models, ``"openai"`` for ``http(s)://`` URLs, or a new prefix that
    ``--model PREFIX:REST`` then selects) and ``load(spec, settings) -> handle``. ``spec`` is
    an ``xpkit.core.llm.ModelSpec`` (kind, location, name, identity for cache keys),
    ``settings`` the resolved ``xpkit.core.config.Settings``. The handle follows
    ``xpkit.core.llm.ModelHandle``: ``n_ctx`` (``None`` if unknown), ``parallel`` (calls
    that may run at once), ``count_tokens(messages)``, ``head(text, n)`` and
    ``complete(messages, schema=, max_tokens=, temperature=, seed=, stop=) ->
    RawCompletion``, raising ``ContextOverflowError`` or ``ModelServerError``; an optional
    ``close()`` frees it. The runtime adds caching, retries and schema validation. A handle is
    loaded once per process and load settings. Built-ins: ``xpkit.plugins.backends``.
    """


@hookspec
def register_embedders(register: Callable[[Any], None]) -> None:
    """Register embedders: how an ``--embed-model`` value becomes vectors.

    The same shape as a backend (``name``, ``kinds``, ``load(spec, settings)``); the handle
    follows ``xpkit.core.embeddings.EmbedHandle``: ``pooling``, ``max_tokens`` (token window
    per text, ``None`` if the backend handles length), ``head(text, n)`` and
    ``embed_batch(texts) -> list of vectors`` (raw: xpkit L2-normalizes, caches and truncates
    long texts to their head). Built-ins: ``xpkit.plugins.backends``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``xpkit`` Typer application passed as ``cli``.

    Reserved: this version of xpkit does not call this hook yet (its commands are assembled
    in ``xpkit.cli.main``). When it does, an implementation will add commands with
    ``cli.command("NAME")(function)`` following xpkit's conventions: data on stdout, messages
    on stderr, heavy imports inside the function body.
    """
