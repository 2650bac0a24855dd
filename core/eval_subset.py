"""Evaluation-subset selection: predict a full-benchmark score from a few items, and say how well.

Given a matrix of per-item results for many models (correct 0/1, partial credit, or a
win/preference probability in [0, 1]), choose ``n`` items and a way to predict a model's
full-benchmark score (its mean over all items) from its results on those items alone; then
measure the error of that prediction on held-out models against random subsets of the same
size.

- **Anchor points** (tinyBenchmarks: Polo et al. 2024, "tinyBenchmarks: evaluating LLMs with
  fewer examples", ICML; after Vivek et al. 2024, "Anchor Points: Benchmarking Models with
  Much Fewer Examples"). Each item is represented by its vector of results across the
  *training* models; items are clustered (k-means), the item nearest each cluster's centre is
  its anchor, and an anchor's weight is its cluster's share of the items. A new model's
  predicted score is the weighted mean of its anchor results (``method="anchor"``,
  ``estimator="weighted"``, ``cluster_cap=None`` is the paper's recipe).
  ``method="anchor-irt"`` clusters the items' IRT parameters instead (the paper's "IRT
  embeddings").
- Two changes make anchors hold up on binary benchmarks, measured on AlpacaEval 1.0 (where
  the paper's recipe is worse than random subsets from 50 items up) and 2.0; both are on by
  default and can be turned off. ``cluster_cap=1.0``: clusters hold at most ``items / n``
  items (rounded up), so no single anchor carries a large share of the score (many items
  that every training model gets right form one big cluster, and one anchor item is a noisy
  stand-in for it on a new model). ``estimator="calibrated"``: the weighted estimate minus
  its mean error on the training models. A fixed subset errs in the same direction for
  every model (the item nearest a centre of 0/1 vectors is a consensus item, easier or
  harder than the cluster it stands for), and the training models measure that shared
  error.
- **p-IRT and gp-IRT** (same paper). A multidimensional two-parameter IRT model with a
  per-model level, ``P(model l gets item i) = sigmoid(theta_l . alpha_i + gamma_l -
  beta_i)``, is fitted to the training models (MAP with Gaussian priors, alternating batched
  Newton steps; fractional results enter the Bernoulli likelihood as soft labels). A new
  model's ability is fitted on the subset; p-IRT predicts its score as its observed subset
  results plus the IRT probabilities of the other items; gp-IRT mixes the two,
  ``lam * calibrated + (1 - lam) * pirt``, with the paper's heuristic
  ``lam = b^2 / (b^2 + s^2)`` (``b^2``: p-IRT's mean squared error, ``s^2``: the anchor
  estimate's), both measured by cross-validation over the training models.
- **Item features** (Scales++: Bean et al. 2025, "Scales++: Compute Efficient Evaluation
  Subset Selection with Cognitive Scales Embeddings"). Selection from what an item *is*
  rather than from how models fared on it: ``method="anchor-features"`` clusters given item
  embeddings or feature vectors, so the selection needs no training models.
- **Random** subsets (``method="random"``, and the baseline of every run): ``n`` items drawn
  uniformly, the score predicted as their plain mean, over ``repeats`` draws.

Missing cells (NaN) are allowed: a model's true score is its mean over the items it has, and
its prediction uses only the subset items it has (weights renormalised). Everything is numpy
and deterministic for a seed; 805 items x 58 models takes a fraction of a second with the
default anchor method (a few seconds with gp-IRT, which fits four IRT models).
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpkit.core.errors import InputError, UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ESTIMATORS", "LAYOUTS", "METHODS", "CorrectnessMatrix", "ModelPrediction",
           "SubsetResult", "eval_subset", "load_matrix", "matrix_from_records"]

METHODS = ("anchor", "anchor-irt", "anchor-features", "random")
ESTIMATORS = ("calibrated", "weighted", "pirt", "gpirt")
LAYOUTS = ("auto", "long", "items", "models")
# Field names tried, in order, when a field is not named (dotted paths reach nested fields).
ITEM_FIELDS = ("item", "item_id", "task_id", "question_id", "id", "task")
MODEL_FIELDS = ("model", "model_name", "generator")
VALUE_FIELDS = ("correct", "score", "value", "preference", "outcome.score",
                "outcome.success", "outcome.reward")
_TRUE = frozenset({"true", "yes", "y", "t"})
_FALSE = frozenset({"false", "no", "n", "f"})
_TOL = 1e-9

# IRT defaults: a few latent dimensions suit tens of training models; the priors keep the
# fit identifiable (theta's scale) and stable on items every model gets right or wrong.
IRT_DIM = 2
IRT_PRIOR_THETA = 1.0
IRT_PRIOR_ALPHA = 1.0
IRT_PRIOR_BETA = 3.0
IRT_PRIOR_GAMMA = 3.0
IRT_MAX_STEP = 1.0
GPIRT_FOLDS = 3
CAPACITY_ITERS = 10


# --------------------------------------------------------------------------- the matrix


@dataclass
class CorrectnessMatrix:
    """Per-item results: ``values[m, i]`` is model ``models[m]`` on item ``items[i]``.

    Values are floats in [0, 1] (correct 0/1, partial credit, a win probability); NaN means
    the model has no result for the item. ``meta`` says where the matrix came from.
    """

    models: list[str]
    items: list[str]
    values: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import numpy as np

        self.models = [str(m) for m in self.models]
        self.items = [str(i) for i in self.items]
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != (len(self.models), len(self.items)):
            raise UsageError(f"Matrix values have shape {self.values.shape}, expected "
                             f"({len(self.models)} models, {len(self.items)} items).")
        for what, names in (("model", self.models), ("item", self.items)):
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise UsageError(f"Matrix has the {what} {dup!r} more than once.")
        known = ~np.isnan(self.values)
        for what, names, axis in (("model", self.models, 1), ("item", self.items, 0)):
            empty = np.flatnonzero(~known.any(axis=axis)) if self.values.size else []
            if len(empty):
                raise UsageError(f"Matrix {what} {names[empty[0]]!r} has no result at all; "
                                 "drop it.")
        bad = known & ((self.values < -_TOL) | (self.values > 1 + _TOL))
        if bad.any():
            m, i = (int(v[0]) for v in np.nonzero(bad))
            raise UsageError(f"Matrix value {self.values[m, i]!r} (model {self.models[m]!r}, "
                             f"item {self.items[i]!r}) is outside [0, 1]; rescale it "
                             "(value_range=(low, high) when loading).")
        self.values = np.clip(self.values, 0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.models), len(self.items)

    def scores(self) -> np.ndarray:
        """Each model's full score: its mean over the items it has (NaN when it has none)."""
        import numpy as np

        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmean(self.values, axis=1) if self.values.size else np.full(
                len(self.models), np.nan)


