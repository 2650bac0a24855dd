"""``xpkit config show``: effective settings, each with the source it came from."""

from __future__ import annotations

import orjson
import pytest

from xpkit.core.config import SOURCES, explain_settings, xpkit_home


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """A project dir (cwd) with ./xpkit.toml and a user config; each layer sets ctx."""
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    xpkit_home().mkdir(parents=True, exist_ok=True)
    return proj


def write_layers(proj, upto: str) -> tuple[list[str], dict[str, str]]:
    """Give ctx a value in every source from the lowest up to ``upto``: (flags, env)."""
    order = list(reversed(SOURCES))  # default, user, project, env, flag
    present = order[: order.index(upto) + 1]
    if "user" in present:
        (xpkit_home() / "config.toml").write_text("ctx = 1000\n")
    if "project" in present:
        (proj / "xpkit.toml").write_text("ctx = 2000\n[distill]\nanything = 1\n")
    env = {"XPKIT_CTX": "3000"} if "env" in present else {}
    flags = ["--ctx", "4000"] if "flag" in present else []
    return flags, env


EXPECTED = {"default": (4096, None), "user": (1000, "config.toml"),
            "project": (2000, "xpkit.toml"), "env": (3000, "XPKIT_CTX"),
            "flag": (4000, "--ctx")}


@pytest.mark.parametrize("winner", SOURCES)
def test_each_source_wins_over_the_next(layers, xpkit, winner):
    flags, env = write_layers(layers, winner)
    res = xpkit("config", "show", *flags, cwd=layers, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    out = orjson.loads(res.stdout)  # stdout is exactly one JSON object
    ctx = out["settings"]["ctx"]
    value, where = EXPECTED[winner]
    assert (ctx["value"], ctx["source"]) == (value, winner)
    assert (ctx["from"] or "").endswith(where or "")
    # every lower source is listed as overridden, in precedence order, the default last
    lower = SOURCES[SOURCES.index(winner) + 1:]
    assert [o["source"] for o in ctx["overrides"]] == list(lower)
    assert [o["value"] for o in ctx["overrides"]] == [EXPECTED[s][0] for s in lower]
    assert out["settings"]["model"]["source"] == "default"
    assert out["precedence"] == list(SOURCES)


def test_files_home_and_model_flag_through_its_env_var(layers, xpkit):
    (layers / "xpkit.toml").write_text('model = "http://127.0.0.1:9/v1"\n')
    res = xpkit("config", "show", cwd=layers, env={"XPKIT_EMBED_MODEL": "x.gguf"})
    out = orjson.loads(res.stdout)
    assert out["files"]["project"] == {"path": str(layers / "xpkit.toml"), "exists": True}
    assert out["files"]["user"]["exists"] is False
    assert out["home"] == str(xpkit_home())
    assert out["settings"]["model"]["source"] == "project"
    # --embed-model is declared with envvar=: Typer hands the variable over as a flag value,
    # and the source is still reported as the environment
    assert out["settings"]["embed_model"] == {"value": "x.gguf", "source": "env",
                                              "from": "XPKIT_EMBED_MODEL", "overrides": [
                                                  {"value": "default", "source": "default",
                                                   "from": None}]}


def test_unknown_xpkit_variable_is_warned_about(layers, xpkit):
    res = xpkit("config", "show", cwd=layers, env={"XPKIT_MODLE": "x", "XPKIT_STORE": "a"})
    assert res.returncode == 0
    assert orjson.loads(res.stdout)["unknown_env"] == ["XPKIT_MODLE"]
    assert "XPKIT_MODLE is set but is not an xpkit setting" in res.stderr.decode()


def test_bad_config_file_is_a_usage_error_naming_file_and_key(layers, xpkit):
    (layers / "xpkit.toml").write_text("ctx = 'big'\n")
    res = xpkit("config", "show", cwd=layers)
    assert res.returncode == 2 and res.stdout == b""
    assert f"{layers / 'xpkit.toml'}: ctx = 'big' is not a valid int" in res.stderr.decode()


def test_core_returns_data_for_every_setting(layers):
    out = explain_settings(cwd=layers, env={"XPKIT_SEED": "7"}, temperature=0.5)
    assert out["settings"]["seed"]["source"] == "env"
    assert out["settings"]["temperature"] == {
        "value": 0.5, "source": "flag", "from": "--temperature",
        "overrides": [{"value": 0.0, "source": "default", "from": None}]}
    assert all(s["source"] in SOURCES for s in out["settings"].values())
