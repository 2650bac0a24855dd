"""The built-in scorers of ``xpkit evaluate``: text, numeric, math, verifier and judge.

Each scorer is reached through the registry (``get_scorer``) and its parameters through
``resolve_scorer_params``, as evaluate reaches them. The judge runs on the scripted model;
the real model and real data are in ``test_scorers_real.py``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time

import pytest

from tests.llm_fakes import scripted_fixture  # noqa: F401  (the `scripted` fixture)
from xpkit.core import plugins
from xpkit.core.errors import UsageError
from xpkit.core.scoring import (
    NO_REFERENCE,
    Score,
    ScoreItem,
    ScorerContext,
    available_scorers,
    get_scorer,
    references,
    resolve_scorer_params,
)
from xpkit.plugins.scorers import math_equiv
from xpkit.plugins.scorers.answers import final_number, last_boxed, numbers, plain_latex


def score(name: str, answer, reference=None, record=None, task=None, **params) -> Score:
    return score_all(name, [(answer, reference)], record=record, task=task, **params)[0]


def score_all(name: str, pairs, record=None, task=None, **params) -> list[Score]:
    scorer = get_scorer(name)
    ctx = ScorerContext(params=resolve_scorer_params({k: str(v) for k, v in params.items()},
                                                     scorer))
    return scorer.score([ScoreItem(a, r, record or {}, task) for a, r in pairs], ctx)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
def test_builtin_scorers_register_through_the_hook():
    found = available_scorers()
    assert list(found) == ["exact", "normalized", "f1", "regex", "contains", "numeric", "math",
                           "verifier", "judge"]
    listed = {p["name"] for p in plugins.loaded_plugins(include_builtins=True)}
    assert {"xpkit.plugins.scorers.text", "xpkit.plugins.scorers.judge"} <= listed
    for s in found.values():
        assert s.description and type(s).__doc__
    assert [n for n, s in found.items() if s.needs_model] == ["judge"]
    assert [n for n, s in found.items() if not s.needs_reference] == ["regex", "verifier",
                                                                      "judge"]


def test_unknown_scorer_and_unknown_param_are_usage_errors():
    with pytest.raises(UsageError, match=r"--scorer nope: unknown; choose one of exact, "):
        get_scorer("nope")
    with pytest.raises(UsageError, match=r"--param threshold: not a parameter of numeric"):
        resolve_scorer_params({"threshold": "0.5"}, get_scorer("numeric"))
    with pytest.raises(UsageError, match=r"--param tolerance=abc: numeric expects float"):
        resolve_scorer_params({"tolerance": "abc"}, get_scorer("numeric"))


def test_references_accept_strings_numbers_and_lists():
    assert references(None) == [] and references("  ") == []
    assert references(72) == ["72"] and references(72.0) == ["72"] and references(0.5) == ["0.5"]
    assert references(["Paris", None, "", "paris, france"]) == ["Paris", "paris, france"]


@pytest.mark.parametrize("name", ["exact", "normalized", "f1", "contains", "numeric", "math"])
def test_missing_reference_is_unjudgeable_and_missing_answer_is_wrong(name):
    s = score(name, "42", None)
    assert (s.value, s.passed, s.error) == (None, None, NO_REFERENCE)
    s = score(name, None, "42")
    assert s.value == 0.0 and s.passed is False and s.error is None


# --------------------------------------------------------------------------------------
# Text scorers
# --------------------------------------------------------------------------------------
def test_exact_strips_whitespace_but_keeps_case():
    assert score("exact", " Paris\n", "Paris").passed
    assert not score("exact", "paris", "Paris").passed


@pytest.mark.parametrize(("answer", "reference", "passed"), [
    ("The  Eiffel Tower!", "eiffel tower", True),
    ("\u201cParis\u201d \u2014 ", "Paris", True),  # Unicode quotes and dash are punctuation
    ("an apple", "Apple.", True),
    ("Paris, France", "Paris", False),
    ("The Theatre", "theatre", True),  # articles go only as whole words
])
def test_normalized_is_squad_exact_match(answer, reference, passed):
    assert score("normalized", answer, reference).passed is passed


def test_f1_gives_partial_credit_and_passes_at_the_threshold():
    s = score("f1", "the big red dog", "Red dog")
    assert s.value == pytest.approx(0.8)  # precision 2/3, recall 1
    assert s.passed and "0.800" in s.detail
    assert score("f1", "the big red dog", "Red dog", threshold=0.9).passed is False
    assert score("f1", "a cat", "red dog").value == 0.0
    best = score("f1", "the big red dog", ["cat", "red dog"])  # best over the references
    assert best.value == pytest.approx(0.8)


def test_contains_matches_whole_words_of_the_normalized_reference():
    assert score("contains", "I think the capital is PARIS.", "paris").passed
    assert not score("contains", "I have 14 apples", "4").passed
    assert score("contains", "New York City, of course", "new york").passed
    s = score("contains", "anything", "The")
    assert s.value is None and "empty after normalization" in s.error


def test_regex_reference_is_the_pattern():
    assert score("regex", "It was in 1999.", r"\b(19|20)\d\d\b").passed
    assert not score("regex", "It was in 1999.", r"\b(19|20)\d\d\b", full="true").passed
    assert score("regex", " 1999 ", r"\d{4}", full="true").passed
    assert not score("regex", "PARIS", "paris").passed
    assert score("regex", "PARIS", "paris", ignore_case="true").passed
    bad = score("regex", "x", "(unclosed")
    assert bad.value is None and "not a valid regular expression" in bad.error


def test_regex_pattern_extracts_the_answer_to_compare():
    s = score("regex", "Reasoning...\nAnswer: B\nAnswer: C", "B", pattern=r"Answer:\s*(\w)")
    assert s.passed and s.extracted == "B"  # the first match
    s = score("regex", "Answer: C", "B", pattern=r"Answer:\s*(\w)")
    assert not s.passed and s.extracted == "C"
    assert score("regex", "no marker here", "B", pattern=r"Answer:\s*(\w)").value == 0.0
    assert score("regex", "Answer: C", None, pattern=r"Answer:\s*(\w)").passed  # match is enough
    with pytest.raises(UsageError, match=r"--param pattern=\(x: not a valid regular expression"):
        score("regex", "x", "x", pattern="(x")


# --------------------------------------------------------------------------------------
# Number extraction and the numeric scorer
# --------------------------------------------------------------------------------------
def values(text: str) -> list[float]:
    return [float(n.value) for n in numbers(plain_latex(text))]


def test_numbers_are_read_as_people_write_them():
    assert values("It costs -$5, $-6 or \u22127") == [-5, -6, -7]
    assert values("1,234 and 1,2345 and (3,4)") == [1234, 1, 2345, 3, 4]
    assert values("a 50% rise, 3/4 cup, 1 1/2 hours, .5 and 2.50.") == [50, 0.75, 1.5, 0.5, 2.5]
    assert values("16 - 3 - 4 = 9 and 10-5") == [16, 3, 4, 9, 10, 5]  # a hyphen is no sign
    assert values(r"\frac{1}{2}, \dfrac{-3}{4}, \tfrac12, 1\,000, 1{,}500, 90^\circ") == [
        0.5, -0.75, 0.5, 1000, 1500, 90]
    assert values("x2 and 3rd") == [3]  # digits inside a word are not a number


def test_last_boxed_keeps_nested_braces():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{\sqrt{2}}} end") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"so \boxed 5$.") == "5"
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed("none") is None


def test_final_number_prefers_markers_to_the_last_number():
    assert final_number("5 + 2 = 7\n#### 7\nextra 99")[1] == "####"
    assert float(final_number(r"\boxed{42} and then 7")[0].value) == 42
    assert float(final_number("The answer is 7. Check: 7 + 3 = 10")[0].value) == 7
    assert float(final_number("5 + 5 = 10 apples")[0].value) == 10
    assert final_number("no digits") is None


GSM8K_REFERENCE = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                   "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
                   "#### 72")


@pytest.mark.parametrize(("answer", "reference", "passed"), [
    ("She sold 72 clips.", GSM8K_REFERENCE, True),
    ("She sold 71 clips. #### 71", GSM8K_REFERENCE, False),
    ("She earns $1,234.50 in total.", "#### 1234.5", True),
    ("The temperature is -3 degrees.", "-3", True),
    ("It drops by \u22123", "#### -3", True),
    ("about 50% of them", "50", True),
    ("3/4 of a cup", "0.75", True),
    (r"so the answer is $\boxed{\frac{1}{2}}$", "0.5", True),
    ("#### 1,000", "1000", True),
    ("He pays 18 dollars.", 18, True),
    ("It takes 1 1/2 hours", "1.5", True),
    ("The answer is 7. Check: 7 + 3 = 10", "7", True),
    ("10-5", "-5", False),  # "10-5" ends with 5, not -5
    ("She has 26 eggs", "#### 18", False),
    ("She has 26 eggs", ["#### 18", "26"], True),  # any of the references
])
def test_numeric(answer, reference, passed):
    assert score("numeric", answer, reference).passed is passed


def test_numeric_tolerance_and_details():
    assert score("numeric", "0.30000001", "0.3").passed  # relative 1e-6 by default
    assert not score("numeric", "0.30000001", "0.3", tolerance=1e-9).passed
    assert score("numeric", "1e-12", "0").passed  # the absolute tolerance near 0
    assert not score("numeric", "1,500,001", "1500000").passed  # whole numbers: exactly
    assert score("numeric", "1,500,000.0000001", "1500000").passed
    s = score("numeric", "Total: $1,234", GSM8K_REFERENCE)
    assert s.extracted == "1234" and s.value == 0.0
    assert s.detail == "answer 1234 (last number) != reference 72 (####)"
    s = score("numeric", "I do not know", "72")
    assert s.value == 0.0 and s.detail == "no number in the answer; reference 72 (last number)"
    s = score("numeric", "72", "seventy-two")
    assert s.value is None and s.error == "the reference has no number: 'seventy-two'"


# --------------------------------------------------------------------------------------
# The math scorer
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "reference"), [
    (r"Thus $\boxed{\frac{1}{2}}$.", "0.5"),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34"),
    (r"\boxed{\tfrac{3}{4}}", "3/4"),
    (r"The answer is $\left( 3, \frac{\pi}{2} \right)$.", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{5\text{ cm}}", "5"),
    (r"\boxed{15\mbox{ cm}^2}", "15"),
    (r"\boxed{5 \text{ square units}}", "5"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{90^{\circ}}", r"90"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{1\,000}", "1000"),
    (r"\boxed{10,\!080}", "10080"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
    (r"\boxed{10\%}", "10"),
    (r"\boxed{\$18.90}", "18.9"),
    (r"\boxed{.5}", "1/2"),
    (r"\boxed{1, -2}", "-2, 1"),  # a bare list: any order
    (r"\boxed{\{1,2\}}", r"\{2, 1\}"),  # a set: any order
    (r"\boxed{\text{(C)}}", "(C)"),
    ("The final answer is $\\frac{1}{3}$. I hope it is correct.", r"\frac{1}{3}"),
    ("So in total there are 12 apples.", "12"),
    ("#### 72", "72"),
    (r"\boxed{\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}}",
     r"\begin{pmatrix}\frac{1}{5}\\-\frac{18}{5}\end{pmatrix}"),
    (r"\boxed{\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]}",
     r"\left[\frac{\pi^2}{8},\frac{5\pi^2}{4}\right]"),
])
def test_math_equivalent(answer, reference):
    s = score("math", answer, reference)
    assert s.passed, s.detail


@pytest.mark.parametrize(("answer", "reference", "why"), [
    (r"\boxed{[2, 5)}", "[2,5]", "[…) of 2 vs […] of 2"),
    (r"\boxed{(1,2)}", "(2,1)", "element 1 != 2 (by value)"),
    (r"\boxed{\pi}", "3.14159", "different by value"),
    (r"\boxed{\frac{1}{3}}", "0.3333333", "different by value"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{2}", "different by value"),
    (r"\boxed{3}", "4", "different by value"),
    (r"\boxed{(1,2,3)}", "(1,2)", "(…) of 3 vs (…) of 2"),
])
def test_math_not_equivalent(answer, reference, why):
    s = score("math", answer, reference)
    assert s.value == 0.0 and s.detail.endswith(why), s.detail


def test_math_detail_and_extracted():
    s = score("math", r"We get $\boxed{\dfrac{1}{2}}$.", "0.5")
    assert s.extracted == r"\frac{1}{2}"
    assert s.detail == r"answer \frac{1}{2} (\boxed) vs reference 0.5: equal by value"


def test_math_without_sympy_compares_text_and_says_so(monkeypatch):
    monkeypatch.setattr(math_equiv, "sympy_available", lambda: False)
    s = score("math", r"\boxed{x^2+2x+1}", "(x+1)^2")
    assert s.value == 0.0
    assert s.detail.endswith("different as normalized text (sympy is not installed, so no "
                             "symbolic check was made)")
    assert score("math", r"\boxed{x^2 + 2x+1}", "x^2+2x+1").passed  # text still matches
    s = score("math", r"\boxed{x^2+2x+1}", "(x+1)^2", symbolic="false")
    assert s.detail.endswith("different as normalized text")


def test_math_with_sympy_when_installed():
    pytest.importorskip("sympy", reason="sympy is optional; the symbolic check needs it")
    s = score("math", r"\boxed{x^2+2x+1}", "(x+1)^2")
    assert s.passed and s.detail.endswith("equal symbolically (sympy)")
    assert not score("math", r"\boxed{x^2}", "x^3").passed


# --------------------------------------------------------------------------------------
# The verifier
# --------------------------------------------------------------------------------------
CHECK = """
import json, os, subprocess, sys, time
item = json.load(sys.stdin)
answer = item["answer"]
if answer == "sleep":
    time.sleep(30)
