"""End-to-end with the real bundled GGUF model (SmolLM2-135M-Instruct) in this process.

Kept small: short prompts, small max_tokens, few calls. The model is loaded once per test
process and reused (that is the runtime's own rule).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import run_xpkit
from xpkit.core.embeddings import cosine, get_embedder
from xpkit.core.llm import Request, get_llm

pytestmark = pytest.mark.model

SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["success", "failure"]},
        "reason": {"type": "string", "description": "one short sentence"},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}
SYSTEM = ("You read a short log of an agent and judge it. Answer with JSON only: the verdict "
          "and one short reason.")
LOG = "The agent needed the apple. It opened the fridge, took the apple, and the task ended."


def test_structured_call_returns_schema_valid_json():
    llm = get_llm(no_cache=True)
    c = llm.structured(LOG, SCHEMA, system=SYSTEM, max_tokens=48)
    assert c.ok, c.rejection
    Draft202012Validator(SCHEMA).validate(c.data)
    assert orjson.loads(c.text) == c.data and llm.stats.model_calls == c.attempts


def test_the_same_call_twice_hits_the_cache():
    first = get_llm().structured(LOG, SCHEMA, system=SYSTEM, max_tokens=48)
    llm = get_llm()
    second = llm.structured(LOG, SCHEMA, system=SYSTEM, max_tokens=48)
    assert llm.stats.model_calls == 0 and second.cached
    assert (second.text, second.data) == (first.text, first.data)


def test_a_shared_system_prompt_is_evaluated_once():
    llm = get_llm(no_cache=True)
    system = SYSTEM + " " + " ".join(f"Rule {i}: be precise." for i in range(20))
    out = llm.run([Request(f"Log {i}: {LOG}", system=system, max_tokens=4) for i in range(3)])
    assert all(c.ok for c in out)
    system_tokens = llm.count_tokens([{"role": "system", "content": system}])
    # Calls 2 and 3 reuse at least the system prompt's KV state from the call before.
    assert llm.stats.reused_tokens >= 2 * (system_tokens - 5)


def test_greedy_output_is_reproducible_without_the_cache():
    a = get_llm(no_cache=True).generate("Name a fruit.", max_tokens=8)
    b = get_llm(no_cache=True).generate("Name a fruit.", max_tokens=8)
    assert a.text == b.text and a.text.strip()


def test_cut_off_json_is_retried_then_rejected_with_its_raw_text():
    c = get_llm(no_cache=True, retries=0).structured(LOG, SCHEMA, system=SYSTEM, max_tokens=3)
    assert not c.ok and c.finish_reason == "length"
    assert c.rejection.raw.startswith("{") and "cut off at max_tokens=3" in c.rejection.reason


def test_context_overflow_with_the_real_tokenizer():
    llm = get_llm(no_cache=True, ctx=96)
    assert llm.handle.n_ctx == 96
    c = llm.generate("word " * 100, max_tokens=8)
    assert not c.ok and c.rejection.reason.startswith("context overflow: prompt is ")
    assert "96-token context window of smollm2-135m-instruct" in c.rejection.reason
    assert llm.stats.model_calls == 0
    t = llm.generate("word " * 100, max_tokens=8, overflow="truncate")
    assert t.ok and t.truncated_tokens > 0 and t.prompt_tokens + 8 <= 96


def test_embeddings_put_a_paraphrase_closer_than_an_unrelated_sentence():
    emb = get_embedder()
    v = emb.embed(["Use the key to unlock the drawer, then take the apple.",
                   "Unlock the drawer with the key and take the apple out.",
                   "The stock market closed lower on Friday after weak earnings."])
    assert v.shape[0] == 3 and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert cosine(v[0], v[1]) > cosine(v[0], v[2])
    again = get_embedder()
    assert np.array_equal(again.embed(["The stock market closed lower on Friday after weak "
                                       "earnings."])[0], v[2])
    assert again.stats.embedded == 0


def test_the_embedder_loads_llama_cpp_with_passive_openmp_waiting():
    # libgomp reads OMP_WAIT_POLICY once, when llama.cpp's library loads; the embedder used
    # to import llama_cpp before it was set, and its spinning threads made embedding 3-20x
    # slower on a busy CPU. A fresh process, so that nothing else has imported llama_cpp.
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'llama_cpp':\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from xpkit.core.embeddings import get_embedder\n"
        "get_embedder(no_cache=True).handle\n"
        "print(seen)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "['PASSIVE']"


def test_texts_batched_together_embed_as_they_do_alone():
    # 64-token decodes force several per call. llama.cpp mean-pools per micro-batch, so a
    # text split across two would get the mean of its tail: each decode must be one.
    texts = [f"Note {i}: the {w} was left on the {p} in the kitchen, next to the bread."
             for i, (w, p) in enumerate([("key", "table"), ("apple", "shelf"), ("cup", "sink"),
                                         ("knife", "board"), ("towel", "chair")])]
    settings = {"no_cache": True, "embed_ctx": 64, "embed_batch_tokens": 64}
    emb = get_embedder(**settings)
    together = emb.embed(texts)
    llm = emb.handle.llm
    assert llm.n_batch == llm.context_params.n_ubatch == 64
    assert sum(len(llm.tokenize(t.encode())) for t in texts) > 64
    alone = np.stack([get_embedder(**settings).embed([t])[0] for t in texts])
    assert np.abs(together - alone).max() < 1e-4


def test_embedding_decode_size_on_cpu_is_capped_at_512_tokens():
    from xpkit.core.config import Settings
    from xpkit.plugins.backends.llama_cpp import embed_batch_tokens

    assert embed_batch_tokens(Settings(embed_batch_tokens=2048)) == 512
    assert embed_batch_tokens(Settings(embed_ctx=1024)) == 1024  # one whole text fits
    assert embed_batch_tokens(Settings(embed_batch_tokens=128, embed_ctx=64)) == 128
    assert embed_batch_tokens(Settings(n_gpu_layers=99, embed_batch_tokens=2048)) == 2048


def test_cli_models_checks_that_the_default_loads():
    r = run_xpkit("models")
    assert r.returncode == 0, r.stderr.decode()
    out = orjson.loads(r.stdout)
    assert out["check"]["ok"] and out["check"]["completion_tokens"] > 0
    assert "loads in" in r.stderr.decode()
