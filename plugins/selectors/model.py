"""Model-aware selectors: they call the ``--model`` runtime (``xpkit.core.llm``).

- ``judge`` (score): the model rates each record from 0 to 5, AlpaGasus-style (Chen et al.
  2024, "AlpaGasus: Training a Better Alpaca with Fewer Data"): the paper's rating prompt
  (accuracy, or helpfulness with ``aspect=helpfulness``), the rating constrained to the
  integers 0-5 by a JSON schema. Output that fails the schema after the runtime's retries
  gets no rating (it ranks last).
- ``ifd`` (score): instruction-following difficulty (Li et al. 2024, "From Quantity to
  Quality: Boosting LLM Performance with Self-Guided Data Selection for Instruction
  Tuning", Cherry LLM): ``ppl(answer | instruction) / ppl(answer)`` from the local model's
  token losses (``xpkit.core.token_losses``). Higher means the instruction helps the model
  less, so the pair teaches more; at ``max_ifd`` (default 1, as in the paper) and above the
  instruction does not help at all: such pairs are taken as misaligned and rank last. With
  ``--method lead`` this is LEAD's instance-level utility (Lin et al. 2025).
- ``perplexity`` (score): the answer's perplexity given its instruction. ``prefer=high``
  (default) ranks the answers the model finds hardest first, the uncertainty signal of LEAD
  and of MATES-style model-aware selection (Yu et al. 2024, "MATES: Model-Aware Data
  Selection for Efficient Pretraining with Data Influence Models", which scores data by
  the reference model's loss); ``prefer=low`` ranks fluent, typical answers first (the
  utility is then ``1 / perplexity``, the geometric-mean token probability).
- ``add-one-in`` (method): Add-One-In (Li et al. 2025, "Add-One-In: Incremental Sample
  Selection for Large Language Models via a Choice-Based Greedy Paradigm"): the subset
  grows one record per model call; each call shows a summary of what is already chosen and
  a small batch of candidates (the best remaining by ``--score``), and the model picks, by
  index under a JSON schema, the one that adds most. At most ``max_calls`` calls per
  stratum; a rejected output falls back to the batch's best by ``--score``, and after the
  last call the rest follow in ``--score`` order.

IFD and perplexity need prompt-token log-probabilities, which only an in-process GGUF
model gives (the llama.cpp HTTP server does not return them: a usage error says so). Every
model result is cached (``xpkit cache``), so a rerun costs no model time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from xpkit.core.errors import UsageError
from xpkit.core.hookspecs import hookimpl
from xpkit.core.selectors import Param, Ranking, Selector
from xpkit.plugins.selectors.basic import tie_break

TOKEN_PARAMS = {
    "template": Param("chat", "how the instruction is shown to the model: chat (its chat "
                              "template) or plain (instruction text, newline)", str),
    "max_answer_tokens": Param(512, "answer tokens scored at most (the rest is cut)", int),
}


def _choice(value: str, choices: tuple[str, ...], key: str, owner: str) -> str:
    if value not in choices:
        raise UsageError(f"--param {key}={value}: {owner} expects one of {', '.join(choices)}.")
    return value


def _throttled(notice: Callable[[str], None], what: str, unit: str,
               every: float = 30.0) -> Callable[[int, int], None]:
    """A progress callback that posts a notice at most every ``every`` seconds."""
    start = last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every and done < total:
            last = now
            notice(f"{what}: {done:,}/{total:,} {unit} ({done / (now - start):.1f}/s)")

    return report


def transcript(messages: list[dict[str, Any]], limit: int | None = None) -> str:
    """Messages as plain text (a single user turn is its content; more turns are labelled),
    each cut to ``limit`` characters."""
    def cut(text: str) -> str:
        text = text.strip()
        return text if limit is None or len(text) <= limit else text[:limit].rstrip() + " ..."

    turns = [m for m in messages if isinstance(m.get("content"), str) and m["content"].strip()]
    if len(turns) == 1 and turns[0].get("role") == "user":
        return cut(turns[0]["content"])
    return "\n".join(f"{m.get('role', 'user')}: {cut(m['content'])}" for m in turns)


def _tokenwise(view: Any, ctx: Any, what: str, unconditional: bool) -> Any:
    """Answer losses of every candidate (see ``xpkit.core.token_losses.answer_losses``)."""
    from xpkit.core.token_losses import answer_losses

    p = ctx.params
    template = _choice(p["template"], ("chat", "plain"), "template", what)
    if p["max_answer_tokens"] < 1:
        raise UsageError(f"--param max_answer_tokens={p['max_answer_tokens']}: must be >= 1.")
    llm = ctx.llm()
    passes = view.size * (2 if unconditional else 1)
    ctx.notice(f"{what}: token losses of {view.size:,} candidates from {llm.name} "
               f"({passes:,} passes; cached ones are free)")
    t = time.monotonic()
    hits = llm.stats.cache_hits
    losses = answer_losses(llm, view.messages(), template=template,
                           unconditional=unconditional,
                           max_continuation=p["max_answer_tokens"], what=f"--score {what}",
                           on_progress=_throttled(ctx.notice, what, "passes"))
    secs = time.monotonic() - t
    cached = llm.stats.cache_hits - hits
    rate = f", {view.size / secs:.1f} records/s" if secs > 0 and cached < passes else ""
    ctx.notice(f"{what}: scored in {secs:.1f}s ({cached:,} of {passes:,} passes cached{rate})")
    if losses.cut_tokens:
        ctx.notice(f"{what}: {losses.cut_tokens:,} answer tokens beyond --param "
                   f"max_answer_tokens={p['max_answer_tokens']} were not scored")
    return losses


class JudgeScore(Selector):
    name = "judge"
    kind = "score"
    description = "LLM-judge rating 0-5, AlpaGasus (Chen et al. 2024)"
    needs = frozenset({"model"})
    params: ClassVar[dict[str, Param]] = {
        "aspect": Param("accuracy", "what the judge rates: accuracy or helpfulness", str)}

    # AlpaGasus' rating prompt. The request to rate sits in the system message so that the
    # runtime's truncation rule (it cuts the tail of the last user message) can only shorten
    # the response shown, never the question.
    SYSTEM = ("We would like to request your feedback on the performance of AI assistant in "
              "response to the instruction and the given input displayed following. "
              "Please rate according to the {aspect} of the response to the instruction and "
              "the input. Each assistant receives a score on a scale of 0 to 5, where a "
              "higher score indicates higher level of {aspect}. "
              'Reply as JSON: {{"score": N}}.')
    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"score": {"type": "integer", "enum": [0, 1, 2, 3, 4, 5],
                                 "description": "the rating, 0 to 5"}},
        "required": ["score"], "additionalProperties": False}

    def prompt(self, messages: list[dict[str, Any]]) -> str | None:
        from xpkit.core.token_losses import answer_split

        split = answer_split(messages)
        if split is None:
            return None
        instruction = transcript(split[0]) or "(none)"
        return f"Instruction: {instruction}\n\nResponse: {split[1].strip()}"

    def score(self, view: Any, ctx: Any) -> Any:
        import numpy as np

        from xpkit.core.llm import Request

        aspect = _choice(ctx.params["aspect"], ("accuracy", "helpfulness"), "aspect", "judge")
        prompts = [self.prompt(m) for m in view.messages()]
        system = self.SYSTEM.format(aspect=aspect)
        llm = ctx.llm()
        todo = [i for i, p in enumerate(prompts) if p is not None]
        # overflow=truncate: a long record loses the tail of its response, never the call.
        requests = [Request(prompts[i], system, self.SCHEMA, 16, None, "truncate")
                    for i in todo]
        ctx.notice(f"judge: rating {len(requests):,} candidates with {llm.name}")
        report = _throttled(ctx.notice, "judge", "rated")
        done = llm.run(requests, on_progress=lambda p: report(p.done, p.total))
        out = np.full(view.size, np.nan)
        rejected = 0
        for i, c in zip(todo, done, strict=True):
            if c.ok:
                out[i] = float(c.data["score"])
            else:
                rejected += 1
        missing = view.size - len(todo)
        if rejected or missing:
            ctx.notice(f"judge: {rejected:,} ratings rejected by the schema, {missing:,} "
                       "records without a response; they have no rating and rank last")
        return out


class IFDScore(Selector):
    name = "ifd"
    kind = "score"
    description = "instruction-following difficulty from token losses (Cherry LLM, Li et al. " \
                  "2024)"
    needs = frozenset({"model"})
    params: ClassVar[dict[str, Param]] = {
        **TOKEN_PARAMS,
        "max_ifd": Param(1.0, "IFD at or above this ranks last: the instruction does not "
                              "help predict the answer (inf keeps every record)")}

    def score(self, view: Any, ctx: Any) -> Any:
        import numpy as np

        ifd = _tokenwise(view, ctx, "ifd", unconditional=True).ifd()
        over = ifd >= ctx.params["max_ifd"]
        if over.any():
            ctx.notice(f"ifd: {int(over.sum()):,} of {view.size:,} candidates have IFD >= "
                       f"{ctx.params['max_ifd']:g} (the instruction does not help: misaligned "
                       "per Li et al. 2024); they rank last")
        return np.where(over, np.nan, ifd)


class PerplexityScore(Selector):
    name = "perplexity"
    kind = "score"
    description = "answer perplexity given its instruction (prefer=high|low)"
    needs = frozenset({"model"})
    params: ClassVar[dict[str, Param]] = {
        **TOKEN_PARAMS,
        "prefer": Param("high", "high (hard answers first) or low (fluent answers first, "
                                "utility 1/perplexity)", str)}

    def score(self, view: Any, ctx: Any) -> Any:
        prefer = _choice(ctx.params["prefer"], ("high", "low"), "prefer", "perplexity")
        ppl = _tokenwise(view, ctx, "perplexity", unconditional=False).perplexity()
        return ppl if prefer == "high" else 1.0 / ppl


class AddOneIn(Selector):
    name = "add-one-in"
    kind = "method"
    description = "Add-One-In: the model picks the candidate that adds most (Li et al. 2025)"
    needs = frozenset({"model"})
    params: ClassVar[dict[str, Param]] = {
        "batch": Param(4, "candidates shown per model call (2-10)", int),
        "max_calls": Param(32, "model calls at most per stratum; then the rest by --score",
                           int),
        "window": Param(4, "chosen records summarised in each prompt (the most recent)", int),
        "max_chars": Param(300, "characters of each record shown to the model", int),
    }

    SYSTEM = ("You build a small, high-quality and varied training set for an AI assistant. "
              "You are shown what is already selected and a few candidate examples; choose "
              "the one candidate that adds the most: correct, helpful, and different from "
              "what is already selected.")

    @staticmethod
    def schema(k: int) -> dict[str, Any]:
        return {"type": "object",
                "properties": {"choice": {"type": "integer", "enum": list(range(k)),
                                          "description": "the index of the chosen candidate"}},
                "required": ["choice"], "additionalProperties": False}

    def rank(self, view: Any, ctx: Any) -> Ranking:
        import numpy as np

        p = ctx.params
        k, max_calls, window, chars = p["batch"], p["max_calls"], p["window"], p["max_chars"]
        if not 2 <= k <= 10:
            raise UsageError(f"--param batch={k}: add-one-in shows 2 to 10 candidates per "
                             "call.")
        for key in ("max_calls", "window", "max_chars"):
            if p[key] < (0 if key != "max_chars" else 20):
                raise UsageError(f"--param {key}={p[key]}: must be >= "
                                 f"{0 if key != 'max_chars' else 20}.")
        raw = np.asarray(view.utility(), np.float64)
        u = np.nan_to_num(raw, nan=-np.inf)
        order = np.lexsort((tie_break(view, ctx), -u)).tolist()
        why: dict[int, str] = {}
        shown: dict[int, tuple[str, str]] = {}

        def text(pos: int) -> tuple[str, str]:
            if pos not in shown:
                from xpkit.core.token_losses import answer_split

                msgs = view.messages(np.asarray([pos]))[0]
                split = answer_split(msgs)
                q, a = (transcript(split[0], chars // 2), split[1]) if split else (
                    transcript(msgs, chars // 2), "")
                a = a.strip()
                shown[pos] = (q or "(none)", a if len(a) <= chars // 2
                              else a[:chars // 2].rstrip() + " ...")
            return shown[pos]

        def prompt(chosen: list[int], batch: list[int]) -> str:
            lines = [f"Already selected: {len(chosen)} example(s)."]
            if chosen and window:
                lines.append(f"The most recent {min(window, len(chosen))}:")
                lines += [f"- {text(c)[0][:120]}" for c in chosen[-window:]]
            lines.append("\nCandidates:")
            for j, pos in enumerate(batch):
                q, a = text(pos)
                lines.append(f"[{j}] Instruction: {q}\n    Response: {a}")
            lines.append(f"\nWhich candidate (0 to {len(batch) - 1}) adds the most to the "
                         'selected set? Reply as JSON: {"choice": N}.')
            return "\n".join(lines)

        def gen() -> Iterator[int]:
            remaining = list(order)
            chosen: list[int] = []
            calls = 0
            llm = ctx.llm() if max_calls and len(remaining) > 1 else None
            while llm is not None and calls < max_calls and len(remaining) > 1:
                batch = remaining[:k]
                c = llm.structured(prompt(chosen, batch), self.schema(len(batch)),
                                   system=self.SYSTEM, max_tokens=16, overflow="truncate")
                calls += 1
                if c.ok:
                    pick = batch[int(c.data["choice"])]
                    why[pick] = (f"add-one-in: the model's choice among {len(batch)} "
                                 f"candidates (call {calls}{', cached' if c.cached else ''})")
                else:
                    pick = batch[0]
                    reason = c.rejection.reason if c.rejection else "no output"
                    why[pick] = (f"add-one-in: model output rejected at call {calls} "
                                 f"({reason[:80]}); took the best by --score among "
                                 f"{len(batch)}")
                remaining.remove(pick)  # within the first k: the model bounds the calls
                chosen.append(pick)
                yield pick
            for pick in remaining:
                why[pick] = f"add-one-in: after {calls} model call(s), by --score {raw[pick]:.4g}"
                yield pick

        return Ranking(order=gen(), score=raw, reason=lambda pos: why.get(pos, "add-one-in"))


@hookimpl
def register_selectors(register: Any) -> None:
    for s in (JudgeScore(), IFDScore(), PerplexityScore(), AddOneIn()):
        register(s)
