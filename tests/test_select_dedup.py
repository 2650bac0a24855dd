"""Exact and near-duplicate removal on real instruction pools (../shared/data)."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import orjson
import pytest

from xpkit.core.select import select_data

pytestmark = pytest.mark.real_data
WORD = re.compile(r"\w+")


def load_json(path: Path) -> list[dict]:
    with gzip.open(path) as f:
        return json.load(f)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def fates(report: Path) -> dict[int, dict]:
    """Report rows by input line."""
    out = {}
    for line in report.read_text().splitlines():
        row = json.loads(line)
        # Like the quarantine file, the position is named after its unit: line, item, row.
        out[row.get("line") or row.get("item") or row["row"]] = row
    return out


def kept_line(row: dict) -> int:
    return int(row["kept_at"].rsplit(":", 1)[1])


def levenshtein(a: list[str], b: list[str]) -> int:
    """Edit distance between two word lists, by the textbook dynamic programme."""
    prev = list(range(len(b) + 1))
    for i, u in enumerate(a, 1):
        cur = [i]
        for j, v in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (u != v)))
        prev = cur
    return prev[-1]


def word_edits_at_most(a: str, b: str, k: int) -> bool:
    """Word-token Levenshtein distance <= k (the test's notion of 'a few word edits')."""
    return levenshtein(WORD.findall(a.casefold()), WORD.findall(b.casefold())) <= k


def small_edit(text: str, rng: random.Random) -> str:
    w = text.split()
    if rng.random() < 0.5:
        del w[rng.randrange(len(w))]
    else:
        i, j = rng.sample(range(len(w)), 2)
        w[i], w[j] = w[j], w[i]
    return " ".join(w)


@pytest.fixture(scope="module")
def alpaca_9k(request) -> list[dict]:
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "alpagasus_selections/data/random/random_9k.json.gz"
    if not path.exists():
        pytest.skip(f"real datasets not available: {path} is absent")
    return load_json(path)


def test_planted_exact_duplicates_are_all_found(alpaca_9k, tmp_path):
    rng = random.Random(5)
    base = alpaca_9k[:1500]
    copies = []
    for i in rng.sample(range(len(base)), 120):
        r = dict(base[i])
        # Same text after normalisation: case and whitespace differ.
        r["instruction"] = "  " + r["instruction"].upper().replace(" ", "\t ")
        copies.append((i, r))
    pool = base + [r for _, r in copies]
    src = write_jsonl(tmp_path / "pool.jsonl", pool)
    report = tmp_path / "report.jsonl"
    s = select_data([str(src)], dedup="exact", report=str(report), sink=lambda _b: None)
    rows = fates(report)
    for k, (i, _) in enumerate(copies):
        row = rows[len(base) + k + 1]
        assert row["status"] == "duplicate", row
        assert kept_line(row) == i + 1  # the earlier original is the one kept
        assert row["similarity"] == 1.0
    assert s.exact_duplicates == 120 + sum(  # plus any exact duplicates the slice has itself
        1 for r in rows.values() if r["status"] == "duplicate" and r["line"] <= len(base))
    assert s.balanced and s.selected == len(pool) - s.duplicates


def test_llamafactory_demo_has_its_14_exact_duplicates(shared_data, tmp_path):
    src = shared_data / "llamafactory_demo_data/data/alpaca_en_demo.json.gz"
    report = tmp_path / "r.jsonl"
    s = select_data([str(src)], dedup="exact", report=str(report), sink=lambda _b: None)
    assert (s.items, s.exact_duplicates, s.selected) == (999, 14, 985)
    pool = load_json(src)
    for item, row in fates(report).items():
        if row["status"] == "duplicate":
            assert pool[item - 1] == pool[kept_line(row) - 1]


@pytest.fixture(scope="module")
def shared_data_module():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def plant_and_dedup(base: list[str], n: int, seed: int, tmp_path: Path
                    ) -> tuple[list[dict], dict[int, int], dict[int, dict]]:
    """``base`` plus ``n`` small-edit copies, deduplicated with the defaults; returns the
    pool, copy line -> original line, and the report rows by line."""
    rng = random.Random(seed)
    pool = [{"text": t} for t in base]
    planted = {}
    for i in rng.sample(range(len(base)), n):
        pool.append({"text": small_edit(base[i], rng)})
        planted[len(pool)] = i + 1
    src = write_jsonl(tmp_path / "pool.jsonl", pool)
    report = tmp_path / "report.jsonl"
    s = select_data([str(src)], format="map", mapping={"task": "text"}, dedup="near",
                    report=str(report), sink=lambda _b: None)
    assert s.balanced
    return pool, planted, fates(report)


def recall(planted: dict[int, int], rows: dict[int, dict]) -> float:
    def keeper(line: int) -> int:
        row = rows[line]
        return kept_line(row) if row["status"] == "duplicate" else line

    return sum(keeper(c) == keeper(o) for c, o in planted.items()) / len(planted)


def test_small_edits_of_short_claims_are_near_duplicates(shared_data_module, tmp_path):
    """FEVER claims (5-20 words, half of them 5-8): a dropped word or two swapped words is
    still found. The hardest case there is: dropping a long name from a five-word claim
    leaves a Jaccard similarity near 0.55 (measured 95-97% over three seeds)."""
    claims = []
    with gzip.open(shared_data_module / "fever_paper_dev/paper_dev.jsonl.gz", "rt") as f:
        for line in f:
            claims.append(json.loads(line)["claim"])
    base = [c for c in dict.fromkeys(claims) if len(c.split()) >= 5][:2500]
    _, planted, rows = plant_and_dedup(base, 300, 13, tmp_path)
    assert recall(planted, rows) >= 0.95


def test_small_edits_are_found_and_distinct_records_are_not_merged(shared_data_module,
                                                                   tmp_path):
    """HotpotQA questions (short, all distinct) and Alpaca instruction+answer texts."""
    d = shared_data_module
    with gzip.open(d / "hotpotqa_dev_simplified/hotpot_dev_v1_simplified.json.gz") as f:
        questions = [r["question"] for r in json.load(f)[:2000]]
    alpaca = [f"{r['instruction']} {r['input']} {r['output']}".strip()
              for r in load_json(d / "alpagasus_selections/data/filtered/claude_t45.json.gz")
              [:1500]]
    base = [t for t in dict.fromkeys(questions + alpaca) if len(t.split()) >= 5]
    pool, planted, rows = plant_and_dedup(base, 300, 12, tmp_path)
    assert recall(planted, rows) >= 0.95
    pairs = [(line, kept_line(r)) for line, r in rows.items() if r["status"] == "duplicate"]
    correct = 0
    for dup, kept in pairs:
        same_family = planted.get(dup, dup) == planted.get(kept, kept)
        a, b = pool[dup - 1]["text"], pool[kept - 1]["text"]
        if same_family or word_edits_at_most(a, b, max(2, len(b.split()) // 10)):
            correct += 1
    assert correct / len(pairs) >= 0.99, f"precision {correct}/{len(pairs)}"


def test_a_changed_number_is_not_a_near_duplicate_but_a_dropped_word_is(shared_data, tmp_path):
    qs = []
    with open(shared_data / "gsm8k/test.jsonl") as f:
        for line in f:
            qs.append(json.loads(line)["question"])
            if len(qs) >= 200:
                break
    rng = random.Random(2)
    pool = [{"text": q} for q in qs]
    changed, dropped = [], []
    for i, q in enumerate(qs[:60]):
        nums = re.findall(r"\d+", q)
        if not nums:
            continue
        n = rng.choice(nums)
        pool.append({"text": q.replace(n, str(int(n) + 7), 1)})  # a different problem
        changed.append(len(pool))
        words = q.split()
        k = next(j for j, w in enumerate(words) if not any(c.isdigit() for c in w))
        pool.append({"text": " ".join(words[:k] + words[k + 1:])})  # the same problem
        dropped.append((len(pool), i + 1))
    src = write_jsonl(tmp_path / "gsm.jsonl", pool)
    report = tmp_path / "r.jsonl"
    select_data([str(src)], format="map", mapping={"task": "text"}, dedup="near",
                report=str(report), sink=lambda _b: None)
    rows = fates(report)
    assert all(rows[c]["status"] == "selected" for c in changed)
    assert sum(rows[d]["status"] == "duplicate" and kept_line(rows[d]) == o
               for d, o in dropped) >= 0.95 * len(dropped)


def test_gpteacher_dedup_levels_agree_with_our_near_duplicates(shared_data, tmp_path):
    """GPTeacher Toolformer at two dedup levels: what the 0.9 level removed are near
    duplicates of records it kept (by that tool's own similarity). Deduplicating the answers
    (--text response: every prompt starts with the same 300-character tool header), most of
    what we drop that tool dropped too, and we find most of what it dropped."""
    base = shared_data / "gpteacher_toolformer_dedup/dataset_extensions/GPTeacher/Toolformer"
    full = load_json(base / "toolformer-dedupe-only-dataset.json.gz")
    kept9 = {(r["instruction"], r["input"], r["output"])
             for r in load_json(base / "toolformer-similarity-0.9-dataset.json.gz")}
    src = write_jsonl(tmp_path / "gt.jsonl", full)
    report = tmp_path / "r.jsonl"
    select_data([str(src)], text="response", dedup="near", report=str(report),
                sink=lambda _b: None)
    rows = fates(report)
    ours = {line for line, r in rows.items() if r["status"] == "duplicate"}
    theirs = {i + 1 for i, r in enumerate(full)
              if (r["instruction"], r["input"], r["output"]) not in kept9}
    both = len(ours & theirs)
    assert both / len(ours) >= 0.9, (both, len(ours))  # measured 0.94
    # Measured 0.75: theirs is looser, it also merges rewordings of these templated answers
    # ("The content of the artificial intelligence Wikipedia page is request(...)" / "The
    # content of the Wikipedia page on Artificial Intelligence is request(...)").
    assert both / len(theirs) >= 0.7, (both, len(theirs))


def test_kept_member_is_the_best_scored(tmp_path):
    text = "Explain why the sky is blue in two sentences for a child."
    pool = [{"task": text, "answer": "Because of air.", "success": False, "reward": 0},
            {"task": text, "answer": "Because of air.", "success": True, "reward": 1},
            {"task": text.replace("two", "2"), "answer": "Because of air.", "success": False,
             "reward": 0}]
    src = write_jsonl(tmp_path / "p.jsonl", pool)
    report = tmp_path / "r.jsonl"
    out: list[dict] = []
    select_data([str(src)], format="map", mapping={"task": "task", "answer": "answer",
                                                   "success": "success", "reward": "reward"},
                dedup="exact", report=str(report), sink=out.extend)
    assert [r["success"] for r in out] == [True, False]
    assert out[0]["_select"]["duplicates"] == 1
    assert fates(report)[1]["status"] == "duplicate" and kept_line(fates(report)[1]) == 2


# Real records (FEVER claims, GSM8K solution lines, Dolly and GPTeacher answers) that share
# most of their characters, so the shingle rules alone merge every pair. The first are a
# word dropped, replaced or two swapped, or spacing and punctuation; the others differ by
# three words or more in a short text: a different claim or sentence, not a near duplicate.
SAME = [
    ("Fidel Castro transferred his responsibilities to his brother.",
     "Fidel Castro transferred his responsibilities to brother."),
    ("The Cry of the Owl is based on the book by Patricia Highsmith.",
     "The Cry of the Owl is based on the book by Highsmith Patricia."),
    ("Here is a summary of the Battle of Waterloo: wikipedia('Battle of Waterloo').",
     "Here's a summary of the Battle of Waterloo: wikipedia('Battle of Waterloo')"),
    ("There are python('60 * 60 * 24') seconds in a day.",
     "There are python('60*60*24') seconds in a day."),
    ("Therefore, Mason eats 20 + 10 = <<20+10=30>>30 carrots a week.",
     "Therefore, Mason eats 20 + 10 = <<20+10=30>>30 carrots each week."),
]
APART = [
    ("The Cry of the Owl is based on the book The Hobbit.",
     "The Cry of the Owl is based on the book The Cry of the Owl."),
    ("Fist of Legend is a remake.", "Fist of Legend is a remake of Fist of Fury."),
    ("The Palace of Caserta is near Naples.", "Naples is near the Palace of Caserta."),
    ("He or she decided it was time to leave.", "We decided it was time to leave."),
    ("There are a total of 7 x 8 = <<7*8=56>>56 slices of pizza.",
     "There are 7 x 8 = <<7*8=56>>56 slices of pizza."),
    ("The debut album of a hip hop recording artist is Excuse My French.",
     "Excuse My French is the debut album of a hip hop recording artist."),
]


def near_pairs(texts: list[str], params) -> set[tuple[int, int]]:
    import numpy as np

    from xpkit.core.dedup import near_duplicates, normalize, signatures_for

    norm = [normalize(t) for t in texts]
    kept_of, _, _ = near_duplicates(signatures_for(norm, params), lambda idx: [
        norm[i] for i in idx], np.arange(len(norm)), np.ones(len(norm), bool), params)
    return {(int(k), i) for i, k in enumerate(kept_of.tolist()) if k >= 0}


def test_short_texts_a_few_words_apart_are_not_near_duplicates():
    from dataclasses import replace

    from xpkit.core.dedup import NearDupParams

    texts = [t for pair in SAME + APART for t in pair]
    same = {(2 * i, 2 * i + 1) for i in range(len(SAME))}
    apart = {(2 * i, 2 * i + 1) for i in range(len(SAME), len(SAME) + len(APART))}
    params = NearDupParams()
    assert near_pairs(texts, params) == same
    # Without the word-edit check the shingle rules merge them all.
    assert near_pairs(texts, replace(params, edit_check_words=0)) == same | apart


def test_word_edit_distance_is_levenshtein_over_words():
    from xpkit.core.dedup import word_edit_distance

    rng = random.Random(3)
    for _ in range(3000):
        a = [rng.choice("abcde") for _ in range(rng.randrange(90))]  # past 64 bits too
        b = ([w for w in a if rng.random() < 0.9] if rng.random() < 0.5 else
             [rng.choice("abcde") for _ in range(rng.randrange(90))])
        assert word_edit_distance(a, b) == levenshtein(a, b)
