"""Graded question answering: a question, a model's answer, a reference, and a grade.

Three record layouts, each common in benchmark result files:

- One graded answer per record: a question (``question``, ``problem``, ``raw_input``, ...),
  a prediction, a reference (``reference``, ``ground_truth``, ``target``, ...) and a grade
  (``is_correct``, ``correct``, ``score``, ...). Dynamic Cheatsheet results (Suzgun et al.,
  2025) fit here: the task is the plain ``raw_input`` (``input`` adds the prompt wrapper and
  stays in ``meta``), the assistant step is the full ``final_output`` and the answer the
  extracted ``final_answer``; they carry no grade, so ``success`` stays null. Plain task sets
  (question + reference, no answer yet) fit too; GSM8K's ``answer`` is then the reference.
- One record, several systems: sub-objects that each hold one system's graded answer, as in
  GSM8K's ``example_model_solutions`` (Cobbe et al., 2021: ``{"question", "ground_truth",
  "6b_finetuning": {"solution", "is_correct"}, ...}``). One episode per system, with the
  sub-object's key as the model.
- One record, many samples: ``ys`` (sampled outputs) with per-sample grades in ``infos``
  (``[{"r": 0|1}]``) or ``accs`` (``[bool]``), as in the Tree-of-Thoughts Game-of-24 logs
  (Yao et al., 2023). One episode per sample, with ``sample`` (its index) in ``meta`` so that
  identical samples stay separate attempts. The puzzle is the task when the record holds it
  (the ToT search log's ``steps[0].x``); the naive IO/CoT logs only give ``idx``, the row of
  ToT's ``24.csv``, which is kept in ``meta``.

A record that carries a trajectory or a conversation (see ``carries_trajectory``) is an agent
or chat log, not a graded answer, and sniffs low even when it also has grades.
"""

from __future__ import annotations

from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import as_text, make_episode, make_outcome, make_step
from xpkit.plugins.formats.fields import (
    SUCCESS_KEYS,
    carries_trajectory,
    find_outcome,
    first_present,
    get_path,
    rest,
)

QUESTION_KEYS = ("question", "problem", "query", "raw_input", "prompt", "input")
# The model's short, extracted answer, and its full output (the assistant message).
ANSWER_KEYS = ("prediction", "pred", "model_answer", "final_answer")
OUTPUT_KEYS = ("response", "final_output", "model_output", "generated", "output", "solution",
               "completion")
PREDICTION_KEYS = ANSWER_KEYS + OUTPUT_KEYS
REFERENCE_KEYS = ("reference", "ground_truth", "gold", "gt", "target", "correct_answer",
                  "expected_answer", "label", "canonical_solution")
GRADE_KEYS = (*SUCCESS_KEYS, "score", "reward")
SAMPLE_GRADE_KEYS = ("infos", "accs")
# Where a sampled-outputs record keeps its input (ToT's BFS log: the first search step's x).
SAMPLE_TASK_PATHS = ("x", "steps.0.x")


def _graded_subrecords(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in record.items()
            if isinstance(v, dict) and first_present(v, (*PREDICTION_KEYS, "answer"))[0]
            and first_present(v, GRADE_KEYS)[0]}


def _is_sampled(record: dict[str, Any]) -> bool:
    return isinstance(record.get("ys"), list) and any(
        isinstance(record.get(k), list) for k in SAMPLE_GRADE_KEYS)


def _sample_grade(grades: Any, i: int, field: str) -> dict[str, Any]:
    """The outcome of sample ``i``: ``{"r": 0|1}`` is a reward, a bare value a success flag."""
    if not isinstance(grades, list) or i >= len(grades):
        return make_outcome()
    grade = grades[i]
    if isinstance(grade, dict):
        outcome, _ = find_outcome({"reward": grade.get("r"), **grade})
        return outcome
    return make_outcome(success=grade, field=f"{field}.{i}")


