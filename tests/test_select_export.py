"""--export sft (chat messages) and --export dpo (same-task success vs failure), real data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from xpkit.core.export import dpo_pair, render_steps
from xpkit.core.select import select_data
from xpkit.core.tokens import count_tokens

pytestmark = pytest.mark.real_data


def run(inputs: list[str], **kw) -> tuple[list[dict], object]:
    out: list[dict] = []
    s = select_data(inputs, sink=out.extend, **kw)
    assert s.balanced
    return out, s


@pytest.fixture(scope="module")
def data() -> Path:
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def test_sft_export_of_alpaca_is_a_user_turn_and_an_answer(data):
    path = data / "llamafactory_demo_data/data/alpaca_en_demo.json.gz"
    with gzip.open(path) as f:
        recs = json.load(f)
    out, _ = run([str(path)], export="sft", budget=40, seed=2)
    by_answer = {r["output"]: r for r in recs}
    for r in out:
        assert set(r) == {"messages", "_select"}
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        src = by_answer[assistant["content"]]
        assert user["content"].startswith(src["instruction"])
        if src["input"]:
            assert user["content"].endswith(src["input"])


def test_sft_export_keeps_openai_chat_messages_with_tool_calls(data):
    path = data / "tau_bench_airline_gpt4o/gpt-4o-airline.json.gz"
    with gzip.open(path) as f:
        trajs = {json.dumps(r["traj"][1]["content"]): r["traj"] for r in json.load(f)}
    out, _ = run([str(path)], export="sft", budget=5)
    for r in out:
        msgs = r["messages"]
        original = trajs[json.dumps(msgs[1]["content"])]
        assert len(msgs) == len(original)
        assert [m["role"] for m in msgs] == [m["role"] for m in original]
        assert any(m.get("tool_calls") for m in msgs)
        assert all(set(m) <= {"role", "content", "name", "tool_calls", "tool_call_id"}
                   for m in msgs)


def test_sft_rendering_of_react_steps():
    ep = {"task": "Q?", "answer": "Paris", "steps": [
        {"role": "user", "kind": "message", "content": "Q?"},
        {"role": "assistant", "kind": "thought", "content": "I should search."},
        {"role": "assistant", "kind": "action", "content": "search[France]",
         "name": "search", "args": {"input": "France"}},
        {"role": "environment", "kind": "observation", "content": "France is ..."},
        {"role": "assistant", "kind": "action", "content": "lookup({\"q\": 1})",
         "name": "lookup", "args": {"q": 1}},
        {"role": "tool", "kind": "observation", "content": "found", "name": "lookup"},
        {"role": "assistant", "kind": "message", "content": "Paris"}]}
    msgs = render_steps(ep)
    assert msgs[1] == {"role": "assistant",
                       "content": "Thought: I should search.\nAction: search[France]"}
    assert msgs[2] == {"role": "user", "content": "Observation: France is ..."}
    assert msgs[3]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"q":1}'}
    assert msgs[4] == {"role": "tool", "content": "found",
                       "tool_call_id": msgs[3]["tool_calls"][0]["id"]}
    assert msgs[5] == {"role": "assistant", "content": "Paris"}


def test_dpo_pairs_only_same_task_success_and_failure_tau_bench(data, tmp_path):
    path = data / "tau_bench_airline_gpt4o/gpt-4o-airline.json.gz"
    raw, _ = run([str(path)])  # every trajectory as read, with its id in _select
    record = {r["_select"]["id"]: r for r in raw}
    sft, _ = run([str(path)], export="sft")
    messages = {r["_select"]["id"]: r["messages"] for r in sft}
    outcomes: dict[int, set[float]] = {}
    for r in raw:
        outcomes.setdefault(r["task_id"], set()).add(r["reward"])
    mixed = {t for t, o in outcomes.items() if o == {0.0, 1.0}}
    out, s = run([str(path)], export="dpo", report=str(tmp_path / "r.jsonl"))
    assert len(out) == len(mixed) == s.written
    seen_tasks = set()
    for pair in out:
        sel = pair["_select"]
        c, r = record[sel["chosen_id"]], record[sel["rejected_id"]]
        assert c["reward"] == 1.0 and r["reward"] == 0.0
        assert c["task_id"] == r["task_id"]
        seen_tasks.add(c["task_id"])
        chosen, rejected = messages[sel["chosen_id"]], messages[sel["rejected_id"]]
        k = len(pair["prompt"])
        assert pair["prompt"] == chosen[:k] == rejected[:k] and k >= 1
        assert pair["chosen"] == chosen[k:] and pair["rejected"] == rejected[k:]
        texts = [m.get("content") or "" for m in chosen + rejected[k:]]
        calls = [c["function"]["name"] + c["function"]["arguments"]
                 for m in chosen + rejected[k:] for c in m.get("tool_calls") or []]
        assert sel["tokens"] == sum(count_tokens(texts + calls))
    assert seen_tasks == mixed
    assert s.not_chosen_by["no success/failure counterpart for its task"] == sum(
        1 for r in raw if r["task_id"] not in mixed)
    two, _ = run([str(path)], export="dpo", pairs_per_task=2, budget=10)
    assert len(two) == 10


def test_dpo_pairs_across_models_need_a_shared_prompt(data):
    """FireAct: three fine-tuned models on the same HotpotQA questions. The two Llama runs
    share their Alpaca-style prompt and pair; GPT-3.5's bare question does not."""
    out, s = run([str(data / "fireact/trajs/*.json.gz")], export="dpo", budget=20)
    assert len(out) == 20
    for pair in out:
        assert pair["prompt"][0]["content"].startswith("Below is an instruction")
        assert pair["chosen"][-1]["content"] != pair["rejected"][-1]["content"]
    assert s.not_chosen_by["budget"] > 0


def test_dpo_pair_needs_a_prefix_and_two_continuations():
    u = {"role": "user", "content": "q"}
    a = {"role": "assistant", "content": "a"}
    b = {"role": "assistant", "content": "b"}
    assert dpo_pair([u, a], [u, b]) == {"prompt": [u], "chosen": [a], "rejected": [b]}
    assert dpo_pair([u, a], [{"role": "user", "content": "other"}, b]) is None
    assert dpo_pair([u, a], [u, a]) is None
