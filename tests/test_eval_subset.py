"""Evaluation-subset selection (tinyBenchmarks anchors, p-IRT/gp-IRT) and the matrix loader.

Synthetic matrices where the answer is known, then the real AlpacaEval matrices
(../shared/data/alpaca_eval: 58 models x 805 instructions).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from xpkit.core.errors import InputError, UsageError
from xpkit.core.eval_subset import (
    ESTIMATORS,
    CorrectnessMatrix,
    eval_subset,
    load_matrix,
)
from xpkit.core.io import RecordWriter

ALPACA = "alpaca_eval"
V2 = "preference_matrix_weighted_alpaca_eval_gpt4_turbo.csv"
V1 = "preference_matrix_alpaca_eval_gpt4.csv"
LEADERBOARD_V2 = "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"


def grouped(sizes: list[int], n_models: int = 30, seed: int = 0) -> CorrectnessMatrix:
    """Items in groups that share one 0/1 pattern across every model (held-out ones too)."""
    rng = np.random.default_rng(seed)
    cols = []
    for size in sizes:
        pattern = rng.random(n_models) < rng.uniform(0.2, 0.8)
        cols.append(np.repeat(pattern[:, None], size, axis=1))
    values = np.hstack(cols).astype(float)
    items = [f"g{g}_{k}" for g, size in enumerate(sizes) for k in range(size)]
    return CorrectnessMatrix([f"m{j}" for j in range(n_models)], items, values)


def group_of(item: str) -> str:
    return item.split("_")[0]


def irt_matrix(n_models: int = 120, n_items: int = 300, seed: int = 0,
               missing: float = 0.0) -> CorrectnessMatrix:
    """Binary results drawn from a 2-dimensional 2PL model (optionally with missing cells)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_models, 2))
    alpha = np.abs(rng.normal(1.0, 0.5, size=(n_items, 2)))
    beta = rng.normal(0.0, 1.5, size=n_items)
    p = 1 / (1 + np.exp(-(theta @ alpha.T - beta)))
    values = (rng.random(p.shape) < p).astype(float)
    if missing:
        values[rng.random(values.shape) < missing] = np.nan
        values[:, 0] = 1.0  # every model and item keeps at least one result
        values[0, :] = 0.0
    return CorrectnessMatrix([f"m{j}" for j in range(n_models)],
                             [f"i{j}" for j in range(n_items)], values)


# --------------------------------------------------------------------------- selection


def test_anchors_recover_equal_groups_of_duplicated_items() -> None:
    m = grouped([25, 25, 25, 25])
    r = eval_subset(m, n=4, held_out=0.2, seed=3)
    assert sorted(group_of(it) for it in r.items) == ["g0", "g1", "g2", "g3"]
    assert r.weights == pytest.approx([0.25] * 4)
    assert r.members == [25] * 4
    # Every item of a group behaves like its anchor for every model, so prediction is exact.
    assert r.mae == pytest.approx(0.0, abs=1e-12)
    assert r.offset == pytest.approx(0.0, abs=1e-12)
    assert r.mae_random_mean > 0.01


def test_unconstrained_anchors_weigh_groups_by_size() -> None:
    m = grouped([10, 20, 30, 40], seed=1)
    r = eval_subset(m, n=4, cluster_cap=None, estimator="weighted", seed=0)
    share = {group_of(it): w for it, w in zip(r.items, r.weights, strict=True)}
    assert share == pytest.approx({"g0": 0.1, "g1": 0.2, "g2": 0.3, "g3": 0.4})
    assert r.mae == pytest.approx(0.0, abs=1e-12)
    assert sum(r.members) == 100


