"""Graded question answering: a question, a model's answer, a reference, and a grade.

Covers benchmark result files such as GSM8K model solutions (``is_correct``), Dynamic
Cheatsheet outputs, Tree-of-Thoughts Game-of-24 logs, and plain task sets (question +
reference, no answer yet). A record whose sub-objects each hold one system's graded answer
(``{"question", "ground_truth", "6b_finetuning": {"solution", "is_correct"}, ...}``) yields one
episode per system, with the sub-object's key as the model.
"""

from __future__ import annotations

from typing import Any

from xpkit.core.errors import RecordError
from xpkit.core.formats import FormatOptions, InputFormat
from xpkit.core.hookspecs import hookimpl
from xpkit.core.records import as_text, make_episode, make_step
from xpkit.plugins.formats.fields import SUCCESS_KEYS, find_outcome, first_present, rest

QUESTION_KEYS = ("question", "problem", "query", "prompt", "input")
PREDICTION_KEYS = ("prediction", "pred", "model_answer", "final_answer", "response",
                   "model_output", "generated", "output", "solution", "completion")
REFERENCE_KEYS = ("reference", "ground_truth", "gold", "gt", "target", "correct_answer",
                  "expected_answer", "label")
GRADE_KEYS = (*SUCCESS_KEYS, "score", "reward")


def _graded_subrecords(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in record.items()
            if isinstance(v, dict) and first_present(v, PREDICTION_KEYS + ("answer",))[0]
            and first_present(v, GRADE_KEYS)[0]}


class GradedQAFormat(InputFormat):
    name = "graded-qa"
    description = "question / answer / reference / correct (or score) records"

    def sniff(self, record: dict[str, Any]) -> float:
        if first_present(record, QUESTION_KEYS)[0] is None:
            return 0.0
        graded = first_present(record, GRADE_KEYS)[0] is not None
        if _graded_subrecords(record):
            return 0.95
        has_pred = first_present(record, PREDICTION_KEYS)[0] is not None
        has_ref = first_present(record, REFERENCE_KEYS)[0] is not None or "answer" in record
        if graded and (has_pred or has_ref):
            return 0.9
        if has_ref and not {"instruction", "messages", "conversations"} & set(record):
            return 0.6
        return 0.1

    def parse(self, record: dict[str, Any],
              options: FormatOptions) -> dict[str, Any] | list[dict[str, Any]]:
        qkey, question = first_present(record, QUESTION_KEYS)
        if qkey is None:
            raise RecordError(f"missing a question ({' / '.join(QUESTION_KEYS)})", "question")
        question = as_text(question, qkey, required=True)
        rkey, reference = first_present(record, REFERENCE_KEYS)
        pkey, prediction = first_present(record, PREDICTION_KEYS)
        used = {qkey, *(k for k in (rkey, pkey) if k)}
        if "answer" in record:
            # "answer" is the model's answer when a reference exists, else the reference.
            if rkey is None:
                rkey, reference = "answer", record["answer"]
            elif pkey is None:
                pkey, prediction = "answer", record["answer"]
            used.add("answer")
        subs = _graded_subrecords(record)
        if subs:
            shared = rest(record, used | set(subs))
            return [self._episode(question, reference, sub, options, name, shared)
                    for name, sub in subs.items()]
        outcome, oused = find_outcome(record)
        mkey, model = first_present(record, ("model", "model_name"))
        used |= oused | ({mkey} if mkey else set())
        return self._build(question, prediction, reference, outcome, model or options.model,
                           rest(record, used), pkey or "answer")

    def _episode(self, question: str, reference: Any, sub: dict[str, Any],
                 options: FormatOptions, name: str, shared: dict[str, Any]) -> dict[str, Any]:
        pkey, prediction = first_present(sub, PREDICTION_KEYS + ("answer",))
        outcome, oused = find_outcome(sub)
        meta = {**shared, **rest(sub, oused | {pkey}), "system": name}
        return self._build(question, prediction, reference, outcome, name, meta,
                           f"{name}.{pkey}")

    @staticmethod
    def _build(question: str, prediction: Any, reference: Any, outcome: dict[str, Any],
               model: Any, meta: dict[str, Any], pfield: str) -> dict[str, Any]:
        steps = [make_step("user", "message", question)]
        answer = as_text(prediction, pfield) if not isinstance(prediction, dict | list) else None
        if isinstance(prediction, dict | list):
            raise RecordError("expected text", pfield)
        if answer:
            steps.append(make_step("assistant", "message", answer))
        return make_episode(task=question, steps=steps, outcome=outcome, answer=answer,
                            reference=reference if not isinstance(reference, dict | list)
                            else as_text(reference, "reference"),
                            model=model, meta=meta)


@hookimpl
def register_formats(register: Any) -> None:
    register(GradedQAFormat())
