"""Evaluation-subset selection on AlpacaEval: error of the predicted full score, anchors vs random.

For each subset size ``n`` and each of ``--splits`` random splits of the models (20% held
out, the rest select the subset and fit the estimators), every configuration predicts each
held-out model's full AlpacaEval win rate from its results on ``n`` of the 805 instructions.
The figure is the mean absolute error (MAE) over the held-out models, in win-rate points,
given as mean ± std over the splits; "random" is ``--repeats`` random subsets per split (the
plain mean of the subset), mean ± std over all draws. "wins" counts the splits where a
configuration beat that split's random mean. Time is per ``eval_subset`` call (selection,
fitting, predicting and the random baseline), on this shared 2-core machine.

Configurations (``xpkit.core.eval_subset.eval_subset`` arguments):

- ``default``: ``method="anchor", estimator="calibrated", cluster_cap=1.0``
- ``paper``: tinyBenchmarks' anchor recipe, ``estimator="weighted", cluster_cap=None``
- ``anchor-irt``: clusters of IRT item parameters, calibrated
- ``gp-irt``: default anchors with the gp-IRT estimator
- ``random+cal``: a random subset with the calibrated estimator

    python bench/eval_subset.py                      # AlpacaEval 2.0, 10 splits (~2-4 min)
    python bench/eval_subset.py --matrix 1.0 --configs default,paper
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
MATRICES = {
    "2.0": ("preference_matrix_weighted_alpaca_eval_gpt4_turbo.csv", ()),
    "1.0": ("preference_matrix_alpaca_eval_gpt4.csv", (0,)),  # 0 = no valid preference
}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"method": "anchor", "estimator": "calibrated"},
    "paper": {"method": "anchor", "estimator": "weighted", "cluster_cap": None},
    "anchor-irt": {"method": "anchor-irt", "estimator": "calibrated"},
    "gp-irt": {"method": "anchor", "estimator": "gpirt"},
    "random+cal": {"method": "random", "estimator": "calibrated"},
}


def pm(values: list[float]) -> str:
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def main(argv: list[str] | None = None) -> int:
    from xpkit.core.eval_subset import eval_subset, load_matrix

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--matrix", choices=[*MATRICES, "both"], default="2.0")
    ap.add_argument("--sizes", default="25,50,100,200")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    started = time.perf_counter()
    for version in (list(MATRICES) if args.matrix == "both" else [args.matrix]):
        name, missing = MATRICES[version]
        path = args.data / "alpaca_eval" / name
        if not path.is_file():
            print(f"{path} is absent; point --data at the shared data folder", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        m = load_matrix([str(path)], value_range=(1, 2), missing_values=missing)
        load_s = time.perf_counter() - t0
        n_models, n_items = m.shape
        print(f"\n## AlpacaEval {version}: {n_models} models x {n_items} items "
              f"(loaded in {load_s:.2f}s); {args.splits} splits holding out "
              f"{args.held_out:.0%} of the models; MAE in win-rate points\n")
        print("| n | config | MAE | random MAE | wins | time/call |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for n in sizes:
            for cfg in configs:
                maes: list[float] = []
                rand_runs: list[float] = []
                rand_means: list[float] = []
                secs: list[float] = []
                for seed in range(args.splits):
                    r = eval_subset(m, n=n, held_out=args.held_out, repeats=args.repeats,
                                    seed=seed, **CONFIGS[cfg])
                    assert r.mae is not None and r.mae_random_mean is not None
                    maes.append(r.mae)
                    rand_runs.extend(r.mae_random_runs)
                    rand_means.append(r.mae_random_mean)
                    secs.append(r.seconds)
                wins = sum(a < b for a, b in zip(maes, rand_means, strict=True))
                print(f"| {n} | {cfg} | {pm(maes)} | {pm(rand_runs)} | {wins}/{args.splits} "
                      f"| {statistics.fmean(secs):.2f}s |", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