def test_capped_clusters_split_a_big_group_instead_of_one_anchor_carrying_it() -> None:
    m = grouped([10, 10, 10, 70], seed=2)
    r = eval_subset(m, n=10, seed=0)  # cap 1.0: at most 10 items per anchor
    assert max(r.members) <= 10 and sum(r.members) == 100
    assert [group_of(it) for it in r.items].count("g3") == 7
    assert r.mae == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["anchor", "anchor-irt", "random"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_all_items_give_exact_scores(method: str, estimator: str) -> None:
    m = irt_matrix(n_models=40, n_items=60, seed=1, missing=0.05)
    r = eval_subset(m, n=60, method=method, estimator=estimator, seed=0)
    assert sorted(r.items) == sorted(m.items)
    assert r.mae == pytest.approx(0.0, abs=1e-12)
    assert r.mae_random_mean == pytest.approx(0.0, abs=1e-12)
    truth = dict(zip(m.models, m.scores(), strict=True))
    for p in r.predictions:
        assert p.predicted == pytest.approx(truth[p.model], abs=1e-12)


@pytest.mark.parametrize(("method", "estimator"), [
    ("anchor", "calibrated"), ("anchor", "gpirt"), ("random", "pirt"), ("random", "gpirt")])
def test_estimators_beat_random_on_irt_generated_data(method: str, estimator: str) -> None:
    m = irt_matrix()
    runs = [eval_subset(m, n=30, method=method, estimator=estimator, seed=s) for s in range(3)]
    assert np.mean([r.mae for r in runs]) < np.mean([r.mae_random_mean for r in runs])
    if estimator == "gpirt":
        assert all(0.0 <= r.lam <= 1.0 for r in runs)
    # The baseline depends on the seed only, never on the method.
    base = eval_subset(m, n=30, method="random", estimator="weighted", seed=0)
    assert runs[0].mae_random_runs == base.mae_random_runs


def test_anchor_features_select_from_item_vectors_without_training_models() -> None:
    m = grouped([20, 20, 20], n_models=12, seed=4)
    rng = np.random.default_rng(0)
    centres = {"g0": [0.0, 0.0], "g1": [10.0, 0.0], "g2": [0.0, 10.0]}
    feats = {it: np.array(centres[group_of(it)]) + rng.normal(0, 0.1, 2) for it in m.items}
    r = eval_subset(m, n=3, method="anchor-features", estimator="weighted",
                    features=feats, held_out=0.5)
    assert sorted(group_of(it) for it in r.items) == ["g0", "g1", "g2"]
    assert r.mae == pytest.approx(0.0, abs=1e-12)
    # Also as an array aligned with matrix.items.
    arr = np.array([feats[it] for it in m.items])
    again = eval_subset(m, n=3, method="anchor-features", estimator="weighted",
                        features=arr, held_out=0.5)
    assert again.items == r.items


def test_deterministic_for_a_seed_and_the_split_follows_it() -> None:
    m = irt_matrix(n_models=50, n_items=120, seed=2)
    a = eval_subset(m, n=20, seed=7).to_summary()
    b = eval_subset(m, n=20, seed=7).to_summary()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    c = eval_subset(m, n=20, seed=8)
    assert c.held_out_models != a["held_out"]
    # repeats changes the baseline only, never the split or the subset
    d = eval_subset(m, n=20, seed=7, repeats=3)
    assert d.items == [s["item"] for s in a["subset"]] and d.held_out_models == a["held_out"]
    assert len(d.mae_random_runs) == 3


def test_named_held_out_models_and_no_held_out() -> None:
    m = irt_matrix(n_models=30, n_items=80, seed=3)
    r = eval_subset(m, n=10, held_out=["m3", "m1"])
    assert r.held_out_models == ["m1", "m3"]
    assert len(r.train_models) == 28 and "m1" not in r.train_models
    assert [p.model for p in r.predictions] == ["m1", "m3"]

    full = eval_subset(m, n=10, held_out=0)
    assert full.mae is None and full.mae_random_mean is None and full.predictions == []
    assert len(full.train_models) == 30 and len(full.items) == 10
    s = full.to_summary()
    assert s["mae"] is None and s["n_held_out"] == 0


def test_predict_a_new_model_from_its_subset_results() -> None:
    m = irt_matrix(n_models=60, n_items=150, seed=5)
    for est in ("calibrated", "weighted", "gpirt"):
        r = eval_subset(m, n=25, estimator=est, seed=1)
        row = m.values[m.models.index(r.predictions[0].model)]
        results = {it: float(v) for it, v in zip(m.items, row, strict=True)}  # extra items ignored
        assert r.predict(results) == pytest.approx(r.predictions[0].predicted, abs=1e-9)
    with pytest.raises(UsageError, match="None of the 25 subset items has a result"):
        r.predict({})
    with pytest.raises(UsageError, match="outside \\[0, 1\\]"):
        r.predict({r.items[0]: 2.0})


def test_summary_keys_and_json() -> None:
    m = irt_matrix(n_models=30, n_items=60, seed=6)
    r = eval_subset(m, n=12, seed=0, repeats=4)
    s = r.to_summary()
    assert set(s) == {
        "method", "estimator", "n", "n_items", "n_models", "n_train", "n_held_out", "seed",
        "repeats", "cluster_cap", "mae", "max_abs_error", "mae_random_mean", "mae_random_std",
        "mae_random_runs", "error_ratio", "offset", "lambda", "seconds", "held_out", "subset",
        "predictions"}
    assert (s["method"], s["estimator"], s["n"], s["n_items"], s["n_models"]) == (
        "anchor", "calibrated", 12, 60, 30)
    assert s["n_train"] + s["n_held_out"] == 30 and s["n_held_out"] == 6
    assert len(s["subset"]) == 12 and sum(x["weight"] for x in s["subset"]) == pytest.approx(1)
    assert set(s["predictions"][0]) == {"model", "true", "predicted", "error"}
    assert s["mae_random_mean"] == pytest.approx(np.mean(s["mae_random_runs"]))
    assert s["error_ratio"] == pytest.approx(s["mae"] / s["mae_random_mean"])
    assert orjson.loads(orjson.dumps(s)) == s
    rows = r.to_rows()
    assert [x["item"] for x in rows] == r.items and sorted(x["rank"] for x in rows) == list(
        range(1, 13))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n 0: the subset needs at least 1 item."),
    ({"n": -3}, "n -3: the subset needs at least 1 item."),
    ({"n": 41}, "n 41: the matrix has only 40 items; choose n <= 40."),
    ({"n": 2.5}, "n 2.5: the subset size must be a whole number of items."),
    ({"n": 5, "method": "kmeans"},
     "method 'kmeans': choose one of anchor, anchor-irt, anchor-features, random."),
    ({"n": 5, "estimator": "mean"},
     "estimator 'mean': choose one of calibrated, weighted, pirt, gpirt."),
    ({"n": 5, "held_out": 1.0}, "held_out 1.0: a fraction of the models must be in [0, 1)"),
    ({"n": 5, "held_out": ["m1", "model-x"]}, "held_out: no model named 'model-x'"),
    ({"n": 5, "held_out": ["m77"]}, "did you mean"),
    ({"n": 5, "repeats": 0}, "repeats 0: at least 1 random draw is needed."),
    ({"n": 5, "cluster_cap": 0.5}, "cluster_cap 0.5: must be at least 1"),
    ({"n": 5, "method": "anchor-features"},
     "method anchor-features needs features: one vector per item."),
    ({"n": 5, "method": "anchor-features", "features": np.zeros((39, 2))},
     "features: expected one vector per item (40 rows), got shape (39, 2)."),
    ({"n": 5, "method": "anchor-features", "features": {"i0": [1.0]}},
     "features: no vector for 39 item(s), e.g. 'i1'"),
])
def test_bad_arguments_are_usage_errors(kwargs: dict, message: str) -> None:
    m = irt_matrix(n_models=20, n_items=40, seed=7)
    with pytest.raises(UsageError) as exc:
        eval_subset(m, **kwargs)
    assert message in str(exc.value)
    assert exc.value.exit_code == 2


