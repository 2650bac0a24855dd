"""Confidence intervals and paired significance tests for evaluation results.

- ``bootstrap_ci``: the percentile bootstrap (Efron & Tibshirani, 1993, "An Introduction to
  the Bootstrap") of a mean, resampling items with replacement.
- ``paired_test``: the paired sign-flip permutation test (Fisher's randomization test; for
  0/1 outcomes it is the exact McNemar / sign test on the discordant pairs), exact when the
  number of non-zero differences is small and Monte-Carlo otherwise, two-sided; with a
  paired-bootstrap interval of the mean difference. This is the test recommended for
  comparing systems on the same items (Dror et al., 2018, "The Hitchhiker's Guide to
  Testing Statistical Significance in NLP").

Everything is seeded, so a rerun reports the same figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
EXACT_LIMIT = 16  # non-zero differences up to which every sign pattern is enumerated
PERMUTATIONS = 20000


@dataclass
class Interval:
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class PairedResult:
    """The paired comparison of arm B against arm A on the same items (B - A)."""

    n: int
    mean_a: float
    mean_b: float
    diff: Interval
    p_value: float
    b_better: int  # items where B scored higher
    a_better: int
    method: str

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["diff"] = self.diff.to_dict()
        return out


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = RESAMPLES,
                 seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of the mean of ``values`` (NaN-free; may be empty)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    mean = float(x.mean())
    if n == 1 or np.all(x == x[0]):
        return Interval(mean, mean, mean, n, level)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(mean, float(low), float(high), n, level)


def paired_test(a: Sequence[float], b: Sequence[float], *, level: float = 0.95,
                seed: int = 0) -> PairedResult:
    """Two-sided paired sign-flip permutation test of mean(b - a) = 0.

    Exact (all 2^m sign patterns of the m non-zero differences) when m <= 16, else
    Monte-Carlo with 20,000 random sign patterns (add-one smoothed, so p is never 0).
    """
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError("paired samples must have the same length")
    d = xb - xa
    n = len(d)
    ci = bootstrap_ci(d, level=level, seed=seed)
    nz = d[d != 0]
    m = len(nz)
    if m == 0:
        return PairedResult(n, _mean(xa), _mean(xb), ci, 1.0, 0, 0, "exact")
    observed = abs(nz.sum())
    if m <= EXACT_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=m)))
        sums = np.abs(signs @ nz)
        p = float(np.mean(sums >= observed - 1e-12))
        method = "exact"
    else:
        rng = np.random.default_rng(seed)
        hits = 0
        done = 0
        chunk = max(1, 4_000_000 // m)
        while done < PERMUTATIONS:
            size = min(chunk, PERMUTATIONS - done)
            signs = rng.choice((1.0, -1.0), size=(size, m))
            hits += int(np.sum(np.abs(signs @ nz) >= observed - 1e-12))
            done += size
        p = (hits + 1) / (PERMUTATIONS + 1)
        method = f"monte-carlo ({PERMUTATIONS:,} sign flips)"
    return PairedResult(n, _mean(xa), _mean(xb), ci, min(1.0, p), int(np.sum(d > 0)),
                        int(np.sum(d < 0)), method)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")
