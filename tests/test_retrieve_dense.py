"""Dense and hybrid retrieval with a deterministic test embedder registered as a plugin.

The embedder hashes word prefixes into buckets (a bag of 5-letter prefixes), so texts that
share words are close and the test needs no model file. It is registered through the same
``register_embedders`` hook as the llama.cpp embedder, and selected with ``testhash:DIM``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pytest

from tests.conftest import FIXTURES
from xpkit.core.errors import UsageError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.index import StaleIndexError, index
from xpkit.core.retrieve import retrieve

UNITS = FIXTURES / "units_small.jsonl"


class _HashHandle:
    pooling = "mean"
    max_tokens = None

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def head(self, text: str, n: int) -> tuple[str, int]:
        return text, len(text.split())

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        out = []
        for t in texts:
            v = np.zeros(self.dim, np.float32)
            for w in re.findall(r"\w\w+", t.lower()):
                h = hashlib.blake2b(w[:5].encode(), digest_size=4).digest()
                v[int.from_bytes(h, "little") % self.dim] += 1.0
            out.append(v.tolist())
        return out


class _HashEmbedder:
    name = "test-hash"
    kinds = ("testhash",)

    def load(self, spec, settings):
        return _HashHandle(int(spec.location or 64))


class _Plugin:
    @hookimpl
    def register_embedders(self, register):
        register(_HashEmbedder())


@pytest.fixture
def embedder():
    from xpkit.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin = _Plugin()
    pm.register(plugin, name="test-hash-embedder")
    yield "testhash:128"
    pm.unregister(plugin)


def write(path: Path, records: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def run(store, tmp_path, queries, **kw) -> list[dict]:
    out: list[dict] = []
    retrieve([write(tmp_path / "q.jsonl", queries)], store=store, sink=out.extend, **kw)
    return out


def test_vectors_are_stored_and_hybrid_is_the_default(embedder, tmp_path):
    store = str(tmp_path / "lib.duckdb")
    s = index([str(UNITS)], store=store, embed_model=embedder)
    assert s.sync.embedded == 6
    with duckdb.connect(store, read_only=True) as con:
        (model, dim, params), = con.execute(
            "SELECT embed_model, embed_dim, params FROM indexes").fetchall()
        norms = [float(np.linalg.norm(v)) for (v,) in
                 con.execute("SELECT vector FROM index_vectors").fetchall()]
    assert model == embedder and dim == 128
    assert orjson.loads(params)["embedding"]["model"] == embedder
    assert norms == pytest.approx([1.0] * 6, abs=1e-5)
    [rec] = run(store, tmp_path, [{"task": "retry the http request after a timeout"}],
                utility=False)
    assert rec["_retrieve"]["mode"] == "hybrid"
    top = rec["hits"][0]
    assert top["unit_id"] == "u_retry"
    c = top["components"]
    assert c["rrf"] == pytest.approx(2 / 61, abs=1e-6) and 0 < c["dense"] <= 1 and c["bm25"] > 0


def test_dense_mode_exact_and_hnsw_agree(embedder, tmp_path):
    store = str(tmp_path / "lib.duckdb")
    index([str(UNITS)], store=store, embed_model=embedder)
    q = [{"task": "slow SQL join query"}, {"task": "python test traceback"}]
    exact = run(store, tmp_path, q, mode="dense", k=3, utility=False)
    hnsw = run(store, tmp_path, q, mode="dense", k=3, utility=False, hnsw_threshold=1)
    for a, b in zip(exact, hnsw, strict=True):
        assert [h["unit_id"] for h in a["hits"]] == [h["unit_id"] for h in b["hits"]]
        assert all(h["components"]["dense"] > 0 for h in a["hits"])
    assert exact[1]["hits"][0]["unit_id"] == "u_traceback"
    # the HNSW graph is a cache file beside the others, never a table in the store
    with duckdb.connect(store, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert not any("hnsw" in t for t in tables)


def test_dense_min_score_and_new_units_get_vectors(embedder, tmp_path):
    store = str(tmp_path / "lib.duckdb")
    index([str(UNITS)], store=store, embed_model=embedder)
    more = write(tmp_path / "more.jsonl", [{"kind": "insight", "content":
                                            "Water the tomato plants every morning."}])
    s = index([more], store=store)  # the recorded model embeds new units without asking
    assert s.sync.added == 1 and s.sync.embedded == 1
    [rec] = run(store, tmp_path, [{"task": "tomato plants water"}], mode="dense",
                min_score=0.5)
    assert rec["hits"][0]["content"].startswith("Water the tomato")
    [rec] = run(store, tmp_path, [{"task": "quantum chromodynamics lattice"}], mode="hybrid",
                min_score=0.5)
    assert rec["hits"] == [] and rec["_retrieve"]["in_scope"] is False


def test_mmr_with_vectors(embedder, tmp_path):
    store = str(tmp_path / "lib.duckdb")
    index([str(UNITS)], store=store, embed_model=embedder)
    plain = run(store, tmp_path, [{"task": "slow SQL query"}], k=3, utility=False)
    div = run(store, tmp_path, [{"task": "slow SQL query"}], k=3, utility=False, mmr=0.1)
    assert [h["unit_id"] for h in plain[0]["hits"]] != [h["unit_id"] for h in div[0]["hits"]]


def test_dense_without_vectors_is_a_usage_error(tmp_path):
    store = str(tmp_path / "lib.duckdb")
    index([str(UNITS)], store=store)
    with pytest.raises(UsageError, match="--mode dense needs vectors"):
        run(store, tmp_path, [{"task": "x y"}], mode="dense")


def test_changing_the_embedding_model_rebuilds_and_a_changed_model_is_refused(embedder,
                                                                            tmp_path):
    store = str(tmp_path / "lib.duckdb")
    index([str(UNITS)], store=store, embed_model=embedder)
    s = index([], store=store, embed_model="testhash:64")
    assert s.sync.rebuilt and "embedding model changed" in s.sync.rebuilt
    with duckdb.connect(store) as con:  # pretend the spec now resolves to another model
        con.execute("UPDATE indexes SET params = json_merge_patch(params, "
                    "'{\"embedding\": {\"identity\": \"something-else\"}}')")
    with pytest.raises(StaleIndexError, match="resolves to another model"):
        run(store, tmp_path, [{"task": "x y"}])