def test_all_models_held_out_by_name_needs_a_training_model() -> None:
    m = irt_matrix(n_models=3, n_items=10, seed=8)
    with pytest.raises(UsageError, match="held_out leaves none"):
        eval_subset(m, n=3, held_out=["m0", "m1", "m2"])
    # The plain random subset needs no training model.
    r = eval_subset(m, n=3, method="random", estimator="weighted", held_out=["m0", "m1", "m2"])
    assert len(r.predictions) == 3


def test_matrix_validation() -> None:
    with pytest.raises(UsageError, match="outside \\[0, 1\\]"):
        CorrectnessMatrix(["a"], ["x", "y"], [[0.5, 1.5]])
    with pytest.raises(UsageError, match="shape \\(1, 3\\), expected \\(1 models, 2 items\\)"):
        CorrectnessMatrix(["a"], ["x", "y"], [[0.5, 1.0, 0.0]])
    with pytest.raises(UsageError, match="has the item 'x' more than once"):
        CorrectnessMatrix(["a"], ["x", "x"], [[0.5, 1.0]])
    with pytest.raises(UsageError, match="model 'b' has no result at all"):
        CorrectnessMatrix(["a", "b"], ["x"], [[1.0], [math.nan]])
    m = CorrectnessMatrix(["a", "b"], ["x", "y"], [[1, 0], [True, math.nan]])
    assert m.scores().tolist() == [0.5, 1.0]


