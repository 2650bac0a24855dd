"""The plugin manager: outside plugins register through the same hooks as built-ins."""

from __future__ import annotations

import json

import pytest

from xpkit.core import plugins
from xpkit.core.formats import InputFormat, available_formats
from xpkit.core.hookspecs import hookimpl
from xpkit.core.ingest import ingest
from xpkit.core.records import make_episode, make_step


class UpperFormat(InputFormat):
    name = "shout"
    description = "test format: {'q': ...} records"

    def sniff(self, record):
        return 1.0 if set(record) == {"q"} else 0.0

    def parse(self, record, options):
        return make_episode(task=record["q"].upper(),
                            steps=[make_step("user", "message", record["q"])])


class OutsidePlugin:
    @hookimpl
    def register_formats(self, register):
        register(UpperFormat())


class BrokenPlugin:
    @hookimpl
    def register_formats(self, register):
        raise RuntimeError("boom")


@pytest.fixture
def registered():
    pm = plugins.get_plugin_manager()
    pm.register(OutsidePlugin(), name="outside")
    pm.register(BrokenPlugin(), name="broken")
    yield pm
    pm.unregister(name="outside")
    pm.unregister(name="broken")


def test_builtin_formats_register_through_the_hook():
    names = set(available_formats())
    assert {"openai-chat", "sharegpt", "alpaca", "react", "swe-agent", "graded-qa", "map",
            "episode"} <= names
    listed = {p["name"] for p in plugins.loaded_plugins(include_builtins=True)}
    assert "xpkit.plugins.formats.alpaca" in listed


def test_outside_format_is_detected_and_a_broken_plugin_is_reported(registered, tmp_path):
    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps({"q": "hello"}) + "\n")
    got = []
    summary = ingest([str(src)], sink=got.extend, rejects=str(tmp_path / "r.jsonl"))
    assert summary.formats == {str(src): "shout"}
    assert got[0]["task"] == "HELLO"
    errors = {e.name: e.error for e in plugins.plugin_errors()}
    assert errors["broken"] == "register_formats: RuntimeError: boom"


def test_empty_load_list_loads_no_outside_plugins(monkeypatch):
    monkeypatch.setenv("XPKIT_LOAD_PLUGINS", "")
    plugins.reset()
    try:
        assert plugins.loaded_plugins() == []
        assert "alpaca" in available_formats()  # built-ins are always there
    finally:
        plugins.reset()
