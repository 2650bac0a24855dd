"""The built-in input formats on the real datasets in ../shared/data.

Counts are checked against what each dataset's SOURCE.md states or against an independent
count taken from the raw file (exact-duplicate records, Reflexion's own per-trial summary
lines, ToT's 24.csv), and specific fields of specific records are pinned. docs/formats.md
lists which format and options read each layout.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xpkit.core.errors import FormatDetectionError
from xpkit.core.formats import available_formats, detect
from xpkit.core.ingest import IngestSummary, ingest
from xpkit.core.io import read_rows, resolve_inputs

pytestmark = pytest.mark.real_data

HOTPOT = "reflexion_runs/hotpotqa_runs/root"
FIREACT_TRAJS = {
    "gpt-3.5": "fireact/trajs/hotpotqa_dev_0_500_ft_gpt-3.5-turbo-0613_princeton-nlp__"
               "7woQRsdi_0.0_2023-09-21-16-19-51.json.gz",
    "llama-2-13b": "fireact/trajs/hotpotqa_dev_0_500_llama_models_lora_llama-2-13b-d_1000_0.7_"
                   "2023-09-18-13-40-08.json.gz",
    "llama-2-7b": "fireact/trajs/hotpotqa_dev_0_500_llama_models_lora_llama-2-7b-d_1000_0.7_"
                  "2023-09-19-00-49-36.json.gz",
}
TAU = "tau_bench_airline_gpt4o/gpt-4o-airline.json.gz"
LF = "llamafactory_demo_data/data"
SWE_GLOB = "swe_agent_trajectories/**/*.traj"
TOT = "tot_game24/logs/game24/gpt-4_0.7_{}_start900_end1000.json.gz"
DC = "dynamic_cheatsheet/results/AIME_2024/gpt-4o_{}.jsonl.gz"

Reader = Callable[..., tuple[IngestSummary, list[dict[str, Any]]]]


def counts(records: int, accepted: int, duplicates: int = 0, rejected: int = 0,
           episodes: int | None = None) -> dict[str, int]:
    episodes = accepted + duplicates if episodes is None else episodes
    return {"records": records, "parsed": records - rejected, "rejected": rejected,
            "episodes": episodes, "accepted": accepted, "duplicates": duplicates}


@pytest.fixture(scope="module")
def read(tmp_path_factory: pytest.TempPathFactory) -> Reader:
    """Ingest real files in-process (cached per module): (summary, accepted episodes)."""
    cache: dict[tuple, tuple[IngestSummary, list[dict[str, Any]]]] = {}
    rejects = tmp_path_factory.mktemp("rejects")

    def run(root: Path, *patterns: str, format: str = "auto",
            mapping: dict[str, str] | None = None) -> tuple[IngestSummary, list[dict]]:
        key = (patterns, format, tuple(sorted((mapping or {}).items())))
        if key not in cache:
            episodes: list[dict[str, Any]] = []
            summary = ingest([str(root / p) for p in patterns], format=format,
                             mapping=mapping, sink=episodes.extend,
                             rejects=str(rejects / f"{len(cache)}.jsonl"))
            assert summary.balanced
            cache[key] = (summary, episodes)
        return cache[key]

    return run


def by_kind(episode: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in episode["steps"] if s["kind"] == kind]


def raw_json(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)


def exact_duplicates(records: list[dict[str, Any]]) -> int:
    """Records whose full content repeats an earlier record's (the oracle for dedup)."""
    seen = collections.Counter(json.dumps(r, sort_keys=True) for r in records)
    return sum(n - 1 for n in seen.values())


# --------------------------------------------------------------------------- react

