"""Token losses from the local model: per-token log-probabilities of a continuation given a
prefix, and the model-aware data-selection scores built on them.

**What is computed.** For a prefix ``P`` and a continuation ``C = c_1..c_n`` the model is run
over ``P + C`` once and, at every position that predicts a token of ``C``, the raw logits are
turned into log-probabilities with a log-softmax computed here (``logprobs_at``: max-shifted,
summed in float64) and the log-probability of the actual next token is kept. Only those
positions ask llama.cpp for logits (never the prefix's), and they are read a chunk at a time,
so memory stays at ``chunk x vocabulary`` floats whatever the text length. The
``create_completion(echo=True, logprobs=...)`` path of llama-cpp-python is not used: on
0.3.36 it returned values near -12 for tokens whose log-softmax was near -0.03.

**Prefixes** are either chat messages, rendered with the model's own chat template up to the
assistant header (``template="chat"``, the default: how an instruction-tuned model sees an
instruction), or plain text (``template="plain"``, Cherry LLM's ``instruction\\ninput\\n``
layout), always preceded by the model's BOS token so that the first continuation token has a
position to be predicted from. The continuation is tokenized on its own, so the same answer
gives the same tokens under every prefix (what IFD compares).

**Truncation rule** (stated, as in lm-evaluation-harness's log-likelihood requests): the
continuation keeps its first ``max_continuation`` tokens (and never more than the context
less one); then, if prefix + continuation still exceed the context, the prefix loses tokens
from its *left* end, keeping the instruction text nearest the answer.

**Scores** (``answer_losses``): IFD, instruction-following difficulty (Li et al. 2024, "From
Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection for
Instruction Tuning", Cherry LLM) is ``ppl(A | Q) / ppl(A)``, the answer's perplexity with its
instruction over its perplexity alone: near or above 1 the instruction does not help predict
the answer (misaligned pairs, which the paper filters out); lower, the instruction explains
the answer. The answer's perplexity given its instruction is the loss signal that LEAD's
instance-level uncertainty (Lin et al. 2025) and MATES (Yu et al. 2024, "MATES: Model-Aware
Data Selection for Efficient Pretraining with Data Influence Models") build on.

**Cache**: results are stored in the runtime's response cache (``core.llm_cache``) under a
key of the model identity, prefix, continuation, template choice, ``max_continuation`` and
context size, so a rerun neither loads the model nor evaluates a token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xpkit.core.errors import UsageError

Messages = list[dict[str, Any]]
Prefix = Messages | str
TEMPLATES = ("chat", "plain")
DEFAULT_MAX_CONTINUATION = 512
# Positions whose logits are read per decode call: 256 x 49k vocabulary x 4 bytes = 50 MB.
LOGIT_CHUNK = 256


@dataclass
class TokenLogprobs:
    """Log-probabilities of a continuation's tokens given a prefix (one per scored token)."""

    logprobs: Any
    """float32 array: ``log p(c_i | prefix, c_<i)`` for the scored continuation tokens."""
    prefix_tokens: int
    """Prefix tokens the model saw (after truncation)."""
    continuation_tokens: int
    """The continuation's tokens before truncation (``len(logprobs)`` were scored)."""
    cut_prefix: int = 0
    """Prefix tokens dropped from the left to fit the context."""

    @property
    def scored(self) -> int:
        return len(self.logprobs)

    @property
    def cut_continuation(self) -> int:
        return self.continuation_tokens - self.scored

    def nll(self) -> float:
        """Mean negative log-likelihood per scored token (NaN when nothing was scored)."""
        import numpy as np

        return float(-np.mean(self.logprobs, dtype=np.float64)) if self.scored else math.nan

    def perplexity(self) -> float:
        return math.exp(self.nll()) if self.scored else math.nan

    def to_cache(self) -> dict[str, Any]:
        return {"logprobs": [float(x) for x in self.logprobs],
                "prefix_tokens": self.prefix_tokens,
                "continuation_tokens": self.continuation_tokens,
                "cut_prefix": self.cut_prefix}

    @classmethod
    def from_cache(cls, value: dict[str, Any]) -> TokenLogprobs:
        import numpy as np

        return cls(np.asarray(value["logprobs"], np.float32), int(value["prefix_tokens"]),
                   int(value["continuation_tokens"]), int(value.get("cut_prefix", 0)))


