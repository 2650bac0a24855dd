"""distill: plumbing with a scripted model, the library's growth rules, and the real model."""

from __future__ import annotations

import itertools
import json

import duckdb
import orjson
import pytest

from tests.llm_fakes import ScriptedEmbedModel, ScriptedModel, scripted_fixture  # noqa: F401
from xpkit.core.distill import distill, merge_shard_files
from xpkit.core.library import evict, grow, merge_shards
from xpkit.core.records import make_episode, make_step
from xpkit.core.store import Store
from xpkit.core.units import make_unit
from xpkit.plugins.distillers.contrast import find_pairs


def episode(task: str, success: bool | None, n_steps: int = 3, salt: str = "") -> dict:
    steps = [make_step("user", "message", task)]
    for i in range(n_steps - 1):
        steps.append(make_step("assistant", "action", f"search[{task.split()[0]} {i}{salt}]"))
    return make_episode(task=task, steps=steps, outcome={"success": success, "reward": None,
                                                         "score": None})


def write_episodes(path, eps):
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in eps))
    return str(path)


def insight_json(*items):
    return json.dumps({"insights": [
        {"title": t, "taxonomy": "search", "when": w, "rule": r, "polarity": "do",
         "evidence": ev} for t, w, r, ev in items]})


RULE = ("Check the spelling of names", "when a search finds nothing",
        "Search again with the exact title of the page before giving up.")
SAME_RULE = ("Check the spelling of names", "when a search finds nothing",
             "Search again with the exact title of the page before you give up.")
OTHER_RULE = ("Finish early", "when the answer is in the observation",
              "Give the answer as soon as an observation states it.")


def test_insights_get_their_evidence_and_near_duplicates_merge(scripted, tmp_path):
    eps = [episode(f"Who wrote book {i}?", i % 2 == 0) for i in range(4)]
    src = write_episodes(tmp_path / "e.jsonl", eps)
    model = ScriptedModel(insight_json((*RULE, ["E1", "E2"])),
                          insight_json((*SAME_RULE, ["E2"]), (*OTHER_RULE, ["E1"])))
    scripted.backend.models["m"] = model
    out: list[dict] = []
    summary = distill([src], method=["insight"], model="scripted:m", batch_episodes=2,
                      sink=out.extend, rejects=str(tmp_path / "r.jsonl"))
    assert (summary.calls, summary.new, summary.merged, summary.rejected) == (2, 2, 1, 0)
    current = {u["unit_id"]: u for u in out}  # a delta log: the last record of an id wins
    assert len(current) == 2
    merged = next(u for u in current.values() if u["title"] == RULE[0])
    assert merged["content"] == RULE[2]  # the existing wording is kept
    ids = sorted(e["episode_id"] for e in eps)
    job_ids = [[m["content"] for m in c["messages"]] for c in model.calls]
    assert len(job_ids) == 2
    # E1/E2 of the first call and E2 of the second resolve to three distinct episodes.
    assert len(merged["evidence"]) == 3
    assert {e["episode_id"] for e in merged["evidence"]} <= set(ids)
    assert merged["provenance"]["distiller"] == "insight"
    assert merged["provenance"]["prompt_hash"]


def test_fabricated_evidence_is_rejected_with_the_raw_text(scripted, tmp_path):
    src = write_episodes(tmp_path / "e.jsonl", [episode("Who wrote Emma?", True)])
    raw = insight_json((*RULE, ["E7"]))
    scripted.backend.models["m"] = ScriptedModel(raw)
    out: list[dict] = []
    rejects = tmp_path / "r.jsonl"
    summary = distill([src], method=["insight"], model="scripted:m", sink=out.extend,
                      rejects=str(rejects), store=str(tmp_path / "s.duckdb"))
    assert out == [] and summary.rejected == 1 and summary.new == 0
    entry = json.loads(rejects.read_text().splitlines()[0])
    assert entry["raw"] == raw and "E7" in entry["reason"]
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM units").fetchone() == (0,)


