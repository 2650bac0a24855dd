"""Model runtime throughput: xpkit's path against plain llama-cpp-python, and the cache.

The same N prompts (default 200) share one ~300-token system prompt and ask for a small
JSON object under a JSON schema; each varies in a ~100-token agent log. Measured, all
greedy (temperature 0), on the bundled SmolLM2-135M-Instruct:

1. plain   — one ``llama_cpp.Llama``, ``create_chat_completion(response_format=json_object
             + schema)`` in a loop (the loop a user would write);
2. xpkit   — ``get_llm().run(requests)`` with an empty cache and ``retries=0`` (the same
             work as the loop: one call per prompt);
3. prefix  — on the first few prompts, xpkit's path with the KV state reset before every
             call against keeping it (the shared-prefix reuse), with identical outputs;
4. cached  — the same batch again from the cache: in-process, and as a fresh process (the
             way a rerun of a command pays for it: interpreter start and imports included);
5. embed   — texts/s of ``core.embeddings`` (llama.cpp, mean pooling), uncached, then cached.

Rates: generated tokens/s (completion tokens / wall time) and items/s. Both paths load the
model with the same parameters (threads, context, OpenMP passive waiting, the CPU buffer
rule of ``xpkit.plugins.backends.llama_cpp``) so only the calling path differs. The two
paths run interleaved in blocks of ``--block`` prompts (plain, xpkit, plain, ...), each
with its own loaded model, and the prefix test alternates kept/reset per prompt, so a
change in background load on a shared machine hits both sides alike.

    python bench/llm.py              # 200 prompts (takes a while on 2 cores)
    python bench/llm.py --n 40       # fewer prompts
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
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["success", "failure"]},
        "lesson": {"type": "string", "description": "one sentence a future agent can reuse"},
    },
    "required": ["verdict", "lesson"],
    "additionalProperties": False,
}
ROOMS = ["kitchen", "garage", "office", "bedroom", "lab", "attic", "cellar", "library"]
ITEMS = ["apple", "key", "mug", "lamp", "book", "knife", "towel", "battery", "map", "coin"]


def system_prompt() -> str:
    rules = " ".join(
        f"Rule {i + 1}: {text}" for i, text in enumerate([
            "read the whole log before judging it.", "a task succeeds only if the goal state "
            "is reached.", "prefer lessons that name a concrete precondition.", "never "
            "repeat the log verbatim.", "write the lesson for an agent that has not seen "
            "this log.", "keep the lesson under twenty words.", "mention the object the "
            "lesson is about.", "do not invent steps that are not in the log."] * 3))
    from xpkit.core.llm import form_example

    return ("You are an experienced reviewer of household-robot trajectories. You read one "
            "agent log and return a verdict and one reusable lesson as JSON. " + rules
            + " Answer with JSON of this form only: " + form_example(SCHEMA))


def prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        room, item = ROOMS[i % len(ROOMS)], ITEMS[(i * 7) % len(ITEMS)]
        other = ITEMS[(i * 3 + 1) % len(ITEMS)]
        ok = i % 3 != 0
        steps = [f"Task {i}: put the {item} from the {room} on the table.",
                 f"Step 1: go to the {room}. You arrive in the {room}.",
                 f"Step 2: look around. You see a shelf, a drawer and a {other}.",
                 f"Step 3: open the drawer. The drawer is {'open' if ok else 'locked'}.",
                 f"Step 4: take the {item if ok else other}. You take it.",
                 "Step 5: go to the table. You arrive at the table.",
                 f"Step 6: put it on the table. Outcome: {'success' if ok else 'failure'}."]
        out.append(" ".join(steps))
    return out


def model_path() -> str:
    from xpkit.core.llm import resolve_model

    return resolve_model("default").location


class Plain:
    """The loop a user would write: one ``Llama``, ``create_chat_completion`` per prompt."""

    def __init__(self, threads: int, ctx: int) -> None:
        import llama_cpp

        from xpkit.core.config import load_settings
        from xpkit.plugins.backends.llama_cpp import load_params, use_extra_buffers

        with load_params(use_extra_buffers(load_settings().cpu_extra_buffers)):
            self.llm = llama_cpp.Llama(model_path=model_path(), n_ctx=ctx, n_threads=threads,
                                       n_threads_batch=threads, verbose=False)
        self.wall = 0.0
        self.completion_tokens = 0
        self.outputs: list[str] = []

    def run(self, texts: list[str], system: str, max_tokens: int) -> None:
        fmt = {"type": "json_object", "schema": SCHEMA}
        t0 = time.perf_counter()
        for text in texts:
            r = self.llm.create_chat_completion(
                [{"role": "system", "content": system}, {"role": "user", "content": text}],
                response_format=fmt, max_tokens=max_tokens, temperature=0)
            self.outputs.append(r["choices"][0]["message"]["content"])
            self.completion_tokens += r["usage"]["completion_tokens"]
        self.wall += time.perf_counter() - t0


class Xpkit:
    """xpkit's path: ``LLM.run`` on the same requests (``retries=0``: one call per prompt)."""

    def __init__(self, threads: int, ctx: int, no_cache: bool = False) -> None:
        from xpkit.core.llm import get_llm

        self.llm = get_llm(threads=threads, ctx=ctx, retries=0, no_cache=no_cache)
        self.wall = 0.0
        self.completions: list = []

    def run(self, texts: list[str], system: str, max_tokens: int, reset: bool = False) -> None:
        from xpkit.core.llm import Request

        reqs = [Request(t, system=system, schema=SCHEMA, max_tokens=max_tokens)
                for t in texts]
        handle = self.llm.handle
        if reset:  # the control: forget the KV state before the call
            original = handle.complete

            def complete(*args, **kwargs):
                handle.llm.reset()
                return original(*args, **kwargs)

            handle.complete = complete
        t0 = time.perf_counter()
        try:
            self.completions += self.llm.run(reqs)
        finally:
            self.wall += time.perf_counter() - t0
            if reset:
                del handle.complete

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions if not c.cached)


