"""The runtime's plumbing with a scripted model: validation, retries, rejections, cache,
batching order, concurrency, context overflow, server failure, prompt helpers."""

from __future__ import annotations

import threading

import orjson
import pytest

from tests.llm_fakes import scripted_fixture  # noqa: F401  (the `scripted` fixture)
from xpkit.core import llm as L
from xpkit.core.errors import ModelServerError, UsageError
from xpkit.core.llm import RawCompletion, Request, get_llm
from xpkit.core.llm_cache import open_cache
from xpkit.core.tokens import TRUNCATION_MARKER

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "description": "a short name"},
                   "polarity": {"enum": ["do", "avoid"]}},
    "required": ["title", "polarity"],
    "additionalProperties": False,
}
VALID = '{"title": "check the lock first", "polarity": "do"}'


def test_valid_output_is_parsed_and_validated(scripted):
    m = scripted.model("a", VALID)
    c = get_llm("scripted:a").structured("log text", SCHEMA)
    assert c.ok and c.data == {"title": "check the lock first", "polarity": "do"}
    assert c.attempts == 1 and len(m.calls) == 1 and m.calls[0]["temperature"] == 0.0


def test_invalid_json_every_time_is_a_rejection_with_the_raw_text(scripted):
    m = scripted.model("bad", '{"title": "unterminated')
    llm = get_llm("scripted:bad", retries=2)
    c = llm.structured("log text", SCHEMA)
    assert not c.ok and c.data is None
    assert c.rejection.raw == '{"title": "unterminated'
    assert c.rejection.attempts == 3 and len(m.calls) == 3
    assert len(c.rejection.errors) == 3 and "not valid JSON" in c.rejection.errors[0]
    assert c.rejection.reason.startswith("no valid output after 3 attempts")
    record = c.rejection.to_record()
    assert record["raw"] == '{"title": "unterminated' and record["attempts"] == 3
    assert llm.stats.rejected == 1 and llm.stats.retries == 2
    # A rerun reproduces the rejection from the cache, without calling the model...
    again = get_llm("scripted:bad", retries=2)
    c2 = again.structured("log text", SCHEMA)
    assert not c2.ok and c2.cached and again.stats.model_calls == 0
    assert c2.rejection.raw == c.rejection.raw
    # ...and --no-cache tries again.
    get_llm("scripted:bad", retries=2, no_cache=True).structured("log text", SCHEMA)
    assert len(m.calls) == 6


def test_an_output_check_failure_is_retried_then_rejected_and_keys_the_cache(scripted):
    placeholder = '{"title": "<title: a short name>", "polarity": "do"}'
    form = L.form_example(SCHEMA)
    check = L.OutputCheck("no-form/1", lambda data: (
        "copies the form" if L.find_copied_example(data, form) else None))
    m = scripted.model("copy", placeholder, VALID)
    c = get_llm("scripted:copy", retries=2).run([Request("x", schema=SCHEMA, check=check)])[0]
    assert c.ok and c.data["title"] == "check the lock first" and c.attempts == 2
    assert m.calls[1]["temperature"] > 0  # the retry samples: the same call would copy again
    always = scripted.model("always", placeholder)
    c = get_llm("scripted:always", retries=1).run([Request("x", schema=SCHEMA,
                                                          check=check)])[0]
    assert not c.ok and c.rejection.raw == placeholder and len(always.calls) == 2
    assert c.rejection.errors == ["attempt 1: copies the form", "attempt 2: copies the form"]
    # Without the check the same output is fine, and it is a different cache entry: a
    # changed check never serves outputs that only the old one passed.
    c = get_llm("scripted:always", retries=1).run([Request("x", schema=SCHEMA)])[0]
    assert c.ok and not c.cached and len(always.calls) == 3


def test_degenerate_text_is_found():
    loop = "check the page check the page check the page check the page again"
    assert L.find_degenerate_text({"rule": loop, "title": "fine"}) == [loop]
    few = "yes yes no no yes no no yes yes no"
    assert L.find_degenerate_text({"rule": few}) == [few]
    sentence = "Search for the exact title of the page before giving up on the question."
    assert L.find_degenerate_text({"rule": sentence, "title": "ok ok ok"}) == []
    # What SmolLM2-135M wrote for an insight: one phrase in every field.
    same = "Laleli Mosque and Esma Sultan Mansion"
    out = orjson.dumps({"insights": [{"title": same, "when": same, "rule": same + "."}]})
    assert L.find_degenerate_text(out.decode()) == [same, same + "."]
    assert L.find_degenerate_text({"a": "the same", "b": "the same"}) == []  # too short


def test_schema_violation_names_the_path(scripted):
    scripted.model("v", '{"title": 5, "polarity": "do"}')
    c = get_llm("scripted:v", retries=0).structured("x", SCHEMA)
    assert not c.ok and "schema violation at $['title']" in c.rejection.reason


