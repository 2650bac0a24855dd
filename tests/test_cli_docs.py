"""docs/cli.md is generated from --help and fresh; every command's help ends with an example."""

from __future__ import annotations

import difflib
import inspect
import re
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from gen_cli_docs import DEFAULT_OUT, commands, render

COMMANDS = commands()


def test_docs_cli_md_is_fresh():
    committed = DEFAULT_OUT.read_text() if DEFAULT_OUT.exists() else ""
    fresh = render()
    if committed != fresh:
        diff = "".join(list(difflib.unified_diff(
            committed.splitlines(keepends=True), fresh.splitlines(keepends=True),
            "docs/cli.md (committed)", "docs/cli.md (from --help)"))[:60])
        pytest.fail(f"docs/cli.md is stale: run `make docs` and commit the result.\n{diff}")


def test_every_command_and_sub_command_is_documented():
    paths = [path for path, _, _ in COMMANDS]
    assert paths[0] == "xpkit"
    for expected in ("xpkit ingest", "xpkit select-data", "xpkit config show",
                     "xpkit cache info", "xpkit plugins"):
        assert expected in paths
    text = DEFAULT_OUT.read_text()
    for path, _, help_text in COMMANDS:
        assert f"## {path}\n" in text and help_text.splitlines()[0] in text


def final_example(help_text: str) -> list[str]:
    """The lines of the help's last paragraph, without a '\\b' marker or 'Example:' header."""
    text = inspect.cleandoc(help_text).partition("\f")[0]
    lines = text.split("\n\n")[-1].splitlines()
    if lines and lines[0].strip() == "\b":
        lines = lines[1:]
    if lines and re.fullmatch(r"Examples?:", lines[0].strip()):
        lines = lines[1:]
    elif lines:
        lines[0] = re.sub(r"^\s*Examples?:\s*", "", lines[0])
    return [line.strip() for line in lines if line.strip()]


@pytest.mark.parametrize("path", [path for path, _, _ in COMMANDS])
def test_help_ends_with_an_example_rendered_verbatim(path):
    _, cmd, rendered = next(c for c in COMMANDS if c[0] == path)
    example = final_example(cmd.help or "")
    assert example and example[0].startswith("xpkit "), (
        f"{path}: its help (the docstring) must end with an example command line starting "
        f"with 'xpkit ', e.g. 'Example:' then '  xpkit ingest runs/*.jsonl | xpkit distill'; "
        f"it ends with {example[:1]}")
    shown = {line.strip() for line in rendered.splitlines()}
    missing = [line for line in example if line not in shown]
    assert not missing, (
        f"{path}: click re-wrapped the example ({missing[0]!r} is not a line of --help); put "
        "a line with only '\\b' before 'Example:' in the docstring so it stays as written")
