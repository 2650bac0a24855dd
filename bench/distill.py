"""Distill throughput: ``distill --method insight`` against raw llama.cpp on the same prompts.

**Episodes**: real HotpotQA ReAct trajectories from ``../shared/data/fireact/trajs`` — the
same questions attempted by three fine-tuned models (gpt-3.5-turbo-ft, llama-2-13b,
llama-2-7b), ingested with ``xpkit.core.ingest``. Questions attempted by all three are
taken in dev-index order with all their attempts until ``--episodes`` (default 200) are
chosen, so successes and failures of the same task sit together, as insight batches see
them in use.

**Contenders**, each in its own process on the same episodes file, the model loaded and
warmed up with one short call before the clock starts. The two processes take turns of
``--block`` model calls (default 1: raw, xpkit, raw, ...), so a change in background load
on a shared machine hits both alike; the time a process waits for its turn is not counted.

1. xpkit — ``xpkit.core.distill.distill(method=["insight"])`` end to end with the default
   model and settings and a fresh, empty response cache (``XPKIT_HOME`` in a temp dir):
   reading the episodes, planning and rendering the jobs, the runtime (token counting,
   validation and output checks, the cache writes), growing the library, the sink. With
   ``retries=0``, so that it sends each request once, as the limit does: an output that
   fails its checks is rejected rather than retried (retries are extra model work that the
   limit never does; in normal use the default of 2 applies);
2. raw — the limit: the very requests distill sends (built by the insight distiller's
   ``jobs(...)`` with distill's options, in the order the runtime sends them: batches of
   ``BATCH_JOBS`` jobs, each sorted by its messages), sent one by one to
   ``llama_cpp.Llama.create_chat_completion`` with the same model file, ``n_ctx``,
   threads, seed, CPU buffer rule and OpenMP passive waiting, the JSON-schema grammar
   built before the clock starts, the same ``max_tokens`` and temperature 0. No cache,
   validation, retries or batching.

Printed: model calls, prompt and completion tokens, seconds, episodes/min and completion
tokens/s for each, the ratio xpkit/raw (the same work, so episodes/min is the throughput
ratio; completion tokens/s differs from it only when xpkit made extra calls), how many
outputs agree, and what distill did with them (units, merges, rejections, retries); the
median of the per-call time ratios; the 1-minute load average at the start of each turn.

    python bench/distill.py                 # 200 episodes (1.5 h at load average 7 on 2 cores)
    python bench/distill.py --quick         # 20 episodes, a smoke run
    python bench/distill.py --episodes 40 --block 2 --workdir /tmp/xb   # keep the files
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ is sys.path[0], and a file there named like a stdlib module
# would shadow it (bench/select.py once shadowed `select`, which subprocess imports).
if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    sys.path.pop(0)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp's library loads

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
TRAJS = "fireact/trajs/*.json.gz"
WARMUP = [{"role": "user", "content": "Say OK."}]


# --------------------------------------------------------------------------------------
# Preparation (parent): episodes and the exact requests distill will send
# --------------------------------------------------------------------------------------
def choose_episodes(data: Path, n: int, work: Path) -> list[dict[str, Any]]:
    """``n`` real episodes: all attempts of questions that all three models attempted."""
    from xpkit.core.ingest import ingest

    files = sorted(str(p) for p in data.glob(TRAJS))
    if len(files) != 3:
        sys.exit(f"expected the three FireAct trajectory files under {data / TRAJS}")
    eps: list[dict[str, Any]] = []
    ingest(files, sink=eps.extend, rejects=str(work / "ingest-rejects.jsonl"))
    by_task: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for ep in eps:
        by_task[ep["task"]].append(ep)
    full = [g for g in by_task.values() if len(g) == 3]
    full.sort(key=lambda g: min(int(e["meta"].get("_key", 10**9)) for e in g))
    chosen = [e for g in full for e in sorted(g, key=lambda e: e["source"]["file"])][:n]
    if len(chosen) < n:
        sys.exit(f"only {len(chosen)} episodes available; ask for fewer with --episodes")
    return chosen


def planned_requests(episodes_file: Path) -> tuple[list[dict[str, Any]], int]:
    """distill's requests, in the order its runtime sends them to the model; and jobs."""
    from xpkit.core.distill import BATCH_JOBS, DistillOptions, available_distillers, load_episodes
    from xpkit.core.llm import resolve_model

    episodes = load_episodes([str(episodes_file)], None)
    # The options distill builds from its defaults (granularity principle, 4 per call).
    options = DistillOptions(granularity="principle", batch_episodes=4,
                             model_name=resolve_model(None).name)
    jobs = list(available_distillers()["insight"].jobs(episodes, options))
    order: list[dict[str, Any]] = []
    for start in range(0, len(jobs), BATCH_JOBS):
        batch = [j.request for j in jobs[start:start + BATCH_JOBS]]
        # LLM.run answers a batch's misses sorted by their messages (shared prefixes).
        batch.sort(key=lambda r: [(str(m.get("role")), str(m.get("content")))
                                  for m in r.messages()])
        order += [{"messages": r.messages(), "schema": r.schema, "max_tokens": r.max_tokens,
                   "check": r.check.name if r.check else None} for r in batch]
    return order, len(jobs)