def _parse_value(raw: Any) -> float | str | None:
    """A cell as a float, ``None`` when blank, or an error string when it is not a number."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        return None if isinstance(raw, float) and math.isnan(raw) else float(raw)
    if isinstance(raw, str):
        s = raw.strip()
        if not s or s.lower() in ("nan", "null", "none", "na"):
            return None
        low = s.lower()
        if low in _TRUE:
            return 1.0
        if low in _FALSE:
            return 0.0
        try:
            v = float(s)
        except ValueError:
            return "not a number"
        return None if math.isnan(v) else v
    return "not a number"


def _show(raw: Any, limit: int = 40) -> str:
    s = repr(raw)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _first_present(record: dict[str, Any], names: Iterable[str]) -> str | None:
    from xpkit.core.pool import get_path

    return next((n for n in names if get_path(record, n) is not None), None)


class _Cells:
    """Accumulates (model, item, value) cells; repeated cells are averaged (several attempts)."""

    def __init__(self) -> None:
        self.models: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.m: list[int] = []
        self.i: list[int] = []
        self.v: list[float] = []

    def add(self, model: str, item: str, value: float) -> None:
        self.m.append(self.models.setdefault(model, len(self.models)))
        self.i.append(self.items.setdefault(item, len(self.items)))
        self.v.append(value)

    def matrix(self, meta: dict[str, Any]) -> CorrectnessMatrix:
        import numpy as np

        shape = (len(self.models), len(self.items))
        total = np.zeros(shape)
        count = np.zeros(shape)
        m, i = np.asarray(self.m, np.int64), np.asarray(self.i, np.int64)
        np.add.at(total, (m, i), np.asarray(self.v, np.float64))
        np.add.at(count, (m, i), 1.0)
        with np.errstate(invalid="ignore"):
            values = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        meta["cells"] = int((count > 0).sum())
        meta["repeated_cells"] = int((count > 1).sum())
        meta["missing_cells"] = int((count == 0).sum())
        return CorrectnessMatrix(list(self.models), list(self.items), values, meta)


def matrix_from_records(
    records: Iterable[tuple[Any, ...]],
    *,
    layout: str = "auto",
    model_field: str | None = None,
    item_field: str | None = None,
    value_field: str | None = None,
    value_range: tuple[float, float] | None = None,
    missing_values: Sequence[float] = (),
) -> CorrectnessMatrix:
    """A matrix from ``(file, line, record[, unit])`` tuples (``unit``: how ``line`` counts,
    ``line`` by default, ``row`` for Parquet); ``load_matrix`` documents the layouts."""
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}.")
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise UsageError(f"value_range ({lo:g}, {hi:g}): the high end must be above the "
                             "low end.")
    else:
        lo, hi = 0.0, 1.0
    span = hi - lo
    missing = {float(v) for v in missing_values}
    cells = _Cells()
    # Wide layouts: a column with no number anywhere is metadata (text, a dataset name) and is
    # skipped; a column with numbers and one non-number is an error at that cell.
    first_bad: dict[str, tuple[str, int, str, Any]] = {}
    numeric_cols: set[str] = set()
    resolved: dict[str, str | None] = {}
    chosen = layout
    rows = 0

    def convert(raw: Any, file: str, line: int, unit: str, fname: str,
                parsed: float | str | None = None) -> float | None:
        v = _parse_value(raw) if parsed is None else parsed
        if isinstance(v, str):
            raise InputError(f"{file}, {unit} {line}, field {fname}: {_show(raw)} is not a "
                             "number (expected 0/1, true/false or a score).",
                             file=file, line=line, field=fname)
        if v is None or v in missing:
            return None
        scaled = (v - lo) / span
        if scaled < -_TOL or scaled > 1 + _TOL:
            hint = ("rescale with --value-range LOW,HIGH, e.g. 1,2 for AlpacaEval "
                    "preferences" if value_range is None
                    else f"it is outside --value-range {lo:g},{hi:g}")
            raise InputError(f"{file}, {unit} {line}, field {fname}: value {v:g} is outside "
                             f"[0, 1]; {hint}.", file=file, line=line, field=fname)
        return min(1.0, max(0.0, scaled))

    def raise_first_bad(col: str) -> None:
        """A column with numbers: its first non-number is an error, reported where it was."""
        f0, l0, u0, r0 = first_bad[col]
        convert(r0, f0, l0, u0, col)

    from xpkit.core.pool import get_path

    for file, line, rec, *rest in records:
        rows += 1
        unit = rest[0] if rest else "line"
        if chosen == "auto" or not resolved:
            mf = model_field or _first_present(rec, MODEL_FIELDS)
            itf = item_field or _first_present(rec, ITEM_FIELDS)
            vf = value_field or _first_present(rec, VALUE_FIELDS) or next(
                (f for f in VALUE_FIELDS if f.split(".")[0] in rec), None)
            has = {k: f is not None and get_path(rec, f) is not None
                   for k, f in (("model", mf), ("item", itf))}
            if chosen == "auto":
                if has["model"] and has["item"]:
                    chosen = "long"
                elif has["model"] and not has["item"]:
                    chosen = "models"
                elif has["item"] and not has["model"]:
                    chosen = "items"
                else:
                    keys = ", ".join(list(rec)[:8]) + (", ..." if len(rec) > 8 else "")
                    raise UsageError(
                        f"{file}, {unit} {line}: cannot tell the matrix layout from the fields "
                        f"({keys}); name them (model_field, item_field, value_field) or set "
                        "layout to long (model, item, value per row), items (one row per "
                        "item, a column per model) or models (one row per model, a column per "
                        "item).")
            resolved = {"model": mf, "item": itf, "value": vf}
            need = {"long": ("model", "item", "value"), "models": ("model",),
                    "items": ("item",)}[chosen]
            for key in need:
                if resolved[key] is None:
                    tried = {"model": MODEL_FIELDS, "item": ITEM_FIELDS,
                             "value": VALUE_FIELDS}[key]
                    raise UsageError(f"{file}, {unit} {line}: no {key} field (tried "
                                     f"{', '.join(tried)}); name it with {key}_field.")
        if chosen == "long":
            names = {k: str(resolved[k]) for k in ("model", "item", "value")}
            got = {k: get_path(rec, f) for k, f in names.items()}
            for k in ("model", "item"):
                if got[k] is None or got[k] == "":
                    raise InputError(f"{file}, {unit} {line}: the {k} field {names[k]!r} is "
                                     "missing or empty.", file=file, line=line, field=names[k])
            v = convert(got["value"], file, line, unit, names["value"])
            if v is not None:
                cells.add(str(got["model"]), str(got["item"]), v)
            continue
        key_field = str(resolved["model" if chosen == "models" else "item"])
        key = get_path(rec, key_field)
        if key is None or key == "":
            raise InputError(f"{file}, {unit} {line}: the {key_field!r} field is missing or "
                             "empty.", file=file, line=line, field=key_field)
        for col, raw in rec.items():
            if col == key_field:
                continue
            parsed = _parse_value(raw)
            if isinstance(parsed, str):
                first_bad.setdefault(col, (file, line, unit, raw))
                continue
            if parsed is None:
                continue
            numeric_cols.add(col)
            if col in first_bad:
                raise_first_bad(col)
            v = convert(raw, file, line, unit, col, parsed)
            if v is None:
                continue
            if chosen == "models":
                cells.add(str(key), col, v)
            else:
                cells.add(col, str(key), v)
    for col in sorted(numeric_cols & set(first_bad)):
        raise_first_bad(col)
    if not cells.v:
        what = {"long": "value", "models": "item column", "items": "model column"}.get(
            chosen, "value")
        raise UsageError(f"No results found in {rows} record(s): no numeric {what} "
                         f"(layout {chosen}).")
    meta = {"layout": chosen, "rows": rows,
            "fields": {k: v for k, v in resolved.items()
                       if v is not None and (chosen == "long" or k != "value")},
            "skipped_columns": sorted(set(first_bad) - numeric_cols)}
    if value_range is not None:
        meta["value_range"] = [lo, hi]
    return cells.matrix(meta)


def load_matrix(
    inputs: Sequence[str],
    *,
    layout: str = "auto",
    model_field: str | None = None,
    item_field: str | None = None,
    value_field: str | None = None,
    value_range: tuple[float, float] | None = None,
    missing_values: Sequence[float] = (),
) -> CorrectnessMatrix:
    """Read a results matrix from files or globs (.jsonl, .json, .csv, .parquet, optionally
    .gz/.zst, or ``-`` for stdin) through ``xpkit.core.io``.

    Layouts (``layout="auto"`` decides from the first record):

    - ``long``: one row per (model, item) result, e.g. ``{"model": "m1", "item": "q7",
      "correct": 1}`` or ingested episodes (``model``, ``task``, ``outcome.score``). Fields
      default to the first present of ``MODEL_FIELDS``, ``ITEM_FIELDS``, ``VALUE_FIELDS``
      (dotted paths allowed). Repeated (model, item) rows are averaged.
    - ``items``: one row per item, the ``item_field`` column holds its id and every other
      column is a model (``item,gpt4,claude-2,...``).
    - ``models``: one row per model, the ``model_field`` column holds its name and every other
      column is an item (AlpacaEval's ``model,item_000,...,item_804``).

    In the wide layouts a column without a single number (instruction text, a dataset name)
    is skipped and listed in ``meta["skipped_columns"]``. Cells are numbers, booleans or
    true/false/yes/no; blank, null and NaN are missing, as is any value in
    ``missing_values`` (compared before rescaling). ``value_range=(low, high)`` maps values
    linearly onto [0, 1] (AlpacaEval preferences: ``(1, 2)``); without it a value outside
    [0, 1] is an error naming the file, line and field.
    """
    from xpkit.core.io import read_records

    def rows() -> Iterable[tuple[str, int, dict[str, Any], str]]:
        for batch in read_records(inputs):
            for row in batch:
                if row.error is not None or row.value is None:
                    raise InputError(f"{row.file}, {row.unit} {row.line}: {row.error}",
                                     file=row.file, line=row.line, field=row.field)
                yield row.file, row.line, row.value, row.unit

    matrix = matrix_from_records(rows(), layout=layout, model_field=model_field,
                                 item_field=item_field, value_field=value_field,
                                 value_range=value_range, missing_values=missing_values)
    matrix.meta["inputs"] = list(inputs)
    return matrix


# --------------------------------------------------------------------------- results


@dataclass
class ModelPrediction:
    """A held-out model's true full score and the score predicted from the subset."""

    model: str
    true: float
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted - self.true


@dataclass
class SubsetResult:
    """The chosen subset, how to weight it, and how well it predicted held-out models.

    ``items``/``weights``: the subset in anchor order, weights summing to 1 (a cluster's
    share of the items; uniform for random). ``members[j]`` counts the items anchor ``j``
    stands for. ``mae`` is the mean absolute error of the method on the held-out models
    (None without held-out models); ``mae_random_mean``/``mae_random_std`` the same for
    ``repeats`` random subsets of the same size (plain mean), ``mae_random_runs`` each draw.
    Scores are fractions in [0, 1] (the mean item value), not percentages.
    """

    method: str
    estimator: str
    n: int
    seed: int
    repeats: int
    n_items: int
    items: list[str]
    weights: list[float]
    members: list[int]
    train_models: list[str]
    held_out_models: list[str]
    predictions: list[ModelPrediction]
    mae: float | None
    mae_random_mean: float | None
    mae_random_std: float | None
    mae_random_runs: list[float]
    lam: float | None = None
    offset: float = 0.0
    cluster_cap: float | None = None
    seconds: float = 0.0
    _predictor: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    _all_items: list[str] = field(default_factory=list, repr=False)

    @property
    def max_abs_error(self) -> float | None:
        return max((abs(p.error) for p in self.predictions), default=None)

    def predict(self, results: Mapping[str, float | None]) -> float:
        """Predict a new model's full score from its results on the subset items.

        ``results`` maps item id to a value in [0, 1] (rescaled like the matrix); items
        outside the subset are ignored, and subset items it lacks are left out (the weights
        of the rest are renormalised; IRT abilities are fitted on the rest).
        """
        import numpy as np

        index = {it: j for j, it in enumerate(self._all_items)}
        row = np.full((1, len(self._all_items)), np.nan)
        known = 0
        for item in self.items:
            v = results.get(item)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                if not -_TOL <= float(v) <= 1 + _TOL:
                    raise UsageError(f"Result {v!r} for item {item!r} is outside [0, 1].")
                row[0, index[item]] = float(v)
                known += 1
        if known == 0:
            raise UsageError(f"None of the {len(self.items)} subset items has a result; "
                             "evaluate the model on the subset first.")
        assert self._predictor is not None
        return float(self._predictor(row)[0])

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per subset item: ``item``, ``weight``, ``members``, ``rank`` (1 = heaviest)."""
        order = sorted(range(len(self.items)), key=lambda j: (-self.weights[j], j))
        rank = {j: r + 1 for r, j in enumerate(order)}
        return [{"item": it, "weight": w, "members": m, "rank": rank[j]}
                for j, (it, w, m) in enumerate(zip(self.items, self.weights, self.members,
                                                   strict=True))]

    def to_summary(self) -> dict[str, Any]:
        """A JSON-ready summary.

        Keys: ``method, estimator, n, n_items, n_models, n_train, n_held_out, seed, repeats,
        cluster_cap, mae, max_abs_error, mae_random_mean, mae_random_std, mae_random_runs,
        error_ratio`` (mae / mae_random_mean), ``offset`` (the calibration subtracted),
        ``lambda`` (gp-IRT's mix, else None), ``seconds``, ``held_out`` (model names),
        ``subset`` (``[{item, weight, members}]``) and ``predictions`` (``[{model, true,
        predicted, error}]``). Scores and errors are fractions (0.0123 = 1.23 points).
        """
        ratio = (self.mae / self.mae_random_mean
                 if self.mae is not None and self.mae_random_mean else None)
        return {
            "method": self.method,
            "estimator": self.estimator,
            "n": self.n,
            "n_items": self.n_items,
            "n_models": len(self.train_models) + len(self.held_out_models),
            "n_train": len(self.train_models),
            "n_held_out": len(self.held_out_models),
            "seed": self.seed,
            "repeats": self.repeats,
            "cluster_cap": self.cluster_cap,
            "mae": self.mae,
            "max_abs_error": self.max_abs_error,
            "mae_random_mean": self.mae_random_mean,
            "mae_random_std": self.mae_random_std,
            "mae_random_runs": list(self.mae_random_runs),
            "error_ratio": ratio,
            "offset": self.offset,
            "lambda": self.lam,
            "seconds": round(self.seconds, 4),
            "held_out": list(self.held_out_models),
            "subset": [{"item": it, "weight": w, "members": m}
                       for it, w, m in zip(self.items, self.weights, self.members, strict=True)],
            "predictions": [{"model": p.model, "true": p.true, "predicted": p.predicted,
                             "error": p.error} for p in self.predictions],
        }


# --------------------------------------------------------------------------- selection


def _sqdist(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``x`` and of ``c``."""
    import numpy as np

    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    d = x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    best = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = best.sum()
        if total > 0:
            j = int(np.searchsorted(np.cumsum(best), rng.random() * total, side="right"))
            j = min(j, n - 1)
        else:  # fewer distinct points than clusters: any point not chosen yet
            j = int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
        chosen.append(j)
        np.minimum(best, ((x - x[j]) ** 2).sum(1), out=best)
    return x[chosen].copy()


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 3,
            iters: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; the centres of the best of ``n_init`` runs."""
    import numpy as np

    x_sq = (x * x).sum(1)
    rows = np.arange(x.shape[0])
    best_c, best_inertia = None, math.inf
    for _ in range(n_init):
        c = _kmeanspp(x, k, rng)
        labels = None
        for _ in range(iters):
            d = _sqdist(x, c, x_sq)
            new = d.argmin(1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=k)
            # Cluster sums as one sparse-free product: (k x items) one-hot times x.
            onehot = np.zeros((k, x.shape[0]))
            onehot[labels, rows] = 1.0
            sums = onehot @ x
            full = counts > 0
            c[full] = sums[full] / counts[full, None]
            empty = np.flatnonzero(~full)
            if empty.size:  # re-seed an empty cluster at the worst-served point
                far = np.argsort(-d[rows, labels], kind="stable")
                c[empty] = x[far[:empty.size]]
        inertia = float(_sqdist(x, c, x_sq).min(1).sum())
        if inertia < best_inertia - 1e-12:
            best_c, best_inertia = c, inertia
    assert best_c is not None
    return best_c


def _capacity_labels(d: np.ndarray, cap: int) -> np.ndarray:
    """Assign items (rows of ``d``, squared distances to centres) to centres holding at most
    ``cap`` items each, greedily: the items with most to lose by not getting their nearest
    centre choose first. Every centre ends up with at least one item."""
    import numpy as np

    n_items, k = d.shape
    left = np.full(k, cap)
    label = np.empty(n_items, np.int64)
    two = np.partition(d, 1, axis=1)[:, :2] if k > 1 else np.c_[d, d]
    for i in np.argsort(two[:, 0] - two[:, 1], kind="stable"):
        j = int(np.argmin(np.where(left > 0, d[i], np.inf)))
        label[i] = j
        left[j] -= 1
    counts = np.bincount(label, minlength=k)
    for j in np.flatnonzero(counts == 0):  # a centre nobody chose takes its nearest spare item
        spare = np.flatnonzero(counts[label] > 1)
        i = int(spare[np.argmin(d[spare, j])])
        counts[label[i]] -= 1
        label[i], counts[j] = j, 1
    return label


def _anchors(x: np.ndarray, n: int, rng: np.random.Generator, cap: float | None = 1.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Anchor items and, for every item, the index of the anchor it joins.

    ``cap=None`` is tinyBenchmarks' rule: k-means, the anchor of a cluster is the item nearest
    its centre (a centre whose nearest item is taken gets its next nearest), every item joins
    its nearest anchor. With ``cap`` a cluster holds at most ``ceil(cap * items / n)`` items
    (Lloyd steps with a capacity-constrained assignment, started from the k-means centres),
    and its anchor is its member nearest the centre. Unconstrained clusters put one item in
    charge of a large share of the score when many items look alike (easy items everyone gets
    right), which costs more in variance on new models than the clustering gains.
    """
    import numpy as np

    n_items = x.shape[0]
    if n >= n_items:
        idx = np.arange(n_items)
        return idx, idx.copy()
    centres = _kmeans(x, n, rng)
    if cap is not None:
        limit = max(1, math.ceil(cap * n_items / n))
        x_sq = (x * x).sum(1)
        label = None
        for _ in range(CAPACITY_ITERS):
            d = _sqdist(x, centres, x_sq)
            new = _capacity_labels(d, limit)
            if label is not None and np.array_equal(new, label):
                break
            label = new
            sums = np.zeros_like(centres)
            np.add.at(sums, label, x)
            centres = sums / np.bincount(label, minlength=n)[:, None]
        assert label is not None
        d = _sqdist(x, centres, x_sq)
        anchors = np.empty(n, np.int64)
        for j in range(n):
            members = np.flatnonzero(label == j)
            anchors[j] = members[np.argmin(d[members, j])]
        return anchors, label
    d = _sqdist(centres, x)
    taken = np.zeros(n_items, bool)
    anchors = np.empty(n, np.int64)
    # Tighter centres choose first, so a contested item goes to the centre it fits best.
    for c in np.argsort(d.min(1), kind="stable"):
        order = np.argsort(d[c], kind="stable")
        j = int(order[~taken[order]][0])
        anchors[c] = j
        taken[j] = True
    label = _sqdist(x, x[anchors]).argmin(1)
    label[anchors] = np.arange(n)
    return anchors, label


def _impute(y: np.ndarray) -> np.ndarray:
    """Missing cells filled with the item's mean over the models that have it (else 0.5)."""
    import numpy as np

    known = ~np.isnan(y)
    if known.all():
        return y
    count = known.sum(0)
    col = np.where(count > 0, np.where(known, y, 0.0).sum(0) / np.maximum(count, 1), 0.5)
    return np.where(known, y, col[None, :])


# --------------------------------------------------------------------------- IRT


def _sigmoid(z: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


def _newton_step(params: np.ndarray, feats: np.ndarray, offset: np.ndarray, y: np.ndarray,
                 obs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """One Newton step for many independent ridge-logistic problems at once.

    Row ``r`` of ``params`` has logits ``feats @ params[r] + offset[r]`` against soft labels
    ``y[r]`` (cells where ``obs`` is False do not count) and a Gaussian prior of precision
    ``prior``. Hessians are built with one matrix product, steps are norm-clipped so a flat
    likelihood cannot throw a row far away.
    """
    import numpy as np

    k = feats.shape[1]
    p = _sigmoid(params @ feats.T + offset)
    g = ((p - y) * obs) @ feats + params * prior[None, :]
    outer = (feats[:, :, None] * feats[:, None, :]).reshape(feats.shape[0], k * k)
    h = ((p * (1 - p) * obs) @ outer).reshape(-1, k, k) + np.diag(prior)[None, :, :]
    step = np.linalg.solve(h, g[..., None])[..., 0]
    norm = np.linalg.norm(step, axis=1, keepdims=True)
    return params - step * np.minimum(1.0, IRT_MAX_STEP / np.maximum(norm, 1e-300))


@dataclass
class _Irt:
    """Item parameters of ``P(l, i) = sigmoid(theta_l . alpha_i + gamma_l - beta_i)``.

    ``gamma_l`` is a model's overall level (a Rasch term beside the latent dimensions), so a
    fitted ability reproduces the mean of the results it was fitted on.
    """

    alpha: np.ndarray  # (items, dim)
    beta: np.ndarray  # (items,)

    def item_feats(self) -> np.ndarray:
        import numpy as np

        return np.c_[self.alpha, np.ones(self.alpha.shape[0])]

    def prob(self, ability: np.ndarray) -> np.ndarray:
        """Probabilities for abilities ``(models, dim + 1)`` (theta then gamma), every item."""
        return _sigmoid(ability @ self.item_feats().T - self.beta[None, :])

    def ability(self, y: np.ndarray, cols: np.ndarray, iters: int = 50) -> np.ndarray:
        """MAP ability of each row of ``y`` (NaN = unseen) from its results on ``cols``."""
        import numpy as np

        feats = self.item_feats()[cols]
        ys = y[:, cols]
        obs = ~np.isnan(ys)
        ys = np.where(obs, ys, 0.0)
        offset = np.broadcast_to(-self.beta[cols][None, :], ys.shape)
        prior = _ability_prior(feats.shape[1] - 1)
        u = np.zeros((y.shape[0], feats.shape[1]))
        for _ in range(iters):
            new = _newton_step(u, feats, offset, ys, obs, prior)
            done = np.abs(new - u).max() < 1e-8
            u = new
            if done:
                break
        return u


def _ability_prior(dim: int) -> np.ndarray:
    import numpy as np

    return np.r_[np.full(dim, 1 / IRT_PRIOR_THETA**2), 1 / IRT_PRIOR_GAMMA**2]


def _fit_irt(y: np.ndarray, dim: int = IRT_DIM, iters: int = 80) -> tuple[_Irt, np.ndarray]:
    """MAP fit of the multidimensional 2PL model to ``y`` (models x items, NaN = missing).

    Alternating batched Newton steps: every model's ability given the items, then every
    item's (alpha, beta) given the abilities; each is a small ridge-logistic problem.
    Initialised from the SVD of the centred results, so the fit is deterministic.
    """
    import numpy as np

    n_models, n_items = y.shape
    obs = ~np.isnan(y)
    y0 = np.where(obs, y, 0.0)
    filled = _impute(y)
    mean = filled.mean(0)
    level = filled.mean(1)
    u, s, vt = np.linalg.svd(filled - mean[None, :] - (level - level.mean())[:, None],
                             full_matrices=False)
    k = min(dim, s.size)
    scale = math.sqrt(max(n_models, 1))
    theta = np.zeros((n_models, dim))
    alpha = np.zeros((n_items, dim))
    theta[:, :k] = u[:, :k] * scale
    alpha[:, :k] = (vt[:k].T * s[None, :k]) / scale * 4.0  # logit slope at p = 1/2
    lv = np.clip(level, 0.02, 0.98)
    gamma = np.log(lv / (1 - lv)) - math.log(lv.mean() / (1 - lv.mean()))
    m = np.clip(mean, 0.02, 0.98)
    beta = -np.log(m / (1 - m))
    ab = np.c_[theta, gamma]
    items = np.c_[alpha, beta]
    prior_a = _ability_prior(dim)
    prior_i = np.r_[np.full(dim, 1 / IRT_PRIOR_ALPHA**2), 1 / IRT_PRIOR_BETA**2]
    obs_t, y0_t = obs.T, y0.T
    for _ in range(iters):
        feats_i = np.c_[items[:, :dim], np.ones(n_items)]
        new_ab = _newton_step(ab, feats_i, np.broadcast_to(-items[None, :, dim], y.shape),
                              y0, obs, prior_a)
        feats_m = np.c_[new_ab[:, :dim], -np.ones(n_models)]
        new_items = _newton_step(items, feats_m,
                                 np.broadcast_to(new_ab[None, :, dim], obs_t.shape),
                                 y0_t, obs_t, prior_i)
        moved = max(np.abs(new_ab - ab).max(), np.abs(new_items - items).max())
        ab, items = new_ab, new_items
        if moved < 1e-5:
            break
    return _Irt(items[:, :dim].copy(), items[:, dim].copy()), ab


# --------------------------------------------------------------------------- estimators


def _weighted(y: np.ndarray, cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of each row's subset results, renormalised over the cells it has."""
    import numpy as np

    ys = y[:, cols]
    obs = ~np.isnan(ys)
    num = (np.where(obs, ys, 0.0) * w[None, :]).sum(1)
    den = (obs * w[None, :]).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _pirt(y: np.ndarray, cols: np.ndarray, irt: _Irt, scope: np.ndarray | None
          ) -> np.ndarray:
    """p-IRT: a row's seen results plus the IRT probabilities of the items it was not seen on.

    ``scope`` (rows x items, bool) are the items each row's full score is over (the items it
    has in the matrix); ``None`` means all items.
    """
    import numpy as np

    p = irt.prob(irt.ability(y, cols))
    seen = np.zeros(y.shape, bool)
    seen[:, cols] = True
    seen &= ~np.isnan(y)
    filled = np.where(seen, np.nan_to_num(y), p)
    scope = np.ones(y.shape, bool) if scope is None else scope
    return (filled * scope).sum(1) / np.maximum(scope.sum(1), 1)


def _mae(pred: np.ndarray, true: np.ndarray) -> float:
    import numpy as np

    return float(np.mean(np.abs(pred - true))) if true.size else math.nan


@dataclass
class _Plan:
    """A chosen subset and everything its estimator needs (fitted on the training models)."""

    cols: np.ndarray  # subset item indices (anchor order)
    weights: np.ndarray  # sum to 1
    members: np.ndarray
    irt: _Irt | None = None
    offset: float = 0.0  # mean error of the weighted estimate on the training models
    lam: float | None = None

    def predict(self, estimator: str, y: np.ndarray, scope: np.ndarray | None) -> np.ndarray:
        import numpy as np

        weighted = _weighted(y, self.cols, self.weights)
        if estimator == "weighted":
            return weighted
        calibrated = np.clip(weighted - self.offset, 0.0, 1.0)
        if estimator == "calibrated":
            return calibrated
        assert self.irt is not None
        pirt = _pirt(y, self.cols, self.irt, scope)
        if estimator == "pirt":
            return pirt
        lam = 0.5 if self.lam is None else self.lam
        return lam * calibrated + (1 - lam) * pirt


def _features_array(features: Any, items: list[str]) -> np.ndarray:
    import numpy as np

    if isinstance(features, Mapping):
        absent = [it for it in items if it not in features]
        if absent:
            raise UsageError(f"features: no vector for {len(absent)} item(s), e.g. "
                             f"{absent[0]!r}; give one per matrix item.")
        arr = np.asarray([features[it] for it in items], np.float64)
    else:
        arr = np.asarray(features, np.float64)
    if arr.ndim != 2 or arr.shape[0] != len(items):
        raise UsageError(f"features: expected one vector per item ({len(items)} rows), got "
                         f"shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise UsageError("features: vectors contain NaN or infinite values.")
    return arr


def _select(method: str, y_train: np.ndarray, n: int, rng: np.random.Generator,
            feats: np.ndarray | None, irt: _Irt | None, cap: float | None) -> _Plan:
    import numpy as np

    n_items = y_train.shape[1]
    if method == "random":
        cols = np.sort(rng.choice(n_items, size=n, replace=False))
        return _Plan(cols, np.full(n, 1.0 / n), np.ones(n, np.int64))
    if method == "anchor":
        x = _impute(y_train).T
    elif method == "anchor-irt":
        assert irt is not None
        x = np.c_[irt.alpha, irt.beta]
    else:
        assert feats is not None
        x = feats
    cols, label = _anchors(np.ascontiguousarray(x, np.float64), n, rng, cap)
    members = np.bincount(label, minlength=n)
    return _Plan(cols, members / n_items, members)


def _plan(method: str, estimator: str, y_train: np.ndarray, n: int, seed: list[int],
          feats: np.ndarray | None, cap: float | None, *, tune: bool = True) -> _Plan:
    """Select the subset on the training models and fit what ``estimator`` needs."""
    import numpy as np

    irt = None
    if method == "anchor-irt" or estimator in ("pirt", "gpirt"):
        irt, _ = _fit_irt(y_train)
    plan = _select(method, y_train, n, np.random.default_rng(seed), feats, irt, cap)
    plan.irt = irt
    if y_train.shape[0] and estimator != "weighted":
        # A fixed subset errs the same way for every model (its anchors nearest the k-means
        # centres over-represent consensus items, a random subset is a little easier or
        # harder than the whole): the training models measure that shared error.
        with np.errstate(invalid="ignore"):
            err = _weighted(y_train, plan.cols, plan.weights) - np.nanmean(y_train, axis=1)
        plan.offset = float(np.nanmean(err)) if np.isfinite(err).any() else 0.0
    if estimator == "gpirt" and tune:
        plan.lam = _gpirt_lambda(method, y_train, n, seed, feats, cap)
    return plan


def _gpirt_lambda(method: str, y_train: np.ndarray, n: int, seed: list[int],
                  feats: np.ndarray | None, cap: float | None) -> float:
    """gp-IRT's mixing weight ``b^2 / (b^2 + s^2)``: ``b^2`` the p-IRT estimate's mean squared
    error and ``s^2`` the calibrated anchor estimate's, by cross-validation over training
    models (the subset and the IRT model refitted without each fold)."""
    import numpy as np

    n_models = y_train.shape[0]
    folds = min(GPIRT_FOLDS, n_models)
    if folds < 2:
        return 0.5
    order = np.random.default_rng([*seed, 7]).permutation(n_models)
    err_a: list[np.ndarray] = []
    err_p: list[np.ndarray] = []
    for f in range(folds):
        val = order[f::folds]
        plan = _plan(method, "gpirt", y_train[np.setdiff1d(order, val)], n,
                     [*seed, 11, f], feats, cap, tune=False)
        yv = y_train[val]
        with np.errstate(invalid="ignore"):
            true = np.nanmean(yv, axis=1)
        err_a.append(plan.predict("calibrated", yv, ~np.isnan(yv)) - true)
        err_p.append(plan.predict("pirt", yv, ~np.isnan(yv)) - true)
    s2 = float(np.nanmean(np.concatenate(err_a) ** 2))
    b2 = float(np.nanmean(np.concatenate(err_p) ** 2))
    return b2 / (b2 + s2) if b2 + s2 > 0 else 0.5


def _split(models: list[str], held_out: float | Sequence[str], rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    n_models = len(models)
    if isinstance(held_out, str):
        held_out = [held_out]
    if isinstance(held_out, int | float):
        frac = float(held_out)
        if not 0.0 <= frac < 1.0:
            raise UsageError(f"held_out {held_out}: a fraction of the models must be in "
                             "[0, 1); or name the held-out models.")
        k = round(frac * n_models)
        if frac > 0:
            k = min(max(k, 1), n_models - 1)
        perm = rng.permutation(n_models)
        test = np.sort(perm[:k])
    else:
        index = {m: j for j, m in enumerate(models)}
        unknown = [m for m in held_out if m not in index]
        if unknown:
            close = difflib.get_close_matches(unknown[0], models, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"held_out: no model named {unknown[0]!r} in the matrix{hint}.")
        test = np.array(sorted({index[m] for m in held_out}), np.int64)
    train = np.setdiff1d(np.arange(n_models), test)
    return train, test


def eval_subset(
    matrix: CorrectnessMatrix,
    *,
    n: int,
    method: str = "anchor",
    estimator: str = "calibrated",
    held_out: float | Sequence[str] = 0.2,
    repeats: int = 10,
    seed: int = 0,
    features: np.ndarray | Mapping[str, Sequence[float]] | None = None,
    cluster_cap: float | None = 1.0,
) -> SubsetResult:
    """Choose ``n`` items of ``matrix`` and measure how well they predict full scores.

    ``method``: ``anchor`` (cluster the items' result vectors across training models),
    ``anchor-irt`` (cluster their IRT parameters), ``anchor-features`` (cluster ``features``:
    one vector per item, an array aligned with ``matrix.items`` or a mapping item id ->
    vector) or ``random``. ``estimator``: ``calibrated`` (anchor weights, minus the mean
    error they make on the training models), ``weighted`` (anchor weights as they are;
    uniform for random), ``pirt`` or ``gpirt`` (IRT fitted on the training models).
    ``cluster_cap``: the most items a cluster may hold, in multiples of ``items / n``
    (``None``: unconstrained k-means, the paper's recipe). ``held_out``: the fraction of
    models held out at random (drawn with ``seed``), or their names; ``0`` selects with every
    model and measures nothing (``mae`` is None): the way to choose the subset to use once a
    held-out run has measured its error. The random baseline (``repeats`` draws of ``n``
    items, plain mean, on the same held-out models) is always reported beside the method.
    Bad arguments raise ``UsageError``.
    """
    import numpy as np

    started = time.perf_counter()
    if method not in METHODS:
        raise UsageError(f"method {method!r}: choose one of {', '.join(METHODS)}.")
    if estimator not in ESTIMATORS:
        raise UsageError(f"estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}.")
    n_models, n_items = matrix.shape
    if n_items == 0 or n_models == 0:
        raise UsageError("The matrix is empty: it needs at least one model and one item.")
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise UsageError(f"n {n!r}: the subset size must be a whole number of items.")
    n = int(n)
    if n < 1:
        raise UsageError(f"n {n}: the subset needs at least 1 item.")
    if n > n_items:
        raise UsageError(f"n {n}: the matrix has only {n_items} items; choose n <= {n_items}.")
    if repeats < 1:
        raise UsageError(f"repeats {repeats}: at least 1 random draw is needed.")
    if cluster_cap is not None and not cluster_cap >= 1.0:
        raise UsageError(f"cluster_cap {cluster_cap}: must be at least 1 (equal clusters), or "
                         "None for unconstrained k-means.")
    feats = None
    if method == "anchor-features":
        if features is None:
            raise UsageError("method anchor-features needs features: one vector per item.")
        feats = _features_array(features, matrix.items)
    elif features is not None:
        feats = _features_array(features, matrix.items)  # validated; unused by this method

    # Independent streams for the split, the selection and the random baseline, so that
    # changing one (say, repeats) never changes the others.
    split_seed, select_seed, random_seed = [seed, 0], [seed, 1], [seed, 2]
    train, test = _split(matrix.models, held_out, np.random.default_rng(split_seed))
    y = matrix.values
    y_train, y_test = y[train], y[test]
    needs_train = method in ("anchor", "anchor-irt") or estimator != "weighted"
    if needs_train and train.size == 0:
        raise UsageError(f"method {method} with estimator {estimator} learns from training "
                         "models, and held_out leaves none; hold out fewer models.")

    plan = _plan(method, estimator, y_train, n, select_seed, feats, cluster_cap)

    scope_test = ~np.isnan(y_test)
    with np.errstate(invalid="ignore"):
        true = np.nanmean(y_test, axis=1) if test.size else np.zeros(0)
    predictions: list[ModelPrediction] = []
    mae = mae_mean = mae_std = None
    runs: list[float] = []
    if test.size:
        pred = plan.predict(estimator, y_test, scope_test)
        predictions = [ModelPrediction(matrix.models[m], float(t), float(p))
                       for m, t, p in zip(test, true, pred, strict=True)]
        mae = _mae(pred, true)
        rng_r = np.random.default_rng(random_seed)
        for _ in range(repeats):
            cols = np.sort(rng_r.choice(n_items, size=n, replace=False))
            runs.append(_mae(_weighted(y_test, cols, np.full(n, 1.0 / n)), true))
        mae_mean = float(np.mean(runs))
        mae_std = float(np.std(runs))

    def predictor(rows: np.ndarray) -> np.ndarray:
        return plan.predict(estimator, rows, None)

    return SubsetResult(
        method=method, estimator=estimator, n=n, seed=seed, repeats=repeats, n_items=n_items,
        items=[matrix.items[j] for j in plan.cols],
        weights=[float(w) for w in plan.weights],
        members=[int(m) for m in plan.members],
        train_models=[matrix.models[m] for m in train],
        held_out_models=[matrix.models[m] for m in test],
        predictions=predictions, mae=mae, mae_random_mean=mae_mean, mae_random_std=mae_std,
        mae_random_runs=runs, lam=plan.lam, offset=plan.offset, cluster_cap=cluster_cap,
        seconds=time.perf_counter() - started,
        _predictor=predictor, _all_items=list(matrix.items),
    )