if answer == "spawn":  # a child that holds the pipes open
    subprocess.run([sys.executable, "-c", "import time; time.sleep(30)"])
if answer == "crash":
    os.kill(os.getpid(), 9)
if answer == item["reference"] and item.get("id") == "r1" and item.get("task") == "add":
    sys.exit(0)
print(f"\\nwrong: got {answer!r}, want {item['reference']!r}\\nsecond line", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def check_command(tmp_path) -> str:
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    return shlex.join([sys.executable, str(script)])


def test_verifier_passes_fails_and_reads_the_record(check_command):
    done = []
    scorer = get_scorer("verifier")
    ctx = ScorerContext(params=resolve_scorer_params({"command": check_command}, scorer),
                        on_progress=lambda d, t: done.append((d, t)))
    items = [ScoreItem(a, "4", {"id": "r1", "answer": "stale"}, "add") for a in ("4", "5", "4")]
    out = scorer.score(items, ctx)
    assert [s.value for s in out] == [1.0, 0.0, 1.0]
    assert out[0].detail == "verifier exited 0"
    assert out[1].detail == "verifier exited 3: wrong: got '5', want '4'"
    assert sorted(done) == [(1, 3), (2, 3), (3, 3)]


def test_verifier_timeout_kills_the_process_group(check_command):
    start = time.monotonic()
    out = score_all("verifier", [("sleep", "4"), ("spawn", "4"), ("4", "4")],
                    record={"id": "r1"}, task="add", command=check_command, timeout=1)
    assert time.monotonic() - start < 15  # not the 30 s the verifier and its child sleep
    assert [(s.value, s.error) for s in out[:2]] == [(None, "verifier timed out after 1 s")] * 2
    assert out[2].value == 1.0


def test_verifier_killed_by_a_signal_has_no_score(check_command):
    s = score("verifier", "crash", "4", command=check_command)
    assert s.value is None and s.error == "verifier was killed by signal SIGKILL"


def test_verifier_command_problems_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"^--param command=no-such-verifier-xyz --strict: the "
                                         r"verifier program 'no-such-verifier-xyz' was not "
                                         r"found on PATH; give its full path\.$"):
        score("verifier", "4", "4", command="no-such-verifier-xyz --strict")
    with pytest.raises(UsageError, match=r"the verifier program \S+/missing\.py does not exist"):
        score("verifier", "4", "4", command=str(tmp_path / "missing.py"))
    plain = tmp_path / "plain.sh"
    plain.write_text("exit 0\n")
    with pytest.raises(UsageError, match=r"is not executable"):
        score("verifier", "4", "4", command=str(plain))
    with pytest.raises(UsageError, match=r"needs a command: pass --param command="):
        score("verifier", "4", "4")
    with pytest.raises(UsageError, match=r"cannot split it into arguments"):
        score("verifier", "4", "4", command="python3 'unclosed")


