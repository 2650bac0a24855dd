"""``xpkit evaluate``: scoring given answers, A/B with feedback, gates, comparisons, streams.

Model plumbing runs on the scripted fake model (tests/llm_fakes.py) so the expected numbers
are known; tests/test_evaluate_real.py runs the real bundled model and real data.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import duckdb
import orjson
import pytest

from tests.llm_fakes import scripted_fixture  # noqa: F401  (the `scripted` fixture)
from xpkit.core.errors import UsageError
from xpkit.core.evaluate import evaluate, learning_curve
from xpkit.core.index import index
from xpkit.core.retrieve import retrieve
from xpkit.core.significance import bootstrap_ci, paired_test

FACTS = {  # item -> (code, fact text): each fact is a library unit, each item a task
    "amber": ("417", "The amber vault opens with code 417."),
    "cobalt": ("932", "The cobalt vault opens with code 932."),
    "jade": ("268", "The jade vault opens with code 268."),
    "onyx": ("751", "The onyx vault opens with code 751."),
    "ruby": ("384", "The ruby vault opens with code 384."),
    "topaz": ("519", "The topaz vault opens with code 519."),
}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE)
                              for r in records))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def answer_from_context(messages: list[dict]) -> str:
    """A model that knows a vault's code only when its prompt (context or task) states it."""
    user = messages[-1]["content"]
    vault = re.findall(r"the (\w+) vault\?", user)[-1]
    m = re.search(rf"{vault} vault[^\n]*?code (?:is )?(\d+)", user)
    return f"The code is {m.group(1)}." if m else "I do not know the code, maybe 100."


def build_library(tmp_path: Path, names=FACTS) -> Path:
    store = tmp_path / "lib.duckdb"
    docs = write_jsonl(tmp_path / "facts.jsonl",
                       [{"id": f"fact-{n}", "text": FACTS[n][1]} for n in names])
    index([str(docs)], store=str(store), id_field="id", text_field="text")
    return store


def tasks(tmp_path: Path, names=FACTS) -> Path:
    return write_jsonl(tmp_path / "tasks.jsonl",
                       [{"id": n, "task": f"Which code opens the {n} vault?",
                         "reference": FACTS[n][0]} for n in names])


def retrieved(tmp_path: Path, store: Path, names=FACTS) -> Path:
    out: list[dict] = []
    retrieve([str(tasks(tmp_path, names))], store=str(store), k=1, sink=out.extend)
    return write_jsonl(tmp_path / "retrieved.jsonl", out)


def run(inputs, **kw) -> tuple[list[dict], object]:
    rows: list[dict] = []
    summary = evaluate([str(p) for p in inputs], sink=rows.extend, **kw)
    return rows, summary


# --------------------------------------------------------------------------- statistics


def test_paired_test_is_the_exact_sign_test_on_discordant_pairs():
    a = [0.0] * 10 + [1.0] * 5
    b = [1.0] * 10 + [1.0] * 5  # 10 discordant pairs, all in b's favour
    res = paired_test(a, b)
    assert res.method == "exact"
    assert res.p_value == pytest.approx(2 / 2 ** 10)
    assert (res.b_better, res.a_better, res.n) == (10, 0, 15)
    assert res.diff.mean == pytest.approx(10 / 15)
    # 7 vs 3 discordant: two-sided binomial p = 2 * P(X >= 7 | n=10, 1/2)
    a2, b2 = [0.0] * 7 + [1.0] * 3, [1.0] * 7 + [0.0] * 3
    tail = sum(math.comb(10, i) for i in range(7, 11)) / 2 ** 10
    assert paired_test(a2, b2).p_value == pytest.approx(2 * tail)


def test_monte_carlo_test_agrees_with_the_exact_binomial():
    a, b = [0.0] * 30 + [1.0] * 10, [1.0] * 30 + [0.0] * 10  # 40 discordant, 30 vs 10
    exact = 2 * sum(math.comb(40, i) for i in range(30, 41)) / 2 ** 40
    res = paired_test(a, b, seed=1)
    assert res.method.startswith("monte-carlo")
    assert res.p_value == pytest.approx(exact, abs=0.002)
    assert paired_test([1.0, 0.5], [1.0, 0.5]).p_value == 1.0


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    small = bootstrap_ci([1, 0] * 10, seed=3)
    large = bootstrap_ci([1, 0] * 500, seed=3)
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 3
    assert bootstrap_ci([]).n == 0 and math.isnan(bootstrap_ci([]).mean)
    assert learning_curve([1.0, 0.0, None, 1.0]) == [1.0, 0.5, pytest.approx(1 / 3), 0.5]


# --------------------------------------------------------------------------- given answers