# --------------------------------------------------------------------------- loading


def write(path: Path, records: list[dict]) -> str:
    with RecordWriter(str(path)) as w:
        w.write_many(records)
    return str(path)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_load_long_format(tmp_path: Path, ext: str) -> None:
    recs = [
        {"model": "m1", "item": "q1", "correct": 1}, {"model": "m1", "item": "q2", "correct": 0},
        {"model": "m2", "item": "q1", "correct": 0}, {"model": "m2", "item": "q2", "correct": 1},
        {"model": "m2", "item": "q2", "correct": 0},  # a second attempt: averaged
        {"model": "m3", "item": "q1", "correct": 1},  # m3 has no q2: missing
    ]
    m = load_matrix([write(tmp_path / f"long.{ext}", recs)])
    assert (m.models, m.items) == (["m1", "m2", "m3"], ["q1", "q2"])
    np.testing.assert_array_equal(m.values, [[1, 0], [0, 0.5], [1, np.nan]])
    assert m.meta["layout"] == "long"
    assert m.meta["fields"] == {"model": "model", "item": "item", "value": "correct"}
    assert (m.meta["repeated_cells"], m.meta["missing_cells"]) == (1, 1)


def test_load_long_format_named_and_nested_fields(tmp_path: Path) -> None:
    # Ingested episodes: model, task, outcome.score (booleans and strings also read).
    recs = [{"model": "a", "task": "t1", "outcome": {"score": True}},
            {"model": "a", "task": "t2", "outcome": {"score": None}},
            {"model": "b", "task": "t1", "outcome": {"score": "0.25"}},
            {"model": "b", "task": "t2", "outcome": {"score": "false"}}]
    m = load_matrix([write(tmp_path / "ep.jsonl", recs)])
    assert m.meta["fields"] == {"model": "model", "item": "task", "value": "outcome.score"}
    np.testing.assert_array_equal(m.values, [[1, np.nan], [0.25, 0]])
    recs2 = [{"who": "a", "qid": 1, "win": 1.5}, {"who": "b", "qid": 1, "win": 2}]
    m2 = load_matrix([write(tmp_path / "x.jsonl", recs2)], model_field="who", item_field="qid",
                     value_field="win", value_range=(1, 2))
    assert (m2.models, m2.items, m2.values.tolist()) == (["a", "b"], ["1"], [[0.5], [1.0]])


