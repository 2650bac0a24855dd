"""The ``verifier`` scorer: an external command decides, by its exit status.

Execution-based checking as in HumanEval/Codex (Chen et al. 2021, "Evaluating Large
Language Models Trained on Code": run the unit tests, pass = they all pass) and the
"verifier" reward functions of RL with verifiable rewards, with the program left to the
user: ``--param command='python check.py --strict'``.

The command is split like a shell would (``shlex``) but run *without* a shell, once per
item, with the item on stdin as one JSON object (the record, with ``answer`` and
``reference`` set to what is being scored, and ``task`` when known). Exit status 0 is a
pass (value 1); any other status is a fail (value 0) and the first line of its stderr is
the detail. A command that runs longer than ``timeout`` seconds is killed with its whole
process group and the item gets no score (value ``None``) with the error "verifier timed
out after N s"; so does one killed by a signal. A command that does not exist is a usage
error for the whole run, not a failed item. ``jobs`` items run at once on a thread pool.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import orjson

from xpkit.core.errors import UsageError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.scoring import Param, Score, ScoreItem, Scorer, ScorerContext


def _seconds(value: float) -> str:
    return f"{value:g}"


def parse_command(command: str) -> list[str]:
    """The verifier's argv; a usage error when it is missing, malformed or not found."""
    if not command.strip():
        raise UsageError("the verifier scorer needs a command: pass --param "
                         "command='PROGRAM ARGS' (it gets each item as JSON on stdin and "
                         "exits 0 for a pass).")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--param command={command}: cannot split it into arguments "
                         f"({exc}); check the quotes.") from None
    program = argv[0]
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.isfile(program):
            raise UsageError(f"--param command={command}: the verifier program {program} "
                             "does not exist.")
        if not os.access(program, os.X_OK):
            raise UsageError(f"--param command={command}: the verifier program {program} is "
                             f"not executable (chmod +x it, or run it through its "
                             "interpreter, e.g. 'python3 check.py').")
    elif shutil.which(program) is None:
        raise UsageError(f"--param command={command}: the verifier program {program!r} was "
                         "not found on PATH; give its full path.")
    return argv


def item_json(item: ScoreItem) -> bytes:
    """What the verifier reads on stdin: the record with ``answer`` and ``reference``."""
    record = dict(item.record)
    record["answer"] = item.answer
    record["reference"] = item.reference
    if item.task is not None and "task" not in record:
        record["task"] = item.task
    return orjson.dumps(record, default=str) + b"\n"


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def run_verifier(argv: list[str], stdin: bytes, timeout: float) -> Score:
    """Run the verifier once; its exit status is the verdict."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise UsageError(f"--param command: the verifier program {argv[0]!r} was not "
                         "found; give its full path.") from None
    except PermissionError:
        raise UsageError(f"--param command: the verifier program {argv[0]!r} is not "
                         "executable.") from None
    try:
        _, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        # Kill the whole group: a verifier that started children must not leave them behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild that left the group keeps the pipes
            proc.wait()
        return Score(None, error=f"verifier timed out after {_seconds(timeout)} s")
    code = proc.returncode
    if code == 0:
        return Score(1.0, detail="verifier exited 0")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return Score(None, error=f"verifier was killed by signal {name}"
                                 + (f": {_first_line(err)}" if err.strip() else ""))
    why = _first_line(err)
    return Score(0.0, detail=f"verifier exited {code}" + (f": {why}" if why else ""))


class VerifierScorer(Scorer):
    """An external command judges each item by its exit status (see the module docstring)."""

    name = "verifier"
    description = ("an external command gets each item as JSON on stdin; exit 0 passes "
                   "(--param command='PROGRAM ARGS', run without a shell)")
    needs_reference = False
    params: ClassVar[dict[str, Param]] = {
        "command": Param("", "the verifier command, split like a shell would but run "
                             "without one", str),
        "timeout": Param(30.0, "seconds before a verifier run is killed (the item gets no "
                               "score)"),
        "jobs": Param(2, "verifier runs at once", int),
    }

    def score(self, items: Sequence[ScoreItem], ctx: ScorerContext) -> list[Score]:
        argv = parse_command(str(self.param(ctx, "command") or ""))
        timeout = float(self.param(ctx, "timeout"))
        if timeout <= 0:
            raise UsageError(f"--param timeout={_seconds(timeout)}: must be more than 0 "
                             "seconds.")
        jobs = int(self.param(ctx, "jobs"))
        if jobs < 1:
            raise UsageError(f"--param jobs={jobs}: must be at least 1.")
        done, lock = [0], threading.Lock()

        def one(item: ScoreItem) -> Score:
            score = run_verifier(argv, item_json(item), timeout)
            if ctx.on_progress is not None:
                with lock:
                    done[0] += 1
                    ctx.on_progress(done[0], len(items))
            return score

        if jobs == 1 or len(items) <= 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="xpkit-verifier") as pool:
            return list(pool.map(one, items))


@hookimpl
def register_scorers(register: Any) -> None:
    register(VerifierScorer())