def test_given_answers_are_scored_and_bad_records_quarantined(tmp_path, xpkit):
    src = tmp_path / "graded.jsonl"
    good = [{"id": "a", "answer": "so the total is 1,200 dollars", "reference": "#### 1200"},
            {"id": "b", "answer": "It is -3.", "reference": "-3"},
            {"id": "c", "answer": "about 7", "reference": "8"}]
    src.write_text("\n".join(json.dumps(r) for r in good)
                   + '\n{"id": "d", "answer": "4"}\n{broken\n')
    res = xpkit("evaluate", str(src), "--scorer", "numeric", "-o", str(tmp_path / "o.jsonl"),
                "--report", str(tmp_path / "s.json"), "--report", str(tmp_path / "s.md"))
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert [r["_eval"]["passed"] for r in rows] == [True, True, False]
    assert [r["_eval"]["item_id"] for r in rows] == ["a", "b", "c"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["records"], summary["items"], summary["rejected"]) == (5, 3, 2)
    assert summary["arms"]["given"]["passed"] == 2
    assert summary["arms"]["given"]["mean"] == pytest.approx(2 / 3, abs=1e-6)
    rejects = read_jsonl(tmp_path / "o.rejects.jsonl")
    assert [(r["line"], r.get("field")) for r in rejects] == [(4, "reference"), (5, None)]
    assert "| given |" in (tmp_path / "s.md").read_text()
    strict = xpkit("evaluate", str(src), "--scorer", "numeric", "--strict",
                   "-o", str(tmp_path / "o2.jsonl"))
    assert strict.returncode == 1 and "--strict" in strict.stderr.decode()


def test_usage_errors_name_the_flag(tmp_path, xpkit):
    src = write_jsonl(tmp_path / "t.jsonl", [{"task": "x", "reference": "1"}])
    for args, needle in [(["--ab"], "--ab answers every task"),
                         (["--feedback", "--model", "default"], "--feedback needs --ab"),
                         (["--ab", "--stream", "--model", "default"], "cannot be combined"),
                         (["--compare", "nope", "--model", "default"], "NAME=LIBRARY"),
                         (["--scorer", "nope"], "--scorer nope: unknown"),
                         (["--report", str(tmp_path / "r.txt")], "--report")]:
        res = xpkit("evaluate", str(src), *args)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr.decode(), (args, res.stderr)
        assert "Traceback" not in res.stderr.decode()


# --------------------------------------------------------------------------- A/B and feedback


def test_ab_pairs_items_credits_units_and_feeds_retrieval(tmp_path, scripted):
    scripted.model("vault", answer_from_context)
    store = build_library(tmp_path)
    rows, summary = run([retrieved(tmp_path, store)], model="scripted:vault", ab=True,
                        feedback=True, store=str(store), scorer=["numeric"])
    assert summary.arms["none"]["mean"] == 0.0 and summary.arms["context"]["mean"] == 1.0
    comp = summary.comparisons[0]
    assert (comp["a"], comp["b"], comp["n"], comp["b_better"]) == ("none", "context", 6, 6)
    assert comp["p_value"] == pytest.approx(2 / 2 ** 6)
    for r in rows:  # the pairing: one item, both arms, and the unit its context showed
        ev = r["_eval"]
        assert set(ev["arms"]) == {"none", "context"} and ev["diff"] == 1.0
        assert ev["arms"]["context"]["units"] == [f"fact-{r['id']}"]
        assert r["answer"] == ev["arms"]["context"]["answer"]
    assert summary.feedback["units_updated"] == 6
    con = duckdb.connect(str(store), read_only=True)
    stats = {uid: json.loads(s) for uid, s in
             con.execute("SELECT unit_id, stats FROM units").fetchall()}
    runs = con.execute("SELECT count(*) FROM runs WHERE command = 'evaluate'").fetchone()[0]
    con.close()
    assert runs == 1
    for uid, s in stats.items():
        assert (s["helpful"], s["harmful"], s["uses"]) == (1, 0, 1), uid
        assert s["per_model"]["vault"] == {"helpful": 1, "harmful": 0, "uses": 1}
    # retrieve reads the counters back as this model's utility
    out: list[dict] = []
    retrieve([str(tasks(tmp_path))], store=str(store), k=1, model="scripted:vault",
             sink=out.extend)
    assert all(h["components"]["utility"] == pytest.approx(2 / 3) for r in out for h in r["hits"])


def test_harmful_context_is_counted_as_harmful(tmp_path, scripted):
    def contrarian(messages):  # right without context, wrong with it
        return "I would say 1." if "Experience" in messages[-1]["content"] else "It is 417."

    scripted.model("contrarian", contrarian)
    store = build_library(tmp_path, ["amber"])
    _, summary = run([retrieved(tmp_path, store, ["amber"])], model="scripted:contrarian",
                     ab=True, feedback=True, store=str(store), scorer=["numeric"])
    assert summary.units == {"fact-amber": {"helpful": 0, "harmful": 1, "uses": 1}}
    assert summary.comparisons[0]["diff"]["mean"] == -1.0


