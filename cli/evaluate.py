"""``xpkit evaluate``: does this context or data make *this* model better, and by how much?"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from xpkit.cli.console import err, notice
from xpkit.cli.model_options import (
    ConcurrencyOpt,
    CtxOpt,
    ModelOpt,
    NGpuLayersOpt,
    NoCacheOpt,
    TemperatureOpt,
    ThreadsOpt,
    llm_progress,
)
from xpkit.cli.options import BatchSizeOpt, InputsArg, OutputOpt, RejectsOpt, StoreOpt, StrictOpt

SCORERS = ("auto (numeric for GSM8K-style '####' or numeric references, math for \\boxed{} "
           "ones, else normalized), exact, normalized, numeric, math, f1, regex, contains, "
           "verifier, judge, or a plugin's")


def evaluate(
    inputs: InputsArg = None,
    scorer: Annotated[list[str] | None, typer.Option(
        "--scorer", help=f"How answers are judged: {SCORERS}. Repeatable; the first one "
                         "decides pass/fail and the comparisons. [default: auto]",
        show_default=False)] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="KEY=VALUE for a scorer (repeatable), e.g. tolerance=0.01 "
                              "(numeric), pattern='^yes' (regex), command='python check.py' "
                              "(verifier), timeout=10 (verifier).", show_default=False)] = None,
    verifier: Annotated[str | None, typer.Option(
        "--verifier", help="Shorthand for --scorer verifier --param command=CMD: run CMD (no "
                           "shell) with the item as JSON on stdin; exit 0 = pass.",
        show_default=False)] = None,
    model: ModelOpt = None,
    judge_model: Annotated[str | None, typer.Option(
        "--judge-model", help="The model of --scorer judge (default: --model).",
        show_default=False)] = None,
    ab: Annotated[bool, typer.Option(
        "--ab", help="Answer every task without and with its context (the 'context' field "
                     "from retrieve) and test the paired difference.")] = False,
    compare: Annotated[list[str] | None, typer.Option(
        "--compare", help="NAME=LIB.duckdb (repeatable): answer every task with context "
                          "retrieved from each library, and with none; each is tested "
                          "against none.", show_default=False)] = None,
    gate: Annotated[str | None, typer.Option(
        "--gate", help="UNITS.jsonl: add these units to --store only if the tasks (a held-out "
                       "set) do not score worse with them than without; the decision and "
                       "both scores are recorded in the store.", show_default=False)] = None,
    gate_tolerance: Annotated[float, typer.Option(
        "--gate-tolerance", min=0.0, help="How much lower the mean score may be with the "
                                          "new units and still keep them.")] = 0.0,
    feedback: Annotated[bool, typer.Option(
        "--feedback", help="With --ab: add helpful/harmful/uses counters (per model) to the "
                           "--store units that appeared in each task's context.")] = False,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Answer the tasks in order, each with memory retrieved from the "
                         "library (--store, or a fresh one) and without; after each task its "
                         "episode is distilled into the library (Evo-Memory). Reports the "
                         "learning curve of both.")] = False,
    stream_method: Annotated[str, typer.Option(
        "--stream-method", help="The distiller that turns each answered task into memory "
                                "(exemplar needs no model call; insight, summary ...).")
    ] = "exemplar",
    qrels: Annotated[str | None, typer.Option(
        "--qrels", help="Relevance judgments (TREC 'qid 0 docid grade', SMART 'qid docid', or "
                        "records): score retrieve output by recall@k, MRR and nDCG@k.",
        show_default=False)] = None,
    at: Annotated[list[int] | None, typer.Option(
        "--at", help="Cut-offs k for --qrels metrics (repeatable). [default: 10, 100]",
        show_default=False)] = None,
    subset: Annotated[int | None, typer.Option(
        "--subset", min=1, help="Inputs are per-item results of many models (long rows of "
                                "model, item, correct/score; or one row per item or per "
                                "model): choose N items that predict a model's full score "
                                "(tinyBenchmarks anchors) and report the error on held-out "
                                "models against random subsets of N.",
        show_default=False)] = None,
    subset_method: Annotated[str, typer.Option(
        "--subset-method", help="anchor (cluster items by their correctness pattern), "
                                "anchor-irt, or random.")] = "anchor",
    estimator: Annotated[str, typer.Option(
        "--estimator", help="How a subset predicts the full score: calibrated (weighted, "
                            "minus its bias on the training models), weighted (the paper's), "
                            "pirt, gpirt (IRT-based).")] = "calibrated",
    held_out: Annotated[float, typer.Option(
        "--held-out", min=0.0, max=0.9, help="Fraction of the models held out to measure the "
                                             "error (0: use all, measure nothing).")] = 0.2,
    matrix_layout: Annotated[str, typer.Option(
        "--matrix-layout", help="auto, long (model, item, value rows), items (a row per "
                                "item, a column per model) or models (a row per model).")
    ] = "auto",
    value_range: Annotated[str | None, typer.Option(
        "--value-range", help="LOW,HIGH of the matrix values when not 0..1 (AlpacaEval 2.0 "
                              "preferences: 1,2).", show_default=False)] = None,
    missing_value: Annotated[list[float] | None, typer.Option(
        "--missing-value", help="A matrix value that means 'no result' (repeatable).",
        show_default=False)] = None,
    task_field: Annotated[str | None, typer.Option(
        "--task-field", help="The task text (default: task, question, query, prompt, "
                             "instruction, input, problem, or the last user message).",
        show_default=False)] = None,
    reference_field: Annotated[str, typer.Option(
        "--reference-field", help="The right answer to score against.")] = "reference",
    answer_field: Annotated[str, typer.Option(
        "--answer-field", help="The answer to score when no --model is given.")] = "answer",
    id_field: Annotated[str | None, typer.Option(
        "--id-field", help="The item (or query) id (default: id, item_id, task_id, "
                           "episode_id, qid, query_id, question_id; else file:line).",
        show_default=False)] = None,
    context_field: Annotated[str, typer.Option(
        "--context-field", help="The context to answer with (retrieve's output).")] = "context",
    system: Annotated[str | None, typer.Option(
        "--system", help="System prompt for answering (empty: none).",
        show_default=False)] = None,
    prompt_template: Annotated[str | None, typer.Option(
        "--prompt-template", help="A file with the user prompt, with {task} and {context} "
                                  "placeholders.", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", min=1, help="Longest answer, in model tokens.")] = 256,
    k: Annotated[int | None, typer.Option(
        "-k", help="Units retrieved per task for --compare/--gate arms.",
        show_default=False)] = None,
    budget_tokens: Annotated[int | None, typer.Option(
        "--budget-tokens", help="Context token budget for --compare/--gate arms.",
        show_default=False)] = None,
    report: Annotated[list[str] | None, typer.Option(
        "--report", help="Write the summary to FILE (.json, .md, .html, .png); repeatable.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the bootstrap and permutation tests (and sampling).")] = 0,
    store: StoreOpt = None,
    output: OutputOpt = None,
    rejects: RejectsOpt = None,
    strict: StrictOpt = False,
    batch_size: BatchSizeOpt = 64,
    n_gpu_layers: NGpuLayersOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    temperature: TemperatureOpt = None,
    concurrency: ConcurrencyOpt = None,
    no_cache: NoCacheOpt = None,
) -> None:
    """Score answers, and measure whether context helps a given model (and feed it back).

    Without --model the records' own answers are scored against their references. With
    --model the model answers each task (with its retrieved context when the record has
    one). --ab answers with and without context and tests the paired difference; --compare
    does the same for several libraries; --gate admits new units only if they do not hurt;
    --feedback writes per-unit helpful/harmful counters that retrieve ranks by; --stream
    lets memory grow task by task and reports the learning curve. Each output
    record is the input with _eval = {score, passed, extracted, detail, arms ...}; the
    summary (means with 95% bootstrap intervals, paired tests, token costs) goes to stderr
    and to --report.

    \b
    Example:
      xpkit evaluate graded.jsonl --scorer numeric --report summary.md > scored.jsonl
      xpkit retrieve --store lib.duckdb < tasks.jsonl \\
        | xpkit evaluate --model default --ab --feedback --store lib.duckdb -o ab.jsonl
      xpkit retrieve --store cisi.duckdb --text query < q.jsonl | xpkit evaluate --qrels CISI.REL
      xpkit evaluate results_by_model.csv --subset 100 --report subset.md -o tiny.jsonl
    """
    from xpkit.core.evaluate import DEFAULT_SYSTEM
    from xpkit.core.evaluate import evaluate as core_evaluate
    from xpkit.core.io import RecordWriter
    from xpkit.core.report import check_report_path, write_report
    from xpkit.core.selectors import parse_params

    for path in report or []:
        check_report_path(path)
    scorers = list(scorer or [])
    params = parse_params(param or [])
    if verifier is not None:
        if "verifier" not in scorers:
            scorers.insert(0, "verifier")
        params["command"] = verifier
    llm_options = {k_: v for k_, v in dict(n_gpu_layers=n_gpu_layers, ctx=ctx, threads=threads,
                                           temperature=temperature, concurrency=concurrency,
                                           no_cache=no_cache, seed=seed).items()
                   if v is not None}
    writer = RecordWriter(output)
    try:
        with llm_progress("evaluate") as on_progress:
            summary = core_evaluate(
                inputs or [], scorer=scorers or ["auto"], param=params, model=model,
                judge_model=judge_model, ab=ab, compare=compare or [], gate=gate,
                gate_tolerance=gate_tolerance, feedback=feedback, stream=stream,
                stream_method=stream_method, qrels=qrels, subset=subset,
                subset_options=_subset_options(subset_method, estimator, held_out,
                                               matrix_layout, value_range, missing_value),
                at=at or [10, 100], store=store, task_field=task_field,
                reference_field=reference_field, answer_field=answer_field,
                id_field=id_field, context_field=context_field,
                system=DEFAULT_SYSTEM if system is None else (system or None),
                prompt_template=prompt_template, max_tokens=max_tokens, k=k,
                budget_tokens=budget_tokens, seed=seed, batch_size=batch_size,
                rejects=rejects, output=output, strict=strict, sink=writer.write_many,
                on_progress=on_progress, on_notice=notice, llm_options=llm_options,
                run_args={"inputs": inputs or ["-"], "output": output, "scorer": scorers})
    except BaseException:
        writer.abort()
        raise
    writer.close()
    data = summary.to_dict()
    for path in report or []:
        write_report(data, path)
    print_summary(data)
    if summary.rejects_path:
        err.print(f"evaluate: rejected records are in {summary.rejects_path}")


def _subset_options(method: str, estimator: str, held_out: float, layout: str,
                    value_range: str | None, missing: list[float] | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"method": method, "estimator": estimator, "held_out": held_out,
                            "layout": layout}
    if value_range is not None:
        try:
            low, high = (float(x) for x in value_range.split(","))
        except ValueError:
            raise typer.BadParameter(f"--value-range {value_range}: expected LOW,HIGH, e.g. "
                                     "1,2.") from None
        opts["value_range"] = (low, high)
    if missing:
        opts["missing_values"] = list(missing)
    return opts


def print_summary(s: dict[str, Any]) -> None:
    """The stderr summary: counts that add up, then a rich table of arms and comparisons."""
    from rich.table import Table

    from xpkit.core.report import (
        ARM_HEADER,
        COMPARE_HEADER,
        RETRIEVAL_HEADER,
        arm_rows,
        comparison_rows,
    )

    line = (f"evaluate: {s['records']:,} records read: {s['items']:,} evaluated, "
            f"{s['rejected']:,} rejected; scorer {s['scorer']}")
    if s.get("model"):
        line += f", model {s['model']}"
    err.print(line)
    rows = arm_rows(s)
    if rows:
        header = RETRIEVAL_HEADER if s["scorer"] == "retrieval" else ARM_HEADER
        table = Table(*header, box=None, pad_edge=False)
        for r in rows:
            table.add_row(*r)
        err.print(table)
    if s.get("comparisons"):
        table = Table(*COMPARE_HEADER, box=None, pad_edge=False)
        for r in comparison_rows(s):
            table.add_row(*r)
        err.print(table)
    if s.get("feedback"):
        f = s["feedback"]
        err.print(f"evaluate: feedback for {f['model']}: {f['units_updated']:,} units updated "
                  f"({f.get('helpful', 0):,} helpful, {f.get('harmful', 0):,} harmful, "
                  f"{f.get('uses', 0):,} uses)"
                  + (f"; {f['units_missing']:,} not in the store" if f["units_missing"] else ""))
    if s.get("subset"):
        from xpkit.core.report import subset_lines

        for line in subset_lines(s["subset"]):
            err.print(line)
    if s.get("gate"):
        g = s["gate"]
        err.print(f"evaluate: gate {g['decision']} {g['units_file']} (with {g['score_with']} "
                  f"vs without {g['score_without']}, p = {g['p_value']})")
    for note in s.get("notes", []):
        err.print(f"  note: {note}")