@pytest.mark.parametrize("method", ["insight", "behavior", "contrast", "summary"])
def test_output_that_fills_in_the_prompt_form_is_retried_then_quarantined(scripted, tmp_path,
                                                                          method):
    # What SmolLM2-135M did with 48 of 50 insight prompts: the form's placeholders, verbatim.
    from xpkit.core.llm import form_example

    eps = [episode("Who wrote Emma?", True, 9), episode("Who wrote Emma?", False, 9, "x"),
           episode("Who wrote Dune?", True, 9)]
    src = write_episodes(tmp_path / "e.jsonl", eps)
    form = {}

    def filled(schema, shown):  # the form's placeholders where the grammar lets them through
        if "enum" in schema:
            return schema["enum"][0]
        if schema.get("type") == "integer":
            return schema.get("minimum", 0)
        if schema.get("type") == "array":
            return [filled(schema["items"], shown[0])]
        if "properties" in schema:
            return {k: filled(schema["properties"][k], v) for k, v in shown.items()}
        return "copied_name" if "pattern" in schema else shown[:schema.get("maxLength")]

    def fill_in_the_form(messages):
        schema = scripted.backend.models["m"].calls[-1]["schema"]
        form["text"] = json.dumps(filled(schema, json.loads(form_example(schema))))
        return form["text"]

    model = scripted.model("m", fill_in_the_form)
    out: list[dict] = []
    rejects = tmp_path / "r.jsonl"
    summary = distill([src], method=[method], model="scripted:m", sink=out.extend,
                      rejects=str(rejects), batch_episodes=2,
                      store=str(tmp_path / "s.duckdb"))
    assert out == [] and summary.new == 0 and summary.calls >= 1
    assert summary.rejected == summary.calls and len(model.calls) == 3 * summary.calls
    assert summary.retries == 2 * summary.calls
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(entries) == summary.rejected
    assert all("copies the prompt's form" in e["reason"] and e["raw"] == form["text"]
               for e in entries)
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM units").fetchone() == (0,)


def test_a_retry_that_answers_properly_is_kept(scripted, tmp_path):
    src = write_episodes(tmp_path / "e.jsonl", [episode("Who wrote Emma?", True)])
    loop = "search again search again search again search again search again"
    model = scripted.model("m", insight_json((RULE[0], RULE[1], loop, ["E1"])),
                           insight_json((*RULE, ["E1"])))
    out: list[dict] = []
    summary = distill([src], method=["insight"], model="scripted:m", sink=out.extend,
                      rejects=str(tmp_path / "r.jsonl"))
    assert summary.rejected == 0 and len(model.calls) == 2
    assert [u["content"] for u in out] == [RULE[2]]


PARAPHRASE = ("Fix misspelled entity names", "if a lookup returns no results",
              "Retry the query using the precise page name rather than stopping.")


class ConceptEmbedModel(ScriptedEmbedModel):
    """Vectors by concept: texts about retrying a misspelled search point one way, the rest
    another, so that a paraphrase with few shared words is close and the rest is not."""

    def embed_batch(self, texts):
        self.embedded.extend(texts)
        retry = {"spelling", "misspelled", "again", "retry"}
        return [[1.0, 0.1] if retry & set(t.lower().split()) else [0.0, 1.0] for t in texts]


@pytest.mark.parametrize(("indexed_vectors", "embed_threshold"),
                         [(True, 0.9), (False, 0.9), (True, None)])