# --------------------------------------------------------------------------- compare and gate


def test_compare_runs_every_library_against_none(tmp_path, scripted):
    scripted.model("vault", answer_from_context)
    full = build_library(tmp_path)
    half_dir = tmp_path / "half"
    half_dir.mkdir()
    half = build_library(half_dir, ["amber", "cobalt", "jade"])
    _, summary = run([tasks(tmp_path)], model="scripted:vault", scorer=["numeric"],
                     compare=[f"full={full}", f"half={half}"], k=1)
    assert [summary.arms[a]["mean"] for a in ("none", "full", "half")] == [0.0, 1.0, 0.5]
    assert [(c["a"], c["b"], c["b_better"]) for c in summary.comparisons] == [
        ("none", "full", 6), ("none", "half", 3)]


def test_gate_keeps_units_that_help_and_rejects_those_that_hurt(tmp_path, scripted):
    scripted.model("vault", answer_from_context)
    store = build_library(tmp_path, ["amber", "cobalt"])
    held_out = tasks(tmp_path, ["jade", "onyx"])
    good = write_jsonl(tmp_path / "good.jsonl", [
        {"unit_id": f"u-{n}", "kind": "insight", "content": FACTS[n][1]} for n in ("jade", "onyx")])
    worse = write_jsonl(tmp_path / "worse.jsonl", [
        {"unit_id": "u-worse", "kind": "insight",
         "content": "Which code opens the jade vault or the onyx vault? Each opens with "
                    "code 999."}])
    _, kept = run([held_out], model="scripted:vault", scorer=["numeric"], gate=str(good),
                  store=str(store), k=1)
    assert kept.gate["decision"] == "kept"
    assert (kept.gate["score_without"], kept.gate["score_with"]) == (0.0, 1.0)
    _, gated = run([held_out], model="scripted:vault", scorer=["numeric"], gate=str(worse),
                   store=str(store), k=1)
    assert gated.gate["decision"] == "rejected"
    assert (gated.gate["score_without"], gated.gate["score_with"]) == (1.0, 0.0)
    con = duckdb.connect(str(store), read_only=True)
    units = {r[0] for r in con.execute("SELECT unit_id FROM units").fetchall()}
    gates = con.execute("SELECT decision, score_without, score_with FROM gates "
                        "ORDER BY created_at").fetchall()
    con.close()
    assert {"u-jade", "u-onyx"} <= units and "u-worse" not in units
    assert gates == [("kept", 0.0, 1.0), ("rejected", 1.0, 0.0)]


# --------------------------------------------------------------------------- stream


def test_stream_memory_learns_from_earlier_tasks(tmp_path, scripted):
    scripted.model("learner", answer_from_context)
    places = {  # distinct wording, so the library does not merge the three exemplars
        "amber": "harbour warehouse behind the old fish market, guarded by sleepy cats",
        "cobalt": "mountain observatory beside the glacier weather station and telescopes",
        "jade": "desert library beneath sandstone archives holding forgotten maps"}
    items = []
    for n, place in places.items():
        code = FACTS[n][0]
        items.append({"id": f"{n}-1", "task": f"The {n} vault sits in a {place} (warm-up: the "
                                              f"code is {code}). Which code opens the {n} vault?",
                      "reference": code})
        items.append({"id": f"{n}-2", "task": f"Which code opens the {n} vault?",
                      "reference": code})
    src = write_jsonl(tmp_path / "stream.jsonl", items)
    rows, summary = run([src], model="scripted:learner", stream=True, scorer=["numeric"],
                        k=1)
    memory = [r["_eval"]["arms"]["memory"]["passed"] for r in rows]
    none = [r["_eval"]["arms"]["none"]["passed"] for r in rows]
    assert none == [True, False] * 3
    assert memory == [True, True] * 3  # the second attempt retrieved the first one's exemplar
    assert summary.curve["memory"][-1] == 1.0 and summary.curve["none"][-1] == 0.5
    png = tmp_path / "curve.png"
    from xpkit.core.report import write_report

    write_report(summary.to_dict(), str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_task_is_quarantined_when_the_model_must_answer(tmp_path, scripted):
    scripted.model("m", "42")
    src = write_jsonl(tmp_path / "t.jsonl", [{"task": "What is six times seven?",
                                              "reference": "42"},
                                             {"reference": "1"}])
    rows, summary = run([src], model="scripted:m", scorer=["numeric"],
                        rejects=str(tmp_path / "rej.jsonl"))
    assert (summary.items, summary.rejected) == (1, 1) and rows[0]["_eval"]["passed"]
    rej = read_jsonl(tmp_path / "rej.jsonl")
    assert rej[0]["line"] == 2 and rej[0]["field"] == "task"
    with pytest.raises(UsageError):
        evaluate([str(src)], model="scripted:m", ab=True, compare=["a=b"])