def test_load_wide_by_item_skips_text_columns(tmp_path: Path) -> None:
    p = tmp_path / "items.csv"
    p.write_text("item,dataset,instruction,gpt4,claude\n"
                 "i1,koala,Write a poem,1,0\n"
                 "i2,oasst,Sum 2+2,0.5,\n"
                 "i3,koala,Say hi,true,1\n")
    m = load_matrix([str(p)])
    assert m.meta["layout"] == "items"
    assert m.meta["skipped_columns"] == ["dataset", "instruction"]
    assert (m.models, m.items) == (["gpt4", "claude"], ["i1", "i2", "i3"])
    np.testing.assert_array_equal(m.values, [[1, 0.5, 1], [0, np.nan, 1]])


def test_load_wide_by_model_parquet_with_range_and_missing_codes(tmp_path: Path) -> None:
    recs = [{"model": "a", "q1": 2.0, "q2": 1.0, "q3": 0.0},
            {"model": "b", "q1": 1.5, "q2": None, "q3": 2.0}]
    m = load_matrix([write(tmp_path / "w.parquet", recs)], value_range=(1, 2),
                    missing_values=[0])
    assert m.meta["layout"] == "models"
    np.testing.assert_array_equal(m.values, [[1, 0, np.nan], [0.5, np.nan, 1]])


