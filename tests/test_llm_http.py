"""The OpenAI-compatible HTTP backend against a REAL server on 127.0.0.1.

The server is llama-cpp-python's own (``llama_cpp.server``, its ``server`` extra installed
by the ``test`` extra) serving the bundled model, started through
``python -m xpkit.plugins.backends.llama_server`` — the same server with xpkit's
model-loading rule for CPUs that advertise AMX (see that module) — on a free port, and torn
down after.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from xpkit.core import llm as L
from xpkit.core.errors import ModelServerError
from xpkit.core.llm import Request, get_llm
from xpkit.core.llm_cache import open_cache

pytestmark = [pytest.mark.model, pytest.mark.slow]

SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["success", "failure"]},
                   "reason": {"type": "string"}},
    "required": ["verdict", "reason"],
}
SYSTEM = "You judge a short agent log. Answer with JSON only: a verdict and a short reason."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xpkit.plugins.backends.llama_server", "--model", "default",
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
             "--n_threads", str(os.cpu_count() or 1)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start within 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_server(tmp_path) -> Iterator[Server]:
    srv = Server(tmp_path / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def _requests(n: int, max_tokens: int = 40) -> list[Request]:
    return [Request(f"Log {i}: the agent opened the fridge and took the apple.", system=SYSTEM,
                    schema=SCHEMA, max_tokens=max_tokens) for i in range(n)]


def test_structured_output_is_schema_valid(server):
    llm = get_llm(server.url, no_cache=True)
    c = llm.structured("The agent took the apple; the task ended.", SCHEMA, system=SYSTEM,
                       max_tokens=40)
    assert c.ok, c.rejection
    Draft202012Validator(SCHEMA).validate(c.data)
    assert llm.spec.kind == "openai" and llm.handle.model.endswith(".gguf")


def test_concurrent_requests(server):
    llm = get_llm(server.url + "#any-name", concurrency=3, no_cache=True)
    out = llm.run(_requests(3, max_tokens=16))
    assert len(out) == 3 and llm.stats.max_in_flight == 3
    for c in out:
        assert c.ok or "cut off" in c.rejection.reason
        if c.ok:
            Draft202012Validator(SCHEMA).validate(c.data)


def test_json_cut_off_mid_string_goes_through_validation_and_retry(server):
    llm = get_llm(server.url, no_cache=True, retries=0)
    c = llm.structured("The agent took the apple.", SCHEMA, system=SYSTEM, max_tokens=6)
    assert not c.ok and c.finish_reason == "length"
    assert c.rejection.raw.startswith("{") and "not valid JSON" in c.rejection.reason
    retried = get_llm(server.url, no_cache=True, retries=2)
    r = retried.structured("The agent took the apple.", SCHEMA, system=SYSTEM, max_tokens=6)
    assert r.attempts > 1 and retried.stats.retries >= 1
    assert r.ok or "cut off at max_tokens=24" in r.rejection.reason


def test_a_server_killed_mid_run_gives_a_clear_error_and_no_partial_records(fresh_server):
    llm = get_llm(fresh_server.url, concurrency=1)
    reqs = _requests(6, max_tokens=24)
    returned = None

    def kill_after_first(progress) -> None:
        if progress.done == 1:
            fresh_server.stop()

    with pytest.raises(ModelServerError) as info:
        returned = llm.run(reqs, on_progress=kill_after_first)
    assert returned is None
    msg = str(info.value)
    assert f"model server {fresh_server.url} stopped answering" in msg
    assert "1 of 6 requests" in msg and "no partial records" in msg
    # The one response that completed is cached whole; nothing half-written.
    cache = open_cache()
    assert cache.info()["responses"] == 1
    cached = cache.get_responses([llm.key(r) for r in reqs])
    assert len(cached) == 1
    (value,) = cached.values()
    assert value["rejection"] or orjson.loads(value["text"]) == value["data"]
    L.unload_all("openai")
