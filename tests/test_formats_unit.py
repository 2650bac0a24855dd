"""Unit tests of the built-in input formats on small synthetic records (no ../shared needed).

The records mimic the real layouts the parsers were written for (FireAct, tau-bench,
LLaMA-Factory, SWE-agent, Reflexion logs, GSM8K, Tree-of-Thoughts, Dynamic Cheatsheet,
HH-RLHF); ``test_formats_real.py`` checks the same parsers on the real files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from xpkit.core.errors import FormatDetectionError, RecordError
from xpkit.core.formats import FormatOptions, available_formats, detect, get_format
from xpkit.core.ingest import ingest
from xpkit.core.io import SourceRow
from xpkit.plugins.formats import fields
from xpkit.plugins.formats.react import read_reflexion_log, split_react_text, task_from_prompt
from xpkit.plugins.formats.swe_agent import issue_text

OPTS = FormatOptions()


def parse(fmt: str, record: dict[str, Any], **options: Any) -> Any:
    return get_format(fmt).parse(record, FormatOptions(**options))


def kinds(episode: dict[str, Any]) -> list[str]:
    return [f"{s['role']}:{s['kind']}" for s in episode["steps"]]


def detect_records(records: list[dict[str, Any]]) -> str:
    rows = [SourceRow("mem.jsonl", i, r) for i, r in enumerate(records, 1)]
    return detect("mem.jsonl", rows, available_formats()).format.name


# --------------------------------------------------------------------------- shared helpers

def test_find_outcome_reads_text_rewards_and_derives_success() -> None:
    outcome, used = fields.find_outcome({"reward": "0.0", "task_id": 3})
    assert outcome == {"success": False, "reward": 0.0, "score": None}
    assert used == {"reward"}
    outcome, used = fields.find_outcome({"reward": True, "em": True, "f1": 0.5})
    assert outcome == {"success": True, "reward": 1.0, "score": 0.5}
    assert used == {"reward", "em", "f1"}


def test_find_outcome_looks_into_named_containers_without_consuming_them() -> None:
    outcome, used = fields.find_outcome({"info": {"resolved": True}}, "info")
    assert outcome["success"] is True
    assert used == set()


def test_find_outcome_rejects_a_bad_flag_naming_the_field() -> None:
    with pytest.raises(RecordError) as exc:
        fields.find_outcome({"is_correct": "maybe"})
    assert exc.value.field == "outcome.success"


def test_carries_trajectory() -> None:
    assert fields.carries_trajectory({"traj": [{"role": "user", "content": "q"}]})
    assert fields.carries_trajectory({"traj": "Question: q\nThought 1: hm\nAction 1: x[y]"})
    assert not fields.carries_trajectory({"question": "q", "steps": [{"round": 0}]})
    assert not fields.carries_trajectory({"history": [["q", "a"]]})


def test_content_text_joins_parts_and_rejects_other_types() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert fields.content_text(parts, "c") == "ab"
    with pytest.raises(RecordError, match="expected text content"):
        fields.content_text(3, "messages.0.content")


def test_get_path_and_parse_json_text() -> None:
    assert fields.get_path({"a": [{"b": 1}]}, "a.0.b") == 1
    assert fields.get_path({"a": []}, "a.0.b", "none") == "none"
    assert fields.parse_json_text('{"x": 1}') == {"x": 1}
    assert fields.parse_json_text("not json") == "not json"


# --------------------------------------------------------------------------- react

def test_split_react_text_numbered_markers_and_tool_calls() -> None:
    steps = split_react_text("Thought 1: look it up\nAction 1: Search[Nick Park]\n"
                             "Observation 1: Nick Park is a British animator.\nmore text\n"
                             "Action 2: Finish[Creature Comforts]")
    assert [s["kind"] for s in steps] == ["thought", "action", "observation", "action"]
    assert steps[1]["name"] == "Search" and steps[1]["args"] == {"input": "Nick Park"}
    assert steps[2]["content"] == "Nick Park is a British animator.\nmore text"
    assert steps[2]["role"] == "environment"


def test_split_react_text_alfworld_lines() -> None:
    steps = split_react_text("You are in a room.\n> think: find the egg\nOK.\n> go to fridge 1\n"
                             "The fridge 1 is closed.")
    assert [(s["role"], s["kind"]) for s in steps] == [
        ("environment", "observation"), ("assistant", "thought"), ("assistant", "action"),
        ("environment", "observation")]
    assert steps[2]["content"] == "go to fridge 1"


@pytest.mark.parametrize(("prompt", "task"), [
    ("Below is an instruction.\n\n### Instruction:\nWho created X?\n\n### Response:\n",
     "Who created X?"),
    ("You are in the middle of a room.\nYour task is to: put a clean egg in microwave.",
     "put a clean egg in microwave."),
    ("Question: What year?", "What year?"),
    ("just a prompt", "just a prompt"),
])
def test_task_from_prompt(prompt: str, task: str) -> None:
    assert task_from_prompt(prompt) == task


def test_react_fireact_message_trajectory() -> None:
    record = {"_key": "6238", "reward": True, "em": True, "f1": 1.0, "gt": "seth macfarlane",
              "pred": "seth macfarlane", "prompt": [], "traj": [
                  {"role": "user", "content": "Who created the show?"},
                  {"role": "assistant",
                   "content": "Thought: It is American Dad.\nAction: finish[Seth MacFarlane]"},
                  {"role": "user", "content": "Observation: Episode finished, reward = True"}]}
    ep = parse("react", record)
    assert ep["task"] == "Who created the show?"
    assert kinds(ep) == ["user:message", "assistant:thought", "assistant:action",
                         "environment:observation"]
    assert ep["outcome"] == {"success": True, "reward": 1.0, "score": 1.0}
    assert (ep["answer"], ep["reference"]) == ("seth macfarlane", "seth macfarlane")
    assert ep["meta"] == {"_key": "6238", "prompt": []}


def test_react_text_trajectory_without_task_reads_the_prompt() -> None:
    traj = ("Below is an instruction that describes a task.\n\n### Instruction:\nWho won?\n\n"
            "### Response:\nThought: search it\nAction: search[winner]\nObservation: Bob won.\n"
            "Thought: done\nAction: finish[Bob]\nObservation: Episode finished, reward = True\n")
    ep = parse("react", {"traj": traj, "traj_by_line": traj.splitlines(), "reward": False,
                         "gt": "alice", "pred": "bob"})
    assert ep["task"] == "Who won?"
    assert ep["steps"][0]["role"] == "user" and "### Instruction:" in ep["steps"][0]["content"]
    assert "traj_by_line" not in ep["meta"]
    assert ep["outcome"]["success"] is False


def test_react_finish_argument_is_the_answer_and_status_sets_success() -> None:
    ep = parse("react", {"question": "Q?", "trajectory": "Thought 1: x\nAction 1: Finish[42]",
                         "status": "halted", "trial": 2})
    assert ep["answer"] == "42"
    assert ep["outcome"]["success"] is False
    assert ep["meta"] == {"trial": 2, "status": "HALTED"}


def test_react_rejects_a_trajectory_without_steps() -> None:
    with pytest.raises(RecordError) as exc:
        parse("react", {"question": "Q?", "trajectory": "just prose"})
    assert exc.value.field == "trajectory"
    with pytest.raises(RecordError, match="missing a trajectory"):
        parse("react", {"question": "Q?"})


def test_react_accepts_a_carried_over_agent() -> None:
    ep = parse("react", {"question": "Q?", "trajectory": "", "status": "CORRECT",
                         "carried_over": True, "correct_answer": "A"})
    assert ep["outcome"]["success"] is True
    assert kinds(ep) == ["user:message"]
    assert ep["meta"]["carried_over"] is True and ep["reference"] == "A"


REFLEXION_LOG = """
########################################
BEGIN TRIAL 1
Trial summary: Correct: 1, Incorrect: 1, Halted: 0
#######################################
------------- BEGIN CORRECT AGENTS -------------