def run_embed(n: int, threads: int) -> dict:
    from xpkit.core.embeddings import get_embedder

    texts = [f"{line[:160]} (variant {i})" for i, line in enumerate(prompts(n))]
    emb = get_embedder(threads=threads, no_cache=True)
    emb.handle  # noqa: B018 - load outside the timing
    t0 = time.perf_counter()
    emb.embed(texts)
    wall = time.perf_counter() - t0
    cached = get_embedder(threads=threads)
    cached.embed(texts)  # fill the cache
    t1 = time.perf_counter()
    cached.embed(texts)
    return {"n": n, "wall": wall, "cached_wall": time.perf_counter() - t1}


def cached_phase(args: argparse.Namespace) -> None:
    """Child process: the fully cached rerun, timed from interpreter start to the end."""
    x = Xpkit(args.threads, args.ctx)
    x.run(prompts(args.n), system_prompt(), args.max_tokens)
    print(orjson.dumps({"model_calls": x.llm.stats.model_calls,
                        "cached": sum(c.cached for c in x.completions)}).decode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--block", type=int, default=10, help="prompts per interleaved block")
    ap.add_argument("--prefix-n", type=int, default=8, help="prompts for the prefix test")
    ap.add_argument("--embed-n", type=int, default=64)
    ap.add_argument("--phase", default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "cached":
        return cached_phase(args)

    home = tempfile.mkdtemp(prefix="xpkit-bench-llm-")
    os.environ["XPKIT_HOME"] = home
    texts, system = prompts(args.n), system_prompt()
    from xpkit.core.tokens import count_model_tokens

    print(f"model: SmolLM2-135M-Instruct Q4_1; {args.n} prompts; threads={args.threads}; "
          f"max_tokens={args.max_tokens}; system prompt "
          f"{count_model_tokens([{'role': 'system', 'content': system}], ctx=args.ctx)} "
          f"tokens; load average {os.getloadavg()[0]:.1f}", flush=True)

    plain, ours = Plain(args.threads, args.ctx), Xpkit(args.threads, args.ctx)
    ours.llm.handle  # noqa: B018 - both models loaded before the clock starts
    for i in range(0, args.n, args.block):
        plain.run(texts[i:i + args.block], system, args.max_tokens)
        ours.run(texts[i:i + args.block], system, args.max_tokens)
    rate = plain.completion_tokens / plain.wall
    xrate = ours.completion_tokens / ours.wall
    same = sum(a == c.text for a, c in zip(plain.outputs, ours.completions, strict=True))
    valid = sum(c.ok for c in ours.completions)
    st = ours.llm.stats
    print(f"plain llama-cpp-python loop: {plain.wall:.1f} s, {args.n / plain.wall:.2f} "
          f"items/s, {rate:.1f} generated tok/s", flush=True)
    print(f"xpkit run():                 {ours.wall:.1f} s, {args.n / ours.wall:.2f} "
          f"items/s, {xrate:.1f} generated tok/s -> {xrate / rate:.2f}x plain; "
          f"{valid}/{args.n} schema-valid (retries=0: invalid = cut off); "
          f"{same}/{args.n} outputs identical to plain; {st.reused_tokens:,} of "
          f"{st.prompt_tokens:,} prompt tokens reused from the KV cache", flush=True)
    del plain

    k = min(args.prefix_n, args.n)
    probe = Xpkit(args.threads, args.ctx, no_cache=True)
    kept, reset = Xpkit(args.threads, args.ctx, no_cache=True), probe
    for text in texts[:k]:  # alternate on one loaded model: kept, reset, kept, ...
        kept.run([text], system, args.max_tokens)
        reset.run([text], system, args.max_tokens, reset=True)
    same_prefix = [c.text for c in kept.completions] == [c.text for c in reset.completions]
    print(f"prefix reuse ({k} prompts):    kept {kept.wall / k:.2f} s/call vs reset "
          f"{reset.wall / k:.2f} s/call -> {reset.wall / kept.wall:.2f}x; outputs "
          f"identical: {same_prefix}", flush=True)

    warm = Xpkit(args.threads, args.ctx)
    warm.run(texts, system, args.max_tokens)
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, __file__, "--phase", "cached", "--n", str(args.n),
                            "--max-tokens", str(args.max_tokens), "--threads",
                            str(args.threads), "--ctx", str(args.ctx)],
                           capture_output=True, env={**os.environ, "XPKIT_HOME": home})
    proc_wall = time.perf_counter() - t0
    info = orjson.loads(child.stdout.splitlines()[-1]) if child.returncode == 0 else {}
    print(f"cached rerun:                in-process {warm.wall * 1000:.1f} ms "
          f"({ours.wall / warm.wall:,.0f}x faster, {warm.llm.stats.model_calls} model calls); "
          f"new process {proc_wall:.2f} s incl. interpreter start "
          f"({ours.wall / proc_wall:,.0f}x faster, {info.get('model_calls')} model calls)",
          flush=True)

    emb = run_embed(args.embed_n, args.threads)
    print(f"embeddings:                  {emb['n'] / emb['wall']:.1f} texts/s uncached "
          f"({emb['n']} texts, mean pooling); cached {emb['n'] / emb['cached_wall']:,.0f} "
          "texts/s", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