# ------------------------------------------------------------------------------ numerics
def logprobs_at(logits: Any, targets: Sequence[int]) -> Any:
    """``log_softmax(logits[i])[targets[i]]`` for every row ``i`` (float32 result).

    The maximum of each row is subtracted before exponentiating and the exponentials are
    summed in float64, so a 49k-entry row loses no precision to float32 accumulation.
    """
    import numpy as np

    rows = np.asarray(logits, np.float32)
    t = np.asarray(targets, np.int64)
    if rows.ndim != 2 or rows.shape[0] != t.size:
        raise ValueError(f"logits of shape {rows.shape} do not match {t.size} targets")
    peak = rows.max(axis=1)
    shifted = rows - peak[:, None]
    total = np.exp(shifted, out=shifted).sum(axis=1, dtype=np.float64)  # one temporary
    lse = peak.astype(np.float64) + np.log(total)
    return (rows[np.arange(t.size), t].astype(np.float64) - lse).astype(np.float32)


def fit_to_context(prefix: list[int], continuation: list[int], n_ctx: int,
                   max_continuation: int) -> tuple[list[int], list[int], int]:
    """Apply the truncation rule (module docstring); returns ``(prefix, continuation,
    prefix tokens cut)``. The prefix always keeps at least one token."""
    if not prefix:
        raise ValueError("the prefix needs at least one token (the BOS token)")
    cont = continuation[:max(0, min(max_continuation, n_ctx - 1))]
    room = n_ctx - len(cont)
    cut = max(0, len(prefix) - room)
    return prefix[cut:], cont, cut


# ------------------------------------------------------------------------------ prompts
def answer_split(messages: Messages) -> tuple[Messages, str] | None:
    """``(prefix messages, answer)``: the last assistant message with text is the answer,
    everything before it the instruction; ``None`` when there is no answer."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        content = m.get("content")
        if m.get("role") == "assistant" and isinstance(content, str) and content.strip():
            return [dict(x) for x in messages[:i]], content
    return None


def plain_prefix(messages: Messages) -> str:
    """Cherry LLM's plain layout: each message's text followed by a newline."""
    return "".join(f"{m.get('content') or ''}\n" for m in messages
                   if isinstance(m.get("content"), str) and m.get("content"))


def prefixes(prefix_messages: Messages, template: str) -> tuple[Prefix, Prefix]:
    """The conditional and the unconditional (no instruction) prefix for ``template``."""
    if template == "plain":
        return plain_prefix(prefix_messages), ""
    # The chat template needs a user turn; an empty one stands for "no instruction".
    return (prefix_messages or [{"role": "user", "content": ""}],
            [{"role": "user", "content": ""}])


# ------------------------------------------------------------------------------ the driver
def supports_logprobs(llm: Any, what: str) -> None:
    """Raise a ``UsageError`` unless ``llm``'s model can give prompt log-probabilities."""
    spec = llm.spec
    if spec.kind == "openai":
        raise UsageError(f"{what} needs an in-process GGUF model (--model PATH.gguf or "
                         f"default); {spec.spec} is an HTTP server, and the llama.cpp HTTP "
                         "server does not return prompt log-probabilities.")
    if not hasattr(llm.handle, "token_logprobs"):
        raise UsageError(f"{what} needs an in-process GGUF model (--model PATH.gguf or "
                         f"default); the {spec.kind} backend of {spec.spec} does not give "
                         "prompt log-probabilities.")


def _key(llm: Any, prefix: Prefix, continuation: str, max_continuation: int) -> str:
    from xpkit.core.llm_cache import cache_key

    return cache_key("token-logprobs", llm.spec.identity,
                     {"prefix": prefix, "continuation": continuation,
                      "max_continuation": max_continuation, "ctx": llm.settings.ctx})


