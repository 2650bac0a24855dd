"""Scorers on real data (GSM8K, MATH-500) and the judge on the real bundled model.

The GSM8K checks reconcile the ``numeric`` scorer with sources that do not use it: the
``is_correct`` labels OpenAI published with its model solutions, and a plain regex over the
lines where the final answer is unambiguous.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from xpkit.core.scoring import Score, ScoreItem, ScorerContext, get_scorer

CONFIGS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
# Correct counts stated in shared/data/gsm8k/SOURCE.md (of 1,319 each).
UPSTREAM_CORRECT = {"6b_finetuning": 286, "6b_verification": 515, "175b_finetuning": 458,
                    "175b_verification": 742}


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def numeric(pairs: list[tuple[str, str]], **params) -> list[Score]:
    return get_scorer("numeric").score([ScoreItem(a, r, {}) for a, r in pairs],
                                       ScorerContext(params=params))


def verdicts_match_labels(rows: list[dict]) -> dict[str, int]:
    correct = {}
    for config in CONFIGS:
        scores = numeric([(r[config]["solution"], r["ground_truth"]) for r in rows])
        labels = [r[config]["is_correct"] for r in rows]
        mismatched = [(i, s.detail) for i, (s, label) in enumerate(zip(scores, labels,
                                                                      strict=True))
                      if s.passed is not label]
        assert mismatched == [], (config, mismatched[:5])
        correct[config] = sum(labels)
    return correct


def test_numeric_agrees_with_the_labels_of_the_shipped_gsm8k_sample():
    rows = read_jsonl(REPO / "examples" / "data" / "gsm8k_model_solutions_sample.jsonl")
    assert len(rows) == 30
    correct = verdicts_match_labels(rows)
    assert 0 < sum(correct.values()) < 4 * 30  # both verdicts occur


@pytest.mark.real_data
def test_numeric_agrees_with_every_upstream_gsm8k_label(shared_data):
    rows = read_jsonl(shared_data / "gsm8k" / "example_model_solutions.jsonl.gz")
    assert len(rows) == 1319
    assert verdicts_match_labels(rows) == UPSTREAM_CORRECT


FINAL_LINE = re.compile(r"A: (-?\d+)")


@pytest.mark.real_data
def test_numeric_accuracy_equals_a_regex_count_where_the_answer_is_unambiguous(shared_data):
    """On solutions whose last line is exactly ``A: <integer>``, count the right ones with
    a regex and compare with the scorer's count."""
    rows = read_jsonl(shared_data / "gsm8k" / "example_model_solutions.jsonl.gz")
    for config in CONFIGS:
        subset, expected = [], 0
        for r in rows:
            got = FINAL_LINE.fullmatch(r[config]["solution"].strip().splitlines()[-1])
            want = FINAL_LINE.fullmatch(r["ground_truth"].strip().splitlines()[-1])
            if got and want:
                subset.append((r[config]["solution"], r["ground_truth"]))
                expected += int(got[1]) == int(want[1])
        assert len(subset) > 1100  # most lines are of this form
        scores = numeric(subset)
        assert sum(s.passed for s in scores) == expected, config
        assert all(s.value is not None for s in scores)


@pytest.mark.real_data
def test_gsm8k_references_match_their_own_answer_however_it_is_written(shared_data):
    rows = read_jsonl(shared_data / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    forms = ["{n}", "The answer is {n}.", "So she pays ${c} in total.", "#### {c}",
             "It is {n} dollars", "Therefore the total is $\\boxed{{{c}}}$.", "{c} units"]
    pairs, wrong = [], []
    for r in rows:
        n = int(r["answer"].split("####")[-1].strip().replace(",", ""))
        for form in forms:
            pairs.append((form.format(n=n, c=f"{n:,}"), r["answer"]))
        wrong.append((f"The answer is {n + 1:,}.", r["answer"]))
    scores = numeric(pairs)
    failed = [(p[0], s.detail) for p, s in zip(pairs, scores, strict=True) if not s.passed]
    assert failed == []
    assert not any(s.passed for s in numeric(wrong))
    # Negative and four-digit references are in the set: the reformatting was not trivial.
    assert any(a.startswith("-") for a, _ in pairs) and any("," in a for a, _ in pairs)


@pytest.mark.real_data
def test_math500_solutions_box_the_stated_answer(shared_data):
    """Every MATH-500 solution's ``\\boxed{}`` answer is equivalent to the ``answer`` field
    (fractions, degrees, units, intervals, matrices ... normalized the same way), and an
    answer is almost never equivalent to another problem's."""
    rows = read_jsonl(shared_data / "math500" / "test.jsonl")
    assert len(rows) == 500
    scorer, ctx = get_scorer("math"), ScorerContext()
    same = scorer.score([ScoreItem(r["solution"], r["answer"], r) for r in rows], ctx)
    assert [(r["unique_id"], s.detail) for r, s in zip(rows, same, strict=True)
            if not s.passed] == []
    shifted = [(r["answer"], rows[i - 1]["answer"]) for i, r in enumerate(rows)]
    others = scorer.score([ScoreItem(a, b, {}) for a, b in shifted], ctx)
    coincidences = {(a, b) for (a, b), s in zip(shifted, others, strict=True)
                    if s.passed and a != b}
    assert coincidences <= {("5", "x=5"), ("x=5", "5")}  # "x = 5" means 5


@pytest.mark.model
def test_judge_with_the_real_model_returns_a_score_for_each_item():
    items = [
        ScoreItem("Janet sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = $18.", "18",
                  {}, task="Janet's ducks lay 16 eggs a day. She eats 3 and bakes with 4. "
                            "She sells the rest at $2 each. How much does she make?"),
        ScoreItem("The capital of France is Berlin.", "Paris", {},
                  task="What is the capital of France?"),
        ScoreItem("def add(a, b):\n    return a + b", None, {},
                  task="Write a Python function that adds two numbers."),
    ]
    ctx = ScorerContext(model="default")
    out = get_scorer("judge").score(items, ctx)
    assert len(out) == 3
    for s in out:
        assert s.error is None and s.value is not None, s.error
        assert 0.0 <= s.value <= 1.0 and isinstance(s.passed, bool)
        assert re.match(r"judge: [1-5] of 1-5: ", s.detail)
    assert ctx.llm().stats.model_calls >= 3