def test_a_paraphrase_merges_by_embedding_when_the_unit_index_has_vectors(
        scripted, tmp_path, indexed_vectors, embed_threshold):
    from xpkit.core.index import index
    from xpkit.core.library import content_words, jaccard, unit_text

    store = str(tmp_path / "s.duckdb")
    src = write_episodes(tmp_path / "e.jsonl", [episode("Who wrote Emma?", True),
                                                episode("Who wrote Dune?", False)])
    scripted.model("m", insight_json((*RULE, ["E1"])))
    distill([src], method=["insight"], model="scripted:m", store=store, batch_episodes=2)
    scripted.embedder.models["concepts"] = ConceptEmbedModel(dim=2)
    index([], store=store, embed_model="scripted:concepts" if indexed_vectors else None)
    para = dict(zip(("title", "when", "content"), PARAPHRASE, strict=True))
    old = dict(zip(("title", "when", "content"), RULE, strict=True))
    assert jaccard(content_words(unit_text(para)), content_words(unit_text(old))) < 0.2
    scripted.model("m2", insight_json((*PARAPHRASE, ["E2"]), (*OTHER_RULE, ["E1"])))
    summary = distill([src], method=["insight"], model="scripted:m2", store=store,
                      batch_episodes=2, embed_threshold=embed_threshold)
    units = {u["title"]: u for u in Store.open(store, read_only=True).units()}
    if indexed_vectors and embed_threshold:  # merged (its wording kept); the other added
        assert (summary.merged, summary.new) == (1, 1)
        assert set(units) == {RULE[0], OTHER_RULE[0]}
        assert len(units[RULE[0]]["evidence"]) == 2
    else:  # lexically distinct, and no vectors or no threshold: added
        assert (summary.merged, summary.new) == (0, 2)
        assert set(units) == {RULE[0], PARAPHRASE[0], OTHER_RULE[0]}


def test_counters_survive_a_merge_into_the_store(scripted, tmp_path):
    store = str(tmp_path / "s.duckdb")
    eps = [episode("Who wrote Emma?", True), episode("Who wrote Dune?", False)]
    src = write_episodes(tmp_path / "e.jsonl", eps)
    scripted.backend.models["m"] = ScriptedModel(insight_json((*RULE, ["E1"])))
    distill([src], method=["insight"], model="scripted:m", store=store, batch_episodes=2)
    con = duckdb.connect(store)
    con.execute("""UPDATE units SET stats = '{"helpful": 3, "harmful": 1, "uses": 5,
                   "per_model": {"m": {"helpful": 3, "harmful": 1, "uses": 5}}}'""")
    con.close()
    scripted.backend.models["m2"] = ScriptedModel(insight_json((*SAME_RULE, ["E2"])))
    summary = distill([src], method=["insight"], model="scripted:m2", store=store,
                      batch_episodes=2)
    assert (summary.new, summary.merged) == (0, 1)
    con = duckdb.connect(store, read_only=True)
    rows = con.execute("SELECT content, stats, evidence FROM units").fetchall()
    assert len(rows) == 1
    content, stats, evidence = rows[0][0], json.loads(rows[0][1]), json.loads(rows[0][2])
    assert content == RULE[2]
    assert (stats["helpful"], stats["harmful"], stats["uses"]) == (3, 1, 5)
    assert len(evidence) == 2
    runs = con.execute("SELECT command, status FROM runs").fetchall()
    assert runs == [("distill", "ok"), ("distill", "ok")]


def test_rerun_makes_no_model_calls_and_a_crash_resumes_from_the_cache(scripted, tmp_path):
    eps = [episode(f"Task about topic {i}", True) for i in range(20)]
    src = write_episodes(tmp_path / "e.jsonl", eps)
    model = ScriptedModel(lambda msgs: insight_json(
        (f"Rule {len(msgs[-1]['content'])}", "always, on every task",
         f"Do thing {msgs[-1]['content'][-40:]}", ["E1"])))
    scripted.backend.models["m"] = model

    def crash(_units):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill([src], method=["insight"], model="scripted:m", batch_episodes=1, sink=crash)
    done_before_crash = len(model.calls)
    assert 0 < done_before_crash < 20
    first = distill([src], method=["insight"], model="scripted:m", batch_episodes=1)
    assert first.calls == 20 and first.cached == done_before_crash
    assert len(model.calls) == 20  # only the unfinished jobs were sent to the model
    again = distill([src], method=["insight"], model="scripted:m", batch_episodes=1)
    assert again.cached == 20 and len(model.calls) == 20


