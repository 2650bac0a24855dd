"""MinHash, LSH and Jaccard verification against direct computations (oracle tests)."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from xpkit.core.minhash import (
    MinHasher,
    candidate_probability,
    choose_bands,
    estimated_similarity,
    jaccard_pairs,
    lsh_candidates,
    normalize,
    shingle_hashes,
    word_sequences,
)

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "the quick brown fox jumped over the lazy dog",
    "a completely different sentence about data selection",
    "é accentuated text, ünïcödé and emoji 🙂 too",
    "ab",
    "",
    "the quick brown fox jumps over the lazy dog",
]


WORD = re.compile(rb"[0-9A-Za-z_\x80-\xff]+")


def grams(text: str, n: int) -> set[tuple[str, bytes]]:
    """The shingle set by definition: byte n-grams and words (runs of letters/digits)."""
    b = text.encode()
    if not b:
        return set()
    ngrams = {b} if len(b) < n else {b[i:i + n] for i in range(len(b) - n + 1)}
    return {("g", g) for g in ngrams} | {("w", w) for w in WORD.findall(b)}


@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_shingles_are_the_distinct_byte_ngrams(n):
    values, offsets = shingle_hashes(TEXTS, n)
    for i, t in enumerate(TEXTS):
        got = values[offsets[i]:offsets[i + 1]]
        assert len(got) == len(grams(t, n))  # distinct, one hash per n-gram (no collisions)
        assert np.all(np.diff(got.astype(np.int64)) > 0)  # sorted and distinct


def words_by_definition(text: str) -> tuple[list[bytes], list[bytes]]:
    """Words as written (whitespace-separated, trimmed to their first and last letter or
    digit when they have one) and runs of letters and digits."""
    written = []
    for token in text.encode().split():
        runs = list(WORD.finditer(token))
        written.append(token[runs[0].start():runs[-1].end()] if runs else token)
    return written, WORD.findall(text.encode())


@pytest.mark.parametrize("max_words", [None, 3])
def test_word_sequences_are_the_words_in_order(max_words):
    rng = random.Random(4)
    texts = [*TEXTS, "the week. (ip3) - =", "$<<2*2=4>>4 pages.", "4**3 and 4 ** 3",
             "it's its", "a\tb\nc  d"]
    texts += ["".join(rng.choice("ab .,'()-*\t") for _ in range(rng.randrange(30)))
              for _ in range(500)]
    (wv, wo), (rv, ro) = word_sequences(texts, max_words)
    ids: dict[bytes, int] = {}
    for i, t in enumerate(texts):
        written, runs = words_by_definition(t)
        if max_words is not None and len(written) > max_words:
            written, runs = [], []
        for got, want in ((wv[wo[i]:wo[i + 1]], written), (rv[ro[i]:ro[i + 1]], runs)):
            assert len(got) == len(want), t
            for g, w in zip(got.tolist(), want, strict=True):
                assert ids.setdefault(w, g) == g  # one hash per word, the same everywhere
    assert len(set(ids.values())) == len(ids)  # and no two words share one


def test_jaccard_pairs_match_python_sets():
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
             "kappa"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
             for _ in range(60)] + TEXTS
    values, offsets = shingle_hashes(texts, 3)
    pairs = np.array([(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))])
    got = jaccard_pairs(values, offsets, pairs, chunk=500)  # several chunks
    for (i, j), g in zip(pairs.tolist(), got.tolist(), strict=True):
        a, b = grams(texts[i], 3), grams(texts[j], 3)
        want = len(a & b) / len(a | b) if a | b else 1.0
        assert g == pytest.approx(want)


def test_minhash_estimates_jaccard_without_bias():
    rng = random.Random(1)
    base = [" ".join(rng.choice("abcdefghij") * rng.randrange(1, 4)
                     for _ in range(40)) for _ in range(300)]
    edited = []
    for t in base:
        w = t.split()
        del w[rng.randrange(len(w))]
        edited.append(" ".join(w))
    texts = base + edited
    values, offsets = shingle_hashes(texts, 3, distinct=False)
    sigs = MinHasher(128, seed=3).signatures(values, offsets)
    pairs = np.array([(i, i + 300) for i in range(300)] + [(i, (i + 1) % 300)
                                                            for i in range(300)])
    dv, do = shingle_hashes(texts, 3)
    true = jaccard_pairs(dv, do, pairs)
    est = estimated_similarity(sigs, pairs)
    err = est - true
    assert abs(err.mean()) < 0.01
    assert np.sqrt((err ** 2).mean()) < 1.5 * np.sqrt((true * (1 - true) / 128).mean()) + 0.01


def test_signatures_do_not_depend_on_batching_or_repeats():
    h = MinHasher(64, seed=5)
    whole = h.signatures(*shingle_hashes(TEXTS, 4, distinct=False))
    parts = np.concatenate([h.signatures(*shingle_hashes(TEXTS[i:i + 2], 4))
                            for i in range(0, len(TEXTS), 2)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole[0], whole[6])
    assert np.all(whole[5] == np.iinfo(np.uint32).max)  # empty text: no shingles


def test_banding_keeps_recall_at_the_threshold():
    for k in (64, 128):
        for t in (0.5, 0.7, 0.8, 0.9):
            b, r = choose_bands(k, t)
            assert b * r <= k
            assert candidate_probability(t - 0.05, b, r) >= 0.99


def test_lsh_finds_identical_and_similar_but_not_unrelated():
    texts = [normalize(t) for t in TEXTS[:4]] + [normalize(TEXTS[0])]
    sigs = MinHasher(128).signatures(*shingle_hashes(texts, 3, distinct=False))
    pairs = {tuple(p) for p in lsh_candidates(sigs, *choose_bands(128, 0.7)).tolist()}
    assert (0, 4) in pairs and (0, 1) in pairs
    assert (0, 2) not in pairs and (2, 3) not in pairs


def test_oversized_buckets_pair_neighbours_not_everyone():
    texts = ["same text"] * 200
    sigs = MinHasher(32).signatures(*shingle_hashes(texts, 3, distinct=False))
    pairs = lsh_candidates(sigs, 8, 4, max_bucket=16, window=3)
    assert 0 < len(pairs) <= 3 * 200  # sorted neighbourhood instead of 19,900 pairs
    # Still connected: a chain through the whole bucket.
    assert len({int(x) for x in pairs.ravel()}) == 200