# --------------------------------------------------------------------------------------
# Contender processes
# --------------------------------------------------------------------------------------
class Gate:
    """Turn-taking with the parent over stdin/stdout: the child works only between a
    ``go`` from the parent and its own ``pause``; the time spent waiting is not counted."""

    def __init__(self) -> None:
        self.waited = 0.0
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray library output stays off it

    def wait(self, say: str) -> None:
        t = time.perf_counter()
        self.out.write(say + "\n")
        line = sys.stdin.readline()
        if line.strip() != "go":
            sys.exit(0)  # the parent went away
        self.waited += time.perf_counter() - t

    def done(self) -> None:
        self.out.write("done\n")


def load_requests(work: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (work / "requests.jsonl").read_bytes().splitlines()]


def phase_raw(work: Path, block: int) -> None:
    """The limit: create_chat_completion on the planned requests, nothing else."""
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    from xpkit.core.config import load_settings
    from xpkit.core.llm import resolve_model
    from xpkit.plugins.backends.llama_cpp import _quiet, load_params, use_extra_buffers

    gate = Gate()
    requests = load_requests(work)
    s = load_settings()
    threads = s.threads or os.cpu_count() or 1
    t_load = time.perf_counter()
    # The same load as xpkit's backend: its settings, and the AMX/extra-buffer workaround
    # (without it llama.cpp dies on VMs that advertise AMX without enabling it).
    with load_params(use_extra_buffers(s.cpu_extra_buffers)), _quiet():
        llm = llama_cpp.Llama(model_path=resolve_model(None, settings=s).location,
                              n_ctx=s.ctx, n_gpu_layers=s.n_gpu_layers, n_threads=threads,
                              n_threads_batch=threads, seed=s.seed, verbose=False)
    load_s = time.perf_counter() - t_load
    # Grammars built before the clock, once per distinct schema (key order kept: the
    # grammar emits properties in the schema's order).
    grammars: dict[str, Any] = {}
    for r in requests:
        text = orjson.dumps(r["schema"]).decode()
        if text not in grammars:
            grammars[text] = LlamaGrammar.from_json_schema(text, verbose=False)
    work_items = [(r["messages"], grammars[orjson.dumps(r["schema"]).decode()],
                   r["max_tokens"]) for r in requests]
    llm.create_chat_completion(WARMUP, max_tokens=8, temperature=0)
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    gate.wait("ready")
    per_call = []
    for i, (messages, grammar, max_tokens) in enumerate(work_items):
        if i and i % block == 0:
            gate.wait("pause")
        t = time.perf_counter()
        out.append(llm.create_chat_completion(messages, grammar=grammar,
                                              max_tokens=max_tokens, temperature=0,
                                              seed=s.seed))
        per_call.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0 - gate.waited
    result = {
        "wall": wall, "load": load_s, "calls": len(out),
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in out),
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in out),
        "texts": [r["choices"][0]["message"]["content"] for r in out],
        "finish": [r["choices"][0]["finish_reason"] for r in out], "per_call": per_call,
    }
    (work / "raw.json").write_bytes(orjson.dumps(result))
    gate.done()


