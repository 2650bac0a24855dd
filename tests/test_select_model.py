"""Model-aware select-data: token log-probabilities, IFD, perplexity, judge, Add-One-In.

Plumbing runs on the scripted fake model (``tests.llm_fakes``); every selector also runs the
real bundled GGUF model (SmolLM2-135M-Instruct) end to end on a handful of records.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.llm_fakes import scripted_fixture  # noqa: F401
from xpkit.core.errors import UsageError
from xpkit.core.select import select_data
from xpkit.core.token_losses import (
    answer_losses,
    answer_split,
    fit_to_context,
    logprobs_at,
)

ALPACA_DEMO = "llamafactory_demo_data/data/alpaca_en_demo.json.gz"
TINY = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
    {"instruction": "What is 2 + 2?", "input": "", "output": "2 + 2 = 4."},
    {"instruction": "Translate 'chat' to English.", "input": "French", "output": "cat"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"instruction": "Name a planet.", "input": "", "output": "Mars is a planet."},
]


def run(inputs: list[str], **kw) -> tuple[list[dict], object, list[str]]:
    out: list[dict] = []
    notes: list[str] = []
    s = select_data(inputs, sink=out.extend, on_notice=notes.append, **kw)
    assert s.balanced
    return out, s, notes


def jsonl(path: Path, records: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


# ------------------------------------------------------------------------- numerics, rules


def test_logprobs_at_is_a_log_softmax_of_each_row():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(5, 1000)) * 8).astype(np.float32)
    targets = [3, 999, 0, 512, 7]
    got = logprobs_at(logits, targets)
    for i, t in enumerate(targets):
        row = logits[i].astype(np.float64)
        want = row[t] - math.log(math.fsum(math.exp(x) for x in row))
        assert got[i] == pytest.approx(want, abs=1e-5)
    assert got.dtype == np.float32 and (got <= 0).all()
    # Huge logits do not overflow (the row maximum is subtracted first).
    assert np.isfinite(logprobs_at(np.full((1, 4), 1e4, np.float32), [1])).all()


def test_truncation_keeps_the_answer_head_and_the_prefix_end():
    pre, cont, cut = fit_to_context(list(range(10)), list(range(100, 130)), 32, 512)
    assert cont == list(range(100, 130)) and pre == [8, 9] and cut == 8
    pre, cont, cut = fit_to_context([1, 2, 3], list(range(100, 200)), 64, 20)
    assert cont == list(range(100, 120)) and pre == [1, 2, 3] and cut == 0
    pre, cont, _ = fit_to_context([1, 2, 3], list(range(100, 200)), 16, 512)
    assert len(cont) == 15 and pre == [3]  # the prefix always keeps a token


def test_the_answer_is_the_last_assistant_message():
    msgs = [{"role": "system", "content": "Be brief."}, *conv("Hi", "Hello"),
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    prefix, answer = answer_split(msgs)
    assert answer == "Bye!" and [m["content"] for m in prefix] == ["Be brief.", "Hi", "Hello",
                                                                   "Bye"]
    assert answer_split([{"role": "user", "content": "no answer"}]) is None


# ------------------------------------------------------------------------- scripted plumbing


def fake_logprobs(prefix, continuation):
    """Answers that share words with the instruction are likely under it."""
    words = continuation.lower().split()
    seen = set(prefix.lower().split()) if isinstance(prefix, str) else {
        w for m in prefix for w in str(m.get("content", "")).lower().split()}
    return [-0.2 if w in seen else -2.0 for w in words]


def test_ifd_is_the_ratio_of_perplexities_and_rank_last_at_max_ifd(scripted, tmp_path):
    model = scripted.scorer("s", fake_logprobs)
    pool = [{"instruction": "Name a colour", "input": "", "output": "a colour red"},
            {"instruction": "Name a city", "input": "", "output": "Paris is nice"}]
    src = jsonl(tmp_path / "pool.jsonl", pool)
    out, _, notes = run([src], method="top", score="ifd", budget=2, model="scripted:s")
    scores = {r["instruction"]: r["_select"]["score"] for r in out}
    # "a colour red" under "Name a colour": nll (0.2 * 2 + 2) / 3 = 0.8; alone 2.
    assert scores["Name a colour"] == pytest.approx(math.exp(0.8 - 2.0), rel=1e-5)
    assert scores["Name a city"] is None  # IFD = 1: misaligned, ranked last
    assert [r["instruction"] for r in out] == ["Name a colour", "Name a city"]
    assert any("IFD >= 1" in n for n in notes)
    # Chat template: the prefix is the messages; without the instruction, an empty user turn.
    prefixes = [p for p, _ in model.scored]
    assert [{"role": "user", "content": ""}] in prefixes
    assert any(isinstance(p, list) and "Name a colour" in p[0]["content"] for p in prefixes)
    # A rerun is answered from the cache: no model work at all.
    before = len(model.scored)
    again, _, notes = run([src], method="top", score="ifd", budget=2, model="scripted:s")
    assert again == out and len(model.scored) == before
    assert any("4 of 4 passes cached" in n for n in notes)


def test_the_model_sees_the_same_messages_from_records_episodes_and_exports(scripted,
                                                                            tmp_path):
    from xpkit.core.ingest import ingest

    scripted.scorer("s", fake_logprobs)
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    episodes: list[dict] = []
    ingest([src], sink=episodes.extend)
    eps = jsonl(tmp_path / "episodes.jsonl", episodes)
    kw = {"method": "top", "score": "ifd", "budget": 5, "model": "scripted:s",
          "params": {"max_ifd": "inf"}}
    records, _, _ = run([src], **kw)
    from_episodes, _, _ = run([eps], **kw)
    exported, _, _ = run([src], export="sft", **kw)
    scores = sorted(r["_select"]["score"] for r in records)
    assert all(s is not None for s in scores)
    assert sorted(r["_select"]["score"] for r in from_episodes) == scores
    assert sorted(r["_select"]["score"] for r in exported) == scores


def test_plain_template_and_perplexity_preferences(scripted, tmp_path):
    model = scripted.scorer("s", fake_logprobs)
    pool = [{"instruction": "Name a colour", "input": "", "output": "colour red"},
            {"instruction": "Name a city", "input": "", "output": "Paris is nice"}]
    src = jsonl(tmp_path / "pool.jsonl", pool)
    out, _, _ = run([src], method="top", score="perplexity", budget=1, model="scripted:s",
                    params={"template": "plain"})
    assert out[0]["instruction"] == "Name a city"  # the harder answer first
    assert out[0]["_select"]["score"] == pytest.approx(math.exp(2.0), rel=1e-5)
    assert all(isinstance(p, str) for p, _ in model.scored)
    assert model.scored[0][0].startswith("Name a c") and model.scored[0][0].endswith("\n")
    low, _, _ = run([src], method="top", score="perplexity", budget=1, model="scripted:s",
                    params={"prefer": "low"})
    assert low[0]["instruction"] == "Name a colour"
    with pytest.raises(UsageError, match="--param template=html: perplexity expects one of"):
        run([src], method="top", score="perplexity", budget=1, model="scripted:s",
            params={"template": "html"})


def test_lead_uses_ifd_as_its_instance_level_utility(scripted, tmp_path):
    scripted.scorer("s", fake_logprobs)
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    out, summary, _ = run([src], method="lead", score="ifd", budget=3, model="scripted:s",
                          params={"max_ifd": "inf"}, clusters=2)
    assert len(out) == 3 and summary.score == "ifd"
    assert all(r["_select"]["reason"].startswith("lead: cluster") for r in out)
    assert all(r["_select"]["score"] is not None for r in out)


def test_a_model_without_logprobs_is_a_usage_error(scripted, tmp_path):
    scripted.model("plain", "{}")
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    with pytest.raises(UsageError, match=r"--score ifd needs an in-process GGUF model"):
        run([src], method="top", score="ifd", budget=2, model="scripted:plain")
    with pytest.raises(UsageError, match=r"the llama\.cpp HTTP server does not return prompt "
                                         r"log-probabilities"):
        run([src], method="top", score="perplexity", budget=2,
            model="http://127.0.0.1:9/v1")


def test_http_model_for_ifd_exits_2_with_one_sentence(xpkit, tmp_path):
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    res = xpkit("select-data", src, "--method", "top", "--score", "ifd", "--budget", "2",
                "--model", "http://127.0.0.1:9/v1", cwd=tmp_path)
    err = res.stderr.decode()
    assert res.returncode == 2 and res.stdout == b"", err
    assert ("--score ifd needs an in-process GGUF model (--model PATH.gguf or default); "
            "http://127.0.0.1:9/v1 is an HTTP server, and the llama.cpp HTTP server does not "
            "return prompt log-probabilities.") in " ".join(err.split())
    assert "Traceback" not in err


def test_judge_ratings_rank_and_rejections_rank_last(scripted, tmp_path):
    ratings = {"Name a primary colour.": '{"score": 5}', "What is 2 + 2?": '{"score": 2}',
               "Say hello.": "not json"}

    def answer(messages):
        for q, r in ratings.items():
            if q in messages[-1]["content"]:
                return r
        return '{"score": 3}'

    model = scripted.model("j", answer)
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    out, _, notes = run([src], method="top", score="judge", budget=5, model="scripted:j",
                        order="rank")
    assert [r["_select"]["score"] for r in out] == [5.0, 3.0, 3.0, 2.0, None]
    assert out[-1]["instruction"] == "Say hello."
    assert any("1 ratings rejected" in n for n in notes)
    call = model.calls[0]
    assert call["schema"]["properties"]["score"]["enum"] == [0, 1, 2, 3, 4, 5]
    assert call["messages"][0]["content"].startswith("We would like to request your feedback")
    assert "accuracy of the response" in call["messages"][0]["content"]
    assert call["messages"][-1]["content"].startswith("Instruction: ")


def test_add_one_in_asks_in_batches_bounds_calls_and_falls_back(scripted, tmp_path):
    def answer(messages):
        # By round: pick index 2, then answer garbage (retries too), then pick index 1.
        prompt = messages[-1]["content"]
        return ('{"choice": 2}' if "Already selected: 0 " in prompt else
                "garbage" if "Already selected: 1 " in prompt else '{"choice": 1}')

    model = scripted.model("a", answer)
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    out, _, _ = run([src], method="add-one-in", score="length", budget=5, model="scripted:a",
                    order="rank", params={"batch": "3", "max_calls": "3", "window": "2"})
    by_length = sorted(TINY, key=lambda r: -len(r["output"]))
    reasons = [r["_select"]["reason"] for r in out]
    assert len(out) == 5
    # Call 1: the 3 longest answers, the model picks index 2.
    assert out[0]["output"] == by_length[2]["output"]
    assert reasons[0].startswith("add-one-in: the model's choice among 3 candidates (call 1")
    # Call 2: invalid output (the retries too) -> the batch's best by --score.
    assert out[1]["output"] == by_length[0]["output"]
    assert reasons[1].startswith("add-one-in: model output rejected at call 2")
    assert reasons[2].startswith("add-one-in: the model's choice among 3 candidates (call 3")
    assert all(r.startswith("add-one-in: after 3 model call(s), by --score") for r in reasons[3:])
    # Calls show the chosen summary and a batch; the schema allows only the batch's indexes.
    last = model.calls[-1]
    assert last["schema"]["properties"]["choice"]["enum"] == [0, 1, 2]
    assert "Already selected: 2 example(s)." in last["messages"][-1]["content"]
    assert "[2] Instruction:" in last["messages"][-1]["content"]
    with pytest.raises(UsageError, match="--param batch=1: add-one-in shows 2 to 10"):
        run([src], method="add-one-in", budget=2, model="scripted:a", params={"batch": "1"})


# ------------------------------------------------------------------------- the real model


@pytest.mark.model
def test_token_logprobs_match_a_direct_log_softmax_over_the_real_logits():
    """Our per-token log-probabilities against an independent computation: llama-cpp-python's
    own ``Llama.eval`` with ``logits_all=True``, then a float64 log-softmax per position."""
    from xpkit.core.llm import get_llm
    from xpkit.plugins.backends.llama_cpp import load_llama

    llm = get_llm("default", no_cache=True)
    handle = llm.handle
    prefix = [{"role": "user", "content": "Name a primary colour."}]
    answer = "Red is a primary colour, and so are blue and yellow."
    got = handle.token_logprobs(prefix, answer)
    prompt, _ = handle.render(prefix)
    pre = handle.llm.tokenize(prompt.encode(), add_bos=False, special=True)
    cont = handle.llm.tokenize(answer.encode(), add_bos=False, special=False)
    assert (got.prefix_tokens, got.scored, got.cut_prefix) == (len(pre), len(cont), 0)
    ref = load_llama(llm.spec.location, llm.settings, logits_all=True, n_ctx=256)
    try:
        ref.eval(pre + cont)
        scores = np.array(ref.scores[: len(pre) + len(cont)], np.float64)
    finally:
        ref.close()
    want = []
    for j, tok in enumerate(cont):
        row = scores[len(pre) - 1 + j]
        peak = row.max()
        want.append(row[tok] - peak - math.log(np.exp(row - peak).sum()))
    np.testing.assert_allclose(got.logprobs, want, atol=2e-4)
    assert np.mean(want) > -3 and max(want) > -0.5  # a fluent answer, not -12 per token
    # Plain text: BOS, then the text; the same scorer.
    plain = handle.token_logprobs("Name a primary colour.\n", answer)
    assert plain.scored == len(cont) and np.isfinite(plain.logprobs).all()


@pytest.mark.model
def test_scoring_leaves_generation_unchanged():
    """token_logprobs shares the loaded model and its KV cache with generation."""
    from xpkit.core.llm import get_llm

    llm = get_llm("default", no_cache=True)
    before = llm.generate("Name a primary colour.", max_tokens=12).text
    llm.handle.token_logprobs([{"role": "user", "content": "Name a primary colour."}],
                              "Blue is one.")
    assert llm.generate("Name a primary colour.", max_tokens=12).text == before


@pytest.mark.model
@pytest.mark.real_data
def test_ifd_ranks_an_answer_that_ignores_its_instruction_above_one_that_follows_it(
        shared_data):
    """Real Alpaca instructions, each with its own answer and with another's answer: IFD =
    ppl(A | Q) / ppl(A) is near or above 1 when the answer ignores the instruction."""
    from xpkit.core.llm import get_llm

    with gzip.open(shared_data / ALPACA_DEMO) as f:
        pool = json.load(f)
    short = [r for r in pool if 40 < len(r["output"]) < 160 and not r["input"]][:4]
    n = len(short)
    follows = [conv(r["instruction"], r["output"]) for r in short]
    ignores = [conv(short[i]["instruction"], short[(i + 1) % n]["output"]) for i in range(n)]
    llm = get_llm("default")
    ifd = answer_losses(llm, follows + ignores).ifd()
    assert np.isfinite(ifd).all() and (ifd > 0).all()
    assert (ifd[n:] > ifd[:n]).all(), ifd
    assert np.median(ifd[n:]) > 0.85 and np.median(ifd[:n]) < 0.85, ifd
    # The selector gives the same values (from the cache: nothing is evaluated again).
    calls = llm.stats.model_calls
    again = answer_losses(llm, follows).ifd()
    np.testing.assert_allclose(again, ifd[:n], rtol=1e-6)
    assert llm.stats.model_calls == calls


@pytest.mark.model
@pytest.mark.real_data
def test_lead_with_ifd_on_the_real_model_through_the_cli(xpkit, shared_data, tmp_path):
    with gzip.open(shared_data / ALPACA_DEMO) as f:
        pool = [r for r in json.load(f) if len(r["output"]) < 200][:6]
    src = jsonl(tmp_path / "pool.jsonl", pool)
    args = ["select-data", src, "--method", "lead", "--score", "ifd", "--budget", "3",
            "--clusters", "2", "--model", "default", "--param", "max_ifd=inf"]
    res = xpkit(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(out) == 3
    assert all(r["_select"]["reason"].startswith("lead: cluster") for r in out)
    assert all(0 < r["_select"]["score"] < 10 for r in out)
    err = res.stderr.decode()
    assert "ifd: token losses of 6 candidates from smollm2-135m-instruct" in err
    again = xpkit(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == res.stdout
    assert "12 of 12 passes cached" in again.stderr.decode()


@pytest.mark.model
def test_perplexity_on_the_real_model(tmp_path):
    src = jsonl(tmp_path / "pool.jsonl", TINY[:3])
    out, _, _ = run([src], method="top", score="perplexity", budget=3, model="default",
                    order="rank")
    ppl = [r["_select"]["score"] for r in out]
    assert all(p is not None and p > 1 for p in ppl) and ppl == sorted(ppl, reverse=True)


@pytest.mark.model
def test_judge_on_the_real_model(tmp_path):
    src = jsonl(tmp_path / "pool.jsonl", TINY[:3])
    out, _, notes = run([src], method="top", score="judge", budget=3, model="default")
    assert len(out) == 3
    rated = [r["_select"]["score"] for r in out if r["_select"]["score"] is not None]
    assert rated and all(s in (0, 1, 2, 3, 4, 5) for s in rated), notes


@pytest.mark.model
def test_add_one_in_on_the_real_model(tmp_path):
    src = jsonl(tmp_path / "pool.jsonl", TINY)
    out, _, _ = run([src], method="add-one-in", score="length", budget=3, model="default",
                    order="rank", params={"batch": "3", "max_calls": "2"})
    reasons = [r["_select"]["reason"] for r in out]
    assert len(out) == 3 and len({r["instruction"] for r in out}) == 3
    assert all(r.startswith(("add-one-in: the model's choice among 3 candidates",
                             "add-one-in: model output rejected")) for r in reasons[:2])
    assert reasons[2].startswith("add-one-in: after 2 model call(s)")
