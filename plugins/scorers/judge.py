"""The ``judge`` scorer: an LLM grades each answer against a rubric.

Single-answer grading as in Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and
Chatbot Arena": the judge sees the task, the answer and, when there is one, a reference
answer ("reference-guided grading", which the paper found makes judges of math and
reasoning answers far more reliable), writes a short explanation first and then a score on
a fixed scale. Here the verdict is JSON constrained by a schema (``{reason, score}``, the
reason first so that the score follows from it) and validated by the runtime; output that
stays invalid after the runtime's retries gives the item no score (value ``None``) with
the reason, never a guessed one.

The prompt is ``prompts/judge.txt`` (a ``## system`` section holding the rubric and the
form of the verdict, described in words: small models copy a literal example; a ``## user``
section per item); ``--param rubric=...`` replaces the
default rubric (``$low`` and ``$high`` in it are filled in). The score maps to a value in
[0, 1] as ``(score - low) / (high - low)``; the item passes when ``score >= pass_at``. All
items go to the model in one batch (``LLM.run``: cached, prefix-sorted, parallel on a
server); long tasks and answers are clipped in the middle so their ends stay visible.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from importlib import resources
from string import Template
from typing import Any, ClassVar

from xpkit.core.errors import UsageError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.scoring import Param, Score, ScoreItem, Scorer, ScorerContext, references

# Characters of each part kept in the prompt (about 1,000 tokens for an answer).
TASK_CHARS, REFERENCE_CHARS, ANSWER_CHARS = 3000, 2000, 4000
REASON_CHARS = 160
TASK_FIELDS = ("task", "question", "prompt", "instruction", "problem", "input")


@functools.cache
def judge_template() -> dict[str, str]:
    """The sections of ``prompts/judge.txt`` by name (``system``, ``compare``, ``rubric``,
    ``reference``, ``user``)."""
    text = resources.files("xpkit.plugins.scorers").joinpath("prompts", "judge.txt") \
        .read_text(encoding="utf-8")
    parts = re.split(r"^## (\w[\w ]*?)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def judge_schema(low: int, high: int) -> dict[str, Any]:
    """The verdict's JSON schema: a short reason, then an integer score in [low, high]
    (an ``enum``, so llama.cpp's grammar allows exactly those numbers)."""
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": REASON_CHARS,
                       "description": "one short sentence: why this score"},
            "score": {"type": "integer", "enum": list(range(low, high + 1)),
                      "minimum": low, "maximum": high},
        },
        "required": ["reason", "score"],
        "additionalProperties": False,
    }


def parse_scale(scale: str) -> tuple[int, int]:
    """``"1-5"`` -> ``(1, 5)``; a usage error unless 0 <= low < high <= 10."""
    m = re.fullmatch(r"\s*(\d+)\s*[-:]\s*(\d+)\s*", scale)
    low, high = (int(m[1]), int(m[2])) if m else (-1, -1)
    if not m or not 0 <= low < high <= 10:
        raise UsageError(f"--param scale={scale}: expected LOW-HIGH with whole numbers "
                         "0 <= LOW < HIGH <= 10, e.g. 1-5 or 0-10.")
    return low, high


def default_pass_at(low: int, high: int) -> int:
    """The upper ~30% of the scale passes: 4 on 1-5, 7 on 0-10, 8 on 1-10."""
    return low + math.ceil(0.7 * (high - low))


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters in the middle, keeping both ends."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]} [... {len(text) - head - tail} characters cut ...] {text[-tail:]}"


def task_text(item: ScoreItem) -> str:
    """The task the answer responds to: ``item.task``, else a usual field of the record."""
    if item.task and str(item.task).strip():
        return str(item.task)
    for key in TASK_FIELDS:
        value = item.record.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return "(not given)"


class JudgeScorer(Scorer):
    """LLM-as-a-judge single-answer grading (see the module docstring)."""

    name = "judge"
    description = ("an LLM grades each answer on a rubric (reference-guided when there is a "
                   "reference; MT-Bench single-answer grading)")
    needs_reference = False
    needs_model = True
    params: ClassVar[dict[str, Param]] = {
        "rubric": Param("", "grading rubric ($low and $high are filled in); default: the one "
                            "in prompts/judge.txt", str),
        "scale": Param("1-5", "score range LOW-HIGH, whole numbers within 0-10", str),
        "pass_at": Param(None, "score at or above which the answer passes (default: the "
                               "upper 30% of the scale: 4 on 1-5, 7 on 0-10)", int),
        "max_tokens": Param(128, "token limit of one verdict", int),
    }

    def score(self, items: Sequence[ScoreItem], ctx: ScorerContext) -> list[Score]:
        from xpkit.core.llm import Request

        low, high = parse_scale(str(self.param(ctx, "scale")))
        pass_at = self.param(ctx, "pass_at")
        pass_at = default_pass_at(low, high) if pass_at is None else int(pass_at)
        if not low <= pass_at <= high:
            raise UsageError(f"--param pass_at={pass_at}: must be within the scale "
                             f"{low}-{high}.")
        sections = judge_template()
        schema = judge_schema(low, high)
        numbers = {"low": str(low), "high": str(high)}
        rubric = str(self.param(ctx, "rubric") or "").strip() or sections["rubric"]
        rubric = Template(rubric).safe_substitute(numbers)
        systems = {has_ref: re.sub(r"[ \t]{2,}", " ", Template(sections["system"]).substitute(
            numbers, rubric=rubric,
            compare=sections["compare"] if has_ref else "")) for has_ref in (False, True)}

        out: list[Score | None] = [None] * len(items)
        requests, slots = [], []
        for i, item in enumerate(items):
            answer = str(item.answer or "").strip()
            if not answer:
                out[i] = Score(0.0, passed=False, detail="no answer to judge")
                continue
            refs = references(item.reference)
            block = Template(sections["reference"]).substitute(
                reference=clip("\n".join(refs), REFERENCE_CHARS)) + "\n" if refs else ""
            user = re.sub(r"\n{3,}", "\n\n", Template(sections["user"]).substitute(
                task=clip(task_text(item).strip(), TASK_CHARS), reference_block=block,
                answer=clip(answer, ANSWER_CHARS)))
            requests.append(Request(user, system=systems[bool(refs)], schema=schema,
                                    max_tokens=int(self.param(ctx, "max_tokens")),
                                    overflow="truncate"))
            slots.append(i)
        if requests:
            progress = None
            if ctx.on_progress is not None:
                report = ctx.on_progress

                def progress(p: Any) -> None:
                    report(p.done, p.total)

            completions = ctx.llm().run(requests, on_progress=progress)
            for i, c in zip(slots, completions, strict=True):
                out[i] = self.verdict(c, low, high, pass_at)
        return [s for s in out if s is not None]

    @staticmethod
    def verdict(c: Any, low: int, high: int, pass_at: int) -> Score:
        """A completion as a ``Score``: a rejection gives no value and says why."""
        if not c.ok:
            return Score(None, error=f"the judge gave no valid verdict: {c.rejection.reason}"
                                     [:400])
        score = int(c.data["score"])
        reason = " ".join(str(c.data["reason"]).split())
        return Score((score - low) / (high - low), passed=score >= pass_at,
                     detail=f"judge: {score} of {low}-{high}: {reason}")


@hookimpl
def register_scorers(register: Any) -> None:
    register(JudgeScorer())
