"""``xpkit select-data``: choose the training data that matters from a pool."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from xpkit.cli.console import err, notice, progress
from xpkit.cli.model_options import (
    ConcurrencyOpt,
    CtxOpt,
    ModelOpt,
    NGpuLayersOpt,
    NoCacheOpt,
    ThreadsOpt,
)
from xpkit.cli.options import BatchSizeOpt, InputsArg, OutputOpt, RejectsOpt, StoreOpt, StrictOpt

METHODS = ("all (default without a budget), random (default with one), top, k-center, "
           "facility-location, mopps, drive, lead; with --model: add-one-in (the model picks, "
           "call by call, the candidate that adds most)")
SCORES = ("auto (informative when tasks have several recorded outcomes, else length), "
          "length, reward, informative, difficulty, random; with --model: judge (AlpaGasus "
          "0-5 rating), ifd (instruction-following difficulty) and perplexity (token losses: "
          "a GGUF model, not an HTTP server)")


def select_data(
    inputs: InputsArg = None,
    format: Annotated[str, typer.Option(
        "--format", "-f", help="Input format, as for ingest: auto, openai-chat, sharegpt, "
                               "alpaca, react, swe-agent, graded-qa, episode, map.")] = "auto",
    map: Annotated[list[str] | None, typer.Option(
        "--map", help="FIELD=PATH for --format map (repeatable).", show_default=False)] = None,
    text: Annotated[str, typer.Option(
        "--text", help="What is deduplicated and sketched: all (prompt, turns and answer), "
                       "prompt, response, or a field path.")] = "all",
    dedup: Annotated[str, typer.Option(
        "--dedup", help="none, exact (normalised text hash) or near (exact, then MinHash "
                        "LSH candidates verified by true Jaccard similarity; texts of up to "
                        "64 words must also be within max(2, 10%) word edits).")] = "exact",
    near_dup_threshold: Annotated[float, typer.Option(
        "--near-dup-threshold", help="Jaccard similarity of the shingle sets (character "
                                     "trigrams and words) at which two records are near "
                                     "duplicates however many shingles differ.")] = 0.85,
    near_dup_diff: Annotated[int, typer.Option(
        "--near-dup-diff", help="Also near duplicates: shingle sets that differ by at most N "
                                "shingles (about one dropped or two swapped words, at any "
                                "length) and still overlap 60%; this is what keeps short "
                                "texts. 0 turns it off.")] = 13,
    shingle: Annotated[int, typer.Option(
        "--shingle", help="Shingle size in characters for --dedup near.")] = 3,
    num_perm: Annotated[int, typer.Option(
        "--num-perm", help="MinHash permutations for --dedup near.")] = 128,
    numbers_must_match: Annotated[bool, typer.Option(
        "--numbers-must-match/--numbers-may-differ",
        help="Near duplicates must contain the same numbers (\"released in 2011\" and "
             "\"released in 2014\" stay apart).")] = True,
    filter: Annotated[list[str] | None, typer.Option(
        "--filter", help="Drop records with an empty response (empty) or a degenerate one: "
                         "no letter or digit, a repetition loop, the prompt echoed "
                         "(degenerate). Repeatable.", show_default=False)] = None,
    min_tokens: Annotated[int | None, typer.Option(
        "--min-tokens", help="Drop records with fewer tokens (tiktoken cl100k, message "
                             "contents).", show_default=False)] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="Drop records with more tokens.", show_default=False)] = None,
    where: Annotated[str | None, typer.Option(
        "--where", help="Keep records where this holds, in the filter language retrieve uses: "
                        "\"success = true and tokens < 2000\", \"category in ('qa', 'code')\", "
                        "\"meta.topic = 'sql'\", \"record.info.source like 'gpt%'\".",
        show_default=False)] = None,
    method: Annotated[str | None, typer.Option(
        "--method", help=f"How candidates are ranked for the budget: {METHODS}.",
        show_default=False)] = None,
    score: Annotated[str, typer.Option(
        "--score", help=f"The utility used by top, lead and k-center's first pick: {SCORES}."
    )] = "auto",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="KEY=VALUE for the method or score (repeatable), e.g. "
                              "group=8 (mopps), max_success=0.5 (drive), explore=1 (lead), "
                              "demand=4096 (facility-location), max_ifd=1 and "
                              "max_answer_tokens=512 (ifd), prefer=low (perplexity), "
                              "aspect=helpfulness (judge), batch=4 and max_calls=32 "
                              "(add-one-in).", show_default=False)] = None,
    features: Annotated[str, typer.Option(
        "--features", help="Sketches for k-center, facility-location, lead and clusters: "
                           "tfidf (hashed TF-IDF, cosine) or minhash (Jaccard); embeddings "
                           "come with the model runtime.")] = "tfidf",
    clusters: Annotated[int | None, typer.Option(
        "--clusters", help="Clusters for lead and _select.cluster (default about "
                           "sqrt(candidates/2), at most 128).", show_default=False)] = None,
    budget: Annotated[int | None, typer.Option(
        "--budget", help="Select exactly N records (N pairs with --export dpo), or all if "
                         "fewer.", show_default=False)] = None,
    budget_tokens: Annotated[int | None, typer.Option(
        "--budget-tokens", help="Select records whose tokens (tiktoken cl100k, message "
                                "contents as exported) add up to at most N.",
        show_default=False)] = None,
    stratify: Annotated[str | None, typer.Option(
        "--stratify", help="Split the budget across the values of this field in proportion "
                           "to the pool (e.g. model, meta.category, source.format).",
        show_default=False)] = None,
    per_task: Annotated[int | None, typer.Option(
        "--per-task", help="At most N records per task.", show_default=False)] = None,
    task_field: Annotated[str | None, typer.Option(
        "--task-field", help="The field that identifies a task across attempts (default: the "
                             "task text), e.g. task_id or meta.task_id.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice.")] = 0,
    order: Annotated[str, typer.Option(
        "--order", help="Output order: input, rank (best first) or curriculum (easiest task "
                        "first, from recorded outcomes).")] = "input",
    export: Annotated[str | None, typer.Option(
        "--export", help="sft (chat messages JSONL) or dpo (prompt, chosen, rejected from a "
                         "success and a failure of the same task). Default: the input records.",
        show_default=False)] = None,
    pairs_per_task: Annotated[int, typer.Option(
        "--pairs-per-task", help="DPO pairs per task at most.")] = 1,
    report: Annotated[str | None, typer.Option(
        "--report", help="Write each pool record's fate here (JSONL): selected, duplicate "
                         "(with the id kept), filtered or not chosen, and why.",
        show_default=False)] = None,
    store: StoreOpt = None,
    output: OutputOpt = None,
    rejects: RejectsOpt = None,
    strict: StrictOpt = False,
    batch_size: BatchSizeOpt = 2000,
    model: ModelOpt = None,
    n_gpu_layers: NGpuLayersOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    concurrency: ConcurrencyOpt = None,
    no_cache: NoCacheOpt = None,
) -> None:
    """Choose the training data that matters: dedup, filters, diversity, difficulty, budgets.

    Stages run in this order: read (any format ingest reads) -> filter (--filter,
    --min/max-tokens, --where) -> dedup (--dedup exact|near, keeping the best member of each
    group) -> method (--method, per --stratify stratum) -> budget (--budget or
    --budget-tokens, --per-task) -> export. Each output record carries _select = {score,
    reason, cluster, id}. Every pool record is accounted for on stderr (selected, duplicate,
    filtered, not chosen, rejected) and, with --report, one by one.

    Model-aware selection uses --model (default: the bundled SmolLM2-135M-Instruct): --score
    judge (the model rates each record 0-5, AlpaGasus), --score ifd and --score perplexity
    (token losses of the answer with and without its instruction, Cherry LLM; they need an
    in-process GGUF model, the llama.cpp HTTP server gives no prompt log-probabilities),
    --method add-one-in (the model picks, call by call, the candidate that adds most).
    --method lead --score ifd uses IFD as LEAD's instance-level utility. Model results are
    cached, so a rerun makes no model calls.

    \b
    Example:
      xpkit select-data pool.parquet --dedup near --filter empty --method k-center \\
        --budget-tokens 2000000 -o train.jsonl
      xpkit select-data runs/*.jsonl --method mopps --budget 64 --per-task 1 --export sft
      xpkit ingest trajs.json | xpkit select-data --export dpo -o pairs.jsonl
      xpkit select-data alpaca.json --method lead --score ifd --model default --budget 500
    """
    from xpkit.core.formats import parse_mapping
    from xpkit.core.io import RecordWriter
    from xpkit.core.select import select_data as core_select
    from xpkit.core.selectors import parse_params

    mapping = parse_mapping(map or [])
    params = parse_params(param or [])
    llm_options = {k: v for k, v in dict(n_gpu_layers=n_gpu_layers, ctx=ctx, threads=threads,
                                         concurrency=concurrency, no_cache=no_cache).items()
                   if v is not None}
    writer = RecordWriter(output)
    try:
        with progress("select-data") as advance:
            summary = core_select(
                inputs or [], format=format, mapping=mapping, text=text, dedup=dedup,
                near_dup_threshold=near_dup_threshold, near_dup_diff=near_dup_diff,
                shingle=shingle, num_perm=num_perm,
                numbers_must_match=numbers_must_match, filters=filter or [],
                min_tokens=min_tokens, max_tokens=max_tokens, where=where, method=method,
                score=score, params=params, features=features,
                clusters=clusters, budget=budget, budget_tokens=budget_tokens,
                stratify=stratify, per_task=per_task, task_field=task_field, seed=seed,
                order=order, export=export, pairs_per_task=pairs_per_task, store=store,
                output=output, rejects=rejects, report=report, strict=strict,
                batch_size=batch_size, model=model, llm_options=llm_options,
                sink=writer.write_many, on_notice=notice,
                on_progress=advance,
                run_args={"inputs": inputs or ["-"], "output": output, "params": param or []})
    except BaseException:
        writer.abort()
        raise
    writer.close()
    print_summary(summary)


def print_summary(s: Any) -> None:
    """The stderr summary: counts that add up, then where they went and why."""
    line = (f"select-data: {s.records:,} records read: {s.selected:,} selected, "
            f"{s.duplicates:,} duplicates, {s.filtered:,} filtered, {s.not_chosen:,} not "
            f"chosen, {s.rejected:,} rejected")
    if s.items != s.records - s.rejected:
        line += f" ({s.records - s.rejected:,} records gave {s.items:,} items)"
    err.print(line)
    if s.duplicates:
        sizes = ", ".join(f"{n:,}x{size}" for size, n in sorted(s.group_sizes.items()))
        err.print(f"  duplicates: exact {s.exact_duplicates:,}, near {s.near_duplicates:,} "
                  f"(groups by size: {sizes})")
        for dup, dup_at, kept, kept_at, sim in s.duplicate_examples[:3]:
            err.print(f"    {dup} ({dup_at}) duplicate of {kept} ({kept_at}), similarity "
                      f"{sim:.2f}")
    if s.filtered:
        err.print("  filtered: " + ", ".join(f"{k} {v:,}" for k, v in
                                             sorted(s.filtered_by.items(), key=lambda t: -t[1])))
    if s.not_chosen:
        err.print("  not chosen: " + ", ".join(f"{k} {v:,}" for k, v in sorted(
            s.not_chosen_by.items(), key=lambda t: -t[1])[:6]))
    what = [f"method {s.method}"]
    if s.method not in ("all", "random"):
        what.append(f"score {s.score}")
    if s.budget:
        what.append(f"budget {s.budget}")
    if s.selected_tokens is not None:
        what.append(f"{s.selected_tokens:,} tokens written")
    if s.clusters:
        what.append(f"{s.clusters} clusters")
    err.print(f"  {', '.join(what)}; {s.written:,} records written")
    if s.strata:
        err.print("  strata (selected/quota): " + ", ".join(
            f"{k} {got:,}/{quota:,}" for k, (got, quota) in s.strata.items()))
    for note in s.notes:
        err.print(f"  {note}")
    if s.rejects_path:
        err.print(f"select-data: rejected records are in {s.rejects_path}")
    if s.report_path:
        err.print(f"select-data: each record's fate is in {s.report_path}")
