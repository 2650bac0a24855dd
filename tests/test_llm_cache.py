"""The SQLite response/embedding cache: durability, sharing between processes, CLI."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import orjson
import pytest

from tests.conftest import run_xpkit
from tests.llm_fakes import scripted_fixture  # noqa: F401  (the `scripted` fixture)
from xpkit.core.config import xpkit_home
from xpkit.core.embeddings import get_embedder
from xpkit.core.llm import get_llm
from xpkit.core.llm_cache import LLMCache, cache_key, default_cache_path, open_cache


def test_cache_lives_under_xpkit_home_in_wal_mode():
    cache = open_cache()
    assert cache.path == xpkit_home() / "cache" / "llm.sqlite3" == default_cache_path()
    mode = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_responses_and_vectors_round_trip(tmp_path):
    cache = LLMCache(tmp_path / "c.sqlite3")
    k = cache_key("response", "m", {"p": 1})
    assert cache.get_responses([k]) == {}
    cache.put_response(k, "m", {"text": "hi", "n": 2})
    assert cache.get_responses([k, "missing"]) == {k: {"text": "hi", "n": 2}}
    vec = np.arange(4, dtype=np.float32)
    cache.put_vectors("m", [("v1", vec)])
    got = cache.get_vectors(["v1", "v2"])
    assert list(got) == ["v1"] and np.array_equal(got["v1"], vec)
    # Many keys at once (chunked IN lists).
    for i in range(1200):
        cache.put_response(f"k{i}", "m", {"i": i})
    assert len(cache.get_responses([f"k{i}" for i in range(1200)])) == 1200


def test_keys_are_content_hashes():
    a = cache_key("response", "m", {"x": 1, "y": [1, 2]})
    assert a == cache_key("response", "m", {"y": [1, 2], "x": 1}) and len(a) == 32
    assert a != cache_key("response", "m2", {"x": 1, "y": [1, 2]})
    assert a != cache_key("embedding", "m", {"x": 1, "y": [1, 2]})


def test_info_and_clear(tmp_path):
    cache = LLMCache(tmp_path / "c.sqlite3")
    cache.put_response("a", "m1", {})
    cache.put_response("b", "m2", {})
    cache.put_vectors("m1", [("v", np.zeros(3))])
    info = cache.info()
    assert (info["responses"], info["embeddings"]) == (2, 1) and info["bytes"] > 0
    assert info["models"] == [{"model": "m1", "responses": 1, "embeddings": 1},
                              {"model": "m2", "responses": 1, "embeddings": 0}]
    assert cache.clear("responses") == {"responses": 2}
    assert cache.info()["embeddings"] == 1
    assert cache.clear() == {"responses": 0, "embeddings": 1}


WRITER = """
import sys
from xpkit.core.llm_cache import LLMCache
c = LLMCache(sys.argv[1])
for i in range(300):
    c.put_response(f"{sys.argv[2]}-{i}", "m", {"i": i})
"""


def test_several_processes_share_the_cache(tmp_path):
    path = tmp_path / "shared.sqlite3"
    LLMCache(path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{n}"],
                              stderr=subprocess.PIPE) for n in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert LLMCache(path).info()["responses"] == 900


def test_killed_writer_keeps_what_it_committed(tmp_path):
    path = tmp_path / "k.sqlite3"
    code = WRITER + "\nimport os; os._exit(0) if False else os.kill(os.getpid(), 9)\n"
    p = subprocess.run([sys.executable, "-c", code, str(path), "x"], capture_output=True)
    assert p.returncode == -9
    assert LLMCache(path).info()["responses"] == 300


def test_cli_cache_info_and_clear(scripted):
    scripted.model("c", "text")
    get_llm("scripted:c").generate("p")
    r = run_xpkit("cache", "info")
    assert r.returncode == 0
    info = orjson.loads(r.stdout)
    assert info["responses"] == 1 and info["path"] == str(default_cache_path())
    r = run_xpkit("cache", "clear", "--kind", "responses")
    assert r.returncode == 0 and r.stdout == b""
    assert "removed 1 responses" in r.stderr.decode()
    r = run_xpkit("cache", "clear", "--kind", "everything")
    assert r.returncode == 2 and "choose one of all, responses, embeddings" in r.stderr.decode()


# ---------------------------------------------------------------- embeddings plumbing
def test_embeddings_are_normalized_deduplicated_and_cached(scripted):
    m = scripted.embed_model("e", dim=8)
    vecs = get_embedder("scripted:e").embed(["alpha", "beta", "alpha", ""])
    assert vecs.shape == (4, 8) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs[:3], axis=1), 1.0)
    assert np.array_equal(vecs[0], vecs[2]) and not vecs[3].any()  # empty text: zero vector
    assert m.embedded == ["alpha", "beta"]
    again = get_embedder("scripted:e")
    assert np.array_equal(again.embed(["beta", "alpha"]), vecs[[1, 0]])
    assert m.embedded == ["alpha", "beta"] and again.stats.cache_hits == 2


def test_embeddings_batch_and_report_progress(scripted):
    scripted.embed_model("e", dim=4)
    events = []
    emb = get_embedder("scripted:e", no_cache=True)
    emb.embed([f"t{i}" for i in range(10)], batch_size=4, on_progress=events.append)
    assert emb.stats.batches == 3 and [e.done for e in events] == [4, 8, 10]


def test_long_texts_keep_their_head_by_the_stated_rule(scripted):
    m = scripted.embed_model("e", dim=4, max_tokens=10)
    emb = get_embedder("scripted:e")
    emb.embed(["short text", " ".join(f"w{i}" for i in range(50))])
    assert m.embedded[0] == "short text"
    assert m.embedded[1] == " ".join(f"w{i}" for i in range(8))
    assert emb.stats.truncated == 1


@pytest.mark.parametrize("spec", ["scripted:e"])
def test_embed_module_function(scripted, spec):
    from xpkit.core.embeddings import cosine, embed

    scripted.embed_model("e", dim=4)
    v = embed(["a", "b"], embed_model=spec)
    assert cosine(v[0], v[0]) == pytest.approx(1.0)
