"""Retrieval benchmark: BM25 speed on >= 100k real-text units, and quality on CISI.

Speed: a library of passages cut from the real datasets in ``../shared/data`` (instruction
pools, model outputs, chat logs, math and code problems, agent trajectories: every string
field, split into sentences/lines of 6-120 words, deduplicated, shuffled with a fixed seed)
and 1,000 real queries (HotpotQA questions and FEVER claims, which are not in the library).
Each contender runs in its own process, which reports its own peak RSS (``ru_maxrss``):

- ``xpkit``: ``xpkit.core.index`` into a DuckDB store, then ``BM25Matrix.search`` over the
  1,000 queries at once (query analysis included), on all cores and on one thread, and the
  whole ``retrieve_batch`` path (rows, rendering, tiktoken counts) for comparison;
- ``bm25s`` with its ``numpy`` and ``numba`` backends (one thread), same analysis (lowercase,
  ``\\w\\w+``, Lucene stopwords, Snowball English), query tokenization included;
- ``rank_bm25`` (BM25Okapi) on the first ``--rank-bm25-queries`` queries (it scores every
  document in Python: about 2 queries/s here), reported as queries/s.

Quality: CISI (1,460 abstracts, 76 judged queries): nDCG@10 and recall@100 for xpkit BM25 and
bm25s with the same tokenization; with ``--dense MODEL`` also xpkit dense and hybrid (RRF).
The abstracts are first embedded through xpkit's embedder, timed (texts/s, tokens/s, tokens
per CPU-second, the load average), which fills the vector cache the index then reads.
Embedding is the slow part: the bundled SmolLM2-135M takes 45-55 minutes for the 1,460
abstracts (~250k tokens) on 2 CPU cores; an embedding server is faster
(``--dense http://host:port/v1``). ``--embed-sample N`` times the embedder alone on the
first N abstracts, uncached.

    python bench/retrieve.py                       # 100k units, 1,000 queries, CISI
    python bench/retrieve.py --units 200000 --dense default
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
SOURCES = ("alpagasus_selections", "cherry_alpaca_5pct", "gpteacher_toolformer_dedup",
           "hh_rlhf_harmless_base_test", "gsm8k", "alpaca_eval/results", "dynamic_cheatsheet",
           "llamafactory_demo_data", "fireact", "mbpp", "math500", "tau_bench_airline_gpt4o",
           "alphaopt_experience_library", "self_instruct_seed_tasks", "humaneval")
_SPLIT = re.compile(r"\n+|(?<=[.!?])\s+(?=[A-Z])")


# --------------------------------------------------------------------------- data


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _records(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    try:
        yield orjson.loads(data)
        return
    except orjson.JSONDecodeError:
        pass
    for line in data.splitlines():
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


def passages(data: Path, limit: int, seed: int = 0) -> list[str]:
    """Deduplicated real-text passages (6-120 words), shuffled, the first ``limit``."""
    seen: set[str] = set()
    out: list[str] = []
    for src in SOURCES:
        for p in sorted((data / src).rglob("*")):
            if not p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
                continue
            for rec in _records(p):
                for s in _strings(rec):
                    for para in _SPLIT.split(s):
                        words = para.split()
                        if 6 <= len(words) <= 120:
                            text = " ".join(words)
                            if text not in seen:
                                seen.add(text)
                                out.append(text)
    random.Random(seed).shuffle(out)
    if len(out) < limit:
        sys.exit(f"bench: only {len(out):,} passages in {data}; lower --units.")
    return out[:limit]


def queries(data: Path, n: int) -> list[str]:
    with gzip.open(data / "hotpotqa_dev_simplified" / "hotpot_dev_v1_simplified.json.gz") as f:
        hotpot = json.load(f)
    with gzip.open(data / "fever_paper_dev" / "paper_dev.jsonl.gz") as f:
        fever = [orjson.loads(x)["claim"] for x in f]
    out: list[str] = []
    for a, b in zip(hotpot, fever, strict=False):
        out += [a["question"], b]
    return out[:n]


# --------------------------------------------------------------------------- contenders


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_xpkit(work: Path, k: int) -> dict:
    os.environ.setdefault("XPKIT_HOME", str(work / "home"))
    from xpkit.core.index import index
    from xpkit.core.retrieve import Library, Options, retrieve_batch

    docs = orjson.loads((work / "docs.json").read_bytes())
    qs = orjson.loads((work / "queries.json").read_bytes())
    src = work / "docs.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"id": f"p{i}", "text": t}) + b"\n"
                             for i, t in enumerate(docs)))
    store = str(work / "xpkit.duckdb")
    t = time.perf_counter()
    index([str(src)], store=store, id_field="id", text_field="text")
    t_index = time.perf_counter() - t
    lib = Library.open(store)
    t = time.perf_counter()
    lib.bm25  # noqa: B018 - cold load: postings -> weight matrix (and the cache file)
    t_cold = time.perf_counter() - t
    lib.close()
    lib = Library.open(store)
    t = time.perf_counter()
    lib.bm25  # noqa: B018 - warm load: from the cache file
    t_warm = time.perf_counter() - t
    out: dict = {"index_s": t_index, "load_cold_s": t_cold, "load_warm_s": t_warm}
    lib.bm25.search([lib.analyzer("warm up")], k)
    for label, threads in (("all", None), ("1", 1)):
        best = 1e9
        for _ in range(3):
            t = time.perf_counter()
            res, _ = lib.bm25.search(lib.analyzer.many(qs), k, threads=threads)
            best = min(best, time.perf_counter() - t)
        out[f"qps_threads_{label}"] = len(qs) / best
    out["top"] = [[str(lib.keys[d]) for d in r[0]] for r in res]
    opts = Options(mode="bm25", k=k, pool=k, min_score=None, mmr=None, budget_tokens=None,
                   utility=False, model=None, template="plain", follow=[],
                   hnsw_threshold=10**9)
    recs = [{"task": q} for q in qs]
    t = time.perf_counter()
    for i in range(0, len(qs), 500):
        retrieve_batch(lib, recs[i:i + 500], qs[i:i + 500], opts, None, False)
    out["qps_end_to_end"] = len(qs) / (time.perf_counter() - t)
    lib.close()
    out["rss_mb"] = _rss_mb()
    return out


def worker_bm25s(work: Path, k: int, backend: str) -> dict:
    import bm25s
    import Stemmer

    docs = orjson.loads((work / "docs.json").read_bytes())
    qs = orjson.loads((work / "queries.json").read_bytes())
    stem = Stemmer.Stemmer("english")
    t = time.perf_counter()
    model = bm25s.BM25(backend=backend)
    model.index(bm25s.tokenize(docs, stopwords="en", stemmer=stem, show_progress=False),
                show_progress=False)
    t_index = time.perf_counter() - t
    warm = bm25s.tokenize(qs[:5], stopwords="en", stemmer=stem, show_progress=False,
                          return_ids=False)
    model.retrieve(warm, k=k, show_progress=False, n_threads=1)  # numba compiles here
    best = 1e9
    for _ in range(1 if backend == "numpy" else 3):
        t = time.perf_counter()
        qt = bm25s.tokenize(qs, stopwords="en", stemmer=stem, show_progress=False,
                            return_ids=False)
        ids, _ = model.retrieve(qt, k=k, show_progress=False, n_threads=1)
        best = min(best, time.perf_counter() - t)
    return {"index_s": t_index, "qps": len(qs) / best,
            "top": [[f"p{i}" for i in row] for row in ids.tolist()], "rss_mb": _rss_mb()}


def worker_rank_bm25(work: Path, k: int, n_queries: int) -> dict:
    import numpy as np
    from rank_bm25 import BM25Okapi

    from xpkit.core.tokenize import Analyzer

    docs = orjson.loads((work / "docs.json").read_bytes())
    qs = orjson.loads((work / "queries.json").read_bytes())[:n_queries]
    a = Analyzer()
    t = time.perf_counter()
    model = BM25Okapi(a.many(docs))
    t_index = time.perf_counter() - t
    t = time.perf_counter()
    for q in qs:
        scores = model.get_scores(a(q))
        np.argpartition(-scores, k)[:k]
    return {"index_s": t_index, "qps": len(qs) / (time.perf_counter() - t),
            "queries": len(qs), "rss_mb": _rss_mb()}


def embed_throughput(spec: str, texts: list[str], no_cache: bool = False) -> dict:
    """Embed ``texts`` with xpkit's embedder (filling the vector cache that ``index`` then
    reads): texts/s, tokens/s and tokens per CPU-second of the texts actually embedded
    (each distinct text once)."""
    from xpkit.core.embeddings import get_embedder

    texts = list(dict.fromkeys(texts))
    emb = get_embedder(spec, no_cache=no_cache)
    handle = emb.handle
    window = handle.max_tokens
    tokens = 0
    for text in texts:
        n = handle.head(text, 0)[1]
        tokens += min(n, window - 2) if window else n
    load = os.getloadavg()
    t, cpu = time.perf_counter(), _cpu_s()
    emb.embed(texts)
    secs, cpu = time.perf_counter() - t, _cpu_s() - cpu
    st = emb.stats
    out = {"texts": len(texts), "embedded": st.embedded, "cache_hits": st.cache_hits,
           "truncated": st.truncated, "tokens": tokens, "seconds": secs, "cpu_seconds": cpu,
           "load_before": load[0], "load_after": os.getloadavg()[0]}
    if st.embedded == len(texts):
        out.update(texts_per_s=len(texts) / secs, tokens_per_s=tokens / secs,
                   tokens_per_cpu_s=tokens / cpu)
    return out


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cisi_quality(data: Path, work: Path, dense: str | None) -> dict:
    import bm25s
    import Stemmer

    from xpkit.core import smart
    from xpkit.core.index import index
    from xpkit.core.retrieve import retrieve

    os.environ.setdefault("XPKIT_HOME", str(work / "home"))
    root = data / "cisi"
    docs = smart.documents(root / "CISI.ALL.gz")
    qs = smart.queries(root / "CISI.QRY")
    rel = smart.qrels(root / "CISI.REL")
    src = work / "cisi.jsonl"
    src.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    qfile = work / "cisi_q.jsonl"
    qfile.write_bytes(b"".join(orjson.dumps(q) + b"\n" for q in qs))
    store = str(work / "cisi.duckdb")
    out: dict = {}
    if dense:
        out["embedding"] = embed_throughput(dense, [d["text"] for d in docs])
    t = time.perf_counter()
    index([str(src)], store=store, id_field="id", text_field="text", embed_model=dense)
    out["index_s"] = time.perf_counter() - t
    for mode in ("bm25", "dense", "hybrid") if dense else ("bm25",):
        recs: list[dict] = []
        t = time.perf_counter()
        retrieve([str(qfile)], store=store, mode=mode, k=100, sink=recs.extend,
                 utility=False)
        secs = time.perf_counter() - t
        run = {r["qid"]: [h["unit_id"] for h in r["hits"]] for r in recs}
        out[f"xpkit {mode}"] = {**smart.evaluate_run(run, rel), "seconds": secs}
    stem = Stemmer.Stemmer("english")
    model = bm25s.BM25()
    model.index(bm25s.tokenize([d["text"] for d in docs], stopwords="en", stemmer=stem,
                               show_progress=False), show_progress=False)
    qt = bm25s.tokenize([q["query"] for q in qs], stopwords="en", stemmer=stem,
                        show_progress=False, return_ids=False)
    ids, _ = model.retrieve(qt, k=100, show_progress=False)
    run = {q["qid"]: [docs[i]["id"] for i in ids[j]] for j, q in enumerate(qs)}
    out["bm25s"] = smart.evaluate_run(run, rel)
    return out


# --------------------------------------------------------------------------- driver


def _run_worker(name: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(work),
           "--k", str(args.k), "--rank-bm25-queries", str(args.rank_bm25_queries),
           "--data", str(args.data)]
    if args.dense:
        cmd += ["--dense", args.dense]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(f"bench: worker {name} failed")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t
    return res


def _embedding_line(spec: str, e: dict) -> str:
    if "texts_per_s" not in e:
        return (f"embedding ({spec}): {e['cache_hits']:,} of {e['texts']:,} vectors came from "
                "the cache; no throughput measured")
    return (f"embedding ({spec}): {e['texts']:,} abstracts, {e['tokens']:,} tokens in "
            f"{e['seconds']:.0f}s: {e['texts_per_s']:.2f} texts/s, {e['tokens_per_s']:.0f} "
            f"tokens/s, {e['tokens_per_cpu_s']:.0f} tokens per CPU-second; load average "
            f"{e['load_before']:.1f} -> {e['load_after']:.1f}")


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    n = sum(len(set(x) & set(y)) for x, y in zip(a, b, strict=True))
    d = sum(max(len(x), len(y)) for x, y in zip(a, b, strict=True))
    return n / d if d else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rank-bm25-queries", type=int, default=20)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dense", default=None, help="embedding model for CISI dense/hybrid")
    ap.add_argument("--embed-sample", type=int, default=None, metavar="N",
                    help="only time the --dense model on the first N CISI abstracts, uncached")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip", action="append", default=[],
                    help="skip a contender: xpkit, bm25s-numpy, bm25s-numba, rank_bm25, cisi")
    args = ap.parse_args()

    if args.embed_sample:
        from xpkit.core import smart

        docs = smart.documents(args.data / "cisi" / "CISI.ALL.gz")[:args.embed_sample]
        e = embed_throughput(args.dense or "default", [d["text"] for d in docs], no_cache=True)
        print(_embedding_line(args.dense or "default", e))
        return
    if args.worker:
        work = args.workdir
        if args.worker == "xpkit":
            res = worker_xpkit(work, args.k)
        elif args.worker.startswith("bm25s-"):
            res = worker_bm25s(work, args.k, args.worker.split("-", 1)[1])
        elif args.worker == "rank_bm25":
            res = worker_rank_bm25(work, args.k, args.rank_bm25_queries)
        else:
            res = cisi_quality(args.data, work, args.dense)
            res["rss_mb"] = _rss_mb()
        print(json.dumps(res))
        return

    tmp = tempfile.TemporaryDirectory(prefix="xpkit-bench-retrieve-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    docs = passages(args.data, args.units)
    qs = queries(args.data, args.queries)
    (work / "docs.json").write_bytes(orjson.dumps(docs))
    (work / "queries.json").write_bytes(orjson.dumps(qs))
    words = sum(len(d.split()) for d in docs)
    print(f"library: {len(docs):,} real-text units ({words / len(docs):.1f} words on average), "
          f"{len(qs):,} queries; built in {time.perf_counter() - t:.1f}s", flush=True)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}", flush=True)

    results: dict[str, dict] = {}
    for name in ("xpkit", "bm25s-numba", "bm25s-numpy", "rank_bm25", "cisi"):
        if name in args.skip:
            continue
        results[name] = _run_worker(name, args, work)
        print(f"  done: {name} ({results[name]['wall_s']:.1f}s)", flush=True)

    print("\nBM25, batch retrieval of top-10 (query analysis included), queries/s:")
    rows = []
    if "xpkit" in results:
        x = results["xpkit"]
        rows += [("xpkit (sparse_dot_topn, all cores)", x["qps_threads_all"], x["rss_mb"]),
                 ("xpkit (one thread)", x["qps_threads_1"], x["rss_mb"]),
                 ("xpkit retrieve_batch (+rows, render, tiktoken)", x["qps_end_to_end"],
                  x["rss_mb"])]
    for name in ("bm25s-numba", "bm25s-numpy", "rank_bm25"):
        if name in results:
            label = name + (f" ({results[name]['queries']} queries)" if name == "rank_bm25"
                            else " (one thread)")
            rows.append((label, results[name]["qps"], results[name]["rss_mb"]))
    ref = results.get("bm25s-numba", {}).get("qps")
    for label, qps, rss in rows:
        ratio = f"{qps / ref:7.2f}x" if ref else "       "
        print(f"  {label:<50} {qps:>10,.0f} q/s  {ratio} of bm25s numba   peak RSS "
              f"{rss:,.0f} MB")
    if "xpkit" in results:
        x = results["xpkit"]
        print(f"\nxpkit index: {x['index_s']:.1f}s for {len(docs):,} units "
              f"({len(docs) / x['index_s']:,.0f} units/s, into the DuckDB store); matrix load "
              f"{x['load_cold_s']:.2f}s from postings, {x['load_warm_s']:.3f}s from cache")
        for name in ("bm25s-numba", "bm25s-numpy"):
            if name in results:
                print(f"top-10 agreement xpkit vs {name}: "
                      f"{_overlap(x['top'], results[name]['top']):.3f}; {name} index "
                      f"{results[name]['index_s']:.1f}s")
    if "cisi" in results:
        c = results["cisi"]
        print("\nCISI (1,460 docs, 76 judged queries), same tokenization for both:")
        for key, m in c.items():
            if isinstance(m, dict) and "ndcg@10" in m:
                print(f"  {key:<14} nDCG@10 {m['ndcg@10']:.4f}   recall@100 {m['recall@100']:.4f}")
        if c.get("embedding"):
            print(_embedding_line(args.dense, c["embedding"]))
    tmp.cleanup()


if __name__ == "__main__":
    main()
