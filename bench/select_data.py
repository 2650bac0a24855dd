"""Near-duplicate detection: xpkit's defaults against datasketch MinHash + MinHashLSH.

The corpus is real text from ``../shared/data`` (Alpaca/Dolly pools and AlpacaEval outputs,
GSM8K questions and solution lines, FEVER claims, HotpotQA questions, HH-RLHF turns, CISI
abstracts, FireAct turns, GPTeacher answers), one paragraph or sentence per record, so most
records are short: the hard case for near-duplicate detection. (Reflexion's text logs and
tau-bench turns are left out: they are thousands of templated lines, almost all near
duplicates of each other, which the cleaning below would remove anyway.)

Ground truth. A pair of records is a *near duplicate* when one becomes the other by a few
word edits: Levenshtein distance over word tokens (runs of letters and digits, case-folded)
<= max(2, 10% of the longer text) (strict; a lenient figure allows max(3, 20%), which
admits the paraphrase-level pairs the strict rule rejects, such as "its and it's" swapped or
"craniofacial" / "cranio-facial"). The base
corpus is cleaned of its own near duplicates by that definition (candidates from a
generous MinHash net at character-trigram Jaccard >= 0.5, then the exact edit check), and
~10% planted copies are added, each a base record with one small edit: a dropped word or
two swapped words (random positions). Recall is over the planted pairs; precision is over
every pair a contender reports (a reported pair is correct when it is a planted pair or meets
the definition, as would any natural near duplicate the cleaning missed; ~4% of planted
pairs drop a whitespace token such as "<<7*8=56>>56" that is several word tokens, and are
counted correct as planted although over the strict edit bound).

Contenders, each in its own process (time and peak RSS via ``wait4``):

- ``xpkit``: ``xpkit select-data corpus.jsonl --format map --map task=text --dedup near
  --report ...`` with default near-duplicate settings, end to end (reading, parsing,
  hashing, LSH, verification, writing the selected records and the report). A reported
  pair is a dropped record and the record kept in its place.
- ``datasketch``: ``MinHash(num_perm=128)`` over 5-word shingles (``update_batch``),
  ``MinHashLSH(threshold=0.8)``, insert all, query all; a reported pair is a candidate pair.

    python bench/select_data.py                         # 200k records, 10% planted
    python bench/select_data.py --records 50000 --keep --workdir /tmp/xb
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where "select.py" would
# shadow the standard library's ``select`` module (which subprocess imports).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import gzip
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
MIN_CHARS, MIN_WORDS = 25, 5


# --------------------------------------------------------------------------- corpus


def _jload(path: Path):
    with (gzip.open(path) if str(path).endswith(".gz") else open(path, "rb")) as f:
        return json.load(f)


def _jlines(path: Path):
    op = gzip.open if str(path).endswith(".gz") else open
    with op(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _units(text) -> list[str]:
    """Paragraphs of a text; long paragraphs are split into sentences."""
    out = []
    if not isinstance(text, str):
        return out
    for para in text.split("\n"):
        para = para.strip()
        parts = _SENT.split(para) if len(para) > 300 else [para]
        for p in parts:
            p = p.strip()
            if len(p) >= MIN_CHARS and len(p.split()) >= MIN_WORDS and "|" not in p[:3]:
                out.append(p)
    return out


def extract_texts(data: Path) -> list[str]:
    """Real text units from the shared datasets, in a fixed order."""
    texts: list[str] = []
    add = texts.extend
    for p in sorted(data.glob("alpagasus_selections/data/*/*.json.gz")) + sorted(
            data.glob("cherry_alpaca_5pct/**/*.json*")) + sorted(
            data.glob("llamafactory_demo_data/data/alpaca_en_demo.json.gz")):
        for r in _jload(p):
            add(_units(f"{r.get('instruction', '')} {r.get('input', '')}"))
            add(_units(r.get("output")))
    for p in sorted(data.glob("alpaca_eval/results/*/model_outputs.json.gz")):
        for r in _jload(p):
            add(_units(r.get("instruction")))
            add(_units(r.get("output")))
    for p in ("gsm8k/train.jsonl.gz", "gsm8k/test.jsonl"):
        for r in _jlines(data / p):
            add(_units(r["question"]))
            add(_units(r["answer"]))
    for r in _jlines(data / "gsm8k/example_model_solutions.jsonl.gz"):
        for v in r.values():
            if isinstance(v, dict):
                add(_units(v.get("solution")))
    for r in _jlines(data / "fever_paper_dev/paper_dev.jsonl.gz"):
        add(_units(r["claim"]))
    for r in _jload(data / "hotpotqa_dev_simplified/hotpot_dev_v1_simplified.json.gz"):
        add(_units(r["question"]))
    for r in _jlines(data / "hh_rlhf_harmless_base_test/harmless-base/test.jsonl.gz"):
        for k in ("chosen", "rejected"):
            for turn in re.split(r"\n\n(?:Human|Assistant): ", r[k]):
                add(_units(turn))
    with gzip.open(data / "cisi/CISI.ALL.gz", "rt", encoding="utf-8") as f:
        for block in re.split(r"^\.I ", f.read(), flags=re.M):
            m = re.search(r"^\.W\n(.*?)(?:^\.X|\Z)", block, flags=re.M | re.S)
            if m:
                add(_units(" ".join(m.group(1).split())))
    for p in sorted(data.glob("fireact/trajs/*.json.gz")):
        for r in _jload(p).values():
            for m in r.get("traj") or []:
                add(_units(m.get("content") if isinstance(m, dict) else m))
    for p in sorted(data.glob("gpteacher_toolformer_dedup/**/*dedupe-only*.json.gz")):
        for r in _jload(p):
            add(_units(r.get("output")))
    return texts


_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    """Word tokens for the ground truth: case-folded runs of letters and digits (spacing
    and punctuation are not words: "27 + 5 =" and "27+5=" are the same three tokens)."""
    return _WORD.findall(text.casefold())


def within_edits(a: list[str], b: list[str], least: int = 2, share: float = 0.1) -> bool:
    """Word-level Levenshtein distance <= max(least, share of the longer text) (banded DP)."""
    k = max(least, int(len(max(a, b, key=len)) * share))
    if abs(len(a) - len(b)) > k:
        return False
    if len(a) > len(b):
        a, b = b, a
    inf = k + 1
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        lo, hi = max(1, i - k), min(len(b), i + k)
        cur = [inf] * (len(b) + 1)
        cur[0] = i if i <= k else inf
        best = cur[0]
        ai = a[i - 1]
        for j in range(lo, hi + 1):
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ai != b[j - 1]))
            cur[j] = v if v <= k else inf
            best = min(best, cur[j])
        if best > k:
            return False
        prev = cur
    return prev[len(b)] <= k


def clean_base(texts: list[str], log) -> list[str]:
    """Exact dedup (normalised), then drop the later member of every natural near-duplicate
    pair (the ground-truth definition), found through a generous MinHash net."""
    import numpy as np

    from xpkit.core.minhash import (
        MinHasher,
        jaccard_pairs,
        lsh_candidates,
        normalize,
        shingle_hashes,
    )

    seen: set[str] = set()
    base: list[str] = []
    for t in texts:
        k = normalize(t)
        if k not in seen:
            seen.add(k)
            base.append(t)
    log(f"corpus: {len(texts):,} text units, {len(base):,} distinct")
    norm = [normalize(t) for t in base]
    hasher = MinHasher(128, seed=99)
    sigs = np.concatenate([hasher.signatures(*shingle_hashes(norm[i:i + 4000], 3,
                                                              distinct=False))
                           for i in range(0, len(norm), 4000)])
    cand = lsh_candidates(sigs, 42, 3)  # P(candidate) 0.996 at J = 0.5, 0.98 at 0.45
    keep = np.concatenate([(sigs[c[:, 0]] == sigs[c[:, 1]]).mean(1) >= 0.35
                           for c in np.array_split(cand, max(1, len(cand) // 500_000))])
    cand = cand[keep]
    v, o = shingle_hashes(norm, 3)
    jac = jaccard_pairs(v, o, cand)
    net = cand[jac >= 0.5]
    drop = np.zeros(len(base), bool)
    words = {}
    natural = 0
    for a, b in net.tolist():
        wa = words.setdefault(a, _words(base[a]))
        wb = words.setdefault(b, _words(base[b]))
        if within_edits(wa, wb):
            natural += 1
            if not drop[a]:
                drop[b] = True
    log(f"corpus: net of {len(net):,} pairs with trigram Jaccard >= 0.5; {natural:,} are "
        f"near duplicates by the definition; {int(drop.sum()):,} records dropped")
    return [t for t, d in zip(base, drop, strict=True) if not d]


def plant(text: str, rng: random.Random) -> tuple[str, str]:
    w = text.split()
    if rng.random() < 0.5:
        del w[rng.randrange(len(w))]
        return " ".join(w), "drop"
    i, j = rng.sample(range(len(w)), 2)
    w[i], w[j] = w[j], w[i]
    return " ".join(w), "swap"


def build_corpus(workdir: Path, data: Path, records: int, plant_frac: float, seed: int,
                 log) -> tuple[Path, list[int], list[str]]:
    cache = workdir / "base.json"
    if cache.exists():
        base = json.loads(cache.read_text())
    else:
        base = clean_base(extract_texts(data), log)
        cache.write_text(json.dumps(base))
    rng = random.Random(seed)
    n_plant = int(records * plant_frac)
    n_base = records - n_plant
    if len(base) < n_base:
        sys.exit(f"bench: only {len(base):,} clean base records; ask for fewer --records.")
    base = rng.sample(base, n_base)
    family = list(range(n_base))
    texts = list(base)
    kinds = []
    for i in rng.sample(range(n_base), n_plant):
        t, kind = plant(base[i], rng)
        texts.append(t)
        family.append(i)
        kinds.append(kind)
    order = list(range(len(texts)))
    rng.shuffle(order)
    texts = [texts[i] for i in order]
    family = [family[i] for i in order]
    # Families refer to the base record's new position.
    pos = {old: new for new, old in enumerate(order)}
    family = [pos[f] for f in family]
    path = workdir / "corpus.jsonl"
    with open(path, "wb") as f:
        for i, t in enumerate(texts):
            f.write(orjson.dumps({"id": i, "text": t}) + b"\n")
    log(f"corpus: {len(texts):,} records ({n_base:,} base + {n_plant:,} planted: "
        f"{kinds.count('drop'):,} dropped word, {kinds.count('swap'):,} swapped words), "
        f"{path.stat().st_size / 1e6:.1f} MB")
    return path, family, texts


# --------------------------------------------------------------------------- contenders


@dataclass
class Run:
    name: str
    seconds: float
    peak_rss: int
    pairs: list[tuple[int, int]]
    groups: dict[int, int] | None = None  # xpkit: dropped record -> kept record


def _timed(cmd: list[str], **kw) -> tuple[float, int, int]:
    t = time.monotonic()
    proc = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t, usage.ru_maxrss * 1024, proc.returncode


def run_xpkit(corpus: Path, workdir: Path) -> Run:
    report = workdir / "xpkit.report.jsonl"
    out = workdir / "xpkit.out.jsonl"
    err = open(workdir / "xpkit.stderr", "wb")  # noqa: SIM115
    secs, rss, rc = _timed([sys.executable, "-m", "xpkit.cli.main", "select-data", str(corpus),
                            "--format", "map", "--map", "task=text", "--dedup", "near",
                            "--report", str(report), "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    err.close()
    if rc != 0:
        sys.exit(f"bench: xpkit failed ({rc}): {(workdir / 'xpkit.stderr').read_text()[-2000:]}")
    groups = {}
    with open(report, "rb") as f:
        for line in f:
            r = orjson.loads(line)
            if r.get("status") == "duplicate":
                kept_line = int(r["kept_at"].rsplit(":", 1)[1])
                groups[r["line"] - 1] = kept_line - 1
    return Run("xpkit", secs, rss, list(groups.items()), groups)


DATASKETCH = r"""
import sys, orjson
from datasketch import MinHash, MinHashLSH
corpus, out = sys.argv[1], sys.argv[2]
texts = [orjson.loads(l)["text"] for l in open(corpus, "rb")]
def shingles(t):
    w = t.split()
    if len(w) < 5:
        return [" ".join(w).encode()]
    return [" ".join(w[i:i + 5]).encode() for i in range(len(w) - 4)]