Question:  Which band?
Thought 1: search it
Action 1: Search[band]
Observation 1: It is Creed.
Multi-line observation.
Action 2: Finish[Creed]
Observation 2: Answer is CORRECT
Correct answer: Creed

------------- BEGIN INCORRECT AGENTS -----------

Question: What year?
Thought 1: guess
Action 1: Finish[1999]
Observation 1: Answer is INCORRECT
Correct answer: 2004

------------- BEGIN HALTED AGENTS --------------

Question: What year?
Thought 1: guess
Action 1: Finish[1999]
Observation 1: Answer is INCORRECT
Correct answer: 2004

########################################
BEGIN TRIAL 2
Trial summary: Correct: 2, Incorrect: 0, Halted: 0
#######################################
------------- BEGIN CORRECT AGENTS -------------

Question: Which band? You have attempted to answer following question before and failed.
Correct answer: Creed

Question: What year?You have attempted to answer following question before and failed.
Reflections:
- I guessed; I should search first.
Thought 1: search
Action 1: Finish[2004]
Observation 1: Answer is CORRECT
Correct answer: 2004
"""


def test_read_reflexion_log_blocks_trials_statuses_and_reflections() -> None:
    rows = list(read_reflexion_log("log.txt", io.BytesIO(REFLEXION_LOG.encode())))
    recs = [r.value for r in rows]
    assert [r.line for r in rows] == [8, 19, 27, 39, 42]
    assert [(r["trial"], r["status"]) for r in recs] == [
        (1, "CORRECT"), (1, "INCORRECT"), (1, "INCORRECT"), (2, "CORRECT"), (2, "CORRECT")]
    assert recs[0]["question"] == "Which band?"
    assert recs[0]["correct_answer"] == "Creed"
    assert "Multi-line observation." in recs[0]["trajectory"]
    # The HALTED copy of an agent that finished on its last step is the INCORRECT record.
    assert recs[2] == recs[1]
    assert recs[3] == {"question": "Which band?", "trajectory": "", "status": "CORRECT",
                       "correct_answer": "Creed", "trial": 2, "carried_over": True}
    assert recs[4]["question"] == "What year?"
    assert recs[4]["reflections"] == ["I guessed; I should search first."]
    assert recs[4]["trajectory"].startswith("Thought 1: search")


def test_reflexion_log_through_ingest_counts_the_double_listing_as_a_duplicate(
        tmp_path: Path) -> None:
    log = tmp_path / "run.txt"
    log.write_text(REFLEXION_LOG)
    got: list[dict[str, Any]] = []
    # An explicit --format react on a .txt file must reach the format's own reader.
    summary = ingest([str(log)], format="react", sink=got.extend,
                     rejects=str(tmp_path / "rejects.jsonl"))
    assert summary.counts() == {"records": 5, "parsed": 5, "rejected": 0, "episodes": 5,
                                "accepted": 4, "duplicates": 1}
    assert [e["outcome"]["success"] for e in got] == [True, False, True, True]
    assert got[0]["steps"][2] == {"role": "assistant", "kind": "action",
                                  "content": "Search[band]", "name": "Search",
                                  "args": {"input": "band"}}


def test_reflexion_cot_layouts() -> None:
    text = ("------------- BEGIN CORRECT AGENTS -------------\n\n"
            "Context: Para one.\n\nPara two. Question: Who is it?\n"
            "Thought: The context says Bob.\nAction: Finish[Bob]\nObservation: Answer is CORRECT\n"
            "Reflections: \nThought: Earlier I said Al.\nAction: Finish[Al]\n"
            "Observation: Answer is INCORRECT\nCorrect answer: Bob\n")
    (row,) = read_reflexion_log("cot.txt", io.BytesIO(text.encode()))
    rec = row.value
    assert rec["question"] == "Who is it?"
    assert rec["context"] == "Context: Para one.\n\nPara two."
    assert rec["status"] == "CORRECT"  # the replayed earlier attempt is not this one
    assert rec["reflections"] == ["Thought: Earlier I said Al.\nAction: Finish[Al]\n"
                                  "Observation: Answer is INCORRECT"]
    assert "Finish[Al]" not in rec["trajectory"]


def test_reflexion_log_blocks_without_correct_answer_lines() -> None:
    text = ("Question: one?\nThought 1: a\nAction 1: Finish[a]\n"
            "Observation 1: Answer is CORRECT\n\n"
            "Question: two?\nThought 1: b\nAction 1: Finish[b]\n\nReflection: try harder\n")
    recs = [r.value for r in read_reflexion_log("t.txt", io.BytesIO(text.encode()))]
    assert [r["question"] for r in recs] == ["one?", "two?"]
    assert recs[0]["status"] == "CORRECT" and "status" not in recs[1]
    assert recs[1]["reflections"] == ["try harder"]


def test_reflexion_log_rejects_a_block_with_invalid_utf8() -> None:
    data = b"Question: ok?\nThought 1: a\nAction 1: Finish[a]\nCorrect answer: a\n" \
           b"Question: bad \xff?\nThought 1: b\nAction 1: Finish[b]\nCorrect answer: b\n"
    rows = list(read_reflexion_log("t.txt", io.BytesIO(data)))
    assert rows[0].value is not None and rows[0].error is None
    assert rows[1].value is None and rows[1].line == 5
    assert rows[1].error == "invalid UTF-8 at byte 14 of line 5"


# --------------------------------------------------------------------------- detection

FIREACT_RECORD = {"reward": True, "em": True, "f1": 1.0, "gt": "x", "pred": "x", "prompt": [],
                  "traj": [{"role": "user", "content": "Q?"},
                           {"role": "assistant", "content": "Thought: t\nAction: finish[x]"},
                           {"role": "user", "content": "Observation: done"}]}


def test_graded_qa_sniffs_low_on_a_trajectory_and_react_wins() -> None:
    graded = get_format("graded-qa")
    assert graded.sniff(FIREACT_RECORD) < 0.5
    assert detect_records([FIREACT_RECORD] * 3) == "react"


@pytest.mark.parametrize(("record", "expected"), [
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "hi"}], "tools": "[]"}, "sharegpt"),
    ({"messages": [{"role": "user", "content": "hi"}], "label": True}, "openai-chat"),
    ({"question": "q", "ground_truth": "g",
      "m1": {"solution": "s", "is_correct": True}}, "graded-qa"),
    ({"idx": 1, "ys": ["a", "b"], "infos": [{"r": 1}, {"r": 0}]}, "graded-qa"),
    ({"input": "Q #1", "raw_input": "q", "target": "1", "final_answer": "2"}, "graded-qa"),
    ({"trajectory": [{"action": "ls", "observation": "x"}], "info": {}}, "swe-agent"),
])
def test_detect_picks_the_format(record: dict[str, Any], expected: str) -> None:
    assert detect_records([record]) == expected


def test_detect_refuses_records_no_format_fits() -> None:
    with pytest.raises(FormatDetectionError, match=r"cannot tell the format .*fields: chosen"):
        detect_records([{"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"}])


def test_get_format_returns_the_registered_instance() -> None:
    # The ingest core compares the format a file suffix claims with the one named by
    # --format; both lookups must yield the same object.
    assert get_format("react") is available_formats()["react"]
    assert get_format("swe-agent") is available_formats()["swe-agent"]


# --------------------------------------------------------------------------- chat formats

TAU_RECORD = {
    "task_id": 0, "trial": 1, "reward": "1.0",
    "info": {"task": {"user_id": "mia", "instruction": "You are mia. Book a flight.",
                      "actions": [{"name": "book", "kwargs": {}}]}},
    "traj": [
        {"role": "system", "content": "# Policy"},
        {"role": "user", "content": "Hi! I want a flight."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_user_details", "arguments": "{\"user_id\":\"mia\"}"}}]},
        {"role": "tool", "name": "get_user_details", "tool_call_id": "c1",
         "content": "{\"name\": \"Mia\"}"},
        {"role": "assistant", "content": [{"type": "text", "text": "Booked."}]},
    ]}


def test_openai_chat_tau_bench_record() -> None:
    ep = parse("openai-chat", TAU_RECORD)
    assert ep["task"] == "You are mia. Book a flight."
    assert kinds(ep) == ["system:message", "user:message", "assistant:action",
                         "tool:observation", "assistant:message"]
    action = ep["steps"][2]
    assert (action["name"], action["args"]) == ("get_user_details", {"user_id": "mia"})
    assert action["content"] == 'get_user_details({"user_id":"mia"})'
    assert ep["steps"][3]["name"] == "get_user_details"
    assert ep["outcome"] == {"success": True, "reward": 1.0, "score": None}
    assert ep["answer"] == "Booked."
    assert set(ep["meta"]) == {"task_id", "trial", "info"}


def test_openai_chat_without_task_field_uses_the_first_user_turn() -> None:
    ep = parse("openai-chat", {"messages": [
        {"role": "user", "content": "Who?"},
        {"role": "assistant", "content": "Thought: find\nAction: search[who]"},
        {"role": "user", "content": "Observation: Bob."},
        {"role": "assistant", "content": "Thought: done\nAction: finish[Bob]"}]},
        model="m1")
    assert ep["task"] == "Who?"
    assert kinds(ep) == ["user:message", "assistant:thought", "assistant:action",
                         "environment:observation", "assistant:thought", "assistant:action"]
    assert ep["answer"] == "Bob"  # no plain assistant message: the Finish argument
    assert ep["model"] == "m1"


@pytest.mark.parametrize(("record", "field"), [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"content": "x"}]}, "messages.0"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
     "messages.0.tool_calls.0"),
    ({"messages": "hello"}, "messages"),
])
def test_openai_chat_rejections_name_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError) as exc:
        parse("openai-chat", record)
    assert exc.value.field == field


GLAIVE_RECORD = {
    "conversations": [
        {"from": "human", "value": "Find a recipe with chicken."},
        {"from": "function_call",
         "value": '{"name": "search_recipes", "arguments": {"ingredients": ["chicken"]}}'},
        {"from": "observation", "value": "{\"recipes\": [\"stir fry\"]}"},
        {"from": "gpt", "value": "Try a stir fry."}],
    "tools": "[{\"name\": \"search_recipes\"}]"}


def test_sharegpt_function_calls_and_tools() -> None:
    ep = parse("sharegpt", GLAIVE_RECORD)
    assert kinds(ep) == ["user:message", "assistant:action", "tool:observation",
                         "assistant:message"]
    action = ep["steps"][1]
    assert action["name"] == "search_recipes"
    assert action["args"] == {"ingredients": ["chicken"]}
    assert action["content"] == GLAIVE_RECORD["conversations"][1]["value"]
    assert ep["meta"] == {"tools": GLAIVE_RECORD["tools"]}
    assert ep["answer"] == "Try a stir fry."
    # The tool schema is content: the same conversation with other tools is another episode.
    other = parse("sharegpt", {**GLAIVE_RECORD, "tools": "[]"})
    assert other["episode_id"] != ep["episode_id"]


def test_sharegpt_rejects_an_unknown_speaker() -> None:
    with pytest.raises(RecordError) as exc:
        parse("sharegpt", {"conversations": [{"from": "narrator", "value": "x"}]})
    assert exc.value.field == "conversations.0.from"


# --------------------------------------------------------------------------- alpaca

def test_alpaca_with_input_history_and_system() -> None:
    ep = parse("alpaca", {"instruction": "Translate", "input": "hola", "output": "hello",
                          "system": "Be brief.", "history": [["hi", "hello!"]], "id": 7})
    assert ep["task"] == "Translate\n\nhola"
    assert kinds(ep) == ["system:message", "user:message", "assistant:message",
                         "user:message", "assistant:message"]
    assert ep["answer"] == "hello"
    assert ep["meta"] == {"id": 7}


def test_alpaca_rejects_a_missing_output() -> None:
    with pytest.raises(RecordError) as exc:
        parse("alpaca", {"instruction": "x"})
    assert exc.value.field == "output"


# --------------------------------------------------------------------------- swe-agent

def test_issue_text() -> None:
    assert issue_text("Here's the issue text:\nISSUE:\nBug!\n\nINSTRUCTIONS:\nfix it") == "Bug!"
    assert issue_text("x <issue>\nBug 2\n</issue> y") == "Bug 2"
    assert issue_text("The challenge is: flag\n\nINSTRUCTIONS:\nsolve") == \
        "The challenge is: flag"


SWE_HISTORY = [
    {"role": "system", "content": "SETTING: a shell"},
    {"role": "user", "content": "DEMO ISSUE:\nold\n\nINSTRUCTIONS:\n", "is_demo": True},
    {"role": "user", "content": "ISSUE:\nSyntaxError in x.py\n\nINSTRUCTIONS:\nGo."},
]


def test_swe_agent_trajectory_record() -> None:
    record = {"environment": "swe_main", "history": SWE_HISTORY,
              "trajectory": [{"thought": "look", "action": "open x.py", "observation": "1:def f()",
                              "response": "r", "state": "{}"},
                             {"thought": "", "action": "submit", "observation": "diff"}],
              "info": {"exit_status": "submitted", "submission": "diff --git a/x.py"}}
    ep = parse("swe-agent", record)
    assert ep["task"] == "SyntaxError in x.py"
    assert kinds(ep) == ["system:message", "user:message", "assistant:thought",
                         "assistant:action", "environment:observation", "assistant:action",
                         "environment:observation"]
    assert ep["steps"][3]["name"] == "open"
    assert ep["steps"][3]["args"] == {"command": "open x.py"}
    assert ep["answer"] == "diff --git a/x.py"
    assert ep["meta"] == {"environment": "swe_main", "exit_status": "submitted"}
    assert ep["outcome"] == {"success": None, "reward": None, "score": None}


def test_swe_agent_history_only_demonstration() -> None:
    history = [*SWE_HISTORY,
               {"role": "assistant", "content": "Find it.", "thought": "Find it.",
                "action": "find_file x.py", "tool_calls": [
                    {"function": {"name": "find_file", "arguments": "{\"file_name\":\"x.py\"}"}}]},
               {"role": "tool", "content": "Found ./x.py", "message_type": "observation"},
               {"role": "assistant", "content": "Done.", "tool_calls": [
                   {"function": {"name": "submit", "arguments": "{}"}}]},
               {"role": "tool", "content": "diff --git a/x.py", "message_type": "observation"}]
    ep = parse("swe-agent", {"history": history})
    assert ep["task"] == "SyntaxError in x.py"
    assert [s.get("name") for s in ep["steps"] if s["kind"] == "action"] == ["find_file",
                                                                             "submit"]
    assert ep["steps"][-2]["content"] == "submit {}"
    assert ep["answer"] == "diff --git a/x.py"  # the output of the final submit
    assert get_format("swe-agent").sniff({"history": history}) >= 0.5


def test_swe_agent_rejections() -> None:
    with pytest.raises(RecordError, match="neither a trajectory nor a history"):
        parse("swe-agent", {"info": {}})
    with pytest.raises(RecordError) as exc:
        parse("swe-agent", {"trajectory": [{"thought": "no action"}]})
    assert exc.value.field == "trajectory.0"


def test_swe_agent_read_file_reports_invalid_json() -> None:
    (row,) = get_format("swe-agent").read_file("x.traj", io.BytesIO(b'{\n "a": \n'))
    assert row.value is None and row.error.startswith("invalid JSON")


# --------------------------------------------------------------------------- graded-qa

def test_graded_qa_one_answer() -> None:
    ep = parse("graded-qa", {"question": "2+2?", "answer": "4", "reference": "4",
                             "correct": "yes", "model": "m"})
    assert (ep["task"], ep["answer"], ep["reference"], ep["model"]) == ("2+2?", "4", "4", "m")
    assert ep["outcome"]["success"] is True
    assert kinds(ep) == ["user:message", "assistant:message"]


def test_graded_qa_task_set_answer_is_the_reference() -> None:
    ep = parse("graded-qa", {"question": "q", "answer": "work\n#### 18"})
    assert ep["reference"] == "work\n#### 18" and ep["answer"] is None
    assert kinds(ep) == ["user:message"]


def test_graded_qa_one_episode_per_system() -> None:
    eps = parse("graded-qa", {"question": "q", "ground_truth": "g",
                              "6b": {"is_correct": False, "solution": "s1"},
                              "175b": {"is_correct": True, "solution": "s2"}})
    assert [(e["model"], e["answer"], e["outcome"]["success"]) for e in eps] == [
        ("6b", "s1", False), ("175b", "s2", True)]
    assert all(e["reference"] == "g" and e["meta"]["system"] == e["model"] for e in eps)


def test_graded_qa_one_episode_per_sample() -> None:
    record = {"idx": 900, "ys": ["a = 24", "b", "a = 24"], "infos": [{"r": 1}, {"r": 0}, {"r": 1}],
              "usage_so_far": {"cost": 1.0},
              "steps": [{"step": 0, "x": "4 5 6 10", "ys": [""]}]}
    eps = parse("graded-qa", record)
    assert [e["outcome"]["success"] for e in eps] == [True, False, True]
    assert [e["outcome"]["reward"] for e in eps] == [1.0, 0.0, 1.0]
    assert eps[0]["task"] == "4 5 6 10"
    assert [e["meta"]["sample"] for e in eps] == [0, 1, 2]
    assert eps[0]["episode_id"] != eps[2]["episode_id"]  # identical samples stay apart
    naive = parse("graded-qa", {"idx": 3, "ys": ["x"], "accs": [False]})
    assert naive[0]["task"] is None and naive[0]["outcome"]["success"] is False
    assert naive[0]["meta"] == {"idx": 3, "sample": 0}


def test_graded_qa_dynamic_cheatsheet_layout() -> None:
    ep = parse("graded-qa", {"input": "Question #1:\nFind n.", "raw_input": "Find n.",
                             "target": "315", "final_answer": "528",
                             "final_output": "Long reasoning... 528", "steps": [{"round": 0}]})
    assert ep["task"] == "Find n."
    assert (ep["answer"], ep["reference"]) == ("528", "315")
    assert ep["steps"][1]["content"] == "Long reasoning... 528"
    assert ep["outcome"]["success"] is None
    assert set(ep["meta"]) == {"input", "steps"}


def test_graded_qa_rejects_a_structured_prediction() -> None:
    with pytest.raises(RecordError) as exc:
        parse("graded-qa", {"question": "q", "prediction": {"a": 1}, "correct": True})
    assert exc.value.field == "prediction"


# --------------------------------------------------------------------------- map, episode

def test_map_transcript_keeps_the_other_side_in_meta() -> None:
    record = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao",
              "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    ep = parse("map", record, mapping={"transcript": "chosen"})
    assert ep["task"] == "hi"
    assert kinds(ep) == ["user:message", "assistant:message", "user:message",
                         "assistant:message"]
    assert ep["answer"] == "ciao"
    assert ep["meta"] == {"rejected": record["rejected"]}


def test_map_outcome_and_nested_paths() -> None:
    ep = parse("map", {"name": "env_3", "r": {"score": "1"}, "memory": ["lesson"]},
               mapping={"task": "name", "reward": "r.score"})
    assert ep["outcome"] == {"success": True, "reward": 1.0, "score": None}
    assert ep["meta"] == {"memory": ["lesson"]}
    with pytest.raises(RecordError) as exc:
        parse("map", {"name": "x", "ok": "maybe"}, mapping={"task": "name", "success": "ok"})
    assert exc.value.field == "ok"
    with pytest.raises(RecordError, match="missing"):
        parse("map", {"name": "x"}, mapping={"task": "title"})


def test_map_messages_are_read_like_openai_chat() -> None:
    ep = parse("map", {"conv": {"turns": TAU_RECORD["traj"]}},
               mapping={"messages": "conv.turns"})
    assert ep["task"] == "Hi! I want a flight."
    assert [s["kind"] for s in ep["steps"]].count("action") == 1


def test_episode_round_trip_keeps_the_id() -> None:
    ep = parse("openai-chat", TAU_RECORD)
    again = parse("episode", orjson.loads(orjson.dumps(ep)))
    assert again["episode_id"] == ep["episode_id"]