def test_verifier_runs_without_a_shell(tmp_path):
    marker = tmp_path / "touched"
    s = score("verifier", "4", "4", command=f"{shlex.quote(sys.executable)} -c "
                                             f"'import sys; sys.exit(0)' ; touch {marker}")
    assert s.value == 1.0 and not marker.exists()  # ";" and "touch" were arguments


# --------------------------------------------------------------------------------------
# The judge, on the scripted model
# --------------------------------------------------------------------------------------
def verdict(reason: str, score_: int) -> str:
    return json.dumps({"reason": reason, "score": score_})


def judge_by_answer(messages):
    """A fake judge: 5 for the answer 42, 2 for 41, broken output otherwise."""
    user = messages[-1]["content"]
    if "Answer to grade:\n42" in user:
        return verdict("Matches the reference.", 5)
    if "Answer to grade:\n41" in user:
        return verdict("Off by one.", 2)
    return '{"reason": "unfinished'


def judge_ctx(**params) -> ScorerContext:
    scorer = get_scorer("judge")
    return ScorerContext(params=resolve_scorer_params({k: str(v) for k, v in params.items()},
                                                      scorer), model="scripted:j")


def test_judge_batches_items_and_maps_scores(scripted):
    model = scripted.model("j", judge_by_answer)
    ctx = judge_ctx()
    runs = []
    llm = ctx.llm()
    real_run = llm.run
    llm.run = lambda requests, **kw: runs.append(len(requests)) or real_run(requests, **kw)
    items = [ScoreItem("42", "42", {"question": "What is 6 x 7?"}),
             ScoreItem("41", None, {}, task="What is 6 x 7?"),
             ScoreItem("", "42", {}),
             ScoreItem("garbage", "42", {})]
    out = get_scorer("judge").score(items, ctx)
    assert runs == [3]  # one batch; the empty answer needs no call
    assert (out[0].value, out[0].passed) == (1.0, True)
    assert out[0].detail == "judge: 5 of 1-5: Matches the reference."
    assert (out[1].value, out[1].passed) == (0.25, False)
    assert (out[2].value, out[2].passed, out[2].detail) == (0.0, False, "no answer to judge")
    assert out[3].value is None and out[3].passed is None
    assert out[3].error.startswith("the judge gave no valid verdict: no valid output "
                                   "after 3 attempts")
    prompts = {c["messages"][-1]["content"]: c for c in model.calls}
    with_ref = next(c for p, c in prompts.items() if "\n42" in p.split("Answer to grade:")[1])
    no_ref = next(c for p, c in prompts.items() if "\n41" in p.split("Answer to grade:")[1])
    user = with_ref["messages"][-1]["content"]
    assert user.startswith("Task:\nWhat is 6 x 7?\n\nReference answer:\n42\n\nAnswer to grade:")
    assert "Reference answer" not in no_ref["messages"][-1]["content"]
    assert "known to be correct" in with_ref["messages"][0]["content"]
    assert "known to be correct" not in no_ref["messages"][0]["content"]
    system = no_ref["messages"][0]["content"]
    assert "5: correct and complete" in system and "$" not in system
    schema = with_ref["schema"]
    assert list(schema["properties"]) == ["reason", "score"]  # the reason comes first
    assert schema["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]
    assert "minLength" not in json.dumps(schema)


def test_judge_scale_rubric_and_pass_at(scripted):
    model = scripted.model("j", verdict("Mostly right.", 7))
    ctx = judge_ctx(scale="0-10", rubric="Grade from $low (bad) to $high (perfect) strictly.")
    s = get_scorer("judge").score([ScoreItem("an answer", None, {"task": "a task"})], ctx)[0]
    assert (s.value, s.passed) == (0.7, True)  # pass_at defaults to 7 on 0-10
    system = model.calls[0]["messages"][0]["content"]
    assert "Grade from 0 (bad) to 10 (perfect) strictly." in system
    assert "correct and complete" not in system  # the default rubric was replaced
    assert model.calls[0]["schema"]["properties"]["score"]["enum"] == list(range(11))
    ctx = judge_ctx(scale="0-10", pass_at=8)
    assert get_scorer("judge").score([ScoreItem("an answer", None, {})], ctx)[0].passed is False


@pytest.mark.parametrize(("params", "message"), [
    ({"scale": "5-1"}, r"--param scale=5-1: expected LOW-HIGH"),
    ({"scale": "1-100"}, r"--param scale=1-100: expected LOW-HIGH"),
    ({"pass_at": 9}, r"--param pass_at=9: must be within the scale 1-5\."),
])
def test_judge_bad_params_are_usage_errors(params, message):
    with pytest.raises(UsageError, match=message):
        get_scorer("judge").score([ScoreItem("a", None, {})], judge_ctx(**params))


def test_judge_needs_a_model():
    with pytest.raises(UsageError, match=r"needs a model: pass --judge-model"):
        get_scorer("judge").score([ScoreItem("a", None, {})], ScorerContext())


def test_judge_clips_long_answers_in_the_middle(scripted):
    model = scripted.model("j", verdict("Fine.", 4))
    answer = "START " + "x" * 20000 + " FINAL ANSWER 42"
    get_scorer("judge").score([ScoreItem(answer, None, {})], judge_ctx())
    user = model.calls[0]["messages"][-1]["content"]
    assert "START" in user and "FINAL ANSWER 42" in user and "characters cut ..." in user
    assert len(user) < 5000