mhs = MinHash.bulk((shingles(t) for t in texts), num_perm=128)
lsh = MinHashLSH(threshold=0.8, num_perm=128)
with lsh.insertion_session() as s:
    for i, m in enumerate(mhs):
        s.insert(i, m)
pairs = set()
for i, m in enumerate(mhs):
    for j in lsh.query(m):
        if j != i:
            pairs.add((min(i, j), max(i, j)))
with open(out, "wb") as f:
    f.write(orjson.dumps(sorted(pairs)))
"""


def run_datasketch(corpus: Path, workdir: Path) -> Run:
    out = workdir / "datasketch.pairs.json"
    secs, rss, rc = _timed([sys.executable, "-c", DATASKETCH, str(corpus), str(out)],
                           stdin=subprocess.DEVNULL)
    if rc != 0:
        sys.exit(f"bench: datasketch failed ({rc}); pip install datasketch")
    return Run("datasketch", secs, rss, [tuple(p) for p in orjson.loads(out.read_bytes())])


# --------------------------------------------------------------------------- scoring


def score(run: Run, family: list[int], texts: list[str]) -> dict:
    planted = [(i, f) for i, f in enumerate(family) if f != i]
    if run.groups is not None:
        keeper = lambda i: run.groups.get(i, i)  # noqa: E731
        found = sum(1 for c, o in planted if keeper(c) == keeper(o))
    else:
        ps = {(min(a, b), max(a, b)) for a, b in run.pairs}
        found = sum(1 for c, o in planted if (min(c, o), max(c, o)) in ps)
    correct = same = lenient = 0
    for a, b in run.pairs:
        if family[a] == family[b]:
            same += 1
            correct += 1
            lenient += 1
        else:
            wa, wb = _words(texts[a]), _words(texts[b])
            if within_edits(wa, wb):
                correct += 1
                lenient += 1
            elif within_edits(wa, wb, 3, 0.2):
                lenient += 1
    n = len(run.pairs)
    return {"name": run.name, "seconds": run.seconds, "peak_rss_mb": run.peak_rss / 2**20,
            "reported": n, "planted_found": found, "planted": len(planted),
            "recall": found / max(len(planted), 1), "precision": correct / max(n, 1),
            "precision_lenient": lenient / max(n, 1),
            "precision_planted_only": same / max(n, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--plant", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"bench: {args.data} is absent (the shared datasets).")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xpkit-bench-select-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.build_only:
        _, family, _ = build_corpus(workdir, args.data, args.records, args.plant, args.seed,
                                    log)
        (workdir / "family.json").write_text(json.dumps(family))
        return 0
    try:
        # The corpus is built in its own process: the contenders are then started from a
        # small parent (a child's peak RSS counts what it inherits before exec).
        subprocess.run([sys.executable, __file__, "--build-only", "--records",
                        str(args.records), "--plant", str(args.plant), "--seed", str(args.seed),
                        "--data", str(args.data), "--workdir", str(workdir)], check=True)
        corpus = workdir / "corpus.jsonl"
        family = json.loads((workdir / "family.json").read_text())
        with open(corpus, "rb") as f:
            texts = [orjson.loads(line)["text"] for line in f]
        results = []
        for runner in (run_xpkit, run_datasketch):
            run = runner(corpus, workdir)
            log(f"{run.name}: {run.seconds:.1f}s, peak RSS {run.peak_rss / 2**20:.0f} MB, "
                f"{len(run.pairs):,} pairs reported")
            results.append(score(run, family, texts))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    x, d = results
    print(f"near-duplicate detection, {args.records:,} real-text records "
          f"({x['planted']:,} planted small-edit copies)")
    print("precision: reported pairs within max(2 words, 10%) word edits (strict), within "
          "max(3, 20%) (lenient), or planted pairs only")
    print(f"{'':12}{'recall':>9}{'strict':>9}{'lenient':>9}{'planted':>9}{'time s':>9}"
          f"{'peak RSS MB':>13}{'pairs':>9}")
    for r in results:
        print(f"{r['name']:12}{r['recall']:9.1%}{r['precision']:9.2%}"
              f"{r['precision_lenient']:9.2%}{r['precision_planted_only']:9.2%}"
              f"{r['seconds']:9.1f}{r['peak_rss_mb']:13.0f}{r['reported']:9,}")
    print(f"ratios xpkit/datasketch: time {x['seconds'] / d['seconds']:.2f}x, peak RSS "
          f"{x['peak_rss_mb'] / d['peak_rss_mb']:.2f}x, recall "
          f"{x['recall'] / max(d['recall'], 1e-9):.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"records": args.records, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