class GradedQAFormat(InputFormat):
    name = "graded-qa"
    description = "question / answer / reference / correct (or score) records"

    def sniff(self, record: dict[str, Any]) -> float:
        if carries_trajectory(record):
            return 0.05
        if _is_sampled(record):
            return 0.9
        if first_present(record, QUESTION_KEYS)[0] is None:
            return 0.0
        if {"instruction", "output"} <= set(record):  # Alpaca, even with a "label"
            return 0.05
        graded = first_present(record, GRADE_KEYS)[0] is not None
        if _graded_subrecords(record):
            return 0.95
        has_pred = first_present(record, PREDICTION_KEYS)[0] is not None
        has_ref = first_present(record, REFERENCE_KEYS)[0] is not None or "answer" in record
        if graded and (has_pred or has_ref):
            return 0.9
        if has_ref:
            return 0.6
        return 0.1

    def parse(self, record: dict[str, Any],
              options: FormatOptions) -> dict[str, Any] | list[dict[str, Any]]:
        if _is_sampled(record):
            return self._samples(record, options)
        qkey, question = first_present(record, QUESTION_KEYS)
        if qkey is None:
            raise RecordError(f"missing a question ({' / '.join(QUESTION_KEYS)})", "question")
        question = as_text(question, qkey, required=True)
        rkey, reference = first_present(record, REFERENCE_KEYS)
        akey, answer = first_present(record, ANSWER_KEYS)
        okey, output = first_present(record, OUTPUT_KEYS)
        used = {qkey, *(k for k in (rkey, akey, okey) if k)}
        if "answer" in record:
            # "answer" is the model's answer when a reference exists, else the reference.
            if rkey is None:
                rkey, reference = "answer", record["answer"]
            elif akey is None:
                akey, answer = "answer", record["answer"]
            used.add("answer")
        subs = _graded_subrecords(record)
        if subs:
            shared = rest(record, used | set(subs))
            return [self._system_episode(question, reference, sub, name, shared)
                    for name, sub in subs.items()]
        outcome, oused = find_outcome(record)
        mkey, model = first_present(record, ("model", "model_name"))
        used |= oused | ({mkey} if mkey else set())
        return _build(question, answer, akey or "answer", output, okey or "output", reference,
                      outcome, model or options.model, rest(record, used))

    @staticmethod
    def _system_episode(question: str, reference: Any, sub: dict[str, Any], name: str,
                        shared: dict[str, Any]) -> dict[str, Any]:
        akey, answer = first_present(sub, (*ANSWER_KEYS, "answer"))
        okey, output = first_present(sub, OUTPUT_KEYS)
        outcome, oused = find_outcome(sub)
        meta = {**shared, **rest(sub, oused | {akey, okey}), "system": name}
        return _build(question, answer, f"{name}.{akey}", output, f"{name}.{okey}", reference,
                      outcome, name, meta)

    @staticmethod
    def _samples(record: dict[str, Any], options: FormatOptions) -> list[dict[str, Any]]:
        gkey = next(k for k in SAMPLE_GRADE_KEYS if isinstance(record.get(k), list))
        qkey, question = first_present(record, QUESTION_KEYS)
        if question is None:
            found = (get_path(record, path) for path in SAMPLE_TASK_PATHS)
            question = next((v for v in found if isinstance(v, str) and v.strip()), None)
        rkey, reference = first_present(record, REFERENCE_KEYS)
        mkey, model = first_present(record, ("model", "model_name"))
        shared = rest(record, {"ys", gkey, *(k for k in (qkey, rkey, mkey) if k)})
        episodes = []
        for i, sample in enumerate(record["ys"]):
            text = as_text(sample, f"ys.{i}")
            episodes.append(_build(question, None, "answer", text, f"ys.{i}", reference,
                                   _sample_grade(record[gkey], i, gkey),
                                   model or options.model, {**shared, "sample": i}))
        if not episodes:
            raise RecordError("has no samples", "ys")
        return episodes


def _build(question: str | None, answer: Any, afield: str, output: Any, ofield: str,
           reference: Any, outcome: dict[str, Any], model: Any,
           meta: dict[str, Any]) -> dict[str, Any]:
    """The episode of one graded answer: the question, then the model's output as the
    assistant message; the answer is the extracted answer when given, else the output."""
    answer_text = as_text(answer, afield)
    output_text = as_text(output, ofield)
    steps = [make_step("user", "message", question)] if question else []
    if output_text or answer_text:
        steps.append(make_step("assistant", "message", output_text or answer_text))
    return make_episode(task=question, steps=steps, outcome=outcome,
                        answer=answer_text if answer_text is not None else output_text,
                        reference=as_text(reference, "reference"), model=model, meta=meta)


GRADED_QA = GradedQAFormat()


@hookimpl
def register_formats(register: Any) -> None:
    register(GRADED_QA)