def test_load_errors_name_file_line_and_field(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_text("model,q1,q2\na,1,2\n")
    with pytest.raises(InputError) as exc:
        load_matrix([str(p)])
    assert str(exc.value) == (f"{p}, line 2, field q2: value 2 is outside [0, 1]; rescale with "
                              "--value-range LOW,HIGH, e.g. 1,2 for AlpacaEval preferences.")
    p.write_text("model,q1,q2\na,1,0\nb,0,oops\n")
    with pytest.raises(InputError, match="line 3, field q2: 'oops' is not a number"):
        load_matrix([str(p)])
    j = write(tmp_path / "l.jsonl", [{"model": "a", "item": "q", "correct": 1},
                                     {"model": "a", "correct": 0}])
    with pytest.raises(InputError, match="line 2: the item field 'item' is missing or empty"):
        load_matrix([j])
    k = write(tmp_path / "k.jsonl", [{"name": "a", "x": 1}])
    with pytest.raises(UsageError, match="cannot tell the matrix layout from the fields"):
        load_matrix([k])
    with pytest.raises(UsageError, match="layout 'wide': choose one of auto, long, items"):
        load_matrix([k], layout="wide")
    with pytest.raises(UsageError, match="value_range \\(2, 1\\)"):
        load_matrix([k], value_range=(2, 1))


# --------------------------------------------------------------------------- real data


@pytest.fixture
def alpaca_v2(shared_data: Path) -> CorrectnessMatrix:
    """AlpacaEval 2.0 preferences (1 = baseline wins .. 2 = model wins) rescaled to [0, 1]."""
    return load_matrix([str(shared_data / ALPACA / V2)], value_range=(1, 2))


@pytest.mark.real_data
def test_alpaca_eval_matrix_loads_and_reconciles_with_the_leaderboard(
        shared_data: Path, alpaca_v2: CorrectnessMatrix) -> None:
    m = alpaca_v2
    assert m.shape == (58, 805) and m.meta["layout"] == "models"
    assert m.meta["missing_cells"] == 10  # SOURCE.md: 6 models miss 1-3 items
    with open(shared_data / ALPACA / "items.csv") as f:
        assert m.items == [r["item"] for r in csv.DictReader(f)]
    with open(shared_data / ALPACA / LEADERBOARD_V2) as f:
        board = {r[""]: float(r["win_rate"]) for r in csv.DictReader(f)}
    scores = dict(zip(m.models, m.scores() * 100, strict=True))
    common = sorted(set(scores) & set(board))
    assert len(common) == 57
    # The leaderboard's win rate is the mean preference over the items a model has.
    assert max(abs(scores[k] - board[k]) for k in common) < 1e-3


@pytest.mark.real_data
def test_alpaca_eval_same_matrix_from_long_records(tmp_path: Path,
                                                   alpaca_v2: CorrectnessMatrix) -> None:
    m = alpaca_v2
    recs = [{"model": mod, "item": it, "preference": 1 + float(v)}
            for mod, row in zip(m.models, m.values, strict=True)
            for it, v in zip(m.items, row, strict=True) if not np.isnan(v)]
    long = load_matrix([write(tmp_path / "long.parquet", recs)], value_range=(1, 2))
    assert (long.models, long.items) == (m.models, m.items)
    np.testing.assert_allclose(long.values, m.values, atol=1e-12)


@pytest.mark.real_data
def test_alpaca_eval_all_items_give_exact_scores(alpaca_v2: CorrectnessMatrix) -> None:
    r = eval_subset(alpaca_v2, n=805, held_out=0.2, seed=0)
    truth = dict(zip(alpaca_v2.models, alpaca_v2.scores(), strict=True))
    assert len(r.predictions) == 12
    for p in r.predictions:
        assert p.predicted == pytest.approx(truth[p.model], abs=1e-12)
    assert r.mae == pytest.approx(0.0, abs=1e-12)


@pytest.mark.real_data
def test_alpaca_eval_anchors_beat_random_subsets(alpaca_v2: CorrectnessMatrix) -> None:
    """n = 100 of 805 items, 20% of the 58 models held out, five different splits."""
    anchor, random_mean, random_std = [], [], []
    for seed in range(5):
        r = eval_subset(alpaca_v2, n=100, held_out=0.2, repeats=10, seed=seed)
        anchor.append(r.mae)
        random_mean.append(r.mae_random_mean)
        random_std.append(r.mae_random_std)
        print(f"split {seed}: {len(r.held_out_models)} held-out models, anchor MAE "
              f"{100 * r.mae:.2f} points, random MAE {100 * r.mae_random_mean:.2f} "
              f"± {100 * r.mae_random_std:.2f} (10 draws), {r.seconds:.2f}s")
        assert len(r.items) == 100 and len(set(r.items)) == 100
        assert sum(r.weights) == pytest.approx(1.0)
    print(f"mean over splits: anchor {100 * np.mean(anchor):.2f} points, random "
          f"{100 * np.mean(random_mean):.2f} points")
    assert np.mean(anchor) < np.mean(random_mean)
    assert sum(a < b for a, b in zip(anchor, random_mean, strict=True)) >= 4
    assert np.mean(anchor) < 0.02  # tinyBenchmarks reports about 2% with 100 items


@pytest.mark.real_data
def test_alpaca_eval_1_binary_preferences_with_missing_codes(shared_data: Path) -> None:
    """AlpacaEval 1.0: 2 = model preferred, 1 = baseline, 1.5 = tie, 0 = no valid preference
    (read as missing, like the blanks). Mostly 0/1 after rescaling, where the paper's anchor
    recipe loses to random subsets; the defaults (capped clusters, calibration) must not."""
    path = shared_data / ALPACA / V1
    with open(path) as f:
        cells = [v for row in list(csv.reader(f))[1:] for v in row[1:]]
    m = load_matrix([str(path)], value_range=(1, 2), missing_values=[0])
    assert m.shape == (53, 805)
    assert m.meta["missing_cells"] == cells.count("") + 188  # SOURCE.md: 188 zeros
    known = m.values[~np.isnan(m.values)]
    assert set(np.unique(known)) == {0.0, 0.5, 1.0}
    anchor, rand = [], []
    for seed in range(5):
        r = eval_subset(m, n=100, seed=seed)
        anchor.append(r.mae)
        rand.append(r.mae_random_mean)
    print(f"AlpacaEval 1.0, n=100: anchor {100 * np.mean(anchor):.2f} points, random "
          f"{100 * np.mean(rand):.2f} points (mean over 5 splits)")
    assert np.mean(anchor) < np.mean(rand)