def phase_xpkit(work: Path, block: int) -> None:
    """``distill --method insight`` through the core function, as the CLI calls it (with a
    progress callback, where this bench takes its turns)."""
    import xpkit.core.llm as runtime
    from xpkit.core.distill import distill
    from xpkit.core.llm import OutputCheck, Request

    gate = Gate()
    requests = load_requests(work)
    captured: list[Any] = []
    original = runtime.get_llm

    def get_llm(*args: Any, **kwargs: Any) -> Any:  # keep distill's handle for its Stats
        llm = original(*args, **kwargs)
        captured.append(llm)
        return llm

    runtime.get_llm = get_llm
    t_load = time.perf_counter()
    warm = original(None)
    warm.handle  # noqa: B018 - the shared loaded model distill's handle will use
    load_s = time.perf_counter() - t_load
    warm.handle.complete(WARMUP, schema=None, max_tokens=8, temperature=0.0, seed=0,
                         stop=None)
    finished = 0
    per_call: list[float] = []  # between progress callbacks: one request each
    last = [0.0]

    def on_progress(_p: Any) -> None:
        nonlocal finished
        finished += 1
        now = time.perf_counter()
        per_call.append(now - last[0])
        if finished % block == 0 and finished < len(requests):
            gate.wait("pause")
        last[0] = time.perf_counter()

    units: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    gate.wait("ready")
    before = gate.waited
    last[0] = time.perf_counter()
    # retries=0: the limit sends each request once, so xpkit does too (the same work); its
    # output checks still run, and an output that fails them is rejected, not retried.
    summary = distill([str(work / "episodes.jsonl")], method=["insight"], model=None,
                      sink=units.extend, rejects=str(work / "distill-rejects.jsonl"),
                      on_progress=on_progress, llm_options={"retries": 0})
    wall = time.perf_counter() - t0 - gate.waited
    (llm,) = captured
    st = llm.stats
    # Outside the clock: what each planned request got (from the response cache), in the
    # order of requests.jsonl, to compare with raw's outputs.
    keys = [llm.key(Request(r["messages"], schema=r["schema"], max_tokens=r["max_tokens"],
                            check=OutputCheck(r["check"], lambda _d: None) if r["check"]
                            else None))
            for r in requests]
    hits = llm.cache.get_responses(keys) if llm.cache is not None else {}
    got = [hits.get(k) for k in keys]
    result = {
        "wall": wall, "load": load_s, "calls": st.model_calls, "retries": st.retries,
        "rejected_calls": st.rejected, "prompt_tokens": st.prompt_tokens,
        "reused_tokens": st.reused_tokens, "completion_tokens": st.completion_tokens,
        "runtime_seconds": st.seconds - (gate.waited - before),
        "summary": summary.counts(), "units_written": len(units),
        "found": sum(g is not None for g in got),
        "texts": [(g or {}).get("text") for g in got],
        "attempts": [(g or {}).get("attempts") for g in got], "per_call": per_call,
    }
    (work / "xpkit.json").write_bytes(orjson.dumps(result))
    gate.done()