def test_contrast_pairs_same_task_then_similar_task():
    win = episode("Book a flight from Boston to Denver on May 3", True)
    loss = episode("Book a flight from Boston to Denver on May 3", False, salt="x")
    similar_loss = episode("Book a flight from Boston to Denver on May 4", False)
    unrelated = episode("What is the capital of Peru?", False)
    pairs = find_pairs([unrelated, similar_loss, loss, win])
    assert [(w["episode_id"], f["episode_id"]) for w, f in pairs] == [
        (win["episode_id"], loss["episode_id"]), (win["episode_id"], similar_loss["episode_id"])]


def test_contrast_unit_points_at_both_divergent_steps(scripted, tmp_path):
    win = episode("Who directed Alien?", True, n_steps=4)
    loss = episode("Who directed Alien?", False, n_steps=3, salt="y")
    src = write_episodes(tmp_path / "e.jsonl", [win, loss])
    scripted.backend.models["m"] = ScriptedModel(json.dumps(
        {"failed_step": 2, "success_step": 1, "what_went_wrong": "searched the wrong film",
         "when": "a title names several works", "lesson": "Add the year to the search."}))
    out: list[dict] = []
    distill([src], method=["contrast"], model="scripted:m", sink=out.extend)
    assert len(out) == 1 and out[0]["kind"] == "contrast" and out[0]["polarity"] == "avoid"
    assert out[0]["evidence"] == sorted(
        [{"episode_id": win["episode_id"], "steps": [1]},
         {"episode_id": loss["episode_id"], "steps": [2]}], key=lambda e: e["episode_id"])


def test_shards_merge_to_the_same_library_in_any_order(tmp_path):
    def unit(rule, eid, helpful=0):
        return make_unit(kind="insight", title=rule[0], when=rule[1], content=rule[2],
                         evidence=[{"episode_id": eid}],
                         stats={"helpful": helpful, "harmful": 0, "uses": helpful,
                                "per_model": {}})

    shards = [[unit(RULE, "ep_a", 1), unit(OTHER_RULE, "ep_b")],
              [unit(SAME_RULE, "ep_c", 2)],
              [unit(OTHER_RULE, "ep_d"), unit(RULE, "ep_e")]]
    paths = []
    for i, shard in enumerate(shards):
        p = tmp_path / f"shard{i}.jsonl"
        p.write_bytes(b"".join(orjson.dumps(u) + b"\n" for u in shard))
        paths.append(str(p))
    results = {orjson.dumps(merge_shard_files(list(order)))
               for order in itertools.permutations(paths)}
    assert len(results) == 1
    merged = orjson.loads(results.pop())
    assert len(merged) == 2
    rule = next(u for u in merged if u["title"] == RULE[0])
    assert {e["episode_id"] for e in rule["evidence"]} == {"ep_a", "ep_c", "ep_e"}
    assert rule["stats"]["helpful"] == 3


def test_grow_adds_distinct_and_merges_identical():
    a = make_unit(kind="insight", title=RULE[0], when=RULE[1], content=RULE[2],
                  evidence=[{"episode_id": "ep_1"}])
    b = make_unit(kind="behavior", title=RULE[0], when=RULE[1], content=RULE[2],
                  evidence=[{"episode_id": "ep_2"}])
    delta = grow([a], [b, a])
    assert [u["kind"] for u in delta.added] == ["behavior"]  # another kind never merges
    assert delta.merged == {a["unit_id"]: a["unit_id"]}


def test_eviction_keeps_the_most_helpful():
    units = [make_unit(kind="insight", content=f"rule {i}", evidence=[{"episode_id": "e"}],
                       stats={"helpful": h, "harmful": x, "uses": h + x, "per_model": {}})
             for i, (h, x) in enumerate([(0, 5), (4, 0), (1, 1), (0, 0)])]
    kept, evicted = evict(units, 2)
    assert [u["content"] for u in kept] == ["rule 1", "rule 2"]
    assert {u["content"] for u in evicted} == {"rule 0", "rule 3"}


def test_merge_shards_is_idempotent():
    u = make_unit(kind="insight", content="x y z rule", evidence=[{"episode_id": "e"}])
    assert merge_shards([u]) == [u]


