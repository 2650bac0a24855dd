"""``xpkit evaluate`` on real data and with the real bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from xpkit.core import smart

pytestmark = pytest.mark.real_data
REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_qrels_metrics_through_the_cli_match_an_independent_computation(shared_data, tmp_path,
                                                                       xpkit):
    root = shared_data / "cisi"
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in smart.documents(
        root / "CISI.ALL.gz")))
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(b"".join(orjson.dumps(q) + b"\n" for q in smart.queries(
        root / "CISI.QRY")))
    store = tmp_path / "cisi.duckdb"
    assert xpkit("index", str(docs), "--store", str(store), "--id", "id",
                 "--text", "text").returncode == 0
    hits = tmp_path / "hits.jsonl"
    res = xpkit("retrieve", str(queries), "--store", str(store), "--text", "query", "-k", "100",
                "-o", str(hits))
    assert res.returncode == 0, res.stderr
    res = xpkit("evaluate", str(hits), "--qrels", str(root / "CISI.REL"), "--id-field", "qid",
                "--at", "10", "--at", "100", "--report", str(tmp_path / "m.json"),
                "-o", str(tmp_path / "per_query.jsonl"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "m.json").read_text())["arms"]["retrieval"]
    run = {r["qid"]: [h["unit_id"] for h in r["hits"]] for r in read_jsonl(hits)}
    expected = smart.evaluate_run(run, smart.qrels(root / "CISI.REL"))
    assert summary["queries"] == expected["queries"] == 76
    assert summary["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)
    assert summary["recall@100"] == pytest.approx(expected["recall@100"], abs=1e-6)
    assert summary["ndcg@10"] > 0.3  # BM25 on CISI: ~0.40 (tests/test_retrieve_real.py)
    per_query = read_jsonl(tmp_path / "per_query.jsonl")
    assert len(per_query) == 112  # every query written, judged or not
    judged = [r["_eval"] for r in per_query if r["_eval"]["judged"]]
    assert sum(e["ndcg@10"] for e in judged) / len(judged) == pytest.approx(summary["ndcg@10"])
    assert 0 < summary["mrr"] <= 1


def test_gsm8k_model_solutions_numeric_scores_agree_with_the_dataset_grades(shared_data,
                                                                            tmp_path, xpkit):
    """OpenAI's example solutions carry human/auto grades (is_correct) for two models; the
    numeric scorer, reading the last number of each solution, should agree with them."""
    src = shared_data / "gsm8k" / "example_model_solutions.jsonl.gz"
    episodes = tmp_path / "episodes.jsonl"
    res = xpkit("ingest", str(src), "-o", str(episodes))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "scored.jsonl"
    res = xpkit("evaluate", str(episodes), "--scorer", "numeric", "-o", str(out),
                "--report", str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(out)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["items"] + summary["rejected"] == summary["records"]
    assert summary["items"] == len(rows) > 100
    graded = [(r["outcome"]["success"], r["_eval"]["passed"]) for r in rows
              if r["outcome"]["success"] is not None]
    agree = sum(a == b for a, b in graded) / len(graded)
    print(f"numeric scorer vs dataset grades: {agree:.3f} agreement on {len(graded)} items")
    assert agree >= 0.95
    assert summary["arms"]["given"]["ci_low"] <= summary["arms"]["given"]["mean"] \
        <= summary["arms"]["given"]["ci_high"]


@pytest.mark.model
def test_ab_with_the_real_model_pairs_items_and_credits_units(tmp_path, xpkit):
    """Real SmolLM2 on real GSM8K tasks, with and without exemplar context from a library
    distilled from other real GSM8K episodes: the run, pairing and significance machinery."""
    sample = REPO / "examples" / "data" / "gsm8k_model_solutions_sample.jsonl"
    store = tmp_path / "lib.duckdb"
    episodes = tmp_path / "episodes.jsonl"
    assert xpkit("ingest", str(sample), "-o", str(episodes)).returncode == 0
    eps = read_jsonl(episodes)
    library, held_out = eps[4:], eps[:4]
    lib_file = tmp_path / "library_episodes.jsonl"
    lib_file.write_text("".join(json.dumps(e) + "\n" for e in library))
    res = xpkit("distill", str(lib_file), "--method", "exemplar", "--store", str(store))
    assert res.returncode == 0, res.stderr
    assert xpkit("index", "--store", str(store)).returncode == 0
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": e["episode_id"], "task": e["task"],
                                         "reference": e["reference"]}) + "\n"
                             for e in held_out))
    ctx = tmp_path / "ctx.jsonl"
    res = xpkit("retrieve", str(tasks), "--store", str(store), "-k", "1", "-o", str(ctx))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "ab.jsonl"
    res = xpkit("evaluate", str(ctx), "--model", "default", "--ab", "--feedback", "--store",
                str(store), "--scorer", "numeric", "--max-tokens", "48", "-o", str(out),
                "--report", str(tmp_path / "ab.json"))
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(out)
    summary = json.loads((tmp_path / "ab.json").read_text())
    assert len(rows) == 4 and summary["arms"]["none"]["n"] == summary["arms"]["context"]["n"] == 4
    for r in rows:
        arms = r["_eval"]["arms"]
        assert arms["none"]["answer"] and arms["context"]["answer"]
        assert arms["context"]["tokens"]["prompt"] > arms["none"]["tokens"]["prompt"]
        assert r["_eval"]["diff"] == arms["context"]["score"] - arms["none"]["score"]
    comp = summary["comparisons"][0]
    assert comp["n"] == 4 and 0.0 < comp["p_value"] <= 1.0
    assert comp["b_better"] + comp["a_better"] <= 4
    uses = sum(len(r["_eval"]["arms"]["context"].get("units", [])) for r in rows)
    assert sum(u["uses"] for u in summary["units"].values()) == uses == 4
    assert summary["feedback"]["units_updated"] == len(summary["units"])


def test_subset_selection_through_the_cli_on_alpacaeval(shared_data, tmp_path, xpkit):
    """tinyBenchmarks anchors on the real AlpacaEval 2.0 matrix (58 models x 805 items):
    the CLI writes the chosen items with weights that sum to 1, and the report carries the
    held-out error next to random subsets of the same size."""
    matrix = (shared_data / "alpaca_eval"
              / "preference_matrix_weighted_alpaca_eval_gpt4_turbo.csv")
    out, report = tmp_path / "subset.jsonl", tmp_path / "subset.json"
    res = xpkit("evaluate", str(matrix), "--subset", "100", "--value-range", "1,2",
                "-o", str(out), "--report", str(report))
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(out)
    sub = json.loads(report.read_text())["subset"]
    assert len(rows) == len({r["item"] for r in rows}) == sub["n"] == 100
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    assert sum(r["members"] for r in rows) == sub["n_items"] == 805
    assert sub["n_held_out"] + sub["n_train"] == sub["n_models"]
    assert sub["mae"] == pytest.approx(
        sum(abs(p["error"]) for p in sub["predictions"]) / len(sub["predictions"]))
    assert "held-out models" in res.stderr.decode()
    bad = xpkit("evaluate", str(matrix), "--subset", "100")
    assert bad.returncode == 1 and "--value-range" in bad.stderr.decode()