# --------------------------------------------------------------------------------------
# The parent: prepare, run the two processes turn by turn, report
# --------------------------------------------------------------------------------------
class Child:
    """A contender process and the load averages seen at the start of its turns."""

    def __init__(self, name: str, work: Path, block: int, env: dict[str, str]) -> None:
        self.name = name
        self.loads: list[float] = []
        self.finished = False
        self.stderr = work / f"{name}.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--phase", name, "--workdir", str(work),
                 "--block", str(block)], env=env, cwd=work, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)

    def expect(self, *words: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line not in words:
            self.proc.wait()
            err = self.stderr.read_text(errors="replace")[-3000:]
            sys.exit(f"the {self.name} run failed (said {line!r}):\n{err}")
        return line

    def turn(self) -> None:
        assert self.proc.stdin is not None
        self.loads.append(os.getloadavg()[0])
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        if self.expect("pause", "done") == "done":
            self.finished = True
            self.proc.wait()

    def describe(self) -> str:
        s = self.loads or [os.getloadavg()[0]]
        return f"{sum(s) / len(s):.1f} (min {min(s):.1f}, max {max(s):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=200, help="episodes (default 200)")
    ap.add_argument("--quick", action="store_true", help="20 episodes: a smoke run")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--block", type=int, default=1,
                    help="model calls per turn (default 1: raw, xpkit, raw, ...)")
    ap.add_argument("--workdir", type=Path, help="keep the files here (default: a temp "
                                                 "dir, removed)")
    ap.add_argument("--phase", default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "raw":
        return phase_raw(args.workdir, args.block)
    if args.phase == "xpkit":
        return phase_xpkit(args.workdir, args.block)
    n = 20 if args.quick else args.episodes

    work = args.workdir or Path(tempfile.mkdtemp(prefix="xpkit-bench-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    try:
        os.environ["XPKIT_HOME"] = str(work / "home-prep")
        episodes = choose_episodes(args.data, n, work)
        with open(work / "episodes.jsonl", "wb") as f:
            f.writelines(orjson.dumps(e) + b"\n" for e in episodes)
        requests, n_jobs = planned_requests(work / "episodes.jsonl")
        with open(work / "requests.jsonl", "wb") as f:
            f.writelines(orjson.dumps(r) + b"\n" for r in requests)
        wins = sum(e["outcome"]["success"] is True for e in episodes)
        tasks = len({e["task"] for e in episodes})
        from xpkit.core.llm import resolve_model

        spec = resolve_model(None)
        print(f"episodes: {n} FireAct HotpotQA ReAct trajectories ({tasks} questions x the "
              f"attempts of gpt-3.5-ft, llama-2-13b, llama-2-7b; {wins} succeeded, "
              f"{n - wins} failed) -> {n_jobs} insight jobs (4 episodes a call); model "
              f"{spec.name} ({Path(spec.location).name}); {os.cpu_count()} cores; load "
              f"average {os.getloadavg()[0]:.1f} at the start", flush=True)

        # Both processes load and warm up, then take turns of --block calls each, so a
        # change in background load hits both alike. xpkit gets a fresh, empty cache.
        for name in ("raw", "xpkit"):
            home = work / f"home-{name}"
            shutil.rmtree(home, ignore_errors=True)  # a kept --workdir: empty the cache
            env = {**os.environ, "XPKIT_HOME": str(home)}
            children.append(Child(name, work, args.block, env))
        for child in children:
            child.expect("ready")
        t0 = time.perf_counter()
        while not all(c.finished for c in children):
            for child in children:
                if not child.finished:
                    child.turn()
        print(f"both done in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {c.name: (orjson.loads((work / f"{c.name}.json").read_bytes()),
                            c.describe()) for c in children}
        report(n, results, requests)
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(n: int, results: dict[str, tuple[dict[str, Any], str]],
           requests: list[dict[str, Any]]) -> None:
    from xpkit.core.llm import find_copied_example, form_example, validate_json

    print()
    print("| contender | model calls | prompt tokens | completion tokens | seconds | "
          "episodes/min | completion tok/s | prompt + completion tok/s | load avg (1 min) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in ("xpkit", "raw"):
        r, load = results[name]
        print(f"| {name} | {r['calls']:,} | {r['prompt_tokens']:,} | "
              f"{r['completion_tokens']:,} | {r['wall']:.1f} | {n / r['wall'] * 60:.2f} | "
              f"{r['completion_tokens'] / r['wall']:.2f} | "
              f"{(r['prompt_tokens'] + r['completion_tokens']) / r['wall']:.1f} | {load} |")
    x, raw = results["xpkit"][0], results["raw"][0]
    x_rate = x["completion_tokens"] / x["wall"]
    raw_rate = raw["completion_tokens"] / raw["wall"]
    print()
    print(f"ratio xpkit/raw: episodes/min {raw['wall'] / x['wall']:.3f} (the same work); "
          f"completion tok/s {x_rate / raw_rate:.3f}; target >= 0.9")
    if x["calls"] == raw["calls"] and len(x["per_call"]) == len(raw["per_call"]):
        # Call i of one is call i of the other (same request, same order, adjacent turns):
        # the median of the per-call ratios is the least sensitive to load swings.
        pairs = sorted(r / c for r, c in zip(raw["per_call"], x["per_call"], strict=True)
                       if c > 0)
        print(f"per-call ratio raw/xpkit seconds: median {pairs[len(pairs) // 2]:.3f}, "
              f"range {pairs[0]:.3f}-{pairs[-1]:.3f} over {len(pairs)} calls; xpkit after its "
              f"last call: {x['wall'] - sum(x['per_call']):.2f} s")
    same = sum(a == b for a, b in zip(x["texts"], raw["texts"], strict=True))
    raw_valid = sum(validate_json(t, r["schema"])[1] is None
                    for t, r in zip(raw["texts"], requests, strict=True))
    s = x["summary"]
    print(f"xpkit: {x['calls']} model calls for {len(raw['texts'])} requests ({x['retries']} "
          f"retries, {x['rejected_calls']} requests rejected after retries); "
          f"{x['reused_tokens']:,} of {x['prompt_tokens']:,} prompt tokens reused from the "
          f"KV cache; units: {s['new']} new, {s['merged']} merged, {s['rejected']} outputs "
          f"rejected; inside LLM.run {x['runtime_seconds']:.1f} s of {x['wall']:.1f} s")
    copied = sum(bool(t and find_copied_example(t, form_example(r["schema"])))
                 for t, r in zip(x["texts"], requests, strict=True))
    print(f"outputs: {same}/{len(raw['texts'])} of xpkit's final outputs identical to raw's; "
          f"raw: {raw_valid}/{len(raw['texts'])} schema-valid, "
          f"{sum(f == 'length' for f in raw['finish'])} cut off at max_tokens; "
          f"{copied}/{len(raw['texts'])} of xpkit's outputs copy the prompt's form "
          "placeholders (rejected by distill's output check; speed does not depend on it)")


if __name__ == "__main__":
    main()
