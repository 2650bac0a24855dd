"""examples/xpkit-plugin-example, installed as a real package, plugs into the real CLI.

The package is installed once per session with ``pip install --no-deps --target DIR`` (from a
copy, so no build files land in the repo); each ``xpkit`` subprocess gets ``DIR`` on
PYTHONPATH and finds the plugin the way any installed plugin is found: by the entry point in
its dist-info. Nothing is installed into the test environment itself.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "xpkit-plugin-example"

TSV = ("question\treference\tanswer\tgrade\n"
       "Capital of France?\tParis\tParis\tpass\n"
       "2 + 2 =\t4\t5\t0\n"
       "Spell 'tab'\ta\\tb\ta\\tb\t0.5\n"
       "only one column\n")


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed example plugin, and a broken and an unloadable one."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = root / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-cache-dir", "--target", str(site),
                          str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    # Two hand-made distributions: one whose hook raises, one whose module does not exist.
    (site / "xpkit_broken_example.py").write_text(
        "from xpkit.core.hookspecs import hookimpl\n\n@hookimpl\n"
        "def register_formats(register):\n    raise RuntimeError('boom')\n")
    for dist, name, module in (("xpkit_broken_example", "broken", "xpkit_broken_example"),
                               ("xpkit_missing_example", "missing", "xpkit_no_such_module")):
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[xpkit]\n{name} = {module}\n")
    return site


def xp(site: Path, *args: str, load: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``xpkit`` with ``site`` on PYTHONPATH (``load``: XPKIT_LOAD_PLUGINS)."""
    env = {k: v for k, v in os.environ.items() if k != "XPKIT_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    if load is not None:
        env["XPKIT_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "xpkit.cli.main", *args], env=env,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=300)


def test_plugins_lists_it_with_version_and_hooks_and_reports_broken_ones(plugin_site):
    res = xp(plugin_site, "plugins")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rows = {r["name"]: r for r in out if "error" not in r}
    assert rows["example"] == {"name": "example", "version": "0.1.0", "builtin": False,
                               "hooks": ["register_formats", "register_scorers"]}
    assert rows["broken"]["hooks"] == ["register_formats"]
    errors = {r["name"]: r["error"] for r in out if "error" in r}
    assert errors["broken"] == "register_formats: RuntimeError: boom"
    assert errors["missing"].startswith("ModuleNotFoundError")


def test_ingest_reads_tsv_with_the_plugin_format_while_a_broken_plugin_is_skipped(
        plugin_site, tmp_path):
    src = tmp_path / "qa.tsv"
    src.write_text(TSV)
    rejects = tmp_path / "rejects.jsonl"
    for args in ([], ["--format", "qa-tsv"]):
        if rejects.exists():
            rejects.unlink()
        res = xp(plugin_site, "ingest", str(src), "--rejects", str(rejects), *args)
        assert res.returncode == 0, res.stderr
        episodes = [json.loads(line) for line in res.stdout.splitlines()]
        assert [e["task"] for e in episodes] == ["Capital of France?", "2 + 2 =", "Spell 'tab'"]
        assert [e["outcome"]["success"] for e in episodes] == [True, False, None]
        assert episodes[2]["outcome"]["score"] == 0.5
        assert episodes[2]["answer"] == episodes[2]["reference"] == "a\tb"
        assert [s["role"] for s in episodes[0]["steps"]] == ["user", "assistant"]
        (bad,) = [json.loads(line) for line in rejects.read_text().splitlines()]
        assert bad["line"] == 5 and "expected 2 to 4 tab-separated columns" in bad["reason"]


def test_empty_load_list_leaves_it_out(plugin_site, tmp_path):
    assert json.loads(xp(plugin_site, "plugins", load="").stdout) == []
    only = json.loads(xp(plugin_site, "plugins", load="example").stdout)
    assert [r["name"] for r in only] == ["example"]
    src = tmp_path / "qa.jsonl"
    src.write_text('{"question": "q", "answer": "a"}\n')
    res = xp(plugin_site, "ingest", str(src), "--format", "qa-tsv", load="")
    assert res.returncode == 2
    assert "--format qa-tsv: unknown format" in res.stderr.decode()


SCORE = """
import json
from xpkit.core.scoring import ScoreItem, ScorerContext, get_scorer, resolve_scorer_params
scorer = get_scorer("edit-ratio")
items = [ScoreItem("Paris", "paris", {}), ScoreItem("Pariss", "Paris", {}),
         ScoreItem("Lyon", ["Paris", "Lyon "], {}), ScoreItem("x", None, {}),
         ScoreItem("kitten", "sitting", {})]
for raw in ({}, {"threshold": "0.5", "normalize": "false"}):
    ctx = ScorerContext(params=resolve_scorer_params(raw, scorer))
    print(json.dumps([[s.value, s.passed, s.error] for s in scorer.score(items, ctx)]))
"""


def test_scorer_is_found_by_name_and_scores(plugin_site):
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    res = subprocess.run([sys.executable, "-c", SCORE], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    default, loose = (json.loads(line) for line in res.stdout.splitlines())
    assert default[0] == [1.0, True, None]
    assert default[1] == [pytest.approx(5 / 6), False, None]  # one edit in six characters
    assert default[2] == [1.0, True, None]  # the best of several references
    assert default[3] == [None, None, "no reference to compare with"]
    assert default[4][0] == pytest.approx(1 - 3 / 7)  # kitten -> sitting: 3 edits
    assert loose[0] == [pytest.approx(0.8), True, None]  # case now counts: P != p
    assert loose[2][0] == pytest.approx(0.8)  # 'Lyon' vs 'Lyon ' without whitespace folding


def test_scorer_through_evaluate(plugin_site, tmp_path):
    if b"--scorer" not in xp(plugin_site, "evaluate", "--help").stdout:
        pytest.skip("xpkit evaluate is not built in this tree yet")
    src = tmp_path / "graded.jsonl"
    src.write_text('{"answer": "Pariss", "reference": "Paris"}\n'
                   '{"answer": "Lyon", "reference": "Paris"}\n')
    res = xp(plugin_site, "evaluate", str(src), "--scorer", "edit-ratio", "--param",
             "threshold=0.8")
    assert res.returncode == 0, res.stderr
    evals = [json.loads(line)["_eval"] for line in res.stdout.splitlines()]
    assert [(round(e["score"], 3), e["passed"]) for e in evals] == [(0.833, True), (0.0, False)]


def test_every_extension_point_documents_what_to_register():
    from xpkit.core import hookspecs

    names = [n for n in vars(hookspecs) if n.startswith("register_")]
    assert set(names) >= {"register_formats", "register_distillers", "register_selectors",
                          "register_scorers", "register_backends", "register_embedders",
                          "register_commands"}
    for name in names:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.splitlines()) >= 4, f"{name}: say what the registered object provides"
        assert "xpkit." in doc, f"{name}: name the contract (a class or protocol in xpkit)"