def test_cut_off_output_is_retried_with_more_tokens(scripted):
    m = scripted.model("cut", RawCompletion('{"title": "check the', 5, 16, "length"), VALID)
    c = get_llm("scripted:cut").structured("x", SCHEMA, max_tokens=16)
    assert c.ok and c.attempts == 2
    assert [k["max_tokens"] for k in m.calls] == [16, 32]
    assert [k["temperature"] for k in m.calls] == [0.0, 0.0]


def test_complete_but_invalid_output_is_resampled(scripted):
    m = scripted.model("re", '{"title": "x", "polarity": "maybe"}', VALID)
    c = get_llm("scripted:re", seed=7).structured("x", SCHEMA)
    assert c.ok and c.attempts == 2
    first, second = m.calls
    assert first["temperature"] == 0.0 and second["temperature"] > 0
    assert second["seed"] != first["seed"] and second["max_tokens"] == first["max_tokens"]


def test_free_text_generation_is_not_validated_or_retried(scripted):
    m = scripted.model("t", "just text")
    c = get_llm("scripted:t").generate("hello", system="be brief")
    assert c.ok and c.text == "just text" and c.data is None and len(m.calls) == 1
    assert m.calls[0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_same_call_twice_hits_the_cache(scripted):
    m = scripted.model("c", VALID)
    first = get_llm("scripted:c").structured("the same prompt", SCHEMA, system="s")
    llm = get_llm("scripted:c")
    second = llm.structured("the same prompt", SCHEMA, system="s")
    assert second.cached and not first.cached and second.data == first.data
    assert llm.stats.model_calls == 0 and llm.stats.cache_hits == 1 and len(m.calls) == 1


@pytest.mark.parametrize("change", [
    {"prompt": "another prompt"}, {"system": "other"}, {"max_tokens": 99},
    {"schema": {**SCHEMA, "required": ["title"]}}, {"temperature": 0.5}, {"retries": 1},
])
def test_cache_key_covers_prompt_schema_and_parameters(scripted, change):
    m = scripted.model("k", VALID)
    base = {"prompt": "p", "system": "s", "max_tokens": 32, "schema": SCHEMA}
    get_llm("scripted:k").run([Request(**base)])
    settings = {k: change.pop(k) for k in ("temperature", "retries") if k in change}
    get_llm("scripted:k", **settings).run([Request(**{**base, **change})])
    assert len(m.calls) == 2


def test_seed_is_not_part_of_the_key_at_temperature_zero(scripted):
    m = scripted.model("s", VALID)
    get_llm("scripted:s", seed=1).structured("p", SCHEMA)
    get_llm("scripted:s", seed=2).structured("p", SCHEMA)
    assert len(m.calls) == 1


def test_cache_key_covers_model_identity(scripted):
    a = scripted.model("m1", VALID)
    b = scripted.model("m2", VALID)
    get_llm("scripted:m1").structured("p", SCHEMA)
    get_llm("scripted:m2").structured("p", SCHEMA)
    assert len(a.calls) == len(b.calls) == 1


def test_no_cache_neither_reads_nor_writes(scripted):
    m = scripted.model("n", VALID)
    get_llm("scripted:n", no_cache=True).structured("p", SCHEMA)
    get_llm("scripted:n").structured("p", SCHEMA)
    assert len(m.calls) == 2
    assert open_cache().info()["responses"] == 1


def test_batch_results_keep_request_order_and_misses_run_sorted(scripted):
    m = scripted.model("echo", lambda msgs: msgs[-1]["content"].upper())
    prompts = ["b task", "a task", "c task", "a task two"]
    llm = get_llm("scripted:echo")
    get_llm("scripted:echo").generate("c task", system="shared system prompt")  # cached
    out = llm.run([Request(p, system="shared system prompt") for p in prompts])
    assert [c.text for c in out] == [p.upper() for p in prompts]
    assert [c.cached for c in out] == [False, False, True, False]
    called = [c["messages"][-1]["content"] for c in m.calls[1:]]
    assert called == ["a task", "a task two", "b task"]


def test_progress_reports_items_and_tokens(scripted):
    scripted.model("p", "one two three")
    get_llm("scripted:p").generate("first")
    events = []
    get_llm("scripted:p").run([Request("first"), Request("second"), Request("third")],
                              on_progress=events.append)
    assert [e.done for e in events] == [1, 2, 3] and all(e.total == 3 for e in events)
    assert events[0].cached == 1 and events[-1].cached == 1
    assert events[-1].completion_tokens == 6 and events[-1].elapsed >= 0


def test_context_overflow_is_rejected_with_counts_and_not_cached(scripted):
    m = scripted.model("small", VALID, n_ctx=40)
    c = get_llm("scripted:small").structured("word " * 50, SCHEMA, max_tokens=10)
    assert not c.ok and c.attempts == 0 and not m.calls
    assert c.rejection.reason.startswith("context overflow: prompt is 52 tokens and "
                                         "max_tokens is 10, which exceeds the 40-token")
    assert open_cache().info()["responses"] == 0


def test_context_overflow_truncates_the_last_user_message_by_the_stated_rule(scripted):
    m = scripted.model("small", VALID, n_ctx=60)
    text = " ".join(f"w{i}" for i in range(100))
    c = get_llm("scripted:small").structured(text, SCHEMA, system="keep this system prompt",
                                             max_tokens=10, overflow="truncate")
    assert c.ok and c.truncated_tokens > 0
    sent = m.calls[0]["messages"]
    assert sent[0]["content"] == "keep this system prompt"
    kept = sent[1]["content"]
    assert kept.startswith("w0 w1 w2") and "w99" not in kept
    assert kept.endswith(TRUNCATION_MARKER.format(n=c.truncated_tokens))
    assert sum(len(x["content"].split()) + 2 for x in sent) + 10 <= 60


def test_truncation_cannot_cut_the_system_prompt(scripted):
    scripted.model("small", VALID, n_ctx=30)
    c = get_llm("scripted:small").structured("short", SCHEMA, system="s " * 40,
                                             max_tokens=5, overflow="truncate")
    assert not c.ok and "rest of the prompt alone is too long" in c.rejection.reason


def test_server_concurrency_keeps_requests_in_flight(scripted):
    m = scripted.model("par", lambda msgs: msgs[-1]["content"], parallel=3, delay=0.2)
    llm = get_llm("scripted:par")
    out = llm.run([Request(f"item {i}") for i in range(9)])
    assert [c.text for c in out] == [f"item {i}" for i in range(9)]
    assert llm.stats.max_in_flight == 3 and len(m.calls) == 9


def test_a_server_that_dies_mid_batch_gives_no_partial_results(scripted):
    calls = {"n": 0}
    lock = threading.Lock()

    def answer(msgs):
        with lock:
            calls["n"] += 1
            if calls["n"] > 3:
                raise ModelServerError("model server http://x/v1 stopped answering "
                                       "(ConnectionRefusedError)")
        return VALID

    scripted.model("dying", answer, parallel=2)
    reqs = [Request(f"item {i}", schema=SCHEMA) for i in range(8)]
    with pytest.raises(ModelServerError) as info:
        get_llm("scripted:dying").run(reqs)
    msg = str(info.value)
    assert "stopped answering" in msg and "no partial records" in msg
    assert "rerunning resumes" in msg
    # What did complete is cached whole; a rerun against a healthy server resumes.
    assert open_cache().info()["responses"] == 3
    healthy = scripted.model("dying", VALID, parallel=2)
    L.unload_all("scripted")
    llm = get_llm("scripted:dying")
    out = llm.run(reqs)
    assert all(c.ok for c in out) and sum(c.cached for c in out) == 3
    assert len(healthy.calls) == 5


def test_a_bad_schema_fails_before_any_call(scripted):
    m = scripted.model("x", VALID)
    with pytest.raises(UsageError, match="invalid JSON schema"):
        get_llm("scripted:x").structured("p", {"type": "objekt"})
    assert not m.calls


def test_unknown_overflow_policy_is_a_usage_error(scripted):
    scripted.model("x", VALID)
    with pytest.raises(UsageError, match="overflow='cut'"):
        get_llm("scripted:x").run([Request("p", overflow="cut")])


def test_one_loaded_model_per_process(scripted):
    scripted.model("once", VALID)
    get_llm("scripted:once").generate("a")
    get_llm("scripted:once").generate("b")
    assert scripted.backend.loads == 1


def test_a_fully_cached_batch_never_loads_the_model(scripted):
    scripted.model("lazy", VALID)
    get_llm("scripted:lazy").structured("p", SCHEMA)
    L.unload_all("scripted")
    loads = scripted.backend.loads
    assert get_llm("scripted:lazy").structured("p", SCHEMA).cached
    assert scripted.backend.loads == loads


def test_form_example_shows_form_not_content():
    example = orjson.loads(L.form_example(SCHEMA))
    assert example == {"title": "<title: a short name>", "polarity": "<do | avoid>"}
    nested = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": "number", "description": "0 to 1"}}}
    assert orjson.loads(L.form_example(nested)) == {"tags": ["<tags>"],
                                                    "score": "<score: 0 to 1 (number)>"}


def test_find_copied_example_flags_placeholders_and_copied_sentences():
    form = L.form_example(SCHEMA)
    assert L.find_copied_example({"title": "<title: a short name>", "polarity": "do"}, form) \
        == ["<title: a short name>"]
    literal = {"title": "Always verify that the drawer is unlocked before pulling it"}
    out = '{"title": "verify that the drawer is unlocked before pulling it open"}'
    assert L.find_copied_example(out, literal) == [
        "verify that the drawer is unlocked before pulling it"]
    assert L.find_copied_example({"title": "look for the key on the table"}, literal) == []
    # Text the model was given may be quoted: not a copy of the example.
    source = "we must verify that the drawer is unlocked before pulling it"
    assert L.find_copied_example(out, literal, source=source) == []
    # A placeholder's description given as the answer, brackets dropped, is a copy too.
    assert L.find_copied_example({"title": "A short name.", "polarity": "do"}, form) == [
        "A short name."]
    assert L.find_copied_example({"title": "a short name for it", "polarity": "do"}, form) \
        == []