@pytest.mark.real_data
def test_exemplars_on_real_trajectories_are_deterministic_and_need_no_model(shared_data,
                                                                           tmp_path):
    from xpkit.core.ingest import ingest

    eps: list[dict] = []
    ingest([str(shared_data / "tau_bench_airline_gpt4o" / "gpt-4o-airline.json.gz")],
           sink=eps.extend, rejects=str(tmp_path / "r.jsonl"))
    src = write_episodes(tmp_path / "e.jsonl", eps)
    runs = []
    for _ in range(2):
        out: list[dict] = []
        summary = distill([src], method=["exemplar"], sink=out.extend,
                          model="/nonexistent.gguf")  # never loaded: exemplar needs no model
        runs.append((summary, out))
    (s1, o1), (_, o2) = runs
    strip = [{k: v for k, v in u.items() if k != "provenance"} for u in o1]
    assert strip == [{k: v for k, v in u.items() if k != "provenance"} for u in o2]
    wins = sum(1 for e in eps if e["outcome"]["success"])
    assert wins == 84 and s1.calls == 0
    assert s1.new + s1.merged == wins
    by_id = {e["episode_id"]: e for e in eps}
    for u in o1:
        for ev in u["evidence"]:
            assert by_id[ev["episode_id"]]["outcome"]["success"] is True
            assert max(ev["steps"]) < len(by_id[ev["episode_id"]]["steps"])
        assert u["content"].startswith("Task: ") and "\nAssistant: " in u["content"]
    assert sum("\nAction: " in u["content"] for u in o1) >= 0.8 * len(o1)


@pytest.mark.model
@pytest.mark.real_data
def test_insight_with_the_real_model_on_real_trajectories(shared_data, tmp_path):
    from xpkit.core.ingest import ingest
    from xpkit.plugins.distillers.insight import insight_schema

    eps: list[dict] = []
    ingest([str(shared_data / "fireact" / "trajs" /
                "hotpotqa_dev_0_500_ft_gpt-3.5-turbo-0613_princeton-nlp__7woQRsdi_0.0_"
                "2023-09-21-16-19-51.json.gz")], sink=eps.extend,
           rejects=str(tmp_path / "r.jsonl"))
    chosen = [e for e in eps if e["outcome"]["success"]][:1] + \
             [e for e in eps if e["outcome"]["success"] is False][:1]
    src = write_episodes(tmp_path / "e.jsonl", chosen)
    out: list[dict] = []
    first = distill([src], method=["insight"], batch_episodes=2, sink=out.extend,
                    rejects=str(tmp_path / "q.jsonl"))
    assert first.calls == 1 and first.cached == 0
    assert first.new + first.rejected >= 1
    ids = {e["episode_id"] for e in chosen}
    schema = insight_schema(["E1", "E2"])["properties"]["insights"]["items"]["properties"]
    for u in out:
        assert u["kind"] == "insight" and u["polarity"] in ("do", "avoid")
        assert {e["episode_id"] for e in u["evidence"]} <= ids
        assert len(u["content"]) <= schema["rule"]["maxLength"]
    out2: list[dict] = []
    again = distill([src], method=["insight"], batch_episodes=2, sink=out2.extend,
                    rejects=str(tmp_path / "q.jsonl"))
    assert again.calls == 1 and again.cached == 1  # answered from the cache: no model call
    assert [u["unit_id"] for u in out2] == [u["unit_id"] for u in out]


def test_long_episode_is_shown_as_a_named_step_window():
    from xpkit.core.distill import render_episode
    from xpkit.core.tokens import count_tokens

    steps = [make_step("user", "message", "the task")] + [
        make_step("assistant", "action", f"step text {i} " + "word " * 40) for i in range(30)]
    ep = make_episode(task="the task", steps=steps)
    text = render_episode(ep, "E1", 500)
    assert count_tokens(text) <= 500
    assert "step 0:" in text and "step 1:" in text and "step 30:" in text
    assert "[steps 2-" in text and "elided]" in text
    assert render_episode(ep, "E1", 100_000).count("step ") == 31 + 30  # nothing elided