def trial_summaries(path: Path) -> dict[int, dict[str, int]]:
    """Reflexion's own ``Trial summary: Correct: a, Incorrect: b[, Halted: c]`` lines."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    out = {}
    for trial, body in re.findall(r"BEGIN TRIAL (\d+)\nTrial summary: ([^\n]*)", text):
        nums = dict(re.findall(r"(Correct|Incorrect|Halted): (\d+)", body))
        out[int(trial)] = {k.upper(): int(nums.get(k, 0))
                           for k in ("Correct", "Incorrect", "Halted")}
    return out


def trial_statuses(episodes: list[dict[str, Any]]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = collections.defaultdict(
        lambda: {"CORRECT": 0, "INCORRECT": 0, "HALTED": 0})
    for ep in episodes:
        out[ep["meta"]["trial"]][ep["meta"]["status"]] += 1
        assert ep["outcome"]["success"] is (ep["meta"]["status"] == "CORRECT")
    return dict(out)


def test_react_hotpotqa_logs_end_to_end(shared_data: Path, xpkit: Any, tmp_path: Path) -> None:
    proc = xpkit("ingest", str(shared_data / HOTPOT / "ReAct/**/*.txt.gz"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    # 745 duplicates: the 5-trial and trials-6-to-7 files repeat the 7-trial run (498 + 197),
    # 36 trial-1 trajectories of the Reflexion run equal the base run's, and 12 + 2 agents
    # are listed twice within a trial (see test_react_base_run_reconciles...).
    assert "ingest: 2,021 records read: 1,276 episodes accepted, 745 duplicates, 0 rejected" \
        in proc.stderr.decode()
    assert len(proc.stdout.splitlines()) == 1276
    assert not (tmp_path / "xpkit.rejects.jsonl").exists()


def test_react_base_run_reconciles_with_its_trial_summaries(shared_data: Path,
                                                            read: Reader) -> None:
    rel = f"{HOTPOT}/ReAct/base/100_questions_5_trials.txt.gz"
    summary, episodes = read(shared_data, rel)
    # 512 blocks: 12 agents that finished on their last step are listed under INCORRECT
    # and again under HALTED; both copies are the same episode.
    assert summary.counts() == counts(512, 500, duplicates=12)
    got, want = trial_statuses(episodes), trial_summaries(shared_data / rel)
    assert got[1] == want[1] == {"CORRECT": 34, "INCORRECT": 56, "HALTED": 10}
    for trial in (1, 2, 4, 5):
        assert got[trial] == want[trial]
    # Trial 3's own summary adds up to 99 agents; the log lists 100 (10 halted, not 9).
    assert sum(want[3].values()) == 99
    assert got[3] == {**want[3], "HALTED": 10}

    first = episodes[0]
    assert first["task"] == "Which of Jonny Craig and Pete Doherty has been a member of " \
                            "more bands ?"
    assert len(first["steps"]) == 10  # the question, then 3 x thought/action/observation
    assert first["steps"][2] == {"role": "assistant", "kind": "action",
                                 "content": "Search[Jonny Craig]", "name": "Search",
                                 "args": {"input": "Jonny Craig"}}
    assert first["outcome"] == {"success": True, "reward": None, "score": None}
    assert (first["answer"], first["reference"]) == ("Jonny Craig", 'Jonny" Craig')
    assert first["meta"] == {"trial": 1, "status": "CORRECT"}


@pytest.mark.parametrize("rel", [
    "ReAct/reflexion/100_questions_5_trials.txt.gz",
    "ReAct/reflexion/100_questions_7_trials.txt.gz",
    "ReAct/reflexion/100_questions_trials_6_to_7.txt.gz",
    "CoT/context/last_trial/100_questions_8_trials.txt.gz",
    "CoT/context/last_trial_and_reflexion/100_questions_5_trials.txt.gz",
    "CoT/context/reflexion/100_questions_5_trials.txt.gz",
    "CoT/context/reflexion/100_questions_8_trials.txt.gz",
    "CoT/no_context/base/100_questions_5_trials.txt.gz",
    "CoT/no_context/last_trial/100_questions_6_trials.txt.gz",
    "CoT/no_context/last_trial_and_reflexion/100_questions_5_trials.txt.gz",
    "CoT/no_context/reflexion/100_questions_5_trials.txt.gz",
])
def test_reflexion_logs_reconcile_per_trial(shared_data: Path, read: Reader, rel: str) -> None:
    summary, episodes = read(shared_data, f"{HOTPOT}/{rel}")
    want = trial_summaries(shared_data / HOTPOT / rel)
    assert summary.rejected == 0 and summary.duplicates == 0
    assert summary.accepted == sum(sum(t.values()) for t in want.values())
    assert trial_statuses(episodes) == want
    assert all(ep["task"] and ep["reference"] for ep in episodes)


def test_react_reflexion_carried_over_agents_and_reflections(shared_data: Path,
                                                             read: Reader) -> None:
    summary, episodes = read(shared_data, f"{HOTPOT}/ReAct/reflexion/100_questions_7_trials.txt.gz")
    assert summary.counts() == counts(695, 695)
    carried = [ep for ep in episodes if ep["meta"].get("carried_over")]
    # Trials 6-7 list the 51 agents solved by trial 5 without their scratchpad.
    assert collections.Counter(ep["meta"]["trial"] for ep in carried) == {6: 51, 7: 51}
    assert all(len(ep["steps"]) == 1 and ep["outcome"]["success"] for ep in carried)
    retry = next(ep for ep in episodes if ep["meta"]["trial"] == 2 and ep["meta"].get(
        "reflections") and ep["task"].startswith("The creator of \"Wallace and Gromit\""))
    assert "You have attempted" not in retry["task"]
    assert retry["meta"]["reflections"][0].startswith("I got stuck in a loop")
    assert retry["steps"][1]["kind"] == "thought"


def test_react_cot_context_logs(shared_data: Path, read: Reader) -> None:
    _, episodes = read(shared_data, f"{HOTPOT}/CoT/context/reflexion/100_questions_5_trials.txt.gz")
    second = episodes[1]  # its question ends the last context paragraph, on the same line
    assert second["task"] == "Where was the first governor after the The Missouri Compromise from?"
    assert second["meta"]["context"].startswith("Context: The 1820 Maine gubernatorial")
    assert [s["kind"] for s in second["steps"]] == ["message", "thought", "action",
                                                    "observation"]
    assert (second["answer"], second["reference"]) == ("Bath, Maine", "Bath, Maine")


@pytest.mark.parametrize(("model", "records", "rewarded"), [
    ("gpt-3.5", 465, 200), ("llama-2-13b", 499, 172), ("llama-2-7b", 500, 131)])
def test_fireact_trajectories(shared_data: Path, read: Reader, model: str, records: int,
                              rewarded: int) -> None:
    summary, episodes = read(shared_data, FIREACT_TRAJS[model])
    assert summary.formats == {str(shared_data / FIREACT_TRAJS[model]): "react"}
    assert summary.counts() == counts(records, records)
    assert sum(ep["outcome"]["success"] for ep in episodes) == rewarded
    assert all(ep["outcome"]["reward"] == float(ep["outcome"]["success"]) for ep in episodes)
    assert all(ep["outcome"]["score"] is not None for ep in episodes)  # f1
    first = episodes[0]
    assert first["task"] == "Who created the show with Wendy Schaal doing the voice of Francine?"
    assert first["outcome"] == {"success": True, "reward": 1.0, "score": 1.0}
    assert (first["answer"], first["reference"]) == ("seth macfarlane", "seth macfarlane")
    assert first["meta"]["_key"] == "6238"
    assert "traj_by_line" not in first["meta"]
    assert first["steps"][0]["role"] == "user"
    assert by_kind(first, "action")[-1]["name"] == "finish"
    assert by_kind(first, "action")[-1]["args"] == {"input": "Seth MacFarlane"}


def test_fireact_auto_detection_end_to_end(shared_data: Path, xpkit: Any,
                                           tmp_path: Path) -> None:
    proc = xpkit("ingest", str(shared_data / FIREACT_TRAJS["gpt-3.5"]), cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "detected format react" in err
    assert "ingest: 465 records read: 465 episodes accepted, 0 duplicates, 0 rejected" in err


# --------------------------------------------------------------------------- openai-chat

def test_tau_bench_tool_calls_and_rewards(shared_data: Path, read: Reader) -> None:
    summary, episodes = read(shared_data, TAU)
    assert summary.formats[str(shared_data / TAU)] == "openai-chat"
    assert summary.counts() == counts(200, 200)
    assert collections.Counter(ep["outcome"]["reward"] for ep in episodes) == {0.0: 116, 1.0: 84}
    assert sum(ep["outcome"]["success"] for ep in episodes) == 84
    # The task is the user goal (info.task.instruction): one per task_id, shared by trials.
    assert len({ep["task"] for ep in episodes}) == len({ep["meta"]["task_id"]
                                                        for ep in episodes}) == 50
    assert all(ep["task"] == ep["meta"]["info"]["task"]["instruction"] for ep in episodes)
    steps = collections.Counter((s["role"], s["kind"]) for ep in episodes for s in ep["steps"])
    assert steps == {("system", "message"): 200, ("user", "message"): 1490,
                     ("assistant", "message"): 1380, ("assistant", "action"): 1164,
                     ("tool", "observation"): 1164}
    first = episodes[0]
    assert first["task"].startswith("You are mia_li_3668. You want to fly from New York to "
                                    "Seattle on May 20 (one way).")
    assert first["outcome"] == {"success": False, "reward": 0.0, "score": None}
    action = by_kind(first, "action")[0]
    assert (action["name"], action["args"]) == ("get_user_details", {"user_id": "mia_li_3668"})
    assert by_kind(first, "observation")[0]["name"] == "get_user_details"
    assert first["meta"]["trial"] == 0


def test_fireact_chat_fine_tuning_sets(shared_data: Path, read: Reader) -> None:
    files = ["hotpotqa", "hotpotqa_multimethod", "multitask", "multitask_multimethod"]
    sizes = []
    for name in files:
        rel = f"fireact/data/finetune/gpt_format/{name}.jsonl.gz"
        summary, episodes = read(shared_data, rel)
        assert summary.formats[str(shared_data / rel)] == "openai-chat"
        raw = [json.loads(line) for line in
               gzip.decompress((shared_data / rel).read_bytes()).splitlines()]
        assert summary.duplicates == exact_duplicates(raw)
        assert summary.records == len(raw)
        sizes.append(summary.records)
    assert sizes == [500, 733, 1344, 2063]
    _, episodes = read(shared_data, "fireact/data/finetune/gpt_format/hotpotqa.jsonl.gz")
    first = episodes[0]
    assert first["task"].startswith("Who was once considered the best kick boxer in the world")
    assert [s["name"] for s in by_kind(first, "action")] == ["search", "finish"]
    assert first["answer"] == "Badr Hari"  # the Finish argument
    assert by_kind(first, "observation")[-1]["content"] == "Episode finished, reward = True"


# --------------------------------------------------------------------------- sharegpt, alpaca

def test_llamafactory_alpaca_finds_all_14_duplicates(shared_data: Path, xpkit: Any,
                                                     tmp_path: Path) -> None:
    path = shared_data / LF / "alpaca_en_demo.json.gz"
    assert exact_duplicates(raw_json(path)) == 14
    proc = xpkit("ingest", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "ingest: 999 records read: 985 episodes accepted, 14 duplicates, 0 rejected" \
        in proc.stderr.decode()
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["source"]["format"] == "alpaca"
    assert first["task"] == raw_json(path)[0]["instruction"]
    assert first["answer"] == raw_json(path)[0]["output"]
    assert [s["role"] for s in first["steps"]] == ["user", "assistant"]


def test_glaive_tool_calls_duplicates_are_real(shared_data: Path, read: Reader) -> None:
    path = shared_data / LF / "glaive_toolcall_en_demo.json.gz"
    raw = raw_json(path)
    summary, episodes = read(shared_data, f"{LF}/glaive_toolcall_en_demo.json.gz")
    assert summary.formats[str(path)] == "sharegpt"
    assert summary.counts() == counts(300, 265, duplicates=35)
    # 35 records repeat another one exactly; comparing conversations alone would find 38,
    # so the tools schema is part of the episode (kept in meta) and nothing is dropped.
    assert exact_duplicates(raw) == 35
    assert exact_duplicates([r["conversations"] for r in raw]) == 38
    assert all(ep["meta"] == {"tools": raw[i]["tools"]} for i, ep in enumerate(episodes[:5]))
    kept = {json.dumps(r, sort_keys=True): r for r in raw}
    turns = collections.Counter(t["from"] for r in kept.values() for t in r["conversations"])
    steps = collections.Counter((s["role"], s["kind"]) for ep in episodes for s in ep["steps"])
    assert steps[("assistant", "action")] == turns["function_call"]
    assert steps[("tool", "observation")] == turns["observation"]
    first = episodes[0]
    action = by_kind(first, "action")[0]
    assert action["name"] == "search_recipes"
    assert action["args"] == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert first["task"] == "Hi, I have some ingredients and I want to cook something. Can " \
                            "you help me find a recipe?"


def test_llamafactory_preference_sets(shared_data: Path, read: Reader) -> None:
    dpo = f"{LF}/dpo_en_demo.json.gz"
    summary, episodes = read(shared_data, dpo)
    assert summary.formats[str(shared_data / dpo)] == "sharegpt"
    assert summary.counts() == counts(300, 295, duplicates=5)
    assert exact_duplicates(raw_json(shared_data / dpo)) == 5
    assert set(episodes[0]["meta"]) == {"chosen", "rejected"}
    kto = f"{LF}/kto_en_demo.json.gz"
    summary, episodes = read(shared_data, kto)
    assert summary.formats[str(shared_data / kto)] == "openai-chat"
    assert summary.counts() == counts(300, 300)
    assert set(episodes[0]["meta"]) == {"label"}


@pytest.mark.parametrize(("name", "records", "duplicates"), [
    ("random/random_9k", 9229, 0), ("filtered/claude_t45", 5305, 0),
    ("filtered/helpfulness_t45", 2022, 0), ("filtered/dolly_3k", 2996, 1)])
def test_alpagasus_selections(shared_data: Path, read: Reader, name: str, records: int,
                              duplicates: int) -> None:
    rel = f"alpagasus_selections/data/{name}.json.gz"
    raw = raw_json(shared_data / rel)
    summary, episodes = read(shared_data, rel)
    assert summary.formats[str(shared_data / rel)] == "alpaca"
    assert summary.counts() == counts(records, records - duplicates, duplicates=duplicates)
    assert exact_duplicates(raw) == duplicates
    first, rec = episodes[0], raw[0]
    want = f"{rec['instruction']}\n\n{rec['input']}" if rec["input"] else rec["instruction"]
    assert (first["task"], first["answer"]) == (want, rec["output"])
    if name == "filtered/dolly_3k":
        assert first["meta"] == {"category": rec["category"]}


# --------------------------------------------------------------------------- swe-agent

def test_swe_agent_trajectories_end_to_end(shared_data: Path, xpkit: Any,
                                           tmp_path: Path) -> None:
    proc = xpkit("ingest", str(shared_data / SWE_GLOB), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "ingest: 22 records read: 22 episodes accepted, 0 duplicates, 0 rejected" \
        in proc.stderr.decode()
    assert not (tmp_path / "xpkit.rejects.jsonl").exists()


def test_swe_agent_fields(shared_data: Path, read: Reader) -> None:
    summary, episodes = read(shared_data, SWE_GLOB)
    assert summary.counts() == counts(22, 22)
    eps = {Path(ep["source"]["file"]).name: ep for ep in episodes}
    demo = eps["function_calling_simple.traj"]  # history only, function calling
    assert demo["task"].startswith("SyntaxError: invalid syntax\nI'm running `missing_colon.py`")
    assert [s["name"] for s in by_kind(demo, "action")] == ["find_file", "open", "edit",
                                                            "python", "submit"]
    assert by_kind(demo, "action")[0]["args"] == {"command": "find_file missing_colon.py"}
    assert "+def division(a: float, b: float) -> float:" in demo["answer"]
    pydicom = eps["pydicom__pydicom-1458.traj"]  # its first user message is a demonstration
    assert pydicom["task"].startswith("Pixel Representation attribute should be optional")
    assert len(by_kind(pydicom, "action")) == 12
    assert pydicom["meta"]["exit_status"] == "submitted"
    assert pydicom["answer"].startswith("\ndiff --git a/pydicom/pixel_data_handlers")
    assert sum(ep["meta"].get("exit_status") == "submitted" for ep in episodes) == 21
    assert all(ep["steps"][0]["role"] == "system" for ep in episodes)
    assert all(ep["outcome"] == {"success": None, "reward": None, "score": None}
               for ep in episodes)


# --------------------------------------------------------------------------- graded-qa

def test_gsm8k_model_solutions(shared_data: Path, read: Reader) -> None:
    summary, episodes = read(shared_data, "gsm8k/example_model_solutions.jsonl.gz")
    assert summary.counts() == counts(1319, 5276)
    correct = collections.Counter(ep["model"] for ep in episodes if ep["outcome"]["success"])
    assert correct == {"6b_finetuning": 286, "6b_verification": 515, "175b_finetuning": 458,
                       "175b_verification": 742}
    first = episodes[0]
    assert first["task"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert first["reference"].endswith("at the farmer’s market.\nA: 18")
    assert first["meta"] == {"system": "6b_finetuning"}
    assert first["answer"] == first["steps"][1]["content"]
    summary, episodes = read(shared_data, "gsm8k/test.jsonl")
    assert summary.counts() == counts(1319, 1319)
    assert episodes[0]["reference"].endswith("#### 18") and episodes[0]["answer"] is None


@pytest.mark.parametrize(("log", "episodes_n", "solved"), [
    ("propose1_value3_greedy5", 500, 69), ("naive_cot_sample_100", 10000, 49),
    ("naive_standard_sample_100", 10000, 33)])
def test_tot_game24_one_episode_per_sample(shared_data: Path, read: Reader, log: str,
                                           episodes_n: int, solved: int) -> None:
    summary, episodes = read(shared_data, TOT.format(log))
    assert summary.counts() == counts(100, episodes_n)
    assert len({ep["meta"]["idx"] for ep in episodes if ep["outcome"]["success"]}) == solved
    if log.startswith("propose"):
        rows = (shared_data / "tot_game24/data/24.csv").read_text().splitlines()[1:]
        puzzles = {int(r.split(",")[0]): r.split(",")[1] for r in rows}
        assert all(ep["task"] == puzzles[ep["meta"]["idx"] + 1] for ep in episodes)
        assert episodes[0]["task"] == "4 5 6 10"
        assert episodes[0]["outcome"] == {"success": True, "reward": 1.0, "score": None}
    else:
        assert all(ep["task"] is None for ep in episodes)  # the log holds no puzzle


@pytest.mark.parametrize(("method", "naive_matches"), [
    ("Baseline", 6), ("DynamicCheatsheet_Cumulative", 11)])
def test_dynamic_cheatsheet_results(shared_data: Path, read: Reader, method: str,
                                    naive_matches: int) -> None:
    summary, episodes = read(shared_data, DC.format(method))
    assert summary.counts() == counts(30, 30)
    assert sum(ep["answer"] == ep["reference"] for ep in episodes) == naive_matches
    assert all(ep["outcome"]["success"] is None for ep in episodes)  # the files hold no grade
    first = episodes[0]
    assert first["task"].startswith("Find the number of rectangles that can be formed inside")
    assert first["meta"]["input"].startswith("Question #1:")
    assert first["reference"] == "315"
    assert len(first["steps"][1]["content"]) > len(first["answer"])  # the full output


# --------------------------------------------------------------------------- --map

def test_hh_rlhf_transcripts(shared_data: Path, read: Reader) -> None:
    summary, episodes = read(shared_data, "hh_rlhf_harmless_base_test/harmless-base/test.jsonl.gz",
                             mapping={"transcript": "chosen"})
    assert summary.counts() == counts(2312, 2312)
    first = episodes[0]
    assert first["task"] == "what are some pranks with a pen i can do?"
    assert [s["role"] for s in first["steps"]] == ["user", "assistant"] * 3
    assert first["answer"].startswith("No, sorry!  All of these involve a pen")
    assert first["meta"]["rejected"].startswith("\n\nHuman: what are some pranks with a pen")
    assert all(ep["steps"][0]["role"] == "user" for ep in episodes)


def test_alphaopt_tasks(shared_data: Path, read: Reader) -> None:
    rel = "alphaopt_experience_library/data/optimization_tasks/train/train_data_all_452.json"
    summary, episodes = read(shared_data, rel,
                             mapping={"task": "description", "reference": "ground_truth"})
    assert summary.counts() == counts(452, 452)
    first = episodes[0]
    assert first["task"].startswith("A car manufacturing company makes hamburgers")
    assert first["reference"] == "22.75"
    assert first["meta"]["task_id"] == "A171" and "description" not in first["meta"]


def test_reflexion_alfworld_env_results(shared_data: Path, read: Reader) -> None:
    mapping = {"task": "name", "success": "is_success"}
    wins = []
    for trial in range(7):
        rel = f"reflexion_runs/alfworld_runs/root/base_run_logs/env_results_trial_{trial}.json"
        summary, episodes = read(shared_data, rel, mapping=mapping)
        assert summary.counts() == counts(134, 134)
        wins.append(sum(ep["outcome"]["success"] for ep in episodes))
    assert wins == [84, 94, 97, 98, 100, 101, 101]
    assert episodes[0]["task"] == "env_0" and "memory" in episodes[0]["meta"]


# --------------------------------------------------------------------------- --format auto

@pytest.mark.parametrize(("rel", "expected"), [
    (FIREACT_TRAJS["gpt-3.5"], "react"),
    (FIREACT_TRAJS["llama-2-7b"], "react"),
    (TAU, "openai-chat"),
    ("fireact/data/finetune/gpt_format/multitask.jsonl.gz", "openai-chat"),
    ("fireact/data/finetune/alpaca_format/multitask.json.gz", "alpaca"),
    (f"{LF}/alpaca_en_demo.json.gz", "alpaca"),
    (f"{LF}/glaive_toolcall_en_demo.json.gz", "sharegpt"),
    (f"{LF}/dpo_en_demo.json.gz", "sharegpt"),
    (f"{LF}/kto_en_demo.json.gz", "openai-chat"),
    ("alpagasus_selections/data/filtered/dolly_3k.json.gz", "alpaca"),
    ("gsm8k/example_model_solutions.jsonl.gz", "graded-qa"),
    ("gsm8k/test.jsonl", "graded-qa"),
    (TOT.format("naive_cot_sample_100"), "graded-qa"),
    (DC.format("Baseline"), "graded-qa"),
    ("hh_rlhf_harmless_base_test/harmless-base/test.jsonl.gz", None),
    ("alphaopt_experience_library/data/optimization_tasks/train/train_data_all_452.json", None),
    ("reflexion_runs/alfworld_runs/root/base_run_logs/env_results_trial_0.json", None),
    ("alpagasus_selections/test_data/koala_test_set.jsonl", None),
])
def test_auto_detection(shared_data: Path, rel: str, expected: str | None) -> None:
    (source,) = resolve_inputs([str(shared_data / rel)])
    rows = next(read_rows(source))
    if expected is None:  # no built-in format fits: the error says to use --map
        with pytest.raises(FormatDetectionError, match=r"cannot tell the format.*--map"):
            detect(source.name, rows, available_formats())
    else:
        detection = detect(source.name, rows, available_formats())
        assert detection.format.name == expected
        assert detection.score - detection.ranking[1][1] >= 0.1