def continuation_logprobs(llm: Any, pairs: Sequence[tuple[Prefix, str]], *,
                          max_continuation: int = DEFAULT_MAX_CONTINUATION,
                          what: str = "token log-probabilities",
                          on_progress: Callable[[int, int], None] | None = None
                          ) -> list[TokenLogprobs]:
    """Per-token log-probabilities of each ``(prefix, continuation)`` pair, in input order.

    ``llm`` is an ``xpkit.core.llm.LLM``; its loaded model must offer ``token_logprobs``
    (the in-process llama.cpp backend does; HTTP servers do not: ``UsageError`` naming
    ``what``). Cached pairs are answered first without loading the model; the rest run in
    order of their prefix, so consecutive pairs share the longest token prefix and llama.cpp
    keeps it in its KV cache. ``on_progress(done, total)`` is called as pairs finish.
    """
    if llm.spec.kind == "openai":
        supports_logprobs(llm, what)
    out: list[TokenLogprobs | None] = [None] * len(pairs)
    keys = [_key(llm, p, c, max_continuation) for p, c in pairs]
    cache = llm.cache
    if cache is not None and keys:
        hits = cache.get_responses(keys)
        for i, k in enumerate(keys):
            if k in hits:
                out[i] = TokenLogprobs.from_cache(hits[k])
        llm.stats.cache_hits += sum(1 for r in out if r is not None)
    todo = [i for i, r in enumerate(out) if r is None]
    done = len(pairs) - len(todo)
    if on_progress is not None and done:
        on_progress(done, len(pairs))
    if todo:
        supports_logprobs(llm, what)
        handle = llm.handle
        todo.sort(key=lambda i: (_sort_text(pairs[i][0]), pairs[i][1]))
        start = time.perf_counter()
        for i in todo:
            prefix, cont = pairs[i]
            res = handle.token_logprobs(prefix, cont, max_continuation=max_continuation)
            out[i] = res
            if cache is not None:
                cache.put_response(keys[i], llm.spec.identity, res.to_cache())
            llm.stats.model_calls += 1
            llm.stats.prompt_tokens += res.prefix_tokens + res.scored
            done += 1
            if on_progress is not None:
                on_progress(done, len(pairs))
        llm.stats.seconds += time.perf_counter() - start
    return [r for r in out if r is not None]


def _sort_text(prefix: Prefix) -> str:
    if isinstance(prefix, str):
        return "\x00" + prefix
    return "\x01".join(f"{m.get('role')}\x02{m.get('content')}" for m in prefix)


@dataclass
class AnswerLosses:
    """Per record: the answer's mean token loss with and without its instruction."""

    conditional: Any
    """Mean NLL of the answer given its instruction (NaN: no answer)."""
    unconditional: Any
    """Mean NLL of the answer alone (NaN unless computed)."""
    scored_tokens: Any
    cut_tokens: int = 0
    """Answer tokens beyond ``max_continuation`` (not scored), over all records."""

    def perplexity(self) -> Any:
        import numpy as np

        return np.exp(self.conditional)

    def ifd(self) -> Any:
        """``ppl(A | Q) / ppl(A) = exp(nll(A | Q) - nll(A))`` (Li et al. 2024)."""
        import numpy as np

        return np.exp(self.conditional - self.unconditional)


def answer_losses(llm: Any, conversations: Sequence[Messages], *, template: str = "chat",
                  unconditional: bool = True,
                  max_continuation: int = DEFAULT_MAX_CONTINUATION,
                  what: str = "token log-probabilities",
                  on_progress: Callable[[int, int], None] | None = None) -> AnswerLosses:
    """The answer losses of each conversation (its last assistant message given everything
    before it, and, with ``unconditional``, given no instruction), for IFD and perplexity.
    """
    import numpy as np

    if template not in TEMPLATES:
        raise UsageError(f"template={template!r}: choose one of {', '.join(TEMPLATES)}.")
    n = len(conversations)
    cond = np.full(n, np.nan)
    uncond = np.full(n, np.nan)
    scored = np.zeros(n, np.int64)
    pairs: list[tuple[Prefix, str]] = []
    owners: list[tuple[int, bool]] = []
    for i, msgs in enumerate(conversations):
        split = answer_split(msgs)
        if split is None:
            continue
        with_q, without_q = prefixes(split[0], template)
        pairs.append((with_q, split[1]))
        owners.append((i, True))
        if unconditional:
            pairs.append((without_q, split[1]))
            owners.append((i, False))
    results = continuation_logprobs(llm, pairs, max_continuation=max_continuation, what=what,
                                    on_progress=on_progress)
    cut = 0
    for (i, conditional), res in zip(owners, results, strict=True):
        if conditional:
            cond[i] = res.nll()
            scored[i] = res.scored
            cut += res.cut_continuation
        else:
            uncond[i] = res.nll()
    return AnswerLosses(cond, uncond, scored, cut)


__all__ = ["DEFAULT_MAX_CONTINUATION", "LOGIT_CHUNK", "TEMPLATES", "AnswerLosses",
           "TokenLogprobs", "answer_losses", "answer_split", "continuation_logprobs",
           "fit_to_context", "logprobs_at", "plain_prefix", "prefixes", "supports_logprobs"]
